"""``repvit segment train`` and ``repvit detect train`` on real data at toy size: outputs, files the
eval commands read, exact resume after SIGKILL and after SIGTERM mid-epoch, and two torchrun ranks."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from repvit.cli import main

from .detections_as_truth import label_with_own_detections
from .test_dense_data import need

REPO = Path(__file__).resolve().parents[1]
CAMVID = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"
SEG = ["--class-names", CAMVID, "--ignore-index", "11", "--model", "repvit_m0_6", "--crop", "64", "96",
       "--batch-size", "2", "--epochs", "2", "--warmup-iters", "2", "--workers", "0", "--threads", "1",
       "--log-interval", "1", "--seed", "3", "--no-norm-eval"]


@pytest.fixture(scope="module")
def camvid_tiny(tmp_path_factory) -> Path:
    """6 train pairs (3 steps of 2) and 2 val pairs, downscaled to 120x160 to keep steps fast."""
    from PIL import Image
    src, root = need("camvid"), tmp_path_factory.mktemp("camvid-tiny")
    for split, count in (("train", 6), ("val", 2)):
        for sub in ("images", "labels"):
            (root / split / sub).mkdir(parents=True)
        for path in sorted((src / split / "images").iterdir())[:count]:
            Image.open(path).resize((160, 120), Image.BILINEAR).save(root / split / "images" / path.name)
            label = src / split / "labels" / f"{path.stem}.png"
            Image.open(label).resize((160, 120), Image.NEAREST).save(root / split / "labels" / label.name)
    # The CamVid recipe's transforms (rescale the frame itself, no photometric distortion or crop
    # redraws, validate at the raw size), not the ADE20K defaults made for 512 px crops.
    (root / "tiny.yaml").write_text("img_scale: null\neval_size: null\nphotometric: false\ncat_max_ratio: 1.0\n")
    return root


def seg_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "repvit", "segment", "train", "-c", str(data / "tiny.yaml"), "--data", str(data),
            "--output", str(out), *SEG, *extra]


def run(cmd, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, **kw)


def state(path: Path) -> dict:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return {"model": raw["model"], "optimizer": raw["optimizer"]["state"], "epoch": raw["epoch"],
            "scheduler": raw["scheduler"]["last_epoch"]}


def assert_identical(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] == 2 and a["scheduler"] == b["scheduler"]
    different = [k for k in a["model"] if not torch.equal(a["model"][k], b["model"][k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
    for index, entry in a["optimizer"].items():
        for key, value in entry.items():
            assert torch.equal(value, b["optimizer"][index][key]), (index, key)


def assert_weights_moved(before: dict, after: dict, prefix: str = "") -> None:
    """Every weight matrix (under ``prefix``) changed: an optimizer that does nothing would pass the
    bitwise resume comparisons, but not this."""
    matrices = [k for k, v in before.items() if k.startswith(prefix) and v.is_floating_point() and v.ndim >= 2]
    still = [k for k in matrices if torch.equal(before[k], after[k])]
    assert matrices and not still, f"{len(still)} of {len(matrices)} weight matrices never moved, e.g. {still[:3]}"


def epoch_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(camvid_tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg-ref")
    result = run(seg_cmd(camvid_tiny, out))
    assert result.returncode == 0, result.stderr[-2000:]
    return out


def test_segment_run_writes_what_eval_reads(reference, camvid_tiny, tmp_path):
    for name in ("last.pth", "best.pth", "metrics.csv", "metrics.jsonl", "steps.csv", "curves.png", "train.log"):
        assert (reference / name).is_file(), name
    rows = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and all(0 <= r["val_mIoU"] <= 1 for r in rows)
    report = tmp_path / "eval.json"
    assert main(["segment", "eval", "--checkpoint", str(reference / "best.pth"), "--data",
                 str(camvid_tiny / "val"), "--report", str(report), "--device", "cpu"]) == 0
    result = json.loads(report.read_text())
    best = max(r["val_mIoU"] for r in rows)
    assert result["mIoU"] == pytest.approx(best, abs=1e-6)          # the same fused evaluation as in training


def test_resume_after_sigkill_is_exact(reference, camvid_tiny, tmp_path):
    out = tmp_path / "killed"
    killed = run(seg_cmd(camvid_tiny, out, "--stop-after-epoch", "1"))
    assert killed.returncode == -signal.SIGKILL and torch.load(out / "last.pth", weights_only=True)["epoch"] == 1
    after_epoch_1 = state(out / "last.pth")["model"]
    resumed = run(seg_cmd(camvid_tiny, out, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in (out / "train.log").read_text()
    assert_identical(state(out / "last.pth"), state(reference / "last.pth"))
    assert_weights_moved(after_epoch_1, state(out / "last.pth")["model"])


def terminate_after_first_step(cmd, out: Path) -> None:
    """Run a training command, send SIGTERM once it reports its first step, and check it saved mid-epoch."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "epoch 1/2 step 1/" in line:
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM
    saved = torch.load(out / "last.pth", weights_only=True)
    assert saved["epoch"] == 0 and saved["next_step"] >= 1


