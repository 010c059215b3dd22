"""The RepViT-SAM demo page: point, box and everything modes on an uploaded image.

``SamDemo`` does the work on plain arrays (no web code, testable directly); ``build_app`` lays a
Gradio page over it and is the only place that imports Gradio
(``pip install 'repvit-pytorch[sam-demo]'``). ``repvit sam demo`` serves the page.

The image encoder is the slow part (RepViT-M2.3 on a 1024 px input); the prompt encoder and
mask decoder are cheap. So each embedding is cached under a hash of the image's pixels, and
points, boxes and the everything mode on an image the page has seen run the decoder only.
Keying on content rather than on the upload event means the same picture uploaded again, or
sent again with every call by an API client, still finds its embedding.
"""
# No ``from __future__ import annotations`` here: Gradio finds the click position by the
# ``gr.SelectData`` annotation of the handlers in build_app, which must stay a real object.
import functools
import hashlib
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .builder import require_segment_anything
from .images import overlay

require_segment_anything()
from segment_anything import SamPredictor  # noqa: E402

INSTALL_HINT = "pip install 'repvit-pytorch[sam-demo]'"
POINT_KINDS = {"object (positive)": 1, "background (negative)": 0}
SCORE_COLUMNS = ["mask", "predicted IoU", "area (px)", "shown"]
VIEW_HEIGHT = 520  # pixels on the page; clicks are mapped back to image pixels


