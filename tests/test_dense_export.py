"""Dense exports with parity on real images: Semantic FPN and backbone + FPN to ONNX (dynamic sizes,
ONNX Runtime), a Mask R-CNN to TorchScript; from the library and from the command line."""
from __future__ import annotations

import json

import pytest
import torch

from repvit.cli import main
from repvit.detection.detectors import build_detector, save_detector
from repvit.export.dense import export_segmenter_onnx
from repvit.export.verify import ParityError
from repvit.segmentation.semantic_fpn import SemanticFPN, save_segmenter
from repvit.testing import randomize_batchnorm

from .test_dense_cli import CAMVID
from .test_dense_data import need

pytest.importorskip("onnxruntime", reason="ONNX export checks need the onnx extra: pip install 'repvit-pytorch[onnx]'")


def test_cli_segment_export_onnx_dynamic_sizes_and_neck(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(SemanticFPN("repvit_m0_6", num_classes=11)).eval()
    path = save_segmenter(model, tmp_path / "seg.pth", class_names=CAMVID, ignore_index=11)
    report = tmp_path / "r.json"
    assert main(["segment", "export", "--checkpoint", str(path), "--output", str(tmp_path / "m.onnx"),
                 "--neck-output", str(tmp_path / "neck.onnx"), "--images", str(need("camvid") / "val" / "images"),
                 "--report", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["passed"] and result["max_abs_diff"] <= 1e-3 and result["neck"]["passed"]
    assert [360, 480] in result["image_sizes"] and [240, 360] in result["image_sizes"]   # two sizes, one not /32
    import onnx
    proto = onnx.load(str(tmp_path / "m.onnx"))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert all(d.dim_param for d in dims[2:])                          # height and width are symbolic
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["class_names"]) == CAMVID and not any(n.op_type == "BatchNormalization"
                                                                  for n in proto.graph.node)


def test_cli_detect_export_torchscript_on_real_images(tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(build_detector("maskrcnn", "repvit_m0_6", num_classes=4, min_size=256, max_size=320))
    path = save_detector(model, tmp_path / "det.pth", class_names=["date", "fig", "hazelnut"], category_ids=[1, 2, 3])
    assert main(["detect", "export", "--checkpoint", str(path), "--output", str(tmp_path / "det.pt"),
                 "--images", str(need("fruit") / "images"), "--num-real", "2"]) == 0
    extra = {"repvit.json": ""}
    scripted = torch.jit.load(str(tmp_path / "det.pt"), _extra_files=extra)
    assert json.loads(extra["repvit.json"])["class_names"] == ["date", "fig", "hazelnut"]
    with torch.no_grad():
        _, detections = scripted([torch.rand(3, 200, 300)])
    assert {"boxes", "labels", "scores", "masks"} <= set(detections[0])


def test_a_broken_export_is_removed_and_raises(tmp_path, monkeypatch):
    from repvit.export import dense
    model = randomize_batchnorm(SemanticFPN("repvit_m0_6", num_classes=3)).eval()
    monkeypatch.setattr(dense, "SEG_TOLERANCE", -1.0)          # nothing can pass
    with pytest.raises(ParityError, match="was removed"):
        export_segmenter_onnx(model, tmp_path / "m.onnx", [torch.rand(3, 96, 128)], class_names=["a", "b", "c"])
    assert not (tmp_path / "m.onnx").exists()
