"""INT8 post-training static quantization of the fused ONNX model with ONNX Runtime.

Quantize-dequantize (QDQ) format: every quantized tensor is wrapped in QuantizeLinear /
DequantizeLinear pairs, which ONNX Runtime fuses into integer kernels (QLinearConv,
integer MatMul). Weights are quantized per output channel (symmetric), activations per tensor
(uint8), with ranges calibrated on a few hundred real training images preprocessed exactly as at
inference.

The weights' encoding (``weights=``) decides whether the model computes what it says on every
x86 CPU. With int8 weights (u8s8), ONNX Runtime's kernels for x86 CPUs without VNNI (AVX2 and
plain AVX-512: AMD Zen 3 and older, Intel before Cascade Lake) multiply uint8 by int8 with an
instruction that saturates pairs of products at 16 bits: on a 2-vCPU Zen 3 the Imagenette model
lost 1.1 top-1 points that way, while the same file run as float emulation of its QDQ ops lost
0.03. int7 weights (int8 in 7 bits, ONNX Runtime's ``reduce_range``; the default) cannot
saturate and kept int8's speed there (-0.19 points, 0.98-1.03x int8's time); uint8 weights
(u8u8) take a kernel without saturation too (-0.10 points, but 1.11-1.16x int8's time). int8
is for CPUs with VNNI and ARM. See benchmarks/deployment.md, section 2. Activation
ranges default to the 99.999th percentile rather than the extremes: on Imagenette it kept
about half of the top-1 that min/max ranges lost (see benchmarks/deployment.md). Starting from
the fused model matters: folding BatchNorm after quantization would rescale the int8
weights and undo the calibration.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .verify import find_images, normalize, load_crop

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
WEIGHT_ENCODINGS = ("int7", "uint8", "int8")   # see the module docstring; the first is the default
# An INT8 copy is kept only if it stays this close to the float model on real images.
INT8_MAX_REL_ERROR = 0.25         # mean relative L2 error of INT8 outputs vs float ones
INT8_MIN_TOP1_AGREEMENT = 0.75    # classifiers: INT8 vs float top-1 (checked from 4 images on)
INT8_MIN_PIXEL_AGREEMENT = 0.90   # segmenters: INT8 vs float class of each pixel
CALIBRATION_PIXELS = 16 * 224 * 224   # activations of this many input pixels are collected at a time


def calibration_batches(images: Union[str, os.PathLike, Sequence, None], preprocessing: dict, count: int = 300
                        ) -> tuple[list[np.ndarray], list[Path]]:
    """``count`` preprocessed images (each a 1x3xSxS float32 array), spread over the folder's classes."""
    paths = find_images(images, count)
    arrays = [normalize(load_crop(p, preprocessing), preprocessing).unsqueeze(0).numpy() for p in paths]
    return arrays, paths


