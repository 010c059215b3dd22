"""Checking exported RepViT-SAM files against PyTorch on photographs (the SAM side of ``verify.py``).

The encoder is checked on each image's 1024-pixel input against the PyTorch embedding. The
decoder is checked on that image's embedding with the prompts of ``parity_prompts`` (one click, a
box, a box with a background click, a click with the previous answer as mask input) twice: against
the PyTorch module it was exported from, and against ``SamPredictor.predict``, the answer a SAM
user already trusts. A check reports the largest absolute difference per image or prompt and
passes within its tolerance; ``discard_failed`` removes a file that did not.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .builder import require_segment_anything
from .decoder_graph import onnx_prompt, prompt_decoder
from ..export.verify import find_images, max_abs_diff

# Largest |difference| allowed, float32 against float32 PyTorch: the image embedding (values of a
# few units) and the decoder outputs (mask logits at both sizes and the scores).
ENCODER_TOLERANCE = 1e-3
DECODER_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- inputs
def preprocess(sam: nn.Module, image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 RGB -> the encoder's 1x3xSxS input, computed exactly as ``SamPredictor.set_image``."""
    return sam.preprocess(_resized(sam, image).to(sam.pixel_mean.device))


def _resized(sam: nn.Module, image: np.ndarray) -> torch.Tensor:
    require_segment_anything()
    from segment_anything.utils.transforms import ResizeLongestSide
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} of shape {image.shape}")
    resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(image)
    return torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]


def predictor_with_embedding(sam: nn.Module, embedding, original_size: Sequence[int]):
    """A ``SamPredictor`` whose image is set from an embedding computed elsewhere (an exported encoder)."""
    require_segment_anything()
    from segment_anything import SamPredictor
    from segment_anything.utils.transforms import ResizeLongestSide
    predictor = SamPredictor(sam)
    h, w = (int(v) for v in original_size)
    predictor.original_size = (h, w)
    predictor.input_size = ResizeLongestSide.get_preprocess_shape(h, w, sam.image_encoder.img_size)
    predictor.features = torch.as_tensor(np.asarray(embedding), dtype=torch.float32, device=sam.device)
    predictor.is_image_set = True
    return predictor


def parity_images(source=None, *, limit: int = 2) -> list[tuple[str, np.ndarray]]:
    """``(name, RGB array)`` pairs to check with.

    ``source``: an image file, a folder (searched recursively) or a list of files. Without one,
    the photographs that ship with matplotlib (a dependency: Grace Hopper's portrait and a
    product photo); without those, one generated image (named ``synthetic``: smooth gradients
    and shapes, 480x640), so a check always runs and the report says which it was.
    """
    from ..data.images import load_rgb
    if limit < 1:
        raise ValueError(f"the number of parity images must be at least 1, got {limit}")
    if source is not None and not isinstance(source, (str, os.PathLike)):
        paths = []
        for item in source:
            paths += find_images(item, limit) if Path(item).is_dir() else [Path(item)]
        paths = paths[:limit]
    else:
        paths = find_images(source, limit)
    images = [(str(p), load_rgb(p)) for p in paths]
    return images or [("synthetic", synthetic_image())]


