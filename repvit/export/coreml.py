"""Core ML export: an ``.mlpackage`` ML program, with the input normalization inside the model.

Core ML image inputs can only apply one scale to all channels, which cannot express
ImageNet's per-channel std exactly. So the image input only rescales pixels to [0, 1]
(``scale=1/255``) and the converted graph starts with ``(x - mean) / std``: an app passes a
resized, centre-cropped RGB image and gets the same logits as the PyTorch pipeline. With
``input_type="tensor"`` the input is instead the already-normalized float tensor. Which one
was chosen is written in the model's description and user-defined metadata.

Core ML predictions run only on macOS. Elsewhere the export is verified as far as it can
be: the conversion succeeds, the spec is an ML program with the expected input (type,
colour layout, size) and output (name, shape), the metadata is present, and the
normalization wrapper that was converted equals the fused model on preprocessed images.
"""
from __future__ import annotations

import copy
import math
import os
import platform
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

INPUT_NAME, OUTPUT_NAME = "image", "logits"
INPUT_TYPES = ("image", "tensor")
PRECISIONS = ("float16", "float32")


class NormalizedInput(nn.Module):
    """``model((x - mean) / std)`` for ``x`` in [0, 1]: the normalization baked into the image input."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def available() -> bool:
    try:
        import coremltools  # noqa: F401
    except ImportError:
        return False
    return True


def can_predict() -> bool:
    return platform.system() == "Darwin"


def _require():
    try:
        import coremltools as ct
    except ImportError:
        raise ValueError("Core ML export needs coremltools: pip install 'repvit-pytorch[coreml]'") from None
    return ct


def export_coreml(fused: nn.Module, path: Union[str, os.PathLike], *, preprocessing: dict, metadata: dict[str, str],
                  input_type: str = "image", precision: str = "float16") -> Path:
    ct = _require()
    if input_type not in INPUT_TYPES:
        raise ValueError(f"input_type must be one of {INPUT_TYPES}, got {input_type!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    size = int(preprocessing["input_size"][-1])
    if input_type == "image":
        module = NormalizedInput(copy.deepcopy(fused), preprocessing["mean"], preprocessing["std"]).eval()
        ml_input = ct.ImageType(name=INPUT_NAME, shape=(1, 3, size, size), scale=1 / 255.0, bias=[0.0, 0.0, 0.0],
                                color_layout=ct.colorlayout.RGB)
        input_text = (f"RGB image {size}x{size} (resize the shorter side to "
                      f"{math.floor(size / float(preprocessing.get('crop_pct', 1.0)))} with "
                      f"{preprocessing.get('interpolation', 'bicubic')} interpolation, centre-crop); the model scales "
                      f"pixels by 1/255 and normalizes with mean {preprocessing['mean']} and std "
                      f"{preprocessing['std']} itself")
    else:
        module = fused
        ml_input = ct.TensorType(name=INPUT_NAME, shape=(1, 3, size, size))
        input_text = (f"float32 tensor 1x3x{size}x{size}, already normalized with mean {preprocessing['mean']} and "
                      f"std {preprocessing['std']} (see 'preprocessing')")
    example = torch.rand(1, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example)
        mlmodel = ct.convert(
            traced, inputs=[ml_input], outputs=[ct.TensorType(name=OUTPUT_NAME)], convert_to="mlprogram",
            compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32,
            minimum_deployment_target=ct.target.iOS16)
    mlmodel.short_description = f"RepViT {metadata.get('variant', '')} (fused, re-parameterized) image classifier"
    mlmodel.author = metadata.get("producer", "repvit")
    mlmodel.input_description[INPUT_NAME] = input_text
    mlmodel.output_description[OUTPUT_NAME] = metadata.get("output", "logits")
    meta = {**metadata, "input_type": input_type, "input": input_text, "compute_precision": precision,
            "normalization": "inside the model" if input_type == "image" else "by the caller"}
    for key, value in meta.items():
        mlmodel.user_defined_metadata[key] = value
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))
    return path


def convert_tensors(source, path: Union[str, os.PathLike], *, inputs: Optional[list], outputs: Sequence[str],
                    precision: str, metadata: dict[str, str], descriptions: dict[str, str]) -> Path:
    """An ML program with tensor inputs and outputs (models whose input is not an image, such as SAM's parts).

    ``source``: a traced module, with ``inputs`` the ``ct.TensorType``s that name and shape its
    tensors, or an ``ExportedProgram``, whose argument names and dynamic dimensions are the inputs
    (``inputs=None``). ``descriptions`` holds a text per input or output name; ``metadata`` is
    stored with the precision (its ``model`` and ``part`` become the description, ``producer`` the
    author).
    """
    ct = _require()
    if precision not in PRECISIONS:
        raise ValueError(f"Core ML precision must be one of {PRECISIONS}, got {precision!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(source, inputs=inputs, outputs=[ct.TensorType(name=n) for n in outputs],
                             convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                             compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32)
    mlmodel.short_description = " - ".join(metadata[k] for k in ("model", "part") if metadata.get(k))
    mlmodel.author = metadata.get("producer", "repvit")
    input_names = [i.name for i in mlmodel.get_spec().description.input]
    for name, text in descriptions.items():
        if name in input_names:
            mlmodel.input_description[name] = text
        else:
            mlmodel.output_description[name] = text
    for key, value in {**metadata, "compute_precision": precision}.items():
        mlmodel.user_defined_metadata[key] = value
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))
    return path


def tensor_spec(path: Union[str, os.PathLike]) -> dict:
    """Model type and the names and shapes of a saved model's tensor inputs and outputs (works without
    macOS); a flexible dimension is ``[lower, upper]``."""
    spec = load(path).get_spec()

    def shape(feature):
        arr = feature.type.multiArrayType
        if arr.WhichOneof("ShapeFlexibility") == "shapeRange":
            return [[int(r.lowerBound), int(r.upperBound)] for r in arr.shapeRange.sizeRanges]
        return [int(d) for d in arr.shape]
    return {"type": spec.WhichOneof("Type"),
            "inputs": {i.name: shape(i) for i in spec.description.input},
            "outputs": {o.name: shape(o) for o in spec.description.output}}


def load(path: Union[str, os.PathLike]):
    ct = _require()
    return ct.models.MLModel(str(path), skip_model_load=not can_predict())


def read_metadata(path: Union[str, os.PathLike]) -> dict[str, str]:
    return dict(load(path).user_defined_metadata)


def check_spec(path: Union[str, os.PathLike], *, img_size: int, num_classes: int, input_type: str) -> dict:
    """What can be verified without a Mac: ML program, input kind and size, output name and shape."""
    spec = load(path).get_spec()
    problems = []
    if spec.WhichOneof("Type") != "mlProgram":
        problems.append(f"model type is {spec.WhichOneof('Type')}, not mlProgram")
    inputs, outputs = list(spec.description.input), list(spec.description.output)
    facts = {"type": spec.WhichOneof("Type"), "inputs": [], "outputs": []}
    for inp in inputs:
        kind = inp.type.WhichOneof("Type")
        if kind == "imageType":
            from coremltools.proto import FeatureTypes_pb2
            space = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(inp.type.imageType.colorSpace)
            facts["inputs"].append({"name": inp.name, "kind": "image", "width": inp.type.imageType.width,
                                    "height": inp.type.imageType.height, "color": space})
        else:
            facts["inputs"].append({"name": inp.name, "kind": kind, "shape": list(inp.type.multiArrayType.shape)})
    for out in outputs:
        facts["outputs"].append({"name": out.name, "shape": list(out.type.multiArrayType.shape)})
    if [i["name"] for i in facts["inputs"]] != [INPUT_NAME]:
        problems.append(f"inputs {[i['name'] for i in facts['inputs']]}, expected ['{INPUT_NAME}']")
    elif input_type == "image":
        i = facts["inputs"][0]
        if i["kind"] != "image" or (i["width"], i["height"]) != (img_size, img_size) or i["color"] != "RGB":
            problems.append(f"input is {i}, expected an RGB image {img_size}x{img_size}")
    elif facts["inputs"][0].get("shape") != [1, 3, img_size, img_size]:
        problems.append(f"input is {facts['inputs'][0]}, expected a 1x3x{img_size}x{img_size} tensor")
    if [o["name"] for o in facts["outputs"]] != [OUTPUT_NAME] or facts["outputs"][0]["shape"] != [1, num_classes]:
        problems.append(f"outputs {facts['outputs']}, expected '{OUTPUT_NAME}' of shape [1, {num_classes}]")
    if problems:
        raise ValueError(f"{path}: Core ML spec check failed: " + "; ".join(problems))
    return facts


def runner(path: Union[str, os.PathLike], *, preprocessing: dict, input_type: str
           ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A batch runner (macOS only). Image inputs are rebuilt from the normalized tensors."""
    import numpy as np
    from PIL import Image
    mlmodel = load(path)
    mean = torch.tensor(preprocessing["mean"]).view(3, 1, 1)
    std = torch.tensor(preprocessing["std"]).view(3, 1, 1)

    def one(x: torch.Tensor) -> torch.Tensor:
        if input_type == "image":
            pixels = ((x[0] * std + mean) * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
            feed = Image.fromarray(pixels, "RGB")
        else:
            feed = x.numpy().astype(np.float32)
        return torch.from_numpy(np.asarray(mlmodel.predict({INPUT_NAME: feed})[OUTPUT_NAME], dtype=np.float32))

    from .verify import per_sample
    return per_sample(one)
