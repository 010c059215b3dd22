"""The RepViT-SAM prompt decoder as it is exported, and the prompt arrays it takes.

Two modules, both SAM's own prompt encoder and mask decoder with nothing retrained:

* ``prompt_decoder(sam)``: the ONNX decoder, in the input/output layout of segment-anything's
  ``SamOnnxModel`` (``DECODER_INPUTS`` -> ``DECODER_OUTPUTS``; the table is in
  ``repvit.sam.export``). segment-anything 1.0's class turns the crop before its final resize into
  a Python integer, so a traced graph keeps the crop of the example image's size and returns wrong
  masks for any other aspect ratio; the class here takes the crop from the ``orig_im_size`` tensor.
* ``LowResDecoder(sam)``: the Core ML decoder, the same without the final resize (Core ML has no
  data-dependent output sizes). It runs the mask decoder through ``repvit.sam.decoding``'s
  ``decode_all_masks``: ``MaskDecoder.predict_masks`` copies the embedding per prompt with a
  ``repeat_interleave`` whose count a trace keeps symbolic, which coremltools cannot convert.

``onnx_prompt`` turns clicks and a box in original-image pixels into ``point_coords`` and
``point_labels`` exactly as ``SamPredictor.predict`` does.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .builder import require_segment_anything
from .decoding import decode_all_masks

DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
COREML_DECODER_INPUTS = DECODER_INPUTS[:-1]
COREML_DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")


@functools.lru_cache(maxsize=None)
def _decoder_class():
    require_segment_anything()
    from segment_anything.utils.onnx import SamOnnxModel

    class SamPromptDecoder(SamOnnxModel):
        """Meta's ``SamOnnxModel`` with the crop before the last resize read from ``orig_im_size``."""

        def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
            masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
            valid = self.resize_longest_image_size(orig_im_size, self.img_size)
            masks = masks[..., :valid[0], :valid[1]]  # tensor bounds: the trace keeps them symbolic
            size = orig_im_size.to(torch.int64)
            return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)

    return SamPromptDecoder


def prompt_decoder(sam: nn.Module, *, return_single_mask: bool = False, use_stability_score: bool = False) -> nn.Module:
    """The decoder module that is exported to ONNX (``SamOnnxModel``'s inputs, outputs and options)."""
    return _decoder_class()(sam, return_single_mask=return_single_mask,
                            use_stability_score=use_stability_score).eval()


class LowResDecoder(nn.Module):
    """The Core ML decoder: ``prompt_decoder`` up to ``(iou_predictions 1x4, low_res_masks 1x4x256x256)``,
    for one prompt set per call (checked equal to the ONNX decoder's module on export)."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.inner = prompt_decoder(sam)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        sam = self.inner.model
        sparse = self.inner._embed_points(point_coords, point_labels)
        dense = self.inner._embed_masks(mask_input, has_mask_input)
        masks, iou_predictions = decode_all_masks(sam.mask_decoder, image_embeddings,
                                                  sam.prompt_encoder.get_dense_pe(), sparse, dense)
        return iou_predictions, masks


def decoder_example(sam: nn.Module, num_points: int = 5) -> tuple[torch.Tensor, ...]:
    """Inputs in ``DECODER_INPUTS`` order to trace with: every point label, a mask input, a 1500x2250 image."""
    grid = sam.prompt_encoder.image_embedding_size
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(1, sam.prompt_encoder.embed_dim, *grid, generator=gen),
            torch.randint(0, sam.image_encoder.img_size, (1, num_points, 2), generator=gen).float(),
            torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0][i % 5] for i in range(num_points)])[None],
            torch.randn(1, 1, 4 * grid[0], 4 * grid[1], generator=gen),
            torch.tensor([1.0]),
            torch.tensor([1500.0, 2250.0]))


def onnx_prompt(original_size: Sequence[int], points: Optional[Sequence[Sequence[float]]] = None,
                labels: Optional[Sequence[int]] = None, box: Optional[Sequence[float]] = None, *,
                img_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(point_coords 1xNx2, point_labels 1xN)`` float32 for the decoder, from original-image pixels.

    ``points`` are (x, y) clicks with ``labels`` 1 (foreground, the default) or 0 (background);
    ``box`` is (x0, y0, x1, y1). The box becomes two points labelled 2 and 3 after the clicks;
    without a box a padding point (0, 0) labelled -1 is appended, as ``SamPredictor`` does.
    """
    require_segment_anything()
    from segment_anything.utils.transforms import ResizeLongestSide
    coords = np.asarray(points if points is not None else [], dtype=np.float32).reshape(-1, 2)
    if labels is None:
        labels = [1] * len(coords)
    labels = np.asarray(labels, dtype=np.float32).reshape(-1)
    if len(labels) != len(coords):
        raise ValueError(f"{len(coords)} points but {len(labels)} labels")
    if not set(labels.tolist()) <= {0.0, 1.0}:
        raise ValueError(f"click labels are 1 (foreground) or 0 (background), got {sorted(set(labels.tolist()))}; "
                         "give a box as box=(x0, y0, x1, y1)")
    if box is not None:
        corners = np.asarray(box, dtype=np.float32).reshape(-1)
        if corners.shape != (4,):
            raise ValueError(f"a box is (x0, y0, x1, y1), got {list(corners)}")
        coords = np.concatenate([coords, corners.reshape(2, 2)])
        labels = np.concatenate([labels, np.array([2, 3], np.float32)])
    else:
        if not len(coords):
            raise ValueError("give at least one point or a box")
        coords = np.concatenate([coords, np.zeros((1, 2), np.float32)])
        labels = np.concatenate([labels, np.array([-1], np.float32)])
    h, w = (int(v) for v in original_size)
    frame = ResizeLongestSide(img_size).apply_coords(coords, (h, w))
    if box is None:
        frame[-1] = 0.0  # the padding point stays at the origin, whatever the scale
    return frame[None].astype(np.float32), labels[None].astype(np.float32)


__all__ = ["prompt_decoder", "LowResDecoder", "decoder_example", "onnx_prompt", "DECODER_INPUTS", "DECODER_OUTPUTS",
           "COREML_DECODER_INPUTS", "COREML_DECODER_OUTPUTS"]
