"""INT8 RepViT-SAM image encoders (ONNX Runtime, OpenVINO, LiteRT, ExecuTorch), checked by the masks they give.

On a CPU the image encoder is nearly all of SAM's time (one 1024x1024 pass per image; the prompt
decoder runs per click and costs milliseconds), and post-training INT8 makes it 3-5x faster
(benchmarks/sam.md). ``export_sam(..., int8=True, calibration=...)`` writes, beside each float
encoder, its INT8 copy calibrated on SAM-preprocessed photographs; the decoders stay float.

An INT8 embedding is not within a float tolerance of the float one, so the check is what a user
sees: on every parity image and prompt (a click, a box, a box with a background click), the mask
``SamPredictor.predict`` returns (single-mask output, at the image's size) from the INT8
embedding against the one from the float embedding, as IoU. The file is kept when the mean IoU
is at least ``min_mask_iou`` (``INT8_MIN_MASK_IOU``); the report also lists every case's IoU and
each image's relative L2 error of the embedding.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch import nn

from .export_parity import parity_prompts, predictor_with_embedding, preprocess
from ..export.verify import find_images

INT8_FORMATS = ("onnx", "openvino", "litert", "executorch")
INT8_FILE_NAMES = {"onnx": "repvit_sam_encoder-int8.onnx", "openvino": "repvit_sam_encoder-int8.xml",
                   "litert": "repvit_sam_encoder-int8.tflite", "executorch": "repvit_sam_encoder-int8.pte"}
INT8_MIN_MASK_IOU = 0.9
DEFAULT_CALIBRATION_COUNT = 16


def calibration_inputs(sam: nn.Module, source: Union[str, os.PathLike, Sequence], count: int = DEFAULT_CALIBRATION_COUNT
                       ) -> tuple[list[np.ndarray], list[Path]]:
    """``count`` photos of ``source`` (a folder, searched recursively, or a list of files) as the encoder's
    1x3xSxS inputs, preprocessed exactly as ``SamPredictor.set_image`` does."""
    from ..data.images import load_rgb
    if source is None:
        raise ValueError("INT8 calibration needs real photos: pass calibration= / --calib-images DIR (pictures like "
                         "the ones you will segment; 16-64 are enough)")
    if count < 1:
        raise ValueError(f"the number of calibration images must be at least 1, got {count}")
    paths = find_images(source, count)
    with torch.no_grad():
        arrays = [preprocess(sam, load_rgb(p)).float().cpu().numpy() for p in paths]
    return arrays, paths


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@torch.no_grad()
def check_int8_encoder(run: Callable[[torch.Tensor], np.ndarray], sam: nn.Module, encoded, *,
                       min_mask_iou: float = INT8_MIN_MASK_IOU) -> dict:
    """Masks from ``run``'s embeddings against masks from the PyTorch ones (``sam_parity.encode_images``)."""
    cases, relative = [], {}
    for name, image, x, predictor in encoded:
        embedding = np.asarray(run(x), np.float32)
        reference = predictor.features.cpu().numpy()
        relative[name] = float(np.linalg.norm(embedding - reference) / max(np.linalg.norm(reference), 1e-12))
        quantized = predictor_with_embedding(sam, embedding, image.shape[:2])
        for prompt in parity_prompts(*image.shape[:2]):
            if prompt.get("previous_mask"):
                continue
            kwargs = dict(point_coords=np.asarray(prompt["points"], np.float32) if prompt.get("points") else None,
                          point_labels=np.asarray(prompt["labels"]) if prompt.get("points") else None,
                          box=np.asarray(prompt["box"], np.float32) if prompt.get("box") else None,
                          multimask_output=False)
            want = predictor.predict(**kwargs)[0][0]
            got = quantized.predict(**kwargs)[0][0]
            cases.append({"image": name, "prompt": prompt["name"], "mask_iou": _iou(got, want),
                          "float_mask_pixels": int(want.sum()), "int8_mask_pixels": int(got.sum())})
    ious = [c["mask_iou"] for c in cases]
    mean = float(np.mean(ious))
    return {"mask_iou_mean": mean, "mask_iou_min": float(np.min(ious)), "min_mask_iou": float(min_mask_iou),
            "passed": bool(mean >= min_mask_iou), "embedding_relative_l2": relative, "cases": cases}


def write_int8_encoder(fmt: str, sam: nn.Module, float_path: Path, path: Path, calibration: Sequence[np.ndarray], *,
                       source: str, metadata: dict) -> dict:
    """The INT8 encoder of ``fmt`` at ``path`` (from the float file ``float_path`` where the tool quantizes
    files, from the fused module otherwise); returns facts for the report."""
    size = sam.image_encoder.img_size
    if fmt == "onnx":
        from ..export.quantize import count_quantized, quantize_onnx
        quantize_onnx(float_path, path, calibration, calibration_source=source)
        return {"path": str(path), "tool": "onnxruntime quantize_static (QDQ, int7 weights, percentile)",
                **count_quantized(path)}
    if fmt == "openvino":
        from ..export import openvino as fmt_ov
        fmt_ov.quantize_openvino(float_path, path, calibration, calibration_source=source)
        return {"path": str(path), "tool": "NNCF post-training quantization (mixed preset, int7 weights)"}
    if fmt == "litert":
        from ..export import litert as fmt_lt
        fmt_lt.export_litert(sam.image_encoder, path, img_size=size, calibration=calibration)
        return {"path": str(path), "tool": "litert-torch PT2E full-integer INT8", **fmt_lt.describe(path)}
    if fmt == "executorch":
        from ..export import executorch
        written, facts = executorch.export_executorch(sam.image_encoder, path, img_size=size, metadata=metadata,
                                                      calibration=calibration)
        return {"path": str(written), "tool": "XNNPACK quantizer (PT2E)", **facts}
    raise ValueError(f"INT8 encoders are written for {', '.join(INT8_FORMATS)}, not {fmt!r}")


__all__ = ["calibration_inputs", "check_int8_encoder", "write_int8_encoder", "INT8_FORMATS", "INT8_FILE_NAMES",
           "INT8_MIN_MASK_IOU", "DEFAULT_CALIBRATION_COUNT"]
