"""``torchrun --nproc_per_node 2 -m repvit train`` on CPU (gloo): DistributedDataParallel, a
distributed sampler, validation that counts every image exactly once (an odd number of
images, so the ranks get unequal shares), and only rank 0 writing files and logs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import repvit
from repvit.classification.eval_predict import evaluate_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def odd_data(tiny_imagenette, tmp_path_factory) -> Path:
    """5 classes, 8 train images each, and 15 val images (3 per class): 8 for rank 0, 7 for rank 1."""
    root = tmp_path_factory.mktemp("ddp-data")
    for split, count in (("train", 8), ("val", 3)):
        for folder in sorted((tiny_imagenette / split).iterdir())[:5]:
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copyfile(image, root / split / folder.name / image.name)
    return root


def test_two_cpu_processes_with_torchrun(odd_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "repvit", "train", "--data", str(odd_data), "--output", str(out), "--model", "repvit_m0_6",
           "--img-size", "32", "--batch-size", "8", "--epochs", "1", "--warmup-epochs", "0", "--workers", "0",
           "--lr", "1e-3", "--no-tensorboard", "--log-interval", "1", "--eval-batch-size", "4"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    log = result.stdout
    assert "world size 2 (cpu, 1 thread), batch 8 per process, global batch 16" in log
    assert "effective lr 0.001" in log
    # Only rank 0 reports: each line once. 40 train images, 3 repeats / 2 ranks -> 20 per rank -> 2 steps.
    assert log.count("world size 2") == 1 and log.count("epoch 1/1 step 2/2") == 1
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert row["val_images"] == 15  # 8 + 7: every image once, nothing padded or dropped
    assert len((out / "metrics.csv").read_text().splitlines()) == 2
    assert sorted(p.name for p in out.iterdir()) == ["best.pth", "config.yaml", "curves.png", "last.pth",
                                                     "metrics.csv", "metrics.jsonl", "steps.csv", "train.log"]
    updates = [line.split(",")[0] for line in (out / "steps.csv").read_text().splitlines()[1:]]
    assert updates == sorted(set(updates), key=int)  # written by rank 0 alone: no step twice
    # The distributed accuracy equals a single-process evaluation of the same weights.
    model = repvit.create_model(checkpoint=out / "last.pth")
    assert model.num_classes == 5 and len(torch.load(out / "last.pth", weights_only=True)["rng"]) == 2
    single = evaluate_checkpoint(out / "last.pth", odd_data, workers=0, device="cpu", log=lambda *_: None)
    assert single["images"] == 15
    assert single["top1"] == pytest.approx(row["val_top1"]) and single["loss"] == pytest.approx(row["val_loss"],
                                                                                                    rel=1e-4)
