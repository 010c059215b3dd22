"""Point and box prompts on one image: placing a point inside a mask, and running many on one embedding
(the prompt type and its parsing are ``repvit.data.prompts``).

SAM's label convention: 1 = foreground point, 0 = background point; a box enters the decoder as
its two corners with labels 2 (top-left) and 3 (bottom-right), and a prompt without a box is
padded with one point labelled -1 (see ``repvit.sam.export`` for the ONNX decoder's inputs).
Coordinates here are always pixels of the original image, x right and y down.

``farthest_from_boundary`` is the click that published SAM point figures simulate (the SAM paper
follows RITM's interactive protocol): the mask pixel farthest from any pixel outside the
mask, by the exact Euclidean distance, the image border counting as outside (RITM pads the mask
with zeros before its distance transform). Unlike a box centre it always lies on the object, also
for rings, L shapes and thin objects.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

# The prompt types and their parsing live in the data layer (EdgeTAM's video prompts share them).
from ..data.prompts import Prompt, parse_box, parse_point, read_prompt_file  # noqa: F401


def squared_distance_to_outside(mask: torch.Tensor) -> torch.Tensor:
    """Exact squared Euclidean distance from each pixel of a 2-D boolean ``mask`` to the nearest pixel
    outside it (0 outside; beyond the image border counts as outside). Integer tensor, ``mask``'s device.

    Two passes: along the shorter axis the distance to the nearest outside pixel of the same line
    (running maxima and minima of outside indices), then along the other axis the minimum over
    offsets ``d`` of ``g(x + d)^2 + d^2``. The nearest outside pixel is never farther along that
    axis than ``g(x)`` itself, so offsets up to the largest ``g`` suffice: O(H W min(H, W)) at most,
    far less for thin shapes.
    """
    mask = torch.as_tensor(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {tuple(mask.shape)}")
    inside = torch.zeros((mask.shape[0] + 2, mask.shape[1] + 2), dtype=torch.bool, device=mask.device)
    inside[1:-1, 1:-1] = mask.bool()
    swap = inside.shape[0] > inside.shape[1]  # the first pass runs along axis 0: make it the shorter one
    if swap:
        inside = inside.T
    rows, cols = inside.shape
    index = torch.arange(rows, dtype=torch.int32, device=inside.device).unsqueeze(1).expand(rows, cols)
    above = torch.where(inside, torch.full_like(index, -rows), index).cummax(0).values
    below = torch.where(inside, torch.full_like(index, 2 * rows), index).flip(0).cummin(0).values.flip(0)
    line = torch.minimum(index - above, below - index)  # finite: the padding rows are outside
    squared = line * line  # int32 is exact up to images of 30,000 pixels a side
    best = squared.clone()
    for d in range(1, int(line.max()) + 1):
        torch.minimum(best[:, d:], squared[:, :-d] + d * d, out=best[:, d:])
        torch.minimum(best[:, :-d], squared[:, d:] + d * d, out=best[:, :-d])
    best = best[1:-1, 1:-1]
    return best.T if swap else best


def farthest_from_boundary(mask: torch.Tensor) -> tuple[int, int]:
    """``(x, y)`` of the pixel of ``mask`` farthest from the nearest pixel outside it (see the module
    docstring); among equally far pixels the first in row-major order. Always a pixel of the mask."""
    mask = torch.as_tensor(mask).bool()
    ys, xs = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    if not len(ys):
        raise ValueError("the mask covers no pixel: there is no point inside it")
    y0, x0 = int(ys[0]), int(xs[0])
    # Cropping to the mask's box changes no distance: the nearest outside pixel of any pixel in the box
    # is at most as far as the box's border ring, which the padding reproduces.
    crop = mask[y0:int(ys[-1]) + 1, x0:int(xs[-1]) + 1]
    flat = int(squared_distance_to_outside(crop).flatten().argmax())  # the first maximum
    return x0 + flat % crop.shape[1], y0 + flat // crop.shape[1]


def _grouped(prompts: Sequence[Prompt]) -> dict:
    """Prompts grouped by shape (number of points, has a box), so each group is one decoder batch."""
    groups: dict = {}
    for i, prompt in enumerate(prompts):
        groups.setdefault((len(prompt.points), prompt.box is not None), []).append(i)
    return groups


@torch.no_grad()
def predict_prompts(predictor, prompts: Sequence[Prompt], *, multimask: Optional[bool] = None) -> list[dict]:
    """Run every prompt on the image already set on ``predictor`` (one embedding for all).

    Prompts of the same shape go through the decoder together. ``multimask=None`` follows SAM's
    advice: three candidate masks for a single point (ambiguous), one mask otherwise; the
    candidate with the highest predicted IoU is chosen. Returns, per prompt, ``mask`` (H x W
    bool), ``score``, ``scores`` (all candidates) and ``chosen``.
    """
    if not predictor.is_image_set:
        raise RuntimeError("set an image on the predictor first (predictor.set_image(rgb))")
    height, width = predictor.original_size
    for prompt in prompts:
        prompt.check(width, height)
    results: list = [None] * len(prompts)
    device = predictor.device
    for (num_points, has_box), indices in _grouped(prompts).items():
        many = (num_points == 1 and not has_box) if multimask is None else multimask
        coords = labels = boxes = None
        if num_points:
            pts = np.array([[p[:2] for p in prompts[i].points] for i in indices], dtype=np.float32)
            coords = predictor.transform.apply_coords_torch(torch.as_tensor(pts, device=device), (height, width))
            labels = torch.as_tensor([[p[2] for p in prompts[i].points] for i in indices], device=device)
        if has_box:
            raw = torch.as_tensor(np.array([prompts[i].box for i in indices], dtype=np.float32), device=device)
            boxes = predictor.transform.apply_boxes_torch(raw, (height, width))
        masks, scores, _ = predictor.predict_torch(coords, labels, boxes, multimask_output=many)
        for row, i in enumerate(indices):
            chosen = int(scores[row].argmax())
            results[i] = {"mask": masks[row, chosen].cpu().numpy(), "score": float(scores[row, chosen]),
                          "scores": [float(s) for s in scores[row]], "chosen": chosen,
                          "prompt": prompts[i].as_dict()}
    return results
