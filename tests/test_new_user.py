"""What a new user met (issue 27, part 4), each case as the user ran it: a corrupt image among good
ones, a box outside the photo, an exported file given as --checkpoint, --threads and progress where
they were missing, --report that replaced a file, a warm-up log line, the decoder's first call timed
as the decoder, and the small words. Every model here has random weights and is built small."""
from __future__ import annotations

import json
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repvit.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def photo(path: Path, size=(160, 120), seed: int = 0) -> Path:
    """A random photo (JPEG or PNG by the suffix)."""
    pixels = (np.random.RandomState(seed).rand(size[1], size[0], 3) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def corrupt(path: Path) -> Path:
    """A JPEG cut after its first 300 bytes: the header opens, the pixels do not decode."""
    full = photo(path.with_name("whole-" + path.name), seed=7).read_bytes()
    path.write_bytes(full[:300])
    return path


# --------------------------------------------------------------------------- corrupt images among good ones
@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A self-describing file of each kind a predict command reads, random weights, three classes."""
    from repvit.detection.detectors import build_detector, save_detector
    from repvit.models.checkpoint import save_checkpoint
    from repvit.models.factory import create_model
    from repvit.segmentation.semantic_fpn import SemanticFPN, save_segmenter
    root = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    detector = build_detector("fasterrcnn", "repvit_m0_6", num_classes=4, min_size=96, max_size=128)
    save_detector(detector, root / "det.pth", class_names=names, category_ids=[1, 2, 3])
    save_segmenter(SemanticFPN("repvit_m0_6", num_classes=3), root / "seg.pth", class_names=names, ignore_index=255)
    save_checkpoint(create_model("repvit_m0_6", num_classes=3).eval(), root / "cls.pth", class_names=names)
    return root


@pytest.fixture
def images(tmp_path):
    """good-1.jpg, broken.jpg, good-2.jpg: the broken one in the middle, so a command that stops at it
    leaves good-2 undrawn."""
    folder = tmp_path / "in"
    folder.mkdir()
    return [photo(folder / "good-1.jpg", seed=1), corrupt(folder / "broken.jpg"), photo(folder / "good-2.jpg", seed=2)]


PREDICT = {"detect": (["detect", "predict"], "det.pth", ["good-1.png", "good-2.png"]),
           "segment": (["segment", "predict"], "seg.pth", ["good-1.png", "good-1_classes.png", "good-2.png",
                                                             "good-2_classes.png"]),
           "classify": (["predict"], "cls.pth", [])}


@pytest.mark.parametrize("command", list(PREDICT))
def test_a_corrupt_image_is_named_before_any_is_used_or_skipped_with_skip_bad(command, weights, images, tmp_path,
                                                                              capsys):
    words, checkpoint, drawn = PREDICT[command]
    out = tmp_path / "out"
    argv = [*words, *map(str, images), "--checkpoint", str(weights / checkpoint), "--threads", "1"]
    argv += ["-o", str(out)] if drawn else ["--json"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1 bad input (1 unreadable image)" in err and str(images[1]) in err and "--skip-bad" in err
    assert "Traceback" not in err and not out.exists()      # refused before the first image was drawn

    assert main(argv + ["--skip-bad"]) == 0
    captured = capsys.readouterr()
    assert f"skipped 1 bad input in the images given:\n  unreadable image: 1 ({images[1]})" in captured.err
    if drawn:
        assert sorted(p.name for p in out.iterdir()) == drawn    # the good image after the bad one is drawn too
    else:
        assert [r["image"] for r in json.loads(captured.out)] == [str(images[0]), str(images[2])]


# --------------------------------------------------------------------------- a box outside the photo
def test_a_box_outside_the_photo_is_refused_as_a_point_outside_is(tmp_path, capsys):
    pytest.importorskip("segment_anything")
    picture = photo(tmp_path / "photo.jpg", size=(640, 480))
    out = tmp_path / "out"
    for prompt, words in ((["--point", "700,500"], "point (700.0, 500.0) lies outside the 640x480 image"),
                          (["--box", "700,500,900,600"], "box (700.0, 500.0, 900.0, 600.0) reaches outside the "
                                                         "640x480 image")):
        assert main(["sam", "predict", str(picture), *prompt, "--random-weights", "-o", str(out)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"repvit sam predict: error: {words}"), lines
        assert not out.exists()


# --------------------------------------------------------------------------- an exported file as --checkpoint
def exported_file(tmp_path: Path, suffix: str) -> Path:
    if suffix == ".mlpackage":                   # a folder, as Core ML writes it
        (tmp_path / "model.mlpackage" / "Data").mkdir(parents=True)
        return tmp_path / "model.mlpackage"
    if suffix == "torchscript":
        path = tmp_path / "model-fused.pt"
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
        return path
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"\x08\x07\x12\x07pytorch" if suffix == ".onnx" else b"<?xml version='1.0'?><net/>")
    return path


KINDS = {".onnx": "an ONNX model", ".xml": "an OpenVINO model", ".tflite": "a LiteRT (TFLite) model",
         ".pte": "an ExecuTorch program", ".mlpackage": "a Core ML package", "torchscript": "a TorchScript program"}


@pytest.mark.parametrize("suffix", list(KINDS))
@pytest.mark.parametrize("command", ["eval", "predict", "bench"])
def test_an_exported_file_as_checkpoint_is_named_with_the_commands_that_run_it(command, suffix, tmp_path, capsys):
    path = exported_file(tmp_path, suffix)
    argv = {"eval": ["eval", "--data", str(tmp_path)],
            "predict": ["predict", str(photo(tmp_path / "p.jpg"))],
            "bench": ["bench", "--device", "cpu", "--quiet"]}[command]
    assert main([*argv, "--checkpoint", str(path), "--threads", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{str(path)!r} is {KINDS[suffix]}, an exported file, not a checkpoint" in err
    assert "repvit segment eval --checkpoint FILE" in err and "repvit sam eval --encoder FILE" in err
    assert "unpickling" not in err and "corrupt" not in err


# --------------------------------------------------------------------------- --threads, progress, --quiet
@pytest.mark.parametrize("argv", [
    ["predict", "x.jpg", "--checkpoint", "c.pth"],
    ["export", "--format", "onnx", "--model", "repvit_m0_6"],
    ["sam", "predict", "x.jpg", "--point", "1,1"],
    ["sam", "everything", "x.jpg"],
    ["sam", "eval", "--data", "d"],
    ["sam", "export"],
    ["sam", "demo"],
    ["detect", "eval", "--checkpoint", "c.pth", "--data", "d", "--quiet"],
    ["detect", "predict", "x.jpg", "--checkpoint", "c.pth"],
    ["segment", "eval", "--checkpoint", "c.pth", "--data", "d", "--quiet"],
    ["segment", "predict", "x.jpg", "--checkpoint", "c.pth"],
], ids=lambda argv: " ".join(a for a in argv[:2] if not a.endswith((".jpg", ".pth"))))
def test_threads_is_taken_where_it_was_missing(argv):
    assert build_parser().parse_args([*argv, "--threads", "1"]).threads == 1


def test_threads_is_applied_while_the_command_runs(weights, tmp_path, monkeypatch, capsys):
    import repvit.classification.eval_predict as library
    seen = []
    monkeypatch.setattr(library, "predict", lambda *a, **k: seen.append(torch.get_num_threads()) or [])
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["predict", str(photo(tmp_path / "p.jpg")), "--checkpoint", str(weights / "cls.pth"),
                     "--threads", "1"]) == 0
        assert seen == [1] and torch.get_num_threads() == 2    # set for the command, then given back
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def coco_folder(tmp_path_factory):
    """Three photos with one box each, in the images/ + annotations.json layout."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for i, n in
                                                            ((1, "a"), (2, "b"), (3, "c"))]}
    for i in range(3):
        photo(root / "images" / f"{i}.jpg", seed=i)
        coco["images"].append({"id": i + 1, "file_name": f"{i}.jpg", "width": 160, "height": 120})
        coco["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": i + 1, "bbox": [10, 20, 60, 50],
                                    "area": 3000, "iscrowd": 0})
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def test_detect_eval_shows_progress_unless_quiet(weights, coco_folder, monkeypatch, capsys):
    pytest.importorskip("pycocotools")
    import repvit.commands.detect.eval as command
    bars = []

    class Recorder:
        def __init__(self, *args, enabled=True, **kwargs):
            self.enabled, self.calls, self.closed = enabled, [], False
            bars.append(self)

        def update_to(self, done, total=None):
            self.calls.append((done, total))

        def close(self):
            self.closed = True

    monkeypatch.setattr(command, "Progress", Recorder)
    argv = ["detect", "eval", "--checkpoint", str(weights / "det.pth"), "--data", str(coco_folder), "--threads", "1"]
    assert main(argv) == 0
    assert main(argv + ["--quiet"]) == 0
    assert [b.enabled for b in bars] == [True, False] and all(b.closed for b in bars)
    assert bars[0].calls == [(2, 3), (3, 3)]               # batches of 2: after each, images done of all
    assert "3 images" in capsys.readouterr().out