def require_gradio():
    try:
        import gradio
    except ImportError:
        raise ImportError(f"the RepViT-SAM demo page needs Gradio: {INSTALL_HINT}") from None
    return gradio


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
    unless given).
    """

    def __init__(self, sam, *, weights: str = "", cache_size: int = 8,
                 output_dir: Union[str, Path, None] = None):
        self.sam = sam
        self.weights = weights
        self.predictor = CachedPredictor(sam, capacity=cache_size)
        self.output_dir = Path(output_dir or tempfile.mkdtemp(prefix="repvit-sam-demo-"))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

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
        from PIL import Image
        path = self.output_dir / f"{stem}-{uuid.uuid4().hex[:8]}.png"
        Image.fromarray(array).save(path)
        return str(path)


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


def parse_points(text: str) -> list:
    """``"X,Y,LABEL"`` per line (or separated by ``;``) -> ``[(x, y, label)]``; LABEL defaults to 1."""
    points = []
    for item in str(text or "").replace(";", "\n").splitlines():
        if not item.strip():
            continue
        parts = [p.strip() for p in item.split(",")]
        try:
            if len(parts) in (2, 3):
                label = int(parts[2]) if len(parts) == 3 else 1
                if label in (0, 1):
                    points.append((float(parts[0]), float(parts[1]), label))
                    continue
        except ValueError:
            pass
        raise ValueError(f"point {item.strip()!r}: write X,Y or X,Y,LABEL (LABEL 1 object, 0 background)")
    return points


def parse_box(text: str) -> list:
    """``"X0,Y0,X1,Y1"`` -> four floats."""
    parts = [p.strip() for p in str(text or "").replace(";", ",").split(",") if p.strip()]
    try:
        if len(parts) == 4:
            return [float(p) for p in parts]
    except ValueError:
        pass
    raise ValueError(f"box {text!r}: write X0,Y0,X1,Y1 (two opposite corners, image pixels) or click two corners")


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


def build_app(demo: SamDemo, *, examples: Sequence[Union[str, Path]] = ()):
    """The page as a ``gr.Blocks``; ``.launch()`` serves it.

    Endpoints for API clients (``gradio_client``): ``/embed`` (image -> status),
    ``/segment_points`` (image, points text -> overlay, scores table, mask PNG, status),
    ``/segment_box`` (image, box text -> the same) and ``/everything`` (image, grid points per side,
    IoU and stability thresholds -> the same, the PNG being a label image).
    """
    gr = require_gradio()

    def fail_clearly(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except ValueError as err:
                raise gr.Error(str(err)) from None
        return wrapped

    def outputs(result: Result):
        return result.overlay, result.table, result.mask_png, result.status

    @fail_clearly
    def embed(image):
        return "" if image is None else demo.embed(image)

    @fail_clearly
    def segment_points(image, points_text):
        return outputs(demo.segment_points(image, parse_points(points_text)))

    @fail_clearly
    def segment_box(image, box_text):
        return outputs(demo.segment_box(image, parse_box(box_text)))

    @fail_clearly
    def everything(image, points_per_side, pred_iou_thresh, stability_score_thresh, progress=gr.Progress()):
        def on_batch(done, total):
            progress((done, total), desc="mask decoder", unit="batches")
        return outputs(demo.everything(image, points_per_side=int(points_per_side),
                                       pred_iou_thresh=pred_iou_thresh,
                                       stability_score_thresh=stability_score_thresh, on_batch=on_batch))

    def click_point(points_text, kind, evt: gr.SelectData):
        return add_point(points_text, *evt.index[:2], POINT_KINDS[kind])

    @fail_clearly
    def click_corner(image, box_text, evt: gr.SelectData):
        x, y = evt.index[:2]
        text, whole = add_corner(box_text, x, y)
        if whole:
            return (text, *outputs(demo.segment_box(image, parse_box(text))))
        drawn = overlay(image, [], points=np.array([[x, y]]), labels=np.array([1]))
        return text, drawn, None, None, f"First corner at ({x}, {y}): click the opposite corner."

    def show_upload(image):
        return image, image, image, "", "", None, None, None

    title = "RepViT-SAM: segment anything with a RepViT encoder"
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\n"
                    f"Upload an image, then prompt with points or a box, or segment everything. The image "
                    f"encoder runs once per image; prompts reuse its embedding. Weights: {demo.weights or 'given'}.")
        with gr.Row():
            with gr.Column(scale=3):  # the image and the prompt modes
                with gr.Tabs():
                    with gr.Tab("point"):
                        with gr.Row():
                            kind = gr.Radio(list(POINT_KINDS), value=next(iter(POINT_KINDS)),
                                            label="a click adds")
                            points_text = gr.Textbox(label="points: X,Y,LABEL per line (1 object, 0 background)",
                                                     lines=2)
                        with gr.Row():
                            point_button = gr.Button("segment", variant="primary")
                            clear_points = gr.Button("clear points")
                        point_view = gr.Image(label="click to add points", type="numpy", format="png",
                                              interactive=False, height=VIEW_HEIGHT, elem_id="point-view")
                    with gr.Tab("box"):
                        with gr.Row():
                            box_text = gr.Textbox(label="box: X0,Y0,X1,Y1 (or click two opposite corners)")
                            box_button = gr.Button("segment", variant="primary")
                        box_view = gr.Image(label="click two corners", type="numpy", format="png",
                                            interactive=False, height=VIEW_HEIGHT, elem_id="box-view")
                    with gr.Tab("everything"):
                        with gr.Row():
                            grid = gr.Slider(4, 64, value=16 if demo.device.type == "cpu" else 32, step=1,
                                             label="grid density: points per side (N x N point prompts)")
                            everything_button = gr.Button("segment everything", variant="primary")
                        with gr.Accordion("thresholds", open=False):
                            iou_thresh = gr.Slider(0, 1, value=0.88, step=0.01, label="predicted IoU at least")
                            stability_thresh = gr.Slider(0, 1, value=0.95, step=0.01,
                                                         label="stability score at least")
                        everything_view = gr.Image(label="automatic masks", type="numpy", format="png",
                                                   interactive=False, height=VIEW_HEIGHT, elem_id="everything-view")
            with gr.Column(scale=2):  # the upload and what the model said
                image = gr.Image(label="image", type="numpy", image_mode="RGB", sources=["upload", "clipboard"],
                                 format="png", height=220)
                if examples:
                    gr.Examples([[str(p)] for p in examples], inputs=[image], label="examples")
                status = gr.Markdown("Upload an image to start.", elem_id="sam-status")
                scores = gr.Dataframe(headers=SCORE_COLUMNS, label="predicted IoU of each mask", interactive=False,
                                      wrap=True)
                mask_file = gr.File(label="mask PNG", interactive=False)

        results = [scores, mask_file, status]
        image.change(show_upload, [image],
                     [point_view, box_view, everything_view, points_text, box_text, scores, mask_file, status],
                     api_visibility="private"
                     ).then(embed, [image], [status], api_name="embed")

        point_button.click(segment_points, [image, points_text], [point_view, *results], api_name="segment_points")
        point_view.select(click_point, [points_text, kind], [points_text], api_visibility="private"
                          ).then(segment_points, [image, points_text], [point_view, *results],
                                 api_visibility="private")
        clear_points.click(lambda im: (im, "", None, None), [image], [point_view, points_text, scores, mask_file],
                           api_visibility="private")

        box_button.click(segment_box, [image, box_text], [box_view, *results], api_name="segment_box")
        box_view.select(click_corner, [image, box_text], [box_text, box_view, *results], api_visibility="private")

        everything_button.click(everything, [image, grid, iou_thresh, stability_thresh], [everything_view, *results],
                                api_name="everything", show_progress_on=[everything_view])
    return app


def page_theme():
    """Gradio's default look with local fonts (the stock theme fetches web fonts, which an offline
    machine cannot)."""
    gr = require_gradio()
    return gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                             font_mono=["ui-monospace", "monospace"])


def launch(app, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
           allowed_paths: Sequence[Union[str, Path]] = (), block: bool = True):
    """Serve the page; with ``block=False`` return at once (tests, scripts) and stop it with ``app.close()``."""
    return app.launch(server_name=host, server_port=port, share=share, theme=page_theme(), quiet=not block,
                      allowed_paths=[str(p) for p in allowed_paths], prevent_thread_lock=not block,
                      show_error=True)
