"""The demo page's video tab over ``repvit.edgetam.video_demo.VideoDemo``: pick a clip (upload or an
example), click the object on its first frame, watch it tracked through the clip.

Endpoints for API clients: ``/video_first_frame`` (video -> first frame, status) and ``/track``
(video, points text -> overlay video, first frame with the mask, status). The points text is the
image tab's: ``X,Y,LABEL`` per line.
"""
# No ``from __future__ import annotations``: Gradio reads the ``gr.SelectData`` annotation.
from typing import Sequence

from ..data.prompts import parse_points
from ..sam.demo import add_point

VIEW_HEIGHT = 420


def add_video_tab(gr, video, *, examples: Sequence = (), fail_clearly):
    """Lay the tab out inside the current ``gr.Tab`` and wire its events."""

    @fail_clearly
    def first_frame(clip):
        if clip is None:
            return None, "", "Upload a clip or pick an example."
        frame, status = video.first_frame(clip)
        return frame, "", status

    @fail_clearly
    def run_track(clip, points_text, progress=gr.Progress()):
        def on_frame(done, total):
            progress((done, total), desc="tracking", unit="frames")
        result = video.track(clip, parse_points(points_text), on_frame=on_frame)
        return result.video, result.first_overlay, result.status

    def click(points_text, evt: gr.SelectData):
        return add_point(points_text, *evt.index[:2], 1)

    with gr.Row():
        with gr.Column(scale=3):
            frame_view = gr.Image(label="first frame: click the object", type="numpy", format="png",
                                  interactive=False, height=VIEW_HEIGHT, elem_id="video-first-frame")
            with gr.Row():
                points_text = gr.Textbox(label="points on the first frame: X,Y,LABEL per line", lines=2)
                track_button = gr.Button("track", variant="primary")
            tracked = gr.Video(label="tracked", interactive=False, height=VIEW_HEIGHT)
        with gr.Column(scale=2):
            clip = gr.Video(label="clip (mp4, mov, webm)", sources=["upload"], height=220)
            if examples:
                gr.Examples([[str(p)] for p in examples], inputs=[clip], label="examples")
            status = gr.Markdown(f"Upload a clip or pick an example. Clips are cut at {video.max_frames} frames.",
                                 elem_id="video-status")

    clip.change(first_frame, [clip], [frame_view, points_text, status], api_name="video_first_frame")
    frame_view.select(click, [points_text], [points_text], api_visibility="private")
    track_button.click(run_track, [clip, points_text], [tracked, frame_view, status], api_name="track",
                       show_progress_on=[tracked])
