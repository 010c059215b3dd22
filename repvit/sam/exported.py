"""Running an exported RepViT-SAM encoder file in place of the PyTorch one.

``encoder_runner(path)`` opens ``repvit_sam_encoder[-int8].onnx`` / ``.xml`` / ``.tflite`` / ``.pte``
with its runtime (chosen by the suffix) as ``run(1x3xSxS tensor) -> embedding array``;
``exported_encoder_predictor(sam, path)`` is a segment-anything ``SamPredictor`` whose image embedding
comes from that file and whose prompts go through ``sam``'s PyTorch decoder, so anything written for
a predictor (``repvit sam eval --encoder FILE``, ``evaluate_coco``) scores the file: the accuracy of
an INT8 encoder with the model's own decoder.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from torch import nn

from .builder import require_segment_anything

SUFFIXES = {".onnx": "ONNX Runtime", ".xml": "OpenVINO", ".tflite": "LiteRT", ".pte": "ExecuTorch"}


def encoder_runner(path: Union[str, os.PathLike]) -> Callable[[torch.Tensor], np.ndarray]:
    """``run(x)`` for the encoder file ``path`` with the runtime its suffix names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder file {str(path)!r} does not exist (write one with `repvit sam export`)")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        from .export import onnx_encoder_runner
        return onnx_encoder_runner(path)
    if suffix == ".xml":
        from .export_openvino import encoder_runner as openvino_runner
        return openvino_runner(path)
    if suffix == ".tflite":
        from .export_litert import encoder_runner as litert_runner
        return litert_runner(path)
    if suffix == ".pte":
        from .export import executorch_encoder_runner
        return executorch_encoder_runner(path)
    raise ValueError(f"{str(path)!r}: an exported SAM encoder is one of {', '.join(SUFFIXES)} "
                     f"({', '.join(SUFFIXES.values())}), not {suffix or 'a file without a suffix'}")


def _predictor_class():
    require_segment_anything()
    from segment_anything import SamPredictor

    class ExportedEncoderPredictor(SamPredictor):
        """``SamPredictor`` with the image embedding computed by an exported encoder file."""

        def __init__(self, sam: nn.Module, path: Union[str, os.PathLike]):
            super().__init__(sam)
            self.encoder_path = Path(path)
            self.run_encoder = encoder_runner(path)

        @torch.no_grad()
        def set_torch_image(self, transformed_image: torch.Tensor, original_image_size) -> None:
            size = self.model.image_encoder.img_size
            if transformed_image.ndim != 4 or max(transformed_image.shape[2:]) != size:
                raise ValueError(f"expected a 1x3xHxW image resized so its longest side is {size}, got "
                                 f"{tuple(transformed_image.shape)}")
            self.reset_image()
            self.original_size = original_image_size
            self.input_size = tuple(transformed_image.shape[-2:])
            x = self.model.preprocess(transformed_image).float().cpu()
            self.features = torch.as_tensor(np.asarray(self.run_encoder(x)), dtype=torch.float32, device=self.device)
            self.is_image_set = True

    return ExportedEncoderPredictor


def exported_encoder_predictor(sam: nn.Module, path: Union[str, os.PathLike]):
    """A ``SamPredictor`` around ``sam`` whose embeddings come from the encoder file ``path`` (the class is
    made on first use: segment-anything is an optional dependency)."""
    return _predictor_class()(sam, path)


__all__ = ["encoder_runner", "exported_encoder_predictor", "SUFFIXES"]
