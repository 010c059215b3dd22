"""The RepViT-SAM demo's work on plain arrays: point, box and everything modes with cached embeddings.

``SamDemo`` takes H x W x 3 uint8 RGB arrays and returns ``Result``s (an overlay, the masks, their
scores and a mask PNG); it has no web code and is tested directly. ``repvit.demo.page`` lays the
Gradio page over it.

The image encoder is the slow part (RepViT-M2.3 on a 1024 px input); the prompt encoder and
mask decoder are cheap. So each embedding is cached under a hash of the image's pixels, and
points, boxes and the everything mode on an image the page has seen run the decoder only.
Keying on content rather than on the upload event means the same picture uploaded again, or
sent again with every call by an API client, still finds its embedding.

Each answer writes one mask PNG (the page offers it for download). ``BoundedFolder`` keeps at most
``keep_files`` of them and deletes the oldest, and removes a temporary folder it created when the
demo is closed, so a page serving many requests uses a bounded amount of disk.
"""
from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .builder import require_segment_anything
from ..data.images import overlay
from ..data.output_files import BoundedFolder

require_segment_anything()
from segment_anything import SamPredictor  # noqa: E402

SCORE_COLUMNS = ["mask", "predicted IoU", "area (px)", "shown"]
KEEP_FILES = 64  # mask PNGs kept on disk; a page shows one per answer


def image_key(image: np.ndarray) -> str:
    """A digest of the pixels and their layout: equal images share one embedding."""
    digest = hashlib.sha256(f"{image.dtype}{image.shape}".encode())
    digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


@dataclass
class _Embedding:
    features: object
    original_size: tuple
    input_size: tuple
    seconds: float


class CachedPredictor(SamPredictor):
    """A ``SamPredictor`` whose ``set_image`` runs the encoder only for images it has not seen.

    The latest ``capacity`` embeddings are kept (256 x 64 x 64 floats, 4 MiB each). After each
    ``set_image``, ``last_hit`` says whether the embedding came from the cache and
    ``last_seconds`` how long the encoder took on that image when it ran.
    """

    def __init__(self, model, *, capacity: int = 8):
        super().__init__(model)
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._cache: OrderedDict[str, _Embedding] = OrderedDict()
        self.last_hit = False
        self.last_seconds = 0.0

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        key = image_format + image_key(image)
        cached = self._cache.get(key)
        self.last_hit = cached is not None
        if cached is None:
            start = time.perf_counter()
            super().set_image(image, image_format)
            cached = _Embedding(self.features, self.original_size, self.input_size, time.perf_counter() - start)
            self._cache[key] = cached
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(key)
            self.reset_image()
            self.features = cached.features
            self.original_size, self.input_size = cached.original_size, cached.input_size
            self.is_image_set = True
        self.last_seconds = cached.seconds


@dataclass
class Result:
    """What one prompt produced: the drawing, the masks, their scores, and the mask file."""

    overlay: np.ndarray                       # H x W x 3 uint8: the image, masks tinted, prompts drawn
    masks: list                               # H x W bool arrays, one per row of ``table``
    scores: list                              # predicted IoU per mask
    shown: list                               # which masks the overlay draws
    mask_png: Optional[str]                   # 0/255 PNG (one mask) or label PNG (everything), None if no mask
    status: str                               # one line of Markdown: encoder and decoder times
    table: list = field(default_factory=list)  # rows of SCORE_COLUMNS


