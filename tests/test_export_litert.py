"""LiteRT: the .tflite export (float and full-integer INT8) checked with the LiteRT interpreter (XNNPACK)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="the litert extra is not installed: pip install 'repvit-pytorch[litert]'")

from repvit import create_model, reparameterize  # noqa: E402
from repvit.cli import main  # noqa: E402
from repvit.export import export_model  # noqa: E402
from repvit.export import litert as fmt_lt  # noqa: E402
from repvit.export.artifact import resolved_preprocessing  # noqa: E402
from repvit.export.verify import find_images, real_batch  # noqa: E402
from repvit.testing import randomize_batchnorm  # noqa: E402

IMG = 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = create_model("repvit_m0_6", num_classes=10, distillation=True)
    return randomize_batchnorm(m, seed=1).eval()


@pytest.fixture(scope="module")
def exported(model, tiny_imagenette, tmp_path_factory):
    out = tmp_path_factory.mktemp("litert")
    result = export_model(model, "litert", out / "m.tflite", img_size=IMG, images=tiny_imagenette / "val",
                          num_real=8, int8=True, calib_images=tiny_imagenette / "train", calib_count=20)
    return out, result


def test_float_tflite_has_the_given_name_and_matches_the_fused_model(model, exported, tiny_imagenette):
    out, result = exported
    assert sorted(p.name for p in out.iterdir()) == ["m-int8.tflite", "m.tflite"]
    assert result.passed and {r.inputs for r in result.reports} == {"random", "real"}
    for r in result.reports:
        assert r.max_abs_diff <= 1e-4 and r.max_abs_logit > 0.1
    assert result.facts["input"] == {"shape": [1, 3, IMG, IMG], "dtype": "float32"}
    real = real_batch(find_images(tiny_imagenette / "val", 40)[-3:], resolved_preprocessing(model, IMG))
    with torch.no_grad():
        np.testing.assert_allclose(fmt_lt.runner(out / "m.tflite", threads=1)(real).numpy(),
                                   reparameterize(model)(real).numpy(), atol=1e-4, rtol=0)


def test_int8_tflite_is_full_integer_and_agrees_on_real_images(model, exported, tiny_imagenette):
    out, result = exported
    facts = fmt_lt.describe(out / "m-int8.tflite")
    assert facts["input"]["dtype"] == "int8" and facts["output"]["dtype"] == "int8"
    assert facts["bytes"] < 0.5 * (out / "m.tflite").stat().st_size
    assert result.int8["calibration_images"] == 20
    real = real_batch(find_images(tiny_imagenette / "val", 40), resolved_preprocessing(model, IMG))
    with torch.no_grad():
        want = reparameterize(model)(real)
    got = fmt_lt.runner(out / "m-int8.tflite", threads=1)(real)
    assert (got.argmax(1) == want.argmax(1)).float().mean().item() >= 0.9
    assert 0 < (got - want).abs().max().item() < 0.25 * want.abs().max().item()


def test_missing_litert_is_one_line_naming_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    code = main(["export", "--model", "repvit_m0_6", "--num-classes", "10", "--format", "litert",
                 "--output", str(tmp_path / "m.tflite"), "--img-size", "32", "--num-real", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.endswith("pip install 'repvit-pytorch[litert]'"), err


def test_segmenter_tflite_float_and_int8_score_like_the_checkpoint(tmp_path, capsys):
    """`repvit segment export --format litert --int8` on CamVid frames at a fixed size, then `segment
    eval` of both files (through their .json records) against the checkpoint."""
    import json
    from repvit.segmentation.semantic_fpn import SemanticFPN, save_segmenter
    from .test_dense_cli import CAMVID
    from .test_dense_data import need
    from .test_dense_export import _camvid_subset
    torch.manual_seed(0)
    model = randomize_batchnorm(SemanticFPN("repvit_m0_6", num_classes=11)).eval()
    ckpt = save_segmenter(model, tmp_path / "seg.pth", class_names=CAMVID, ignore_index=11)
    report = tmp_path / "r.json"
    assert main(["segment", "export", "--checkpoint", str(ckpt), "--format", "litert", "--output",
                 str(tmp_path / "m.tflite"), "--images", str(need("camvid") / "val" / "images"), "--int8",
                 "--calib-images", str(need("camvid") / "train" / "images"), "--calib-count", "4",
                 "--report", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["max_abs_diff"] <= 1e-3 and result["image_sizes"][0] == [360, 480]
    # int8 weights: about a quarter of the float file (the converter keeps this graph's input float32,
    # unlike the classifier's)
    assert result["int8"]["pixel_agreement"] >= 0.9
    assert (tmp_path / "m-int8.tflite").stat().st_size < 0.4 * (tmp_path / "m.tflite").stat().st_size
    data = _camvid_subset(tmp_path / "val", 2)
    scores = {}
    for name, path in (("pytorch", ckpt), ("float", tmp_path / "m.tflite"), ("int8", tmp_path / "m-int8.tflite")):
        out = tmp_path / f"{name}.json"
        assert main(["segment", "eval", "--checkpoint", str(path), "--data", str(data), "--report", str(out)]) == 0
        scores[name] = json.loads(out.read_text())
    assert scores["float"]["runtime"] == "LiteRT" and scores["int8"]["precision"] == "int8"
    assert abs(scores["float"]["mIoU"] - scores["pytorch"]["mIoU"]) < 1e-3
    assert abs(scores["int8"]["aAcc"] - scores["pytorch"]["aAcc"]) < 0.1
    (tmp_path / "m.json").unlink()
    capsys.readouterr()
    assert main(["segment", "eval", "--checkpoint", str(tmp_path / "m.tflite"), "--data", str(data)]) == 2
    assert "its record m.json is missing" in capsys.readouterr().err


def test_nearest_resizes_at_uneven_ratios_convert_exactly(tmp_path):
    """An FPN's top-down resize on a frame whose sides are not multiples of 32 (12x15 -> 23x30): the
    converter's own kernel picks other source pixels for a quarter of the outputs; ours are PyTorch's."""
    import torch.nn.functional as F

    class TopDown(torch.nn.Module):
        def forward(self, x):
            return F.interpolate(x, size=(23, 30), mode="nearest") + F.interpolate(x, size=(24, 30), mode="nearest")[
                ..., :23, :]

    x = torch.randn(1, 3, 12, 15)
    fmt_lt.export_litert(TopDown().eval(), tmp_path / "up.tflite", img_size=(12, 15))
    assert torch.equal(fmt_lt.runner(tmp_path / "up.tflite")(x), TopDown()(x))
    assert fmt_lt._nearest_index(12, 23).tolist() == F.interpolate(
        torch.arange(12.0).view(1, 1, 12, 1), size=(23, 1), mode="nearest").flatten().long().tolist()
