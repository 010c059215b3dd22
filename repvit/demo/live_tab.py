"""The demo page's live tab over ``live_session.LiveDemo``: the browser's camera streams to the
server, the visitor clicks the object on the live view and watches its mask follow it, with the
frame rate, the time per frame and the dropped frames in the status.

Each visitor's ``LiveSession`` (tracker, worker, view files) lives in that visitor's ``gr.State`` and
nowhere else; Gradio drops it (and the page closes it) ``idle_seconds`` after its last frame, or when
the tab is closed, and the session itself frees its tracker after ``idle_seconds`` without a frame.
The tab has no API endpoint: a camera stream is a browser's business.
"""
# No ``from __future__ import annotations``: Gradio reads the ``gr.SelectData`` annotation.
from pathlib import Path
from typing import Optional, Union

from .live_session import LiveDemo, LiveSession

VIEW_HEIGHT = 420
CLICK_KINDS = {"object (positive)": 1, "background (negative)": 0}


class LiveHandlers:
    """The tab's event handlers as plain functions of the session state (``None`` before the first
    frame): ``frame`` -> (new view file or ``None`` when unchanged, status, session), ``click`` ->
    status, ``reset`` -> (view file or ``None``, status, session), ``end`` (Gradio drops the state)."""

    def __init__(self, live: LiveDemo, *, under: Union[str, Path, None] = None):
        self.live, self.under = live, under

    def frame(self, image, session: Optional[LiveSession]):
        if image is None:
            return None, session.status() if session is not None else LiveSession.status_before_camera(), session
        if session is None or session.closed:
            session = self.live.new_session(under=self.under)
        view = session.offer(image)
        return view.image, view.status, session

    def click(self, session: Optional[LiveSession], x: float, y: float, kind: str) -> str:
        if session is None:
            raise ValueError("start the camera first (its record button): a click marks the object on the live view")
        if kind not in CLICK_KINDS:
            raise ValueError(f"a click adds one of {', '.join(CLICK_KINDS)}; got {kind!r}")
        return session.click(x, y, CLICK_KINDS[kind])

    def reset(self, session: Optional[LiveSession]):
        if session is None:
            return None, LiveSession.status_before_camera(), None
        view = session.reset()
        return view.image, view.status, session

    @staticmethod
    def end(session: Optional[LiveSession]) -> None:
        if session is not None:
            session.close()


def add_live_tab(gr, live: LiveDemo, *, fail_clearly):
    """Lay the tab out inside the current ``gr.Tab`` and wire its events."""
    with gr.Row():
        with gr.Column(scale=3):
            view = gr.Image(label="live view: click the object", type="filepath", interactive=False,
                            height=VIEW_HEIGHT, elem_id="live-view")
            with gr.Row():
                kind = gr.Radio(list(CLICK_KINDS), value=next(iter(CLICK_KINDS)), label="a click adds")
                reset_button = gr.Button("forget the object")
        with gr.Column(scale=2):
            camera = gr.Image(label="camera", sources=["webcam"], streaming=True, type="numpy", height=220,
                              elem_id="live-camera")
            status = gr.Markdown(LiveSession.status_before_camera(), elem_id="live-status")
            gr.Markdown(f"Weights: {live.weights or 'given'}. A frame is sent every {live.stream_every:g} s; the "
                        f"tracker takes the newest. A stream runs {live.stream_seconds:g} s at most (press record "
                        f"again), and {live.idle_seconds:g} s without a frame frees the tracker.")
    # the view files go in Gradio's cache, which Gradio serves as they are (outside it, it copies each)
    handlers = LiveHandlers(live, under=Path(view.GRADIO_CACHE))
    session = gr.State(None, time_to_live=2 * live.idle_seconds, delete_callback=handlers.end)

    def unchanged_as_skip(image):
        return gr.skip() if image is None else image

    @fail_clearly
    def on_frame(image, state):
        image, text, state = handlers.frame(image, state)
        return unchanged_as_skip(image), text, state

    @fail_clearly
    def on_click(state, kind_name, evt: gr.SelectData):
        return handlers.click(state, *evt.index[:2], kind_name)

    @fail_clearly
    def on_reset(state):
        image, text, state = handlers.reset(state)
        return unchanged_as_skip(image), text, state

    camera.stream(on_frame, [camera, session], [view, status, session], stream_every=live.stream_every,
                  time_limit=live.stream_seconds, concurrency_limit=live.max_streams, concurrency_id="live-tab",
                  show_progress="hidden", api_visibility="private")
    view.select(on_click, [session, kind], [status], api_visibility="private", show_progress="hidden")
    reset_button.click(on_reset, [session], [view, status, session], api_visibility="private", show_progress="hidden")
