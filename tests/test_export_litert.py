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