# --------------------------------------------------------------------------- sam predict: --report, timing
class SlowFirstCallPredictor:
    """What ``predict_prompts`` calls on a predictor, with a decoder whose first call takes ``first_s``
    longer (the one-time set-up of a real first call): masks are the box, scores fixed."""

    def __init__(self, first_s: float):
        from segment_anything.utils.transforms import ResizeLongestSide
        self.first_s, self.calls = first_s, 0
        self.transform = ResizeLongestSide(1024)
        self.device = torch.device("cpu")
        self.is_image_set = False

    def set_image(self, image):
        self.original_size = image.shape[:2]
        self.is_image_set = True

    def predict_torch(self, coords, labels, boxes, multimask_output=True):
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.first_s)
        n, k = len(boxes if boxes is not None else coords), 3 if multimask_output else 1
        masks = torch.zeros(n, k, *self.original_size, dtype=torch.bool)
        masks[..., 10:40, 20:60] = True
        return masks, torch.full((n, k), 0.5), None


@pytest.fixture
def fake_sam(monkeypatch):
    pytest.importorskip("segment_anything")
    import repvit.commands.sam.predict as command
    made = []
    monkeypatch.setattr(command, "_predictor", lambda args: made.append(SlowFirstCallPredictor(0.5)) or made[-1])
    return made


