"""``repvit eval`` and ``repvit predict`` on a freshly trained checkpoint and real images."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import repvit
from repvit.cli import main as cli
from repvit.classification.eval_predict import evaluate_checkpoint, predict


@pytest.fixture(scope="module")
def run_dir(tiny_imagenette, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    rc = cli(["train", "--data", str(tiny_imagenette), "--output", str(out), "--model", "repvit_m0_6",
              "--img-size", "32", "--batch-size", "16", "--epochs", "1", "--warmup-epochs", "0", "--workers", "0",
              "--lr", "1e-3", "--no-tensorboard", "--no-model-ema", "--aug-repeats", "0", "--mixup", "0",
              "--cutmix", "0", "--threads", "1"])
    assert rc == 0
    return out


def test_eval_json_matches_the_training_validation(run_dir, tiny_imagenette, tmp_path, capsys):
    report = tmp_path / "eval.json"
    assert cli(["eval", "--checkpoint", str(run_dir / "best.pth"), "--data", str(tiny_imagenette), "--report",
                str(report), "--workers", "0"]) == 0
    result = json.loads(report.read_text())
    assert result["images"] == 40 and result["classes"] == 10 and result["fused"] is True
    assert result["data"].endswith("val") and result["img_size"] == 32
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    # The fused model on the same images gives the unfused training-time numbers (top-1 in percent).
    assert result["top1"] == pytest.approx(row["val_top1"])
    assert result["loss"] == pytest.approx(row["val_loss"], rel=1e-4)
    assert 0 <= result["top1"] <= result["top5"] <= 100
    assert f"top-1 {result['top1']:.2f}%" in capsys.readouterr().out
    # A folder of class folders works as well as a root holding val/.
    direct = evaluate_checkpoint(run_dir / "best.pth", tiny_imagenette / "val", workers=0, log=lambda *_: None)
    assert direct["top1"] == result["top1"] and direct["images"] == 40


def test_eval_counts_correct_predictions(run_dir, tiny_imagenette, tmp_path):
    """Top-1 is the share of images whose arg-max is their folder's class, checked by hand."""
    model = repvit.reparameterize(repvit.create_model(checkpoint=run_dir / "best.pth"))
    from repvit.classification.data import eval_transform, load_rgb
    transform = eval_transform(model.preprocessing)
    hits = total = 0
    for index, name in enumerate(model.class_names):
        for image in sorted((tiny_imagenette / "val" / name).iterdir()):
            with torch.no_grad():
                hits += int(model(transform(load_rgb(image))[None]).argmax(1).item() == index)
            total += 1
    result = evaluate_checkpoint(run_dir / "best.pth", tiny_imagenette, workers=0, log=lambda *_: None)
    assert result["top1"] == pytest.approx(100.0 * hits / total)


def test_eval_rejects_unknown_classes(run_dir, tiny_imagenette, tmp_path, capsys):
    data = tmp_path / "other"
    shutil.copytree(tiny_imagenette / "val" / sorted(p.name for p in (tiny_imagenette / "val").iterdir())[0],
                    data / "not_a_class")
    assert cli(["eval", "--checkpoint", str(run_dir / "best.pth"), "--data", str(data), "--workers", "0"]) == 2
    assert "class folders the model does not know: not_a_class" in capsys.readouterr().err


def test_predict_prints_top5_names_and_probabilities(run_dir, tiny_imagenette, capsys):
    images = sorted((tiny_imagenette / "val").rglob("*.JPEG"))[:3]
    assert cli(["predict", "--checkpoint", str(run_dir / "best.pth"), *map(str, images)]) == 0
    out = capsys.readouterr().out
    results = predict(run_dir / "best.pth", images, device="cpu")
    assert all(str(image) in out for image in images)
    # Imagenette folders are ImageNet WordNet ids; the printout adds the readable name.
    best = results[0]["top"][0]
    assert best["label"] and f"{best['class']}  ({best['label']})" in out
    names = sorted(p.name for p in (tiny_imagenette / "train").iterdir())
    model = repvit.reparameterize(repvit.create_model(checkpoint=run_dir / "best.pth"))
    from repvit.classification.data import eval_transform, load_rgb
    for image, result in zip(images, results):
        top = result["top"]
        assert len(top) == 5 and all(t["class"] in names for t in top)
        probs = [t["probability"] for t in top]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        with torch.no_grad():
            expected = model(eval_transform(model.preprocessing)(load_rgb(image))[None]).softmax(1)[0]
        assert top[0]["index"] == int(expected.argmax()) and top[0]["probability"] == pytest.approx(
            float(expected.max()), rel=1e-5)


def test_predict_names_an_unreadable_image(run_dir, tmp_path, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not really a jpeg")
    assert cli(["predict", "--checkpoint", str(run_dir / "best.pth"), str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err
