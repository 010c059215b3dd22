"""RepViT-SAM as LiteRT (``.tflite``) files: the fused image encoder and the prompt decoder, each checked.

* ``repvit_sam_encoder.tflite``: input 1x3xSxS (S = 1024), SAM-preprocessed as for the ONNX encoder
  (``repvit.sam.export``), output the 1x256 embedding grid.
* ``repvit_sam_decoder.tflite``: the Core ML decoder's inputs (``image_embeddings``, ``point_coords``,
  ``point_labels``, ``mask_input``, ``has_mask_input``; the converter names them ``args_0``...
  in this order) and outputs (``iou_predictions`` 1x4, ``low_res_masks`` 1x4x256x256), at exactly
  ``LITERT_DECODER_POINTS`` prompt points. LiteRT files have fixed shapes, and SAM's masks change
  with every extra padding point, so the file serves one click (+ the padding point (0, 0) with
  label -1) or one box; other prompts need the ONNX or OpenVINO decoder.

Both are converted by ``litert-torch`` (``repvit.export.litert``) and checked with the LiteRT
interpreter: the encoder by ``sam_parity.check_encoder``, the decoder by ``sam_parity.check_decoder``
on the parity prompts of two points, its low-resolution masks upscaled with ``Sam.postprocess_masks``
(what an app does) and compared with ``SamPredictor.predict``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from torch import nn

from ..models.reparam import is_fused
from ..export import litert as fmt_lt
from .decoder_graph import COREML_DECODER_INPUTS, COREML_DECODER_OUTPUTS, LowResDecoder, decoder_example
from .export_parity import parity_prompts

LITERT_DECODER_POINTS = 2


def _require_fused(sam: nn.Module) -> None:
    if not is_fused(sam.image_encoder):
        raise ValueError("the LiteRT export takes a fused float32 CPU SAM: pass repvit.sam.export.fused_cpu_copy(sam) "
                         "(repvit.sam.export.export_sam does this itself)")


def export_encoder_litert(sam: nn.Module, path: Union[str, os.PathLike]) -> dict:
    """The encoder of a fused SAM (``sam.fused_cpu_copy``) as ``.tflite`` (input 1x3xSxS SAM-preprocessed,
    output the embedding grid)."""
    _require_fused(sam)
    fmt_lt.export_litert(sam.image_encoder, path, img_size=sam.image_encoder.img_size)
    return {"path": str(path), **fmt_lt.describe(path)}


def export_decoder_litert(sam: nn.Module, path: Union[str, os.PathLike]) -> dict:
    """The prompt decoder up to the low-resolution masks (the Core ML decoder's inputs and outputs) for
    exactly ``LITERT_DECODER_POINTS`` points: one click with its padding point (0, 0, label -1), or one box."""
    _require_fused(sam)
    module = LowResDecoder(sam).eval()
    fmt_lt.export_litert(module, path, example=decoder_example(sam, num_points=LITERT_DECODER_POINTS)[:5])
    return {"path": str(path), "inputs": list(COREML_DECODER_INPUTS), "outputs": list(COREML_DECODER_OUTPUTS),
            "num_points": LITERT_DECODER_POINTS, "bytes": Path(path).stat().st_size,
            "note": f"fixed at {LITERT_DECODER_POINTS} points (one click + padding, or one box); masks are the "
                    "1x4 low-resolution logits (upscale as Sam.postprocess_masks does); other prompts need the "
                    "ONNX or OpenVINO decoder"}


def encoder_runner(path) -> Callable[[torch.Tensor], np.ndarray]:
    run = fmt_lt.runner(path)
    return lambda x: run(x).numpy()


def decoder_runner(path, sam: nn.Module) -> Callable[[dict], list]:
    """The LiteRT decoder behind the ONNX decoder's contract (``check_decoder``): its low-resolution masks
    upscaled to the original image with ``Sam.postprocess_masks``, as an app does it."""
    from segment_anything.utils.transforms import ResizeLongestSide  # segment-anything is an extra
    run = fmt_lt.arrays_runner(path)

    def decode(feed: dict) -> list:
        if feed["point_coords"].shape[1] != LITERT_DECODER_POINTS:
            raise ValueError(f"{path} takes exactly {LITERT_DECODER_POINTS} prompt points (one click + the padding "
                             f"point, or one box), got {feed['point_coords'].shape[1]}: use the ONNX or OpenVINO "
                             "decoder for other prompts")
        iou, low = run(*(feed[name] for name in COREML_DECODER_INPUTS))
        h, w = (int(v) for v in feed["orig_im_size"])
        resized = ResizeLongestSide.get_preprocess_shape(h, w, sam.image_encoder.img_size)
        with torch.no_grad():
            masks = sam.postprocess_masks(torch.from_numpy(low), resized, (h, w)).numpy()
        return [masks, iou, low]
    return decode


def parity_prompts_for_litert(height: int, width: int) -> list[dict]:
    """The parity prompts the fixed-size LiteRT decoder takes (their point count after padding)."""
    def tokens(prompt: dict) -> int:
        return len(prompt.get("points") or []) + (2 if prompt.get("box") else 1)
    return [p for p in parity_prompts(height, width) if tokens(p) == LITERT_DECODER_POINTS]


__all__ = ["export_encoder_litert", "export_decoder_litert", "encoder_runner", "decoder_runner",
           "parity_prompts_for_litert", "LITERT_DECODER_POINTS"]
