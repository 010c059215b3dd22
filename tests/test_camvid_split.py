"""Validating CamVid by sequence (issue 29): the ``--val-split`` forms on the shared CamVid file names
(frames per sequence as its README counts them), their errors, the whole-frame final phase of
``--whole-frame-epochs`` (the loader's shapes before and after the switch, seeded augmentation), and
a two-step ``repvit segment train --val-split sequence:0006R0`` whose figure ``segment eval`` reproduces."""
from __future__ import annotations

import json
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from repvit.cli import main
from repvit.engine.distributed import DistEnv
from repvit.segmentation.data import (SemanticFolder, SegmentationDataError, TrainTransform, WholeFrame,
                                      describe_split, split_part)
from repvit.segmentation.training import phased_batches

from .test_dense_data import need
from .test_dense_train import SEG, epoch_rows, run

# ../shared/data/camvid/README.md: "train 0001TP 62, 0006R0 101, 0016E5 204; val 0016E5 101".
README_COUNTS = {"train": {"0001TP": 62, "0006R0": 101, "0016E5": 204}, "val": {"0016E5": 101}}
ALL_FRAMES = {"0001TP": 62, "0006R0": 101, "0016E5": 305}


def folder(spec: str, part: str, **kw) -> SemanticFolder:
    return SemanticFolder(need("camvid"), num_classes=11, ignore_index=11, split=spec, part=part, **kw)


def stems(data: SemanticFolder) -> list[str]:
    return [image.stem for image, _ in data.pairs]


@pytest.fixture(scope="module")
def by_sequence() -> tuple[SemanticFolder, SemanticFolder]:
    return folder("sequence:0006R0", "train"), folder("sequence:0006R0", "val")


def test_folders_split_is_the_readme_and_in_sequence():
    train, val = folder("folders", "train"), folder("folders", "val")
    assert dict(train.sequences()) == README_COUNTS["train"] and dict(val.sequences()) == README_COUNTS["val"]
    assert describe_split("folders", train, val) == (
        "split --val-split folders: train 367 frames (0001TP 62, 0006R0 101, 0016E5 204); val 101 frames "
        "(0016E5 101); in-sequence: val shares 0016E5 with train")


def test_by_sequence_split_holds_out_one_recording(by_sequence):
    train, val = by_sequence
    assert dict(val.sequences()) == {"0006R0": 101}
    assert dict(train.sequences()) == {"0001TP": 62, "0016E5": 305}
    assert dict(train.sequences() + val.sequences()) == ALL_FRAMES          # every frame of train/ and val/
    assert not set(stems(train)) & set(stems(val))                          # none in both
    camvid = need("camvid")
    everything = {p.stem for part in ("train", "val") for p in (camvid / part / "images").iterdir()}
    assert set(stems(train)) | set(stems(val)) == everything and len(everything) == 468
    assert all(image.parent.parent == label.parent.parent for image, label in train.pairs + val.pairs)
    assert describe_split("sequence:0006R0", train, val) == (
        "split --val-split sequence:0006R0: train 367 frames (0001TP 62, 0016E5 305); val 101 frames "
        "(0006R0 101); by-sequence: no val sequence has a frame in train")
    # deterministic, from the names alone: computed again, the same frames in the same order
    assert split_part(camvid, "sequence:0006R0", "val")[0] == [camvid / "train", camvid / "val"]
    assert stems(folder("sequence:0006R0", "val")) == stems(val)


def test_two_held_out_sequences_and_the_final_fit():
    camvid = need("camvid")
    folders, keep = split_part(camvid, "sequence:0001TP,0006R0", "val")
    names = [p.stem for f in folders for p in (f / "images").iterdir()]
    assert sum(map(keep, names)) == 62 + 101
    folders, keep = split_part(camvid, "none", "train")
    assert folders == [camvid / "train", camvid / "val"] and keep is None   # everything trains