def synthetic_image(height: int = 480, width: int = 640) -> np.ndarray:
    """A deterministic RGB test card: gradients, a disc and a bar (not a photograph)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([255 * x / width, 255 * y / height, 128 + 64 * np.sin(x / 23.0) * np.cos(y / 17.0)], -1)
    image[(x - width * 0.35) ** 2 + (y - height * 0.5) ** 2 < (height * 0.2) ** 2] = (230, 40, 40)
    image[int(height * 0.2):int(height * 0.3), int(width * 0.55):int(width * 0.9)] = (20, 20, 200)
    return image.clip(0, 255).astype(np.uint8)


def parity_prompts(height: int, width: int) -> list[dict]:
    """The prompts the decoder is checked with on an image of this size (original-image pixels)."""
    def at(fx: float, fy: float) -> list[float]:
        return [round(fx * (width - 1), 1), round(fy * (height - 1), 1)]
    return [
        {"name": "one click", "points": [at(0.5, 0.5)], "labels": [1]},
        {"name": "box", "box": at(0.2, 0.15) + at(0.8, 0.9)},
        {"name": "box and background click", "box": at(0.25, 0.2) + at(0.75, 0.8), "points": [at(0.3, 0.3)],
         "labels": [0]},
        {"name": "click with previous mask", "points": [at(0.5, 0.5)], "labels": [1], "previous_mask": True},
    ]


# --------------------------------------------------------------------------- checks
def _report(diffs: dict, tolerance: float, **extra) -> dict:
    worst = max(diffs.values()) if diffs else 0.0
    return {"max_abs_diff": worst, "tolerance": tolerance, "passed": bool(worst <= tolerance), "by_output": diffs,
            **extra}


def discard_failed(entry: dict, path: Union[str, os.PathLike]) -> dict:
    """Remove ``path`` when ``entry`` (a check's report) did not pass; says so in the entry."""
    if entry.get("passed") is False:
        Path(path).unlink(missing_ok=True)
        entry["removed"] = str(path)
    return entry


@torch.no_grad()
def encode_images(sam: nn.Module, images: Sequence[tuple[str, np.ndarray]]):
    """A ``SamPredictor`` per image with its PyTorch embedding set, and the encoder inputs."""
    require_segment_anything()
    from segment_anything import SamPredictor
    out = []
    for name, image in images:
        predictor = SamPredictor(sam)
        resized = _resized(sam, image)
        predictor.set_torch_image(resized, image.shape[:2])
        out.append((name, image, sam.preprocess(resized), predictor))
    return out


def check_encoder(run: Callable[[torch.Tensor], np.ndarray], encoded, *, tolerance: float = ENCODER_TOLERANCE) -> dict:
    """Largest |embedding difference| of ``run`` against the PyTorch embeddings of ``encode_images``."""
    diffs = {}
    for name, _, x, predictor in encoded:
        diffs[name] = max_abs_diff(run(x), predictor.features)
    return _report(diffs, tolerance, images=[name for name, *_ in encoded],
                   largest_embedding=max(float(p.features.abs().max()) for *_, p in encoded))


def _predictor_outputs(sam, predictor, prompt: dict, previous: Optional[np.ndarray], *, return_single_mask: bool,
                       use_stability_score: bool) -> tuple[np.ndarray, ...]:
    """What the exported decoder should return, built from ``SamPredictor.predict`` calls."""
    from segment_anything.utils.amg import calculate_stability_score
    kwargs = dict(point_coords=np.asarray(prompt["points"], np.float32) if prompt.get("points") else None,
                  point_labels=np.asarray(prompt["labels"]) if prompt.get("points") else None,
                  box=np.asarray(prompt["box"], np.float32) if prompt.get("box") else None,
                  mask_input=previous, return_logits=True)
    single = predictor.predict(multimask_output=False, **kwargs)
    multi = predictor.predict(multimask_output=True, **kwargs)
    masks, scores, low = (np.concatenate([s, m]) for s, m in zip(single, multi))
    if use_stability_score:
        scores = calculate_stability_score(torch.from_numpy(low), sam.mask_threshold, 1.0).numpy()
    if return_single_mask:
        num_points = len(prompt.get("points") or []) + (2 if prompt.get("box") else 1)
        pick = int(np.argmax(scores[1:])) + 1 if num_points <= 2 else 0
        masks, scores, low = masks[pick:pick + 1], scores[pick:pick + 1], low[pick:pick + 1]
    return masks[None], scores[None], low[None]


@torch.no_grad()
def check_decoder(run: Callable[[dict], list], sam: nn.Module, encoded, *, return_single_mask: bool = False,
                  use_stability_score: bool = False, tolerance: float = DECODER_TOLERANCE,
                  prompts: Optional[Callable[[int, int], list[dict]]] = None) -> dict:
    """Run the exported decoder on each image's embedding with ``prompts(height, width)`` (default
    ``parity_prompts``) and compare it with the PyTorch module it was exported from and with
    ``SamPredictor.predict``."""
    module = prompt_decoder(sam, return_single_mask=return_single_mask, use_stability_score=use_stability_score)
    vs_torch, vs_predictor, cases = {}, {}, []
    for name, image, _, predictor in encoded:
        h, w = image.shape[:2]
        first_low = None
        for prompt in (prompts or parity_prompts)(h, w):
            coords, labels = onnx_prompt((h, w), prompt.get("points"), prompt.get("labels"), prompt.get("box"),
                                         img_size=sam.image_encoder.img_size)
            use_mask = bool(prompt.get("previous_mask"))
            grid = sam.prompt_encoder.mask_input_size
            mask = first_low[None, None] if use_mask else np.zeros((1, 1, *grid), np.float32)
            feed = {"image_embeddings": predictor.features.numpy(), "point_coords": coords, "point_labels": labels,
                    "mask_input": mask.astype(np.float32), "has_mask_input": np.array([float(use_mask)], np.float32),
                    "orig_im_size": np.array([h, w], np.float32)}
            got = run(feed)
            want = module(*(torch.from_numpy(v) for v in feed.values()))
            expected = _predictor_outputs(sam, predictor, prompt, mask[0] if use_mask else None,
                                          return_single_mask=return_single_mask,
                                          use_stability_score=use_stability_score)
            key = f"{Path(name).name}: {prompt['name']}"
            vs_torch[key] = max(max_abs_diff(g, t) for g, t in zip(got, want))
            vs_predictor[key] = max(max_abs_diff(g, e) for g, e in zip(got, expected))
            cases.append({"image": name, "prompt": prompt["name"], "num_points": int(coords.shape[1]),
                          "mask_shape": list(np.shape(got[0])),
                          "mask_pixels": int((np.asarray(got[0])[0, 0] > sam.mask_threshold).sum())})
            if first_low is None:
                first_low = np.asarray(want[2][0, 0 if return_single_mask else int(np.argmax(want[1][0, 1:])) + 1])
    torch_report = _report(vs_torch, tolerance)
    predictor_report = _report(vs_predictor, tolerance)
    return {"max_abs_diff": max(torch_report["max_abs_diff"], predictor_report["max_abs_diff"]),
            "tolerance": tolerance, "passed": torch_report["passed"] and predictor_report["passed"],
            "vs_pytorch_module": torch_report, "vs_sam_predictor": predictor_report,
            "point_counts": sorted({c["num_points"] for c in cases}), "cases": cases,
            "return_single_mask": return_single_mask, "use_stability_score": use_stability_score}


__all__ = ["preprocess", "predictor_with_embedding", "parity_images", "synthetic_image", "parity_prompts",
           "encode_images", "check_encoder", "check_decoder", "discard_failed", "ENCODER_TOLERANCE",
           "DECODER_TOLERANCE"]
