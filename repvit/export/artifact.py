"""What every exported artifact shares: the fused source model, an unmistakable file name, metadata.

Exports always start from the re-parameterized model (no BatchNorm, one kernel per token
mixer, one Linear head). The file name says so (``repvit_m0_9-fused.onnx``) and so does the
metadata each format embeds, together with the variant, the class names and the exact
preprocessing the artifact expects.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from ..models.model import default_preprocessing
from ..models.reparam import is_fused, reparameterize

FORMATS = {"onnx": ".onnx", "torchscript": ".pt", "coreml": ".mlpackage", "executorch": ".pte", "openvino": ".xml",
           "litert": ".tflite"}


def fused_for_export(model: nn.Module) -> nn.Module:
    """A float32, CPU, eval-mode, fused copy of ``model``; the caller's model is never modified."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval().float().cpu()
    if not is_fused(model):
        model = reparameterize(model, inplace=True)
    if not is_fused(model):
        raise ValueError("the model still has BatchNorm or multi-branch units after reparameterize(); "
                         "only RepViT-style models with fuse() rules can be exported")
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def variant_name(model: nn.Module) -> str:
    variant = getattr(model, "variant", None)
    return getattr(variant, "name", None) or getattr(model, "model_name", None) or type(model).__name__.lower()


def resolved_preprocessing(model: nn.Module, img_size: Optional[int] = None) -> dict:
    """The model's preprocessing record with ``input_size`` set to the export resolution."""
    pre = {**default_preprocessing(), **dict(getattr(model, "preprocessing", None) or {})}
    size = int(img_size or pre["input_size"][-1])
    if size < 32:
        raise ValueError(f"img_size must be at least 32 (RepViT downsamples by 32), got {size}")
    pre["input_size"] = [3, size, size]
    pre["mean"], pre["std"] = [float(v) for v in pre["mean"]], [float(v) for v in pre["std"]]
    return pre


def export_metadata(model: nn.Module, fmt: str, preprocessing: dict, **extra) -> dict[str, str]:
    """Flat ``str -> str`` metadata (what ONNX, Core ML and TorchScript extra files can all hold)."""
    from ..version import __version__
    class_names = getattr(model, "class_names", None)
    meta = {
        "producer": f"repvit {__version__} (torch {torch.__version__.split('+')[0]})",
        "format": fmt,
        "variant": variant_name(model),
        "fused": "true",
        "num_classes": str(int(getattr(model, "num_classes", 0))),
        "class_names": json.dumps(list(class_names) if class_names else None),
        "preprocessing": json.dumps(preprocessing),
        "output": "logits (apply softmax for probabilities)",
    }
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
    return meta


def artifact_path(output: Union[str, os.PathLike, None], variant: str, fmt: str, *, tag: str = "") -> Path:
    """Where to write: an explicit file name exactly as given, else a default that says what it holds.

    No ``output``, or a directory (existing, written with a trailing slash, or a name without a
    suffix), gets ``<variant>-fused[-tag]<ext>``: the default name is where the fused marker
    belongs. A file name is honoured as given (scripts open the path they asked for); it must
    end in the format's extension, and a name that says "unfused" is refused because every
    export is made from the fused model.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    ext = FORMATS[fmt]
    default_name = f"{variant}-fused{'-' + tag if tag else ''}{ext}"
    if output is None:
        return Path(default_name)
    text = os.fspath(output)
    path = Path(text)
    if text.endswith(("/", os.sep)) or not path.suffix or (path.is_dir() and path.suffix != ext):
        return path / default_name
    if path.suffix != ext:
        beside = " (its weights are written beside it, as .bin)" if fmt == "openvino" else ""
        raise ValueError(f"a {fmt} artifact must end in {ext}{beside}, got {text!r} (or pass a directory)")
    if "unfused" in path.stem.lower():
        raise ValueError(f"{text!r} says 'unfused', but exports are always made from the fused model; rename it")
    return path