def quantize_onnx(fp32_path: Union[str, os.PathLike], out_path: Union[str, os.PathLike],
                  calibration: Sequence[np.ndarray], *, method: str = "percentile", per_channel: bool = True,
                  op_types: Optional[Sequence[str]] = None, calibration_source: str = "",
                  weights: str = "int7", keep_float: Sequence[str] = ()) -> Path:
    """Write the INT8 QDQ model for ``fp32_path``; the metadata of the float model is carried over.
    ``keep_float``: regular expressions; nodes whose names match one stay float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS}, got {method!r}")
    if weights not in WEIGHT_ENCODINGS:
        raise ValueError(f"INT8 weights must be one of {', '.join(WEIGHT_ENCODINGS)}, got {weights!r}")
    calibration = list(calibration)
    if len(calibration) == 0:
        raise ValueError("INT8 quantization needs calibration images")
    source = onnx.load(str(fp32_path))
    input_name = source.graph.input[0].name
    excluded = [n.name for n in source.graph.node if any(re.fullmatch(p, n.name) for p in keep_float)]

    class Feed(CalibrationDataReader):
        """Calibration images in chunks (``set_range``): ranges and histograms are merged chunk by
        chunk, so memory stays bounded (all 300 images' activations at 224 px do not fit in 24 GB)."""

        def __init__(self):
            self.set_range(0, len(calibration))

        def __len__(self):
            return len(calibration)

        def set_range(self, start_index: int, end_index: int):
            self._items = iter(calibration[start_index:end_index])

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {input_name: np.ascontiguousarray(item, dtype=np.float32)}

    # Chunks of about 16 images at 224 px (fewer when the images are larger: a 360x480 frame through a
    # Semantic FPN keeps ~100 MB of activations), and a divisor of the count so every chunk is full.
    # ONNX Runtime's histogram calibrators stack a chunk's outputs, so images of different sizes (dense
    # models calibrated at their own sizes) go one at a time.
    largest = max(1, min(16, CALIBRATION_PIXELS // max(int(np.prod(a.shape[-2:])) for a in calibration)))
    if len({a.shape for a in calibration}) > 1:
        largest = 1
    chunk = next(s for s in range(min(largest, len(calibration)), 0, -1) if len(calibration) % s == 0)

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        # ONNX Runtime's symbolic shape inference gives up on graphs with a dynamic height and width (the
        # dense exports'), and when it gives up it writes its state into the working directory: it runs
        # only for fixed-size inputs, inside the temporary folder. ONNX's own shape inference is enough
        # for static quantization.
        dims = source.graph.input[0].type.tensor_type.shape.dim
        fixed_size = all(d.HasField("dim_value") for d in dims[2:])
        with contextlib.chdir(tmp):
            try:
                quant_pre_process(str(Path(fp32_path).resolve()), prepared, skip_symbolic_shape=not fixed_size)
            except Exception:
                if not fixed_size:
                    raise
                quant_pre_process(str(Path(fp32_path).resolve()), prepared, skip_symbolic_shape=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            quantize_static(
                prepared, str(out_path), Feed(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                activation_type=QuantType.QUInt8, reduce_range=weights == "int7",
                weight_type=QuantType.QUInt8 if weights == "uint8" else QuantType.QInt8,
                calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                  "entropy": CalibrationMethod.Entropy}[method],
                op_types_to_quantize=list(op_types) if op_types else None, nodes_to_exclude=excluded,
                extra_options={"CalibTensorRangeSymmetric": False, "WeightSymmetric": True,
                               "CalibMovingAverage": False, "CalibStridedMinMax": chunk})
    quantized = onnx.load(str(out_path))
    meta = {p.key: p.value for p in source.metadata_props}
    meta["precision"] = "int8"
    meta["quantization"] = json.dumps({
        "tool": "onnxruntime.quantization.quantize_static", "format": "QDQ", "weights": f"{weights}, symmetric, "
        + ("per output channel" if per_channel else "per tensor"), "activations": "uint8, per tensor",
        "calibration": {"method": method, "images": len(calibration), "source": calibration_source},
        "op_types": list(op_types) if op_types else "all supported", "kept_float": list(keep_float)})
    del quantized.metadata_props[:]
    for key, value in meta.items():
        quantized.metadata_props.add(key=key, value=value)
    quantized.graph.name = source.graph.name + "_int8"
    onnx.save(quantized, str(out_path))
    return out_path


def count_quantized(path: Union[str, os.PathLike]) -> dict:
    """How many QuantizeLinear/DequantizeLinear nodes and which float ops they surround."""
    import onnx
    from collections import Counter
    ops = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return {"QuantizeLinear": ops.get("QuantizeLinear", 0), "DequantizeLinear": ops.get("DequantizeLinear", 0),
            "Conv": ops.get("Conv", 0), "Gemm": ops.get("Gemm", 0) + ops.get("MatMul", 0)}


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> dict:
    """How far INT8 logits are from float ones: relative L2 error, cosine, top-1 agreement."""
    ref, cand = reference.float(), candidate.float()
    rel = ((cand - ref).norm(dim=1) / ref.norm(dim=1).clamp_min(1e-12)).mean().item()
    cos = torch.nn.functional.cosine_similarity(cand, ref, dim=1).mean().item()
    top1 = (cand.argmax(1) == ref.argmax(1)).float().mean().item()
    return {"relative_l2_error": rel, "cosine": cos, "top1_agreement": top1,
            "max_abs_diff": (cand - ref).abs().max().item()}