def test_sam_predict_times_the_decoders_first_call_apart(fake_sam, tmp_path, capsys):
    picture = photo(tmp_path / "photo.jpg")
    assert main(["sam", "predict", str(picture), "--box", "20,10,60,40", "--random-weights", "-o", str(tmp_path),
                 "--threads", "1"]) == 0
    record = json.loads((tmp_path / "photo_scores.json").read_text())
    assert record["decoder_first_call_seconds"] >= 0.5 > 0.25 > record["decoder_seconds"]
    assert record["threads"] == 1
    out = capsys.readouterr().out
    assert "after a first call of" in out and "(one-time set-up, not counted)" in out


def test_sam_predict_report_is_also_written(fake_sam, tmp_path):
    picture = photo(tmp_path / "photo.jpg")
    report = tmp_path / "elsewhere" / "report.json"
    assert main(["sam", "predict", str(picture), "--box", "20,10,60,40", "--random-weights", "-o",
                 str(tmp_path / "out"), "--report", str(report)]) == 0
    kept = json.loads((tmp_path / "out" / "photo_scores.json").read_text())
    assert json.loads(report.read_text()) == kept and kept["objects"][0]["mask"] == "photo_mask.png"


# --------------------------------------------------------------------------- detect train's warm-up line
def test_the_schedule_line_states_the_warm_up_the_run_uses():
    from types import SimpleNamespace
    from repvit.engine.optim import adamw_with_warmup, describe_schedule
    cfg = SimpleNamespace(lr=1e-3, weight_decay=0.0, epochs=1, warmup_iters=500, schedule="poly", power=1.0,
                          milestones=[], clip_grad=0.0, warmup_ratio=1e-3)
    line = describe_schedule(cfg, 7)
    assert line == "AdamW lr 0.001 (poly, 3 warm-up iterations (--warmup-iters 500 capped at half the run's 7))"
    optimization = adamw_with_warmup(torch.nn.Linear(2, 2), cfg, 7)
    lrs = []
    for _ in range(7):
        lrs.append(optimization.optimizer.param_groups[0]["lr"])
        optimization.optimizer.step()
        optimization.scheduler.step()
    # three steps climb from 0.1% of the lr, then poly decay from the lr: the warm-up ends where the line says
    assert lrs[0] == pytest.approx(cfg.lr * 1e-3) and lrs[0] < lrs[1] < lrs[2] < cfg.lr
    assert lrs[3] == pytest.approx(cfg.lr * (1 - 3 / 7))
    cfg.warmup_iters = 2
    assert describe_schedule(cfg, 7) == "AdamW lr 0.001 (poly, 2 warm-up iterations)"


# --------------------------------------------------------------------------- small words
def test_the_offline_weights_error_says_where_to_fetch_the_file(tmp_path, monkeypatch):
    import repvit.models.pretrained as pretrained
    from repvit.models.releases import find_release
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.delenv(pretrained.WEIGHTS_DIR_ENV, raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")
    monkeypatch.setattr(pretrained, "_download", offline)
    with pytest.raises(pretrained.WeightsUnavailableError, match="On a machine with access, fetch https://"):
        pretrained.fetch(find_release("repvit_m0_9"), progress=False)


def test_configs_and_the_help_summary_speak_todays_grammar():
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        assert " --json " not in config.read_text(), f"{config.name} uses the deprecated --json FILE: --report FILE"
    summary = build_parser().description
    for command in ("train", "eval", "predict", "export", "bench", "detect", "segment", "sam", "track"):
        assert command in summary.replace(",", " ").replace(".", " ").replace(":", " ").split(), command
