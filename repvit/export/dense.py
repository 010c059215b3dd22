"""Exporting dense models with parity checks on real images.

* Semantic FPN -> ONNX with dynamic batch, height and width; checked with ONNX Runtime at two
  image sizes against the fused PyTorch model.
* Backbone + FPN -> ONNX (one output per pyramid level, dynamic sizes), checked the same way.
* Both also -> OpenVINO IR (``.xml`` + ``.bin``, same dynamic sizes and outputs), checked with
  OpenVINO's CPU plugin in float32 the same way.
* A torchvision detector -> TorchScript (scripted, so any image size and count), checked on real
  images: the same boxes, labels and scores.

Every export is of the fused model; a failed check removes the file (both files of an IR) and raises
``ParityError``.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from torch import nn

from ..models.reparam import is_fused, reparameterize
from .onnx import DEFAULT_OPSET, save_with_metadata, session
from .verify import ParityError

SEG_TOLERANCE = 1e-3        # max |logit difference| for float32 ONNX Runtime vs PyTorch
DET_TOLERANCE = 1e-3        # max |box coordinate or score difference| for TorchScript vs eager


class _LevelsAsTuple(nn.Module):
    """ONNX graphs return a flat list of outputs, not an ordered dict."""

    def __init__(self, neck: nn.Module):
        super().__init__()
        self.neck = neck

    def forward(self, x: torch.Tensor):
        return tuple(self.neck(x).values())


def _fused(model: nn.Module) -> nn.Module:
    model = model.eval()
    return model if is_fused(model) else reparameterize(model)


def _export_dynamic_onnx(module: nn.Module, path: Path, output_names: list[str], metadata: dict, opset: int) -> None:
    import onnx
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, 3, 256, 320)
    dims = _dynamic_dims()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=True, verbose=False, external_data=False,
                          input_names=["image"], output_names=output_names, opset_version=opset,
                          dynamic_shapes=(dims,))
    save_with_metadata(onnx.load(str(path)), path, metadata)


def _check_onnx(reference: nn.Module, path: Path, images: Sequence[torch.Tensor], tolerance: float) -> dict:
    sess = session(path)
    name = sess.get_inputs()[0].name
    return _check(reference, lambda x: sess.run(None, {name: x}), images, tolerance, path, "ONNX Runtime",
                  lambda: path.unlink(missing_ok=True))


def _check_openvino(reference: nn.Module, path: Path, images: Sequence[torch.Tensor], tolerance: float) -> dict:
    from . import openvino as fmt_ov
    return _check(reference, fmt_ov.array_runner(path), images, tolerance, path, "OpenVINO",
                  lambda: fmt_ov.remove(path))


def _check(reference: nn.Module, run, images: Sequence[torch.Tensor], tolerance: float, path: Path, engine: str,
           remove) -> dict:
    """Largest difference over every output of ``run`` (arrays in, list of arrays out) vs ``reference``."""
    worst = 0.0
    shapes = []
    with torch.no_grad():
        for image in images:
            want = reference(image[None])
            want = list(want.values()) if isinstance(want, dict) else [want]
            got = run(image[None].float().contiguous().numpy())
            if len(got) != len(want):
                worst = float("inf")
            for w, g in zip(want, got):
                g = torch.from_numpy(np.asarray(g))
                worst = max(worst, (w - g).abs().max().item() if g.shape == w.shape else float("inf"))
            shapes.append(list(image.shape[-2:]))
    report = {"max_abs_diff": worst, "tolerance": tolerance, "image_sizes": shapes, "passed": worst <= tolerance}
    if not report["passed"]:
        remove()
        raise ParityError(f"{engine} differs from PyTorch by {worst:.3g} (> {tolerance:g}) on real images "
                          f"{shapes}; {path} was removed")
    return report


def export_segmenter_onnx(model: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor], *,
                          class_names: Sequence[str], opset: int = DEFAULT_OPSET) -> dict:
    """Fused Semantic FPN -> ONNX (input ``image`` float 0..1 NCHW of any size, output ``logits`` at that size)."""
    fused, path = _fused(model), Path(path)
    meta = {"producer": "repvit", "task": "segmentation", "class_names": list(class_names),
            "config": getattr(model, "repvit_config", {}), "input": "float32 RGB in 0..1, NCHW, any size"}
    _export_dynamic_onnx(fused, path, ["logits"], meta, opset)
    return {"path": str(path), **_check_onnx(fused, path, images, SEG_TOLERANCE)}


def export_neck_onnx(neck: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor], *,
                     opset: int = DEFAULT_OPSET) -> dict:
    """Fused backbone + FPN -> ONNX with one output per pyramid level (``p0`` ... finest first)."""
    fused, path = _fused(neck), Path(path)
    with torch.no_grad():
        levels = list(fused(torch.rand(1, 3, 128, 128)))
    _export_dynamic_onnx(_LevelsAsTuple(fused), path, [f"p{i}" for i in range(len(levels))],
                         {"producer": "repvit", "task": "backbone+fpn", "levels": levels}, opset)
    return {"path": str(path), **_check_onnx(fused, path, images, SEG_TOLERANCE)}


def _dynamic_dims() -> dict:
    return {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=64, max=4096),
            3: torch.export.Dim("width", min=64, max=4096)}


def _export_dynamic_openvino(module: nn.Module, path: Path, output_names: list[str], metadata: dict, what: str) -> None:
    from . import openvino as fmt_ov
    if path.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is named .xml (its weights go beside it as .bin), got {str(path)!r}")
    model = fmt_ov.convert(module, (torch.rand(2, 3, 256, 320),), (_dynamic_dims(),), output_names=output_names,
                           what=what, instead="the ONNX export (repvit segment export --format onnx)")
    fmt_ov.save(model, path, metadata)


def export_segmenter_openvino(model: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor], *,
                              class_names: Sequence[str]) -> dict:
    """Fused Semantic FPN -> OpenVINO IR with the ONNX export's input, output and dynamic sizes."""
    fused, path = _fused(model), Path(path)
    meta = {"producer": "repvit", "task": "segmentation", "class_names": list(class_names),
            "config": getattr(model, "repvit_config", {}), "input": "float32 RGB in 0..1, NCHW, any size"}
    _export_dynamic_openvino(fused, path, ["logits"], meta, "Semantic FPN")
    return {"path": str(path), **_check_openvino(fused, path, images, SEG_TOLERANCE)}