@pytest.mark.parametrize("spec,part,message", [
    ("sequence:Seq05VD", "val", "--val-split sequence:Seq05VD: no frame of {root}/train and {root}/val has a name "
                                "starting with Seq05VD; sequences there: 0001TP 62, 0006R0 101, 0016E5 305 (hold "
                                "out some of these)"),
    ("sequence:0", "train", "--val-split sequence:0 holds out every frame of {root}/train and {root}/val, leaving "
                            "nothing to train on; sequences there: 0001TP 62, 0006R0 101, 0016E5 305 (hold out "
                            "fewer)"),
    ("sequence:", "val", "--val-split must be folders, sequence:PREFIX[,PREFIX...] or none (e.g. sequence:0006R0), "
                         "got 'sequence:'"),
    ("0006R0", "val", "--val-split must be folders, sequence:PREFIX[,PREFIX...] or none (e.g. sequence:0006R0), "
                      "got '0006R0'"),
    ("none", "val", "--val-split none holds no frame out (a final fit on {root}/train and val): there is nothing "
                    "to score; score a by-sequence split (sequence:PREFIX) or a folder instead"),
])
def test_split_errors_are_one_line_naming_the_sequences(spec, part, message):
    root = need("camvid")
    with pytest.raises(ValueError) as err:
        split_part(root, spec, part)
    assert str(err.value) == message.format(root=root)


