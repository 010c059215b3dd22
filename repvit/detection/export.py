"""A torchvision detector on RepViT -> TorchScript (scripted, so any image size and count), checked on real
images: the same boxes, labels and scores as the eager model, or the file is removed."""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence, Union

import torch
from torch import nn

from ..dense.export import DET_TOLERANCE
from ..dense.export import _fused as fused_copy
from ..export.verify import ParityError


def export_detector_torchscript(model: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor], *,
                                class_names: Sequence[str], category_ids: Sequence[int]) -> dict:
    """Fused torchvision detector -> TorchScript; scripted ``forward(list of images)`` returns
    ``(losses, detections)`` as torchvision's scripted detectors do."""
    fused, path = fused_copy(model), Path(path)
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


__all__ = ["export_detector_torchscript"]