def export_neck_openvino(neck: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor]) -> dict:
    """Fused backbone + FPN -> OpenVINO IR, one output per pyramid level (``p0`` ... finest first)."""
    fused, path = _fused(neck), Path(path)
    with torch.no_grad():
        levels = list(fused(torch.rand(1, 3, 128, 128)))
    _export_dynamic_openvino(_LevelsAsTuple(fused), path, [f"p{i}" for i in range(len(levels))],
                             {"producer": "repvit", "task": "backbone+fpn", "levels": levels}, "backbone + FPN")
    return {"path": str(path), **_check_openvino(fused, path, images, SEG_TOLERANCE)}


def export_detector_torchscript(model: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor], *,
                                class_names: Sequence[str], category_ids: Sequence[int]) -> dict:
    """Fused torchvision detector -> TorchScript; scripted ``forward(list of images)`` returns
    ``(losses, detections)`` as torchvision's scripted detectors do."""
    fused, path = _fused(model), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"producer": "repvit", "task": "detection", "class_names": list(class_names),
            "category_ids": list(category_ids), "config": getattr(model, "repvit_config", {}),
            "input": "list of float32 RGB images in 0..1, CHW, any size"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(fused)
        torch.jit.save(scripted, str(path), _extra_files={"repvit.json": json.dumps(meta)})
        loaded = torch.jit.load(str(path))
    worst, counts = 0.0, []
    with torch.no_grad():
        for image in images:
            # torchvision's transform resizes with slightly different arithmetic when scripted, so the
            # check feeds each image at the size the model would resize it to: both then see the same pixels.
            size = fused.transform([image])[0].image_sizes[0]
            image = torch.nn.functional.interpolate(image[None], size=list(size), mode="bilinear",
                                                    align_corners=False)[0]
            want = fused([image])[0]
            got = loaded([image])[1][0]
            if not torch.equal(want["labels"], got["labels"]):
                worst = float("inf")
                break
            counts.append(len(want["boxes"]))
            worst = max(worst, (want["boxes"] - got["boxes"]).abs().max().item() if len(want["boxes"]) else 0.0,
                        (want["scores"] - got["scores"]).abs().max().item() if len(want["scores"]) else 0.0)
    report = {"path": str(path), "max_abs_diff": worst, "tolerance": DET_TOLERANCE, "detections": counts,
              "passed": worst <= DET_TOLERANCE}
    if not report["passed"]:
        path.unlink(missing_ok=True)
        raise ParityError(f"the scripted detector differs from the eager one by {worst:.3g} (> {DET_TOLERANCE:g}); "
                          f"{path} was removed")
    return report