def test_eval_refuses_a_prefix_that_matches_nothing(tmp_path, capsys):
    from repvit.segmentation.semantic_fpn import SemanticFPN, save_segmenter
    torch.manual_seed(0)
    path = save_segmenter(SemanticFPN("repvit_m0_6", num_classes=11), tmp_path / "m.pth",
                          class_names=[str(i) for i in range(11)], ignore_index=11)
    code = main(["segment", "eval", "--checkpoint", str(path), "--data", str(need("camvid")), "--val-split",
                 "sequence:Seq05VD", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "sequences there: 0001TP 62, 0006R0 101, 0016E5 305" in err
    with pytest.raises(SegmentationDataError):
        folder("sequence:Seq05VD", "val")


# --------------------------------------------------------------------------- a tiny copy
@pytest.fixture(scope="module")
def camvid_mixed(tmp_path_factory) -> Path:
    """CamVid frames of three recordings at 120x160: train/ 0001TP x1, 0006R0 x2, 0016E5 x1; val/ 0016E5 x2.
    By sequence (0006R0 held out): 4 training frames (2 steps of 2) and 2 validation frames."""
    from PIL import Image
    src, root = need("camvid"), tmp_path_factory.mktemp("camvid-mixed")
    picks = {"train": {"0001TP": 1, "0006R0": 2, "0016E5": 1}, "val": {"0016E5": 2}}
    for part, wanted in picks.items():
        for sub in ("images", "labels"):
            (root / part / sub).mkdir(parents=True)
        for sequence, count in wanted.items():
            for path in sorted((src / part / "images").glob(f"{sequence}_*"))[:count]:
                Image.open(path).resize((160, 120), Image.BILINEAR).save(root / part / "images" / path.name)
                label = src / part / "labels" / f"{path.stem}.png"
                Image.open(label).resize((160, 120), Image.NEAREST).save(root / part / "labels" / label.name)
    (root / "tiny.yaml").write_text("img_scale: null\neval_size: null\nphotometric: false\ncat_max_ratio: 1.0\n")
    return root


def loader_shapes(batches, epochs: int) -> list[tuple]:
    return [tuple(next(iter(batches.batches(epoch, 0)))[0].shape) for epoch in range(epochs)]


@pytest.mark.parametrize("workers", [0, 1])
def test_whole_frame_phase_switches_at_the_right_epoch(camvid_mixed, workers):
    train = SemanticFolder(camvid_mixed, num_classes=11, ignore_index=11, split="sequence:0006R0", part="train")
    cfg = Namespace(epochs=3, seed=0, batch_size=2, workers=workers, ignore_index=11)
    crops = TrainTransform((64, 96), img_scale=None, cat_max_ratio=1.0, photometric=False, ignore_index=11)
    lines = []
    batches = phased_batches(train, cfg, DistEnv(), crops=crops, whole=WholeFrame(None, photometric=False),
                             whole_epochs=1, log=lines.append)
    assert loader_shapes(batches, 3) == [(2, 3, 64, 96), (2, 3, 64, 96), (2, 3, 120, 160)]
    assert lines == ["epoch 3: whole frames from here on (the last 1 of 3 epochs)"]
    # a later crop epoch is cropped again (the transform is a function of the epoch, as resume needs)
    assert loader_shapes(batches, 1) == [(2, 3, 64, 96)]


def test_whole_frames_are_what_validation_sees_flipped_and_seeded(camvid_mixed):
    data = SemanticFolder(camvid_mixed / "val", num_classes=11, ignore_index=11)
    image, label = data[0]
    plain, distorted = WholeFrame(None, photometric=False), WholeFrame(None, photometric=True)
    flips = 0
    for seed in range(8):
        a_img, a_lab = plain(image, label, torch.Generator().manual_seed(seed))
        flipped = torch.equal(a_lab, label.flip(-1)) and not torch.equal(a_lab, label)
        flips += flipped
        assert torch.equal(a_img, image.flip(-1) if flipped else image)      # the frame itself, no crop or scale
        b_img, b_lab = distorted(image, label, torch.Generator().manual_seed(seed))
        assert torch.equal(a_lab, b_lab)                                      # photometric leaves the geometry
        again, _ = distorted(image, label, torch.Generator().manual_seed(seed))
        assert torch.equal(b_img, again)                                      # seeded: the same draw twice
    assert 0 < flips < 8
    changed = sum(not torch.equal(plain(image, label, torch.Generator().manual_seed(s))[0],
                                  distorted(image, label, torch.Generator().manual_seed(s))[0]) for s in range(8))
    assert changed >= 6                                                       # applied (all steps skipped: p 1/16)
    sized, sized_label = WholeFrame((64, 2048))(image, label, torch.Generator().manual_seed(0))
    assert sized.shape == (3, 64, 96) and sized_label.shape == (64, 96)      # at --eval-size, label to match


def test_segment_train_by_sequence_logs_the_split_and_eval_reproduces_it(camvid_mixed, tmp_path):
    out = tmp_path / "run"
    result = run([sys.executable, "-m", "repvit", "segment", "train", "-c", str(camvid_mixed / "tiny.yaml"),
                  "--data", str(camvid_mixed), "--output", str(out), *SEG, "--epochs", "1",   # 2 steps of 2 frames
                  "--val-split", "sequence:0006R0"])
    assert result.returncode == 0, result.stderr[-2000:]
    log = (out / "train.log").read_text()
    assert ("split --val-split sequence:0006R0: train 4 frames (0001TP 1, 0016E5 3); val 2 frames (0006R0 2); "
            "by-sequence: no val sequence has a frame in train") in log
    assert "4 training images, 2 steps per epoch" in log
    rows = epoch_rows(out)
    report = tmp_path / "eval.json"
    assert main(["segment", "eval", "--checkpoint", str(out / "best.pth"), "--data", str(camvid_mixed),
                 "--val-split", "sequence:0006R0", "--report", str(report), "--device", "cpu", "--quiet"]) == 0
    scored = json.loads(report.read_text())
    assert scored["images"] == 2 and scored["sequences"] == {"0006R0": 2}
    assert scored["val_split"] == "sequence:0006R0"
    assert scored["mIoU"] == pytest.approx(rows[-1]["val_mIoU"], abs=1e-6)   # the run's figure, reproduced


def test_the_camvid_configs_differ_from_the_recorded_recipe_only_where_they_say():
    from repvit.dense.options import resolve
    configs = Path(__file__).resolve().parents[1] / "configs"
    recorded = vars(resolve({"config": str(configs / "camvid-cpu.yaml")}, "segment"))
    assert (recorded["val_split"], recorded["whole_frame_epochs"]) == ("folders", 0)      # in-sequence, as recorded

    def changes(name: str) -> dict:
        cfg = vars(resolve({"config": str(configs / name)}, "segment"))
        return {k: cfg[k] for k in cfg if cfg[k] != recorded[k] and k not in ("config", "output")}

    assert changes("camvid-by-sequence.yaml") == {"val_split": "sequence:0006R0"}
    assert changes("camvid-generalize.yaml") == {"val_split": "sequence:0006R0", "photometric": True,
                                                 "cat_max_ratio": 0.75, "whole_frame_epochs": 2}
