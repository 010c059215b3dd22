"""Images in and out for the mask models (RepViT-SAM, EdgeTAM): RGB arrays as their predictors take
them, and mask drawings."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import numpy as np

# One colour per mask, cycled; chosen to stay distinct on photos.
PALETTE = np.array([
    (30, 144, 255), (255, 99, 71), (50, 205, 50), (255, 215, 0), (186, 85, 211), (0, 206, 209), (255, 140, 0),
    (244, 164, 196), (127, 255, 0), (220, 20, 60), (70, 130, 180), (218, 165, 32), (147, 112, 219), (60, 179, 113),
], dtype=np.uint8)


def load_rgb(path: Union[str, os.PathLike]) -> np.ndarray:
    """``H x W x 3`` uint8 RGB, upright as the camera meant it (EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB")).copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"image {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{str(path)!r} is not a readable image: {err}") from None


def overlay(image: np.ndarray, masks: Sequence[np.ndarray], *, alpha: float = 0.5,
            points: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None,
            boxes: Optional[np.ndarray] = None) -> np.ndarray:
    """``image`` with each boolean mask tinted in its own colour and outlined, plus the prompts.

    Positive points are drawn green, negative ones red; boxes as outlines.
    """
    out = image.astype(np.float32).copy()
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, dtype=bool)
        colour = PALETTE[i % len(PALETTE)].astype(np.float32)
        out[mask] = out[mask] * (1 - alpha) + colour * alpha
        edge = mask & ~_erode(mask)
        out[edge] = colour
    out = out.clip(0, 255).astype(np.uint8)
    if points is None and boxes is None:
        return out
    from PIL import Image, ImageDraw
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    radius = max(3, round(max(image.shape[:2]) / 120))
    for box in [] if boxes is None else np.asarray(boxes).reshape(-1, 4):
        draw.rectangle([float(v) for v in box], outline=(255, 255, 255), width=max(2, radius // 2))
    if points is not None:
        labels = np.ones(len(points)) if labels is None else labels
        for (x, y), label in zip(np.asarray(points).reshape(-1, 2), labels):
            fill = (0, 200, 0) if label > 0 else (220, 0, 0)
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=(255, 255, 255))
    return np.asarray(canvas)


def _erode(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def save_png(array: np.ndarray, path: Union[str, os.PathLike]) -> None:
    from pathlib import Path
    from PIL import Image
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
