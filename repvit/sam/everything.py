"""Automatic ("everything") mask generation: segment-anything's generator, made faster, same masks.

``FastMaskGenerator`` takes the options of ``segment_anything.SamAutomaticMaskGenerator`` and
returns the same records. Per crop it differs only in how the work is scheduled:

- the image embedding enters the decoder once per batch instead of once per point
  (``repvit.sam.decoding``), and the decoder runs on small point batches on the CPU (its
  activations are ``batch x 4096 x 256`` floats: at 64 points far larger than the caches);
- masks whose predicted IoU fails ``pred_iou_thresh`` are dropped before they are upsampled to
  the image size (the stock generator upsamples every mask first);
- run-length encoding waits until after the box NMS, so only surviving masks are encoded; until
  then a candidate is kept as its 256x256 low-resolution logits and upsampled again if it survives.

The decoder, upsampling, stability score, thresholds, boxes and NMS are the package's own modules
and functions with the same inputs. With ``shared_image=False`` and the stock batch size the
records are the stock generator's bit for bit; other batchings change the decoder's float
rounding in the last bits (the BLAS picks kernels by shape), which can move a score or a border
pixel by that much. ``tests/test_sam_everything.py`` checks both record by record.
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Optional

import numpy as np
import torch

from .builder import require_segment_anything
from .decoding import decode_shared_image

require_segment_anything()
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402
from segment_anything.utils.amg import (  # noqa: E402
    MaskData, batched_mask_to_box, calculate_stability_score, is_box_near_crop_edge, mask_to_rle_pytorch,
    uncrop_boxes_xyxy, uncrop_masks, uncrop_points)
from torchvision.ops.boxes import batched_nms  # noqa: E402

CPU_POINTS_PER_BATCH = 4
GPU_POINTS_PER_BATCH = 64


class FastMaskGenerator(SamAutomaticMaskGenerator):
    """``SamAutomaticMaskGenerator`` with the same options and output, scheduled to do less work.

    ``points_per_batch=None`` picks a size for the device (4 on CPU, 64 elsewhere).
    ``shared_image=False`` runs the decoder exactly as the stock generator does (per-point copies).
    ``on_batch(done, total)`` is called after each decoder batch (progress bars).
    """

    def __init__(self, model, *, points_per_batch: Optional[int] = None, shared_image: bool = True,
                 on_batch: Optional[Callable[[int, int], None]] = None, **kwargs):
        if points_per_batch is None:
            device = next(model.parameters()).device
            points_per_batch = CPU_POINTS_PER_BATCH if device.type == "cpu" else GPU_POINTS_PER_BATCH
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be at least 1, got {points_per_batch}")
        super().__init__(model, points_per_batch=points_per_batch, **kwargs)
        self.on_batch = on_batch
        self.shared_image = shared_image
        self._batches_done = 0
        self._batches_total = 0

    def num_batches(self, image_shape) -> int:
        """Decoder batches ``generate`` will run for an image of this shape (all crop layers)."""
        from segment_anything.utils.amg import generate_crop_boxes
        _, layers = generate_crop_boxes(tuple(image_shape[:2]), self.crop_n_layers, self.crop_overlap_ratio)
        return sum(-(-len(self.point_grids[layer]) // self.points_per_batch) for layer in layers)

    @torch.no_grad()
    def generate(self, image: np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"generate() takes an H x W x 3 uint8 RGB array, got {image.dtype} {image.shape}")
        self._batches_done, self._batches_total = 0, self.num_batches(image.shape)
        return super().generate(image)

    def _process_crop(self, image, crop_box, crop_layer_idx, orig_size) -> MaskData:
        x0, y0, x1, y1 = crop_box
        crop = image[y0:y1, x0:x1, :]
        crop_size = crop.shape[:2]
        predictor = self.predictor
        predictor.set_image(crop)
        points_scale = np.array(crop_size)[None, ::-1]
        grid = self.point_grids[crop_layer_idx] * points_scale

        candidates = _Candidates()
        for start in range(0, len(grid), self.points_per_batch):
            candidates.cat(self._candidates(grid[start:start + self.points_per_batch], crop_size, crop_box, orig_size))
            self._batches_done += 1
            if self.on_batch is not None:
                self.on_batch(self._batches_done, self._batches_total)

        keep = batched_nms(candidates["boxes"].float(), candidates["iou_preds"],
                           torch.zeros(len(candidates["boxes"])), iou_threshold=self.box_nms_thresh)
        candidates.filter(keep)
        candidates["rles"] = self._encode(candidates.pop_low_res(), crop_box, orig_size)
        predictor.reset_image()

        candidates["boxes"] = uncrop_boxes_xyxy(candidates["boxes"], crop_box)
        candidates["points"] = uncrop_points(candidates["points"], crop_box)
        # shaped (0, 4) when nothing survives: the stock generator's (0,) breaks its cross-crop NMS
        candidates["crop_boxes"] = torch.tensor([crop_box for _ in range(len(candidates["rles"]))]).reshape(-1, 4)
        return candidates

    def _decode(self, points: np.ndarray):
        """Low-resolution mask logits (``N*3 x 256 x 256``) and predicted IoUs for single-point prompts."""
        predictor = self.predictor
        coords = torch.as_tensor(predictor.transform.apply_coords(points, predictor.original_size),
                                 device=predictor.device)
        labels = torch.ones(coords.shape[0], dtype=torch.int, device=coords.device)
        model = predictor.model
        sparse, dense = model.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
        decode = partial(decode_shared_image, model.mask_decoder) if self.shared_image else model.mask_decoder
        low_res, iou_preds = decode(image_embeddings=predictor.features, image_pe=model.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=True)
        return low_res.flatten(0, 1), iou_preds.flatten(0, 1), low_res.shape[1]

    def _upsample(self, low_res: torch.Tensor) -> torch.Tensor:
        predictor = self.predictor
        return predictor.model.postprocess_masks(low_res[:, None], predictor.input_size,
                                                 predictor.original_size)[:, 0]

    def _candidates(self, points: np.ndarray, crop_size, crop_box, orig_size) -> "_Candidates":
        low_res, iou_preds, per_point = self._decode(points)
        data = _Candidates(low_res=low_res, iou_preds=iou_preds,
                           points=torch.as_tensor(points.repeat(per_point, axis=0)))
        if self.pred_iou_thresh > 0.0:
            data.filter(data["iou_preds"] > self.pred_iou_thresh)
        if len(data["iou_preds"]) == 0:
            return data.with_empty_boxes(self.predictor.device)
        masks = self._upsample(data["low_res"])
        threshold = self.predictor.model.mask_threshold
        data["stability_score"] = calculate_stability_score(masks, threshold, self.stability_score_offset)
        if self.stability_score_thresh > 0.0:
            keep = data["stability_score"] >= self.stability_score_thresh
            data.filter(keep)
            masks = masks[keep]
        masks = masks > threshold
        data["boxes"] = batched_mask_to_box(masks)
        orig_h, orig_w = orig_size
        keep = ~is_box_near_crop_edge(data["boxes"], crop_box, [0, 0, orig_w, orig_h])
        if not torch.all(keep):
            data.filter(keep)
        return data

    def _encode(self, low_res: torch.Tensor, crop_box, orig_size, chunk: int = 16) -> list:
        """RLEs of the surviving candidates, upsampled again from their low-resolution logits."""
        rles = []
        orig_h, orig_w = orig_size
        threshold = self.predictor.model.mask_threshold
        for start in range(0, len(low_res), chunk):
            masks = self._upsample(low_res[start:start + chunk]) > threshold
            rles.extend(mask_to_rle_pytorch(uncrop_masks(masks, crop_box, orig_h, orig_w)))
        return rles


class _Candidates(MaskData):
    """``MaskData`` that also carries each candidate's low-resolution logits until the NMS is done."""

    def with_empty_boxes(self, device) -> "_Candidates":
        self["stability_score"] = torch.zeros(0, device=device)
        self["boxes"] = torch.zeros(0, 4, device=device)
        return self

    def pop_low_res(self) -> torch.Tensor:
        low_res = self["low_res"]
        del self["low_res"]
        return low_res