class SamDemo:
    """Point, box and everything segmentation on one SAM model, with cached image embeddings.

    Calls are serialized by a lock (one predictor holds one embedding at a time), so a page with
    several users stays correct. Mask PNGs are written under ``output_dir`` (a temporary folder
    unless given), at most ``keep_files`` at a time (``BoundedFolder``); ``close()`` deletes them.
    """

    def __init__(self, sam, *, weights: str = "", cache_size: int = 8,
                 output_dir: Union[str, Path, None] = None, keep_files: int = KEEP_FILES):
        self.sam = sam
        self.weights = weights
        self.predictor = CachedPredictor(sam, capacity=cache_size)
        self.mask_files = BoundedFolder(output_dir, keep=keep_files, prefix="repvit-sam-demo-")
        self._lock = threading.Lock()

    @property
    def output_dir(self) -> Path:
        return self.mask_files.folder

    def close(self) -> None:
        self.mask_files.close()

    @property
    def device(self):
        return self.predictor.device

    def embed(self, image: np.ndarray) -> str:
        """Compute (or find) the embedding of ``image``; returns a sentence saying which."""
        with self._lock:
            self._set_image(image)
            return self._encoder_note() + " Now click points, draw a box or segment everything."

    def segment_points(self, image: np.ndarray, points: Sequence[Sequence[float]],
                       multimask: Optional[bool] = None) -> Result:
        """Mask for ``points`` (``(x, y, label)``, label 1 object / 0 background, image pixels).

        ``multimask=None`` asks for three candidates when there is a single point (one click is
        ambiguous: part, object or group) and one mask otherwise; the best candidate is shown.
        """
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        if not len(points):
            raise ValueError("add a point: click on the image, or type X,Y,LABEL lines")
        _check_inside(points[:, :2], image)
        multimask = len(points) == 1 if multimask is None else multimask
        with self._lock:
            self._set_image(image)
            start = time.perf_counter()
            masks, scores, _ = self.predictor.predict(point_coords=points[:, :2], point_labels=points[:, 2],
                                                      multimask_output=multimask)
            seconds = time.perf_counter() - start
        best = int(np.argmax(scores))
        drawn = overlay(image, [masks[best]], points=points[:, :2], labels=points[:, 2])
        return self._single(drawn, masks, scores, best, seconds)

    def segment_box(self, image: np.ndarray, box: Sequence[float]) -> Result:
        """Mask for the box ``(x0, y0, x1, y1)`` in image pixels (any two opposite corners)."""
        box = np.asarray(box, dtype=np.float64).reshape(4)
        box = np.array([min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])])
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            raise ValueError(f"the box {box.tolist()} has no area: give two opposite corners")
        _check_inside(box.reshape(2, 2), image)
        with self._lock:
            self._set_image(image)
            start = time.perf_counter()
            masks, scores, _ = self.predictor.predict(box=box, multimask_output=False)
            seconds = time.perf_counter() - start
        return self._single(overlay(image, [masks[0]], boxes=box[None]), masks, scores, 0, seconds)

    def everything(self, image: np.ndarray, *, points_per_side: int = 16, pred_iou_thresh: float = 0.88,
                   stability_score_thresh: float = 0.95,
                   on_batch: Optional[Callable[[int, int], None]] = None) -> Result:
        """Automatic masks from a ``points_per_side`` x ``points_per_side`` grid of point prompts.

        The mask PNG is a label image: pixel value k is row k of the table (largest mask first,
        smaller masks drawn over larger ones), 0 is no mask.
        """
        from .everything import FastMaskGenerator
        _check_image(image)
        if points_per_side < 1:
            raise ValueError(f"points_per_side must be at least 1, got {points_per_side}")
        generator = FastMaskGenerator(self.sam, points_per_side=int(points_per_side),
                                      pred_iou_thresh=float(pred_iou_thresh),
                                      stability_score_thresh=float(stability_score_thresh),
                                      output_mode="binary_mask", on_batch=on_batch)
        generator.predictor = self.predictor  # share the cached embeddings
        with self._lock:
            start = time.perf_counter()
            records = generator.generate(image)
            seconds = time.perf_counter() - start
        records = sorted(records, key=lambda r: -r["area"])
        masks = [r["segmentation"] for r in records]
        scores = [float(r["predicted_iou"]) for r in records]
        drawn = overlay(image, masks, alpha=0.45)
        path = None
        if masks:
            labels = np.zeros(image.shape[:2], dtype=np.uint8 if len(masks) < 256 else np.uint16)
            for k, mask in enumerate(masks, start=1):
                labels[mask] = k
            path = self._write_png(labels, "everything")
        note = (f"{len(masks)} masks from a {points_per_side}x{points_per_side} grid in {seconds:.2f} s. "
                + self._encoder_note())
        if not masks:
            note += " No mask passed the thresholds: lower them under *thresholds*."
        table = [[k, round(s, 4), int(m.sum()), "yes"] for k, (m, s) in enumerate(zip(masks, scores), start=1)]
        return Result(drawn, masks, scores, list(range(len(masks))), path, note, table)

    def _set_image(self, image: np.ndarray) -> None:
        _check_image(image)
        self.predictor.set_image(image)

    def _encoder_note(self) -> str:
        seconds = self.predictor.last_seconds
        if self.predictor.last_hit:
            return f"Image embedding reused from the cache (the encoder took {seconds:.2f} s once for this image)."
        return f"Image encoder: {seconds:.2f} s (run once for this image; later prompts reuse the embedding)."

    def _single(self, drawn, masks, scores, best: int, seconds: float) -> Result:
        masks, scores = list(masks), [float(s) for s in scores]
        path = self._write_png(masks[best].astype(np.uint8) * 255, "mask")
        table = [[k + 1, round(s, 4), int(m.sum()), "yes" if k == best else ""]
                 for k, (m, s) in enumerate(zip(masks, scores))]
        note = f"Mask decoder: {seconds * 1e3:.0f} ms. " + self._encoder_note()
        return Result(drawn, masks, scores, [best], path, note, table)

    def _write_png(self, array: np.ndarray, stem: str) -> str:
        return self.mask_files.write(array, stem)


def _check_image(image) -> None:
    if image is None:
        raise ValueError("upload an image first")
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {getattr(image, 'dtype', type(image))} "
                         f"{getattr(image, 'shape', '')}")


def _check_inside(xy: np.ndarray, image: np.ndarray) -> None:
    _check_image(image)
    h, w = image.shape[:2]
    for x, y in xy:
        if not (0 <= x <= w and 0 <= y <= h):
            raise ValueError(f"({x:g}, {y:g}) lies outside the {w}x{h} image")


def add_point(points_text: str, x: float, y: float, label: int) -> str:
    """The points text with a clicked point appended as one more ``X,Y,LABEL`` line."""
    return f"{(points_text or '').rstrip()}\n{x:g},{y:g},{int(label)}".strip()


def add_corner(box_text: str, x: float, y: float) -> tuple:
    """The box text after a click, and whether it now holds a whole box.

    A click after one corner completes the box; otherwise (no box yet, or a whole one) it starts a
    new box at the clicked corner.
    """
    numbers = [p for p in str(box_text or "").split(",") if p.strip()]
    if len(numbers) == 2:
        return f"{','.join(n.strip() for n in numbers)},{x:g},{y:g}", True
    return f"{x:g},{y:g}", False


