"""EdgeTAM on single images, behind the predictor interface RepViT-SAM's tools already drive.

``ImagePredictor(model)`` wraps ``sam2``'s own ``SAM2ImagePredictor`` (which does the work: the
image transform, the encoder, the prompt encoder and mask decoder) and answers the calls that
``repvit.sam.prompts.predict_prompts`` makes of segment-anything's ``SamPredictor``:
``set_image``, ``is_image_set``, ``original_size``, ``device``, ``transform.apply_coords_torch`` /
``apply_boxes_torch`` (pixels of the original image to the model's normalized 1024 frame) and
``predict_torch`` (batched prompts, boolean masks at the original size, predicted IoUs, low-res
logits). So ``repvit sam predict --family edgetam`` runs the same prompt code as RepViT-SAM.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn


class _Transform:
    """Pixel coordinates of the original image -> sam2's normalized model frame."""

    def __init__(self, predictor):
        self._predictor = predictor

    def apply_coords_torch(self, coords: torch.Tensor, original_size: tuple) -> torch.Tensor:
        return self._predictor._transforms.transform_coords(coords.float(), normalize=True, orig_hw=original_size)

    def apply_boxes_torch(self, boxes: torch.Tensor, original_size: tuple) -> torch.Tensor:
        return self._predictor._transforms.transform_boxes(boxes.float(), normalize=True, orig_hw=original_size)


class ImagePredictor:
    """EdgeTAM (a ``build_edgetam`` model) with segment-anything's ``SamPredictor`` calls."""

    def __init__(self, model: nn.Module, mask_threshold: float = 0.0):
        from sam2.sam2_image_predictor import SAM2ImagePredictor
        self.model = model
        self._predictor = SAM2ImagePredictor(model, mask_threshold=mask_threshold)
        self.transform = _Transform(self._predictor)

    @property
    def device(self) -> torch.device:
        return self._predictor.device

    @property
    def is_image_set(self) -> bool:
        return bool(self._predictor._is_image_set)

    @property
    def original_size(self) -> tuple:
        """``(height, width)`` of the image set last."""
        if not self.is_image_set:
            raise RuntimeError("set an image on the predictor first (predictor.set_image(rgb))")
        return tuple(self._predictor._orig_hw[-1])

    def set_image(self, image: np.ndarray) -> None:
        """An HxWx3 uint8 RGB image."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 RGB image, got shape {image.shape}")
        self._predictor.set_image(image)

    @torch.inference_mode()
    def predict_torch(self, point_coords: Optional[torch.Tensor], point_labels: Optional[torch.Tensor],
                      boxes: Optional[torch.Tensor] = None, multimask_output: bool = True):
        """``(masks BxCxHxW bool, iou_predictions BxC, low_res_logits BxCx256x256)`` for B prompts
        already in the model frame (``transform``); C is 3 with ``multimask_output`` else 1."""
        if point_labels is not None:
            point_labels = point_labels.int()
        return self._predictor._predict(point_coords, point_labels, boxes, None, multimask_output=multimask_output)
