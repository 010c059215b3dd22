"""The demo page: a Gradio layout over ``repvit.sam.demo.SamDemo`` (images) and, when given,
``repvit.edgetam.video_demo.VideoDemo`` (videos) and ``repvit.demo.live_session.LiveDemo`` (a webcam).

This is the only module that imports Gradio (``pip install 'repvit-pytorch[sam-demo]'``), and only
when a page is built. ``repvit sam demo`` serves it. Every file the page hands to Gradio lands in
Gradio's cache; the page asks Gradio to delete those older than ``cache_seconds``, and the mask
PNGs themselves live in ``SamDemo``'s bounded folder, so a page left running does not fill the disk.
"""
# No ``from __future__ import annotations`` here: Gradio finds the click position by the
# ``gr.SelectData`` annotation of the handlers in build_app, which must stay a real object.
import functools
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from ..data.prompts import parse_box, parse_points
from ..sam.demo import SCORE_COLUMNS, Result, SamDemo, add_corner, add_point
from ..data.images import overlay
from .live_tab import add_live_tab
from .video_tab import add_video_tab

INSTALL_HINT = "pip install 'repvit-pytorch[sam-demo]'"
POINT_KINDS = {"object (positive)": 1, "background (negative)": 0}
VIEW_HEIGHT = 520  # pixels on the page; clicks are mapped back to image pixels
CACHE_SECONDS = 3600  # Gradio's copies of the page's outputs older than this are deleted, checked as often


def require_gradio():
    try:
        import gradio
    except ImportError:
        raise ImportError(f"the RepViT-SAM demo page needs Gradio: {INSTALL_HINT}") from None
    return gradio


def build_app(demo: SamDemo, *, examples: Sequence[Union[str, Path]] = (), cache_seconds: int = CACHE_SECONDS,
              video=None, video_examples: Sequence[Union[str, Path]] = (), live=None):
    """The page as a ``gr.Blocks``; ``.launch()`` serves it.

    Every ``cache_seconds`` Gradio deletes the files this page put in its cache (uploads, drawn
    overlays, mask PNGs) that are older than ``cache_seconds``.

    Endpoints for API clients (``gradio_client``): ``/embed`` (image -> status),
    ``/segment_points`` (image, points text -> overlay, scores table, mask PNG, status),
    ``/segment_box`` (image, box text -> the same) and ``/everything`` (image, grid points per side,
    IoU and stability thresholds -> the same, the PNG being a label image).

    ``video`` (a ``repvit.edgetam.video_demo.VideoDemo``) adds the video tab (``video_tab.py``) with
    its endpoints ``/video_first_frame`` and ``/track``; ``video_examples`` are clips it offers.

    ``live`` (a ``repvit.demo.live_session.LiveDemo``) adds the live tab (``live_tab.py``: the browser's
    camera tracked as it streams, no API endpoint); left ``None`` it comes with the video tab, over the
    video tab's predictor; ``False`` leaves it out.
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

    if live is None and video is not None:
        from .live_session import LiveDemo
        live = LiveDemo(video.predictor, weights=video.weights)

    title = "RepViT-SAM: segment anything with a RepViT encoder"
    if cache_seconds < 1:
        raise ValueError(f"cache_seconds must be at least 1, got {cache_seconds}")
    cache = (int(cache_seconds), int(cache_seconds))
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=cache) as app:
        gr.Markdown(f"## {title}\n"
                    f"Upload an image, then prompt with points or a box, or segment everything. The image "
                    f"encoder runs once per image; prompts reuse its embedding. Weights: {demo.weights or 'given'}.")
        with gr.Tabs():
            with gr.Tab("image (RepViT-SAM)", id="image"):
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
            if video is not None:
                with gr.Tab("video (EdgeTAM)", id="video"):
                    add_video_tab(gr, video, examples=video_examples, fail_clearly=fail_clearly)
            if live:
                with gr.Tab("live (EdgeTAM, webcam)", id="live"):
                    add_live_tab(gr, live, fail_clearly=fail_clearly)
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
