"""INT8 EdgeTAM graphs for the exported stream (``repvit.edgetam.export_int8``), on a 256-pixel EdgeTAM with
seeded weights that track: what is quantized, where it runs, and the masks it gives against the float graphs'."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("sam2", reason="sam2 is not installed")
pytest.importorskip("openvino", reason="the deploy extra is not installed")
pytest.importorskip("nncf", reason="the deploy extra is not installed")

from repvit.edgetam import build_video_predictor  # noqa: E402
from repvit.edgetam.export import SPEC_NAME, export_edgetam  # noqa: E402
from repvit.edgetam.export_int8 import mask_agreement, quantize_edgetam  # noqa: E402
from repvit.edgetam.onnx_predictor import OnnxTracker  # noqa: E402
from repvit.edgetam.onnx_stream import OnnxStreamingTracker  # noqa: E402

from .conftest import shared_data  # noqa: E402

BOX = (300.0, 100.0, 600.0, 400.0)   # the bed's end in the 960x540 bedroom frames


@pytest.fixture(scope="module")
def frames():
    folder = shared_data("videos/bedroom", pattern="00030.jpg")
    return [np.asarray(Image.open(folder / f"{i:05d}.jpg").convert("RGB")) for i in range(0, 60, 6)]


@pytest.fixture(scope="module")
def float_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("float")
    export_edgetam(build_video_predictor(seed=0, fused=True, image_size=256), out)
    return out


@pytest.fixture(scope="module")
def int8_dir(float_dir, frames, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "graphs"
    report = quantize_edgetam(float_dir, out, frames[:4], box=BOX, runtime="openvino", threads=1,
                              graphs=("image_encoder", "memory_attention"), source="bedroom")
    assert report["calibration"]["memory_attention_feeds"] == 3   # the tracked frames after the prompted one
    return out


@pytest.fixture(scope="module")
def int8_encoder_dir(float_dir, frames, tmp_path_factory):
    """The image encoder alone INT8 (the default)."""
    out = tmp_path_factory.mktemp("int8") / "encoder"
    quantize_edgetam(float_dir, out, frames[:4], box=BOX, runtime="openvino", threads=1, source="bedroom")
    return out


def test_the_int8_folder_replaces_only_the_chosen_graphs_and_runs_on_openvino_only(float_dir, int8_dir):
    import openvino as ov
    float_spec, spec = (json.loads((d / SPEC_NAME).read_text()) for d in (float_dir, int8_dir))
    for name in ("image_encoder", "memory_attention"):
        assert spec["files"][name] == f"edgetam_{name}_int8.xml" and name in spec["int8"]
        ops = {op.get_type_name() for op in ov.Core().read_model(str(int8_dir / spec["files"][name])).get_ops()}
        assert "FakeQuantize" in ops, name                     # quantized, not a float copy under a new name
        assert not (int8_dir / float_spec["files"][name]).exists()
    for name in ("prompt_decoder", "memory_encoder"):
        assert spec["files"][name] == float_spec["files"][name]
    convs = {op.get_friendly_name(): {i.get_source_output().get_node().get_type_name() for i in op.inputs()}
             for op in ov.Core().read_model(str(int8_dir / spec["files"]["image_encoder"])).get_ops()
             if op.get_type_name() == "Convolution"}
    kept = [name for name in convs if "/neck/" in name or "conv_s0" in name]
    assert len(kept) == 5 and not any("FakeQuantize" in convs[n] for n in kept)   # KEEP_FLOAT: neck stays float
    assert sum("FakeQuantize" in inputs for inputs in convs.values()) > 20          # the trunk's are INT8
    with pytest.raises(ValueError, match="runtime 'openvino'"):
        OnnxTracker(int8_dir, runtime="onnxruntime")
    with pytest.raises(ValueError, match="quantize the float export"):
        quantize_edgetam(int8_dir, int8_dir.parent / "again", [np.zeros((8, 8, 3), np.uint8)] * 2, box=BOX)


def test_an_int8_image_encoder_tracks_the_float_tracker_s_objects(float_dir, int8_encoder_dir, frames):
    """The INT8 stream's masks against the float stream's on frames it was not calibrated on: close (IoU), real
    (the float masks are not empty), and not the float masks themselves (the INT8 graph does run)."""
    reference = OnnxStreamingTracker(float_dir, threads=1, runtime="openvino")
    candidate = OnnxStreamingTracker(int8_encoder_dir, threads=1, runtime="openvino")
    result = mask_agreement(reference, candidate, frames[4:], BOX)
    assert result["frames"] == 5 and result["empty_reference_masks"] == 0
    assert result["mean_iou"] >= 0.8, result
    assert result["min_iou"] < 1.0, "INT8 masks equal to the float ones: the INT8 graphs did not run"


def test_quantize_edgetam_refuses_what_it_cannot_do(float_dir, tmp_path):
    frames = [np.zeros((64, 64, 3), np.uint8)] * 2
    with pytest.raises(ValueError, match="OpenVINO only"):
        quantize_edgetam(float_dir, tmp_path / "x", frames, box=BOX, runtime="onnxruntime",
                         graphs=("memory_attention",))
    with pytest.raises(ValueError, match="one or more of"):
        quantize_edgetam(float_dir, tmp_path / "x", frames, box=BOX, graphs=("prompt_decoder",))
    with pytest.raises(ValueError, match="at least 2 frames"):
        quantize_edgetam(float_dir, tmp_path / "x", frames[:1], box=BOX)
    with pytest.raises(ValueError, match="another folder"):
        quantize_edgetam(float_dir, float_dir, frames, box=BOX)
    assert not (tmp_path / "x").exists()
