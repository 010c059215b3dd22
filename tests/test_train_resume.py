"""Resuming loses nothing: a run killed with SIGKILL after an epoch, or stopped with Ctrl-C in the
middle of one, and resumed, ends with weights bitwise identical to a run never interrupted
(CPU, --workers 0, fixed --seed). Real processes, real signals."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .test_dense_train import assert_weights_moved

REPO = Path(__file__).resolve().parents[1]
# Two epochs of the paper's recipe at toy size; RandAugment, random erasing, Mixup/CutMix, the
# repeated-augmentation sampler and EMA all draw random numbers, so all of them must be restored.
ARGS = ["--model", "repvit_m0_6", "--img-size", "32", "--batch-size", "8", "--epochs", "2", "--warmup-epochs", "1",
        "--workers", "0", "--lr", "1e-3", "--seed", "7", "--no-tensorboard", "--log-interval", "1",
        "--threads", "1"]


def train_cmd(data: Path, output: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "repvit", "train", "--data", str(data), "--output", str(output), *ARGS, *extra]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def signal_at_step_2(cmd: list[str], send, **popen) -> tuple[int, str, str]:
    """Run ``cmd``, call ``send(proc)`` once step 2 of epoch 1 is logged; (returncode, stdout, stderr)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)
    lines = []
    for line in proc.stdout:  # wait until training is under way
        lines.append(line)
        if "epoch 1/2 step 2/" in line:
            send(proc)
            break
    stdout, stderr = proc.communicate(timeout=600)
    return proc.returncode, "".join(lines) + stdout, stderr


def weights(path: Path) -> dict:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return {"model": raw["model"], "model_ema": raw["model_ema"], "optimizer": raw["optimizer"]["state"],
            "num_updates": raw["num_updates"], "epoch": raw["epoch"]}


def assert_identical(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] == 2 and a["num_updates"] == b["num_updates"]
    for part in ("model", "model_ema"):
        assert a[part].keys() == b[part].keys()
        different = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not different, f"{part}: {len(different)} tensors differ, e.g. {different[:3]}"
    for index, state in a["optimizer"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"][index][key]), (index, key)


@pytest.fixture(scope="module")
def data(tiny_imagenette, tmp_path_factory) -> Path:
    """5 train and 1 val image per class: 3 steps per epoch."""
    root = tmp_path_factory.mktemp("resume-data")
    for split, count in (("train", 5), ("val", 1)):
        for folder in sorted((tiny_imagenette / split).iterdir()):
            (root / split / folder.name).mkdir(parents=True)
            for image in sorted(folder.iterdir())[:count]:
                shutil.copyfile(image, root / split / folder.name / image.name)
    return root


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("reference")
    result = run(train_cmd(data, out))
    assert result.returncode == 0, result.stderr[-3000:]
    return weights(out / "last.pth")


def test_sigkill_after_an_epoch_then_resume_is_bitwise_identical(reference, data, tmp_path):
    out = tmp_path / "killed"
    first = run(train_cmd(data, out, "--stop-after-epoch", "1"))
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 1
    after_epoch_1 = weights(out / "last.pth")
    second = run(train_cmd(data, out, "--resume", str(out / "last.pth")))
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "1 epochs done" in second.stdout
    assert_identical(reference, weights(out / "last.pth"))
    for part in ("model", "model_ema"):   # epoch 2 moved every weight matrix (and the EMA followed)
        assert_weights_moved(after_epoch_1[part], reference[part])
    # The metrics log continues rather than starting over.
    assert [line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2"]


def test_ctrl_c_mid_epoch_saves_and_resume_is_bitwise_identical(reference, data, tmp_path):
    out = tmp_path / "interrupted"
    returncode, text, stderr = signal_at_step_2(train_cmd(data, out), lambda proc: proc.send_signal(signal.SIGINT))
    assert returncode == 130, stderr[-3000:]
    assert "interrupted: stopped in epoch 1" in text and "Traceback" not in stderr
    saved = torch.load(out / "last.pth", weights_only=True)
    assert saved["epoch"] == 0 and saved["next_step"] >= 2
    resumed = run(train_cmd(data, out, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing epoch 1 at step {saved['next_step'] + 1}" in resumed.stdout
    assert_identical(reference, weights(out / "last.pth"))
    assert_weights_moved(saved["model"], reference["model"])


def test_sigterm_to_the_process_group_with_loader_workers_saves_and_exits_cleanly(data, tmp_path):
    # `timeout`, `docker stop` and cluster preemption signal every process of the group, workers included.
    out = tmp_path / "terminated"
    returncode, stdout, stderr = signal_at_step_2(train_cmd(data, out, "--workers", "1"),
                                                  lambda proc: os.killpg(proc.pid, signal.SIGTERM),
                                                  start_new_session=True)
    assert returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "SIGTERM received" in stdout and "interrupted: stopped in epoch 1" in stdout
    assert "Traceback" not in stderr
    saved = torch.load(out / "last.pth", weights_only=True)
    assert saved["epoch"] == 0 and saved["next_step"] >= 2
    resumed = run(train_cmd(data, out, "--workers", "1", "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(out / "last.pth", weights_only=True)["epoch"] == 2


def test_resume_refuses_weights_only_checkpoints(data, tmp_path):
    import repvit
    repvit.save_checkpoint(repvit.create_model("repvit_m0_6", num_classes=10), tmp_path / "w.pth")
    result = run(train_cmd(data, tmp_path / "o", "--resume", str(tmp_path / "w.pth")))
    assert result.returncode == 2 and "use --finetune" in result.stderr
