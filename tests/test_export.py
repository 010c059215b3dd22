"""ONNX and TorchScript exports: fused, self-describing, and checked against the fused PyTorch model."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from repvit import create_model, is_fused, reparameterize, save_checkpoint
from repvit.cli import main
from repvit.classification.export import export_model
from repvit.export import ParityError, artifact_path
from repvit.export import onnx as fmt_onnx
from repvit.export import torchscript as fmt_ts
from repvit.export.quantize import agreement, count_quantized
from repvit.export.verify import find_images, load_crop, real_batch
from repvit.testing import randomize_batchnorm

IMG = 64
CLASSES = [f"class_{i}" for i in range(10)]


@pytest.fixture(scope="module")
def model():
    """A distilled m0_6 with random BatchNorm statistics, so fusion changes every weight."""
    torch.manual_seed(0)
    m = create_model("repvit_m0_6", num_classes=10, distillation=True)
    randomize_batchnorm(m, seed=1)
    m.eval()
    m.class_names = list(CLASSES)
    return m


@pytest.fixture(scope="module")
def val_images(imagenette_root):
    return imagenette_root / "val"


@pytest.fixture(scope="module")
def onnx_export(model, val_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    return export_model(model, "onnx", out, img_size=IMG, images=val_images, num_real=6)


def test_onnx_export_is_fused_verified_and_dynamic(model, onnx_export):
    path = onnx_export.path
    assert path.name == "repvit_m0_6-fused.onnx" and path.is_file()
    assert not is_fused(model), "export must not fuse the caller's model"
    kinds = {r.inputs: r for r in onnx_export.reports}
    assert set(kinds) == {"random", "real"} and kinds["real"].count == 6
    for report in onnx_export.reports:
        assert report.passed and report.max_abs_diff <= 1e-4 and report.tolerance == 1e-4
        assert report.max_abs_logit > 0.1, "a meaningful comparison needs non-trivial logits"
    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "Conv" in ops
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = fmt_onnx.session(path, threads=1)
    fused = reparameterize(model)
    for batch in (1, 3):
        x = torch.randn(batch, 3, IMG, IMG)
        out = session.run(None, {"image": x.numpy()})[0]
        assert out.shape == (batch, 10)
        np.testing.assert_allclose(out, fused(x).detach().numpy(), atol=1e-4, rtol=0)


def test_onnx_metadata_records_variant_classes_preprocessing_opset(onnx_export):
    meta = fmt_onnx.read_metadata(onnx_export.path)
    proto = onnx.load(str(onnx_export.path))
    assert meta["variant"] == "repvit_m0_6" and meta["fused"] == "true" and meta["format"] == "onnx"
    assert json.loads(meta["class_names"]) == CLASSES
    pre = json.loads(meta["preprocessing"])
    assert pre["input_size"] == [3, IMG, IMG] and pre["interpolation"] == "bicubic" and len(pre["mean"]) == 3
    assert int(meta["opset"]) == onnx_export.facts["opset"] == fmt_onnx.DEFAULT_OPSET
    assert any(op.domain in ("", "ai.onnx") and op.version == int(meta["opset"]) for op in proto.opset_import)


def test_onnx_fp16_has_its_own_tolerance(model, tmp_path):
    result = export_model(model, "onnx", tmp_path / "m.onnx", img_size=IMG, fp16=True, num_real=2)
    assert result.path.name == "m.onnx"  # an explicit name is used as given
    assert fmt_onnx.read_metadata(result.path)["precision"] == "float16"
    for report in result.reports:
        assert report.passed
        assert report.tolerance > 1e-4  # relative to the logit scale, looser than float32's
    proto = onnx.load(str(result.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # float32 in/out


def test_onnx_int8_is_quantized_and_close(model, tiny_imagenette, tmp_path):
    result = export_model(model, "onnx", tmp_path, img_size=IMG, images=tiny_imagenette / "val", num_real=8,
                          int8=True, calib_images=tiny_imagenette / "train", calib_count=40)
    assert result.int8_path.name == "repvit_m0_6-fused-int8.onnx"
    nodes = count_quantized(result.int8_path)
    assert nodes["QuantizeLinear"] > 10 and nodes["DequantizeLinear"] > 10
    meta = fmt_onnx.read_metadata(result.int8_path)
    assert meta["precision"] == "int8" and json.loads(meta["quantization"])["calibration"]["images"] == 40
    assert json.loads(meta["quantization"])["weights"].startswith("int7")   # the default: no u8s8 saturation
    real = result.int8["vs_float"]["real"]
    assert real["relative_l2_error"] < 0.25 and real["cosine"] > 0.95


@pytest.mark.parametrize("weights, dtype, low, high", [("uint8", np.uint8, 0, 255), ("int8", np.int8, -127, 127),
                                                       ("int7", np.int8, -64, 64)])
def test_onnx_int8_weight_encodings(model, tmp_path, weights, dtype, low, high):
    """int7 (the default, ORT's reduce_range) and uint8 weights (neither saturates in u8s8 kernels on x86 CPUs
    without VNNI), and int8."""
    from onnx import numpy_helper
    from repvit.export.quantize import quantize_onnx
    result = export_model(model, "onnx", tmp_path / "m.onnx", img_size=IMG, num_real=0)
    calib = [torch.randn(1, 3, IMG, IMG, generator=torch.Generator().manual_seed(i)).numpy() for i in range(8)]
    path = quantize_onnx(result.path, tmp_path / f"m-{weights}.onnx", calib, weights=weights)
    proto = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    conv_weights = [inits[n.input[0]] for n in proto.graph.node
                    if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert len(conv_weights) > 10 and all(w.dtype == dtype for w in conv_weights)
    assert min(int(w.min()) for w in conv_weights) >= low and max(int(w.max()) for w in conv_weights) <= high
    if weights == "int8":   # the full int8 range is used (int7 stops at 64)
        assert max(int(np.abs(w).max()) for w in conv_weights) > 100
    assert json.loads(fmt_onnx.read_metadata(path)["quantization"])["weights"].startswith(weights)
    x = torch.randn(2, 3, IMG, IMG)
    stats = agreement(reparameterize(model)(x).detach(), fmt_onnx.runner(path, threads=1)(x))
    assert stats["cosine"] > 0.95
    with pytest.raises(ValueError, match="int7, uint8, int8"):
        quantize_onnx(result.path, tmp_path / "bad.onnx", calib, weights="int4")


def test_torchscript_export_parity_and_extra_files(model, val_images, tmp_path):
    result = export_model(model, "torchscript", tmp_path / "deploy.pt", img_size=IMG, images=val_images, num_real=4)
    assert result.path == tmp_path / "deploy.pt"
    for report in result.reports:
        assert report.passed and report.max_abs_diff <= 1e-5
    module, meta = fmt_ts.load(result.path)
    assert meta["variant"] == "repvit_m0_6" and json.loads(meta["class_names"]) == CLASSES
    assert not any("BatchNorm" in m.original_name for m in module.modules())
    x = torch.randn(3, 3, IMG, IMG)  # scripted, so any batch size works
    torch.testing.assert_close(module(x), reparameterize(model)(x), atol=1e-5, rtol=0)


def test_failed_parity_removes_artifact_and_raises(model, tmp_path, monkeypatch):
    original = fmt_ts.runner

    def broken_runner(path):
        good = original(path)
        return lambda x: good(x) + 1e-3
    monkeypatch.setattr(fmt_ts, "runner", broken_runner)
    with pytest.raises(ParityError, match="parity check failed"):
        export_model(model, "torchscript", tmp_path, img_size=IMG, num_real=1)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ParityError):
        export_model(model, "torchscript", tmp_path, img_size=IMG, num_real=1, keep_failed=True)
    assert [p.name for p in tmp_path.iterdir()] == ["repvit_m0_6-fused-UNVERIFIED.pt"]


def test_cli_export_fails_loudly_with_nonzero_exit(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fmt_ts, "runner", lambda path: (lambda x: torch.zeros(x.shape[0], 10)))
    code = main(["export", "--model", "repvit_m0_6", "--num-classes", "10", "--format", "torchscript",
                 "--output", str(tmp_path), "--img-size", "32", "--num-real", "1"])
    captured = capsys.readouterr()
    assert code == 1
    assert "EXPORT FAILED VERIFICATION" in captured.err and "FAILED" in captured.out


def test_cli_export_from_checkpoint(model, tmp_path, val_images, capsys):
    ckpt = save_checkpoint(model, tmp_path / "trained.pth", class_names=CLASSES)
    code = main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--output", str(tmp_path / "out") + "/",
                 "--img-size", str(IMG), "--images", str(val_images), "--num-real", "3",
                 "--report", str(tmp_path / "report.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "max |diff|" in out and "-> OK" in out
    path = tmp_path / "out" / "repvit_m0_6-fused.onnx"
    meta = fmt_onnx.read_metadata(path)
    assert json.loads(meta["class_names"]) == CLASSES
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and {r["inputs"] for r in report["reports"]} == {"random", "real"}


def test_default_names_say_fused_and_explicit_names_are_honoured(tmp_path):
    assert artifact_path(None, "repvit_m0_9", "onnx").name == "repvit_m0_9-fused.onnx"
    assert artifact_path(None, "repvit_m0_9", "onnx", tag="fp16").name == "repvit_m0_9-fused-fp16.onnx"
    assert artifact_path(tmp_path, "repvit_m0_9", "coreml") == tmp_path / "repvit_m0_9-fused.mlpackage"
    assert artifact_path(tmp_path / "model.pte", "repvit_m0_9", "executorch") == tmp_path / "model.pte"
    assert artifact_path(tmp_path / "m.onnx", "x", "onnx", tag="fp16") == tmp_path / "m.onnx"
    with pytest.raises(ValueError, match="unfused"):
        artifact_path(tmp_path / "m_unfused.onnx", "x", "onnx")
    with pytest.raises(ValueError, match="must end in .onnx"):
        artifact_path(tmp_path / "m.pt", "x", "onnx")


def test_real_images_are_preprocessed_as_recorded(imagenette_root):
    paths = find_images(imagenette_root / "val", 10)
    assert len({p.parent for p in paths}) == 10, "images should be spread over the classes"
    pre = {"input_size": [3, 48, 48], "crop_pct": 0.875, "interpolation": "bilinear",
           "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert load_crop(paths[0], pre).size == (48, 48)
    batch = real_batch(paths[:4], pre)
    assert batch.shape == (4, 3, 48, 48)
    assert -3 < batch.mean().item() < 3 and batch.std().item() > 0.3  # normalized, not raw pixels


def test_export_rejects_bad_requests(model):
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(model, "tflite")
    with pytest.raises(ValueError, match="INT8"):
        export_model(model, "torchscript", int8=True)
    with pytest.raises(ValueError, match="fp16"):
        export_model(model, "coreml", fp16=True)


def test_cli_torchscript_output_is_the_file_the_user_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["export", "--model", "repvit_m0_6", "--format", "torchscript", "--output", "m.pt",
                 "--img-size", str(IMG), "--num-real", "0", "--num-random", "1"])
    assert code == 0, capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]
    module, meta = fmt_ts.load(tmp_path / "m.pt")
    assert meta["fused"] == "true"