def test_sigterm_mid_epoch_saves_and_resumes_exactly(reference, camvid_tiny, tmp_path):
    out = tmp_path / "term"
    terminate_after_first_step(seg_cmd(camvid_tiny, out), out)
    mid_epoch = state(out / "last.pth")["model"]
    resumed = run(seg_cmd(camvid_tiny, out, "--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert_identical(state(out / "last.pth"), state(reference / "last.pth"))
    assert_weights_moved(mid_epoch, state(out / "last.pth")["model"])


def test_segmentation_learns(camvid_tiny, tmp_path):
    # 4 epochs of 3 steps on whole frames (no random crop or rescaling, so epochs are comparable):
    # the training loss must fall far below its first epoch's. An optimizer that does nothing stays put.
    out = tmp_path / "learn"
    result = run(seg_cmd(camvid_tiny, out, "--epochs", "4", "--lr", "1e-3", "--crop", "120", "160", "--ratio-range", "1",
                         "1", "--eval-interval", "4"))
    assert result.returncode == 0, result.stderr[-2000:]
    rows = epoch_rows(out)
    assert rows[-1]["train_loss"] < 0.4 * rows[0]["train_loss"], [r["train_loss"] for r in rows]


def test_an_existing_run_is_not_overwritten_by_accident(reference, camvid_tiny, capsys):
    assert main(["segment", "train", "--data", str(camvid_tiny), "--output", str(reference), *SEG]) == 2
    assert "--resume auto" in capsys.readouterr().err


def test_detect_train_splits_one_folder_and_saves_an_evaluable_detector(tmp_path):
    """The val AP an epoch's row records is what ``repvit detect eval best.pth`` measures on the held-out
    images. On the real fruit a random-init detector scores AP 0 whatever happens, so the folder is
    labelled with the initial detector's own detections (the training's seeding rebuilds it): after an
    epoch at a small learning rate (at the default one, an epoch can leave no detection above the 0.05
    score threshold) its AP is informative, and other weights or other images would score otherwise."""
    from repvit.detection.data import DetectionData
    from repvit.detection.detectors import build_detector, load_detector
    from repvit.detection.training import split
    from repvit.engine.checkpointing import seed_everything
    fruit = DetectionData.from_folder(need("fruit")).subset(range(4))   # 3 train / 1 val image
    seed_everything(0)   # what the loop does before it builds the task with --seed 0
    initial = build_detector("fasterrcnn", "repvit_m0_6", num_classes=4, min_size=(96,), max_size=128)
    data = tmp_path / "labelled"
    label_with_own_detections(initial, fruit, data)
    out = tmp_path / "det"
    assert main(["detect", "train", "--data", str(data), "--detector", "fasterrcnn", "--model", "repvit_m0_6",
                 "--min-size", "96", "--max-size", "128", "--batch-size", "2", "--epochs", "1", "--warmup-iters",
                 "1", "--workers", "0", "--threads", "1", "--output", str(out), "--val-fraction", "0.25",
                 "--seed", "0", "--lr", "2e-5"]) == 0
    log = (out / "train.log").read_text()
    assert "3 train / 1 val images" in log and "val bbox_AP" in log
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert load_detector(out / "best.pth").class_names == ["date", "fig", "hazelnut"]
    assert 0.05 < row["val_bbox_AP"] < 0.9 and row["val_bbox_AP50"] > row["val_bbox_AP"]   # informative
    # The held-out images alone, scored by the command line from best.pth.
    _, val = split(DetectionData.from_folder(data), 0.25, 0)
    coco = json.loads((data / "annotations.json").read_text())
    ids = {info["id"] for info, _ in val.items}
    coco["images"] = [i for i in coco["images"] if i["id"] in ids]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    (tmp_path / "val.json").write_text(json.dumps(coco))
    report = tmp_path / "eval.json"
    assert main(["detect", "eval", "--checkpoint", str(out / "best.pth"), "--annotations", str(tmp_path / "val.json"),
                 "--images", str(data / "images"), "--report", str(report), "--device", "cpu"]) == 0
    result = json.loads(report.read_text())
    assert result["images"] == 1
    assert result["bbox"] == pytest.approx({k[len("val_bbox_"):]: v for k, v in row.items()
                                            if k.startswith("val_bbox_")}, abs=1e-6)


def test_detection_learns(tmp_path):
    # FCOS on the fruit photos for 3 epochs of 4 steps: the training loss (focal + GIoU + centerness,
    # whose centerness term has a floor near 0.6) must fall clearly below its first epoch's.
    out = tmp_path / "det-learn"
    assert main(["detect", "train", "--data", str(need("fruit")), "--detector", "fcos", "--model", "repvit_m0_6",
                 "--min-size", "96", "--max-size", "128", "--batch-size", "4", "--epochs", "3", "--warmup-iters",
                 "2", "--lr", "1e-3", "--workers", "0", "--threads", "1", "--output", str(out), "--val-fraction",
                 "0.25", "--eval-interval", "3", "--seed", "1"]) == 0
    rows = epoch_rows(out)
    assert rows[-1]["train_loss"] < 0.8 * rows[0]["train_loss"], [r["train_loss"] for r in rows]


def test_two_torchrun_ranks(camvid_tiny, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "repvit",
           "segment", "train", "--data", str(camvid_tiny), "--output", str(out), *SEG, "--epochs", "1"]
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "world size 2" in log and "SyncBatchNorm runs on GPUs only" in log and "2 steps per epoch" in log
    raw = torch.load(out / "last.pth", weights_only=True)
    assert raw["epoch"] == 1 and len(raw["rng"]) == 2                # both ranks' RNG states saved
    assert not any("module." in k for k in raw["model"])              # saved unwrapped


def test_two_torchrun_ranks_detection(tmp_path):
    out = tmp_path / "ddp-det"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "repvit",
           "detect", "train", "--data", str(need("fruit")), "--detector", "fasterrcnn", "--model", "repvit_m0_6",
           "--min-size", "96", "--max-size", "128", "--batch-size", "2", "--epochs", "1", "--warmup-iters", "1",
           "--workers", "0", "--threads", "1", "--output", str(out), "--val-fraction", "0.25"]
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (out / "train.log").read_text()
    assert "world size 2" in log and "4 steps per epoch" in log     # 14 images over 2 ranks x 2, padded to 16
    assert (out / "best.pth").is_file()


def test_dense_config_files_load_and_lists_take_any_length(tmp_path):
    from repvit.dense import options
    config = tmp_path / "d.yaml"
    config.write_text("data: x\nmin_size: [352, 384, 416]\nmilestones: 9\n")
    cfg = options.resolve({"config": str(config)}, "detect")
    assert cfg.min_size == [352, 384, 416] and cfg.milestones == [9]
    for name, task in (("camvid-cpu.yaml", "segment"), ("raccoon-cpu.yaml", "detect"), ("ade20k-semfpn.yaml", "segment"),
                       ("coco-maskrcnn-1x.yaml", "detect")):
        cfg = options.resolve({"config": str(REPO / "configs" / name)}, task)
        assert cfg.epochs > 0, name
    coco = options.resolve({"config": str(REPO / "configs" / "coco-maskrcnn-1x.yaml")}, "detect")
    assert (coco.lr, coco.weight_decay, coco.epochs, coco.milestones, coco.warmup_iters, coco.max_size) == \
        (2e-4, 0.05, 12, [8, 11], 500, 1333)
    config.write_text("data: x\ncrop: [1, 2, 3]\n")
    with pytest.raises(ValueError, match="a list of 2 numbers"):
        options.resolve({"config": str(config)}, "segment")
