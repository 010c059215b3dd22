"""Core ML and ExecuTorch exports (optional extras: skipped, with the reason, when not installed)."""
from __future__ import annotations

import json

import pytest
import torch

from repvit import create_model, reparameterize
from repvit.export import coreml as fmt_cm
from repvit.export import executorch as fmt_et
from repvit.classification.export import export_model
from repvit.testing import random_eval_model

IMG = 64


@pytest.fixture(scope="module")
def model():
    return random_eval_model("repvit_m0_6", bn_seed=2, num_classes=10, distillation=True)


def test_normalization_wrapper_equals_normalize_then_model(model):
    fused = reparameterize(model)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    wrapper = fmt_cm.NormalizedInput(fused, mean, std).eval()
    pixels = torch.rand(2, 3, IMG, IMG)
    normalized = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(wrapper(pixels), fused(normalized), atol=1e-5, rtol=0)


@pytest.mark.skipif(not fmt_cm.available(), reason="coremltools is not installed (pip install 'repvit-pytorch[coreml]')")
def test_coreml_image_input_with_normalization_inside(model, imagenette_root, tmp_path):
    result = export_model(model, "coreml", tmp_path, img_size=IMG, images=imagenette_root / "val", num_real=2)
    assert result.path.name == "repvit_m0_6-fused.mlpackage" and result.path.is_dir()
    assert result.facts["type"] == "mlProgram"
    assert result.facts["inputs"] == [{"name": "image", "kind": "image", "width": IMG, "height": IMG, "color": "RGB"}]
    assert result.facts["outputs"] == [{"name": "logits", "shape": [1, 10]}]
    assert all(r.passed for r in result.reports)
    meta = fmt_cm.read_metadata(result.path)
    assert meta["variant"] == "repvit_m0_6" and meta["fused"] == "true"
    assert meta["input_type"] == "image" and meta["normalization"] == "inside the model"
    assert json.loads(meta["preprocessing"])["input_size"] == [3, IMG, IMG]
    if not fmt_cm.can_predict():
        assert any("macOS" in note for note in result.notes)


@pytest.mark.skipif(not fmt_cm.available(), reason="coremltools is not installed (pip install 'repvit-pytorch[coreml]')")
def test_coreml_tensor_input_spec(model, tmp_path):
    result = export_model(model, "coreml", tmp_path, img_size=32, num_real=0, coreml_input="tensor",
                          coreml_precision="float32")
    assert result.facts["inputs"][0]["shape"] == [1, 3, 32, 32]
    meta = fmt_cm.read_metadata(result.path)
    assert meta["normalization"] == "by the caller" and meta["compute_precision"] == "float32"


@pytest.mark.skipif(not fmt_et.available(), reason="executorch is not installed (pip install 'repvit-pytorch[executorch]')")
def test_executorch_float_and_int8_programs_run_in_executorch_runtime(model, imagenette_root, tmp_path):
    """The float program (whole graph delegated to XNNPACK, parity 1e-4) and ``--int8``'s XNNPACK-quantizer
    program (every op inside the delegate, int8 weights: a third of the bytes or less), its predictions
    checked against the float model on real images. One export serves both (lowering is slow)."""
    result = export_model(model, "executorch", tmp_path, img_size=IMG, images=imagenette_root / "val", num_real=6,
                          int8=True, calib_images=imagenette_root / "train", calib_count=12)
    assert result.path.name == "repvit_m0_6-fused.pte" and result.path.is_file()
    assert result.facts["delegate_calls"] >= 1 and result.facts["ops_outside_delegate"] == []
    for report in result.reports:
        assert report.passed and report.max_abs_diff <= 1e-4
    meta = fmt_et.read_metadata(result.path)
    assert meta["variant"] == "repvit_m0_6" and meta["delegate"] == "XNNPACK" and meta["batch_size"] == "1"
    assert result.int8_path == tmp_path / "repvit_m0_6-fused-int8.pte" and result.int8_path.is_file()
    assert result.int8["nodes"]["delegate_calls"] >= 1 and result.int8["nodes"]["ops_outside_delegate"] == []
    assert result.int8_path.stat().st_size < 0.4 * result.path.stat().st_size, "weights should be int8"
    meta = fmt_et.read_metadata(result.int8_path)
    assert meta["precision"].startswith("int8") and meta["variant"] == "repvit_m0_6"
    real = result.int8["vs_float"]["real"]
    assert real["top1_agreement"] >= 0.75 and 0 < real["relative_l2_error"] < 0.25   # quantized, yet close
    x = torch.randn(2, 3, IMG, IMG)
    int8_out, float_out = fmt_et.runner(result.int8_path)(x), fmt_et.runner(result.path)(x)
    assert int8_out.shape == (2, 10) and not torch.equal(int8_out, float_out)
