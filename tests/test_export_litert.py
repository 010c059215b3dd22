"""LiteRT: the .tflite export (float and full-integer INT8) checked with the LiteRT interpreter (XNNPACK)."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

pytest.importorskip("litert_torch", reason="the litert extra is not installed: pip install 'repvit-pytorch[litert]'")

from repvit import create_model, reparameterize  # noqa: E402
from repvit.cli import main  # noqa: E402
from repvit.classification.export import export_model  # noqa: E402
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
    """`repvit segment export --format litert --int8 --neck-output` on CamVid frames at a fixed size, then
    `segment eval` of both segmenter files (through their .json records) against the checkpoint."""
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
                 "--neck-output", str(tmp_path / "neck.tflite"), "--report", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["max_abs_diff"] <= 1e-3 and result["image_sizes"][0] == [360, 480]
    # backbone + FPN: every pyramid level an output of the file, float within 1e-3, INT8 within the L2 limit
    neck = result["neck"]
    assert neck["max_abs_diff"] <= 1e-3 and len(neck["levels"]) == 4
    assert json.loads((tmp_path / "neck.json").read_text())["outputs"] == ["p0", "p1", "p2", "p3"]
    levels = fmt_lt.arrays_runner(tmp_path / "neck-int8.tflite")(np.zeros((1, 3, 360, 480), np.float32))
    assert [lv.shape[-2:] for lv in levels][:2] == [(90, 120), (45, 60)] and levels[0].dtype == np.float32
    assert neck["int8"]["relative_l2_error"] <= 0.25 and neck["int8"]["pixel_agreement"] is None
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


def test_sam_encoder_and_two_point_decoder_tflite_match_sam_predictor(tmp_path):
    """RepViT-SAM through LiteRT: the encoder on a real photo, and the fixed two-point decoder (one click +
    padding, one box, a click with a previous mask) upscaled like an app does, against SamPredictor."""
    pytest.importorskip("segment_anything")
    from repvit.sam import export_litert as sam_litert
    from repvit.sam.export import export_sam
    from repvit.sam.builder import sam_with_encoder
    from repvit.sam.encoder import RepViTSamEncoder
    from .conftest import SHARED_DATA, shared_data
    photo = shared_data("coco128-instances/images/val2017/000000000139.jpg",
                        path=SHARED_DATA / "coco128-instances" / "images" / "val2017" / "000000000139.jpg")
    torch.manual_seed(0)
    small = sam_with_encoder(RepViTSamEncoder("repvit_m0_6", img_size=256), img_size=256).eval()
    report = export_sam(small, tmp_path, formats="litert", images=photo, max_images=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repvit_sam_decoder.tflite", "repvit_sam_encoder.tflite"]
    enc, dec = report["formats"]["litert"]["encoder"], report["formats"]["litert"]["decoder"]
    assert enc["passed"] and enc["max_abs_diff"] <= 1e-3 and enc["largest_embedding"] > 0.1
    assert enc["input"]["shape"] == [1, 3, 256, 256]
    assert dec["passed"] and dec["point_counts"] == [2]
    assert {c["prompt"] for c in dec["cases"]} == {"one click", "box", "click with previous mask"}
    assert dec["vs_sam_predictor"]["max_abs_diff"] <= 1e-3 and all(c["mask_pixels"] > 0 for c in dec["cases"])
    # another point count is refused with what to use instead, not answered wrongly
    run = sam_litert.decoder_runner(tmp_path / "repvit_sam_decoder.tflite", small)
    feed = {"image_embeddings": np.zeros((1, 256, 16, 16), np.float32),
            "point_coords": np.zeros((1, 3, 2), np.float32), "point_labels": np.ones((1, 3), np.float32),
            "mask_input": np.zeros((1, 1, 64, 64), np.float32), "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([426.0, 640.0], np.float32)}
    with pytest.raises(ValueError, match="exactly 2 prompt points.*ONNX or OpenVINO"):
        run(feed)


def test_bench_rows_for_litert_float_and_int8(tiny_imagenette):
    import json
    from repvit.runtime.bench import cpu_latency, installed_runtimes
    assert {"litert", "litert-int8"} <= set(installed_runtimes())
    report = cpu_latency(["repvit_m0_6"], runtimes=["eager-fused", "litert", "litert-int8"], img_size=IMG,
                         warmup=1, rounds=2, iters=2, threads=1, calib_images=tiny_imagenette / "train",
                         calib_count=10)
    rows = [(r.runtime, r.dtype, r.memory_format) for r in report.results]
    assert rows == [("eager", "float32", "NCHW"), ("litert", "float32", "NHWC (XNNPACK)"),
                    ("litert-int8", "int8 (full integer, PT2E)", "NHWC (XNNPACK)")]
    data = json.loads(json.dumps(report.as_dict()))
    assert all(row["median_ms"] > 0 and row["samples"] == 4 and row["threads"] == 1 for row in data["results"])
    assert "10 images" in data["results"][2]["note"]
    # a .tflite file has batch 1: a throughput batch leaves LiteRT out rather than timing something else
    batched = cpu_latency(["repvit_m0_6"], runtimes=["eager-fused", "litert"], img_size=IMG, batch=2,
                          warmup=1, rounds=1, iters=1, threads=1)
    assert [r.runtime for r in batched.results] == ["eager"]


def test_dense_bench_times_the_neck_through_litert_after_checking_it():
    from repvit.runtime.module_bench import dense_subjects, module_latency
    report = module_latency(dense_subjects(["repvit_m0_6"]), task="dense", img_size=64, threads=1,
                            runtimes=["eager-fused", "litert", "litert-int8"], warmup=1, rounds=1, iters=2)
    rows = [("eager", "float32"), ("litert", "float32"), ("litert-int8", "int8 (full integer, PT2E)")]
    assert [(r.model, r.runtime, r.dtype) for r in report.results] == (
        [("repvit_m0_6 + FPN", *row) for row in rows] + [("mobilenet_v3_large + FPN", *row) for row in rows])


def test_optimize_for_inference_offers_litert_and_it_is_faithful(model, monkeypatch):
    from repvit.runtime import optimize as opt
    stub = {"eager": 3.0, "litert": 1.0}
    monkeypatch.setattr(opt, "time_interleaved", lambda candidates, **_: {k: [stub[k]] * 3 for k in candidates})
    best = opt.optimize_for_inference(model, "cpu", img_size=IMG, threads=1, candidates=["eager", "litert"])
    assert best.report["chosen"] == "litert" and best.path == "fused+litert"
    assert best.report["candidates"]["litert"]["max_abs_diff"] <= 1e-4
    x = torch.randn(3, 3, IMG, IMG)   # a batch of 3 through a batch-1 file: one image at a time
    with torch.no_grad():
        torch.testing.assert_close(best(x), reparameterize(model)(x), atol=1e-4, rtol=0)
    built = []
    monkeypatch.setattr(opt, "_cpu_candidate", lambda kind, fused, *_: (built.append(kind), (fused, False))[1])
    opt.optimize_for_inference(model, "cpu", img_size=IMG, measure=False)
    assert "litert" in built
    built.clear()
    monkeypatch.setattr(opt, "_has_litert", lambda: False)
    opt.optimize_for_inference(model, "cpu", img_size=IMG, measure=False)
    assert built and "litert" not in built


class _Gated(torch.nn.Module):
    """A convolution and a squeeze-and-excitation gate: the feature map times sigmoid(pooled 1x1 conv)."""

    def __init__(self):
        super().__init__()
        self.conv, self.gate = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        return y * torch.sigmoid(self.gate(y.mean((2, 3), keepdim=True)))


def _mul_input_dtypes(path) -> set:
    interp = fmt_lt.interpreter(path, 1)
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    return {dtypes[i] for op in interp._get_ops_details() if op["op_name"] == "MUL" for i in op["inputs"]}


def test_int8_files_keep_the_gate_multiplication_in_float(tmp_path, monkeypatch):
    """FLOAT_OPS: the SE multiplication runs on float32 tensors in an INT8 file (quantizing its product cost
    CamVid most of LiteRT's INT8 loss); the rest is integer. Without the exception it is int8."""
    torch.manual_seed(0)
    model = _Gated().eval()
    calibration = [torch.rand(1, 3, 16, 16).numpy() for _ in range(4)]
    path = fmt_lt.export_litert(model, tmp_path / "g.tflite", img_size=16, calibration=calibration)
    assert _mul_input_dtypes(path) == {"float32"}
    assert fmt_lt.describe(path)["input"]["dtype"] == "int8"
    monkeypatch.setattr(fmt_lt, "FLOAT_OPS", ())
    path = fmt_lt.export_litert(model, tmp_path / "all.tflite", img_size=16, calibration=calibration)
    assert _mul_input_dtypes(path) == {"int8"}
