"""EdgeTAM end to end: ``repvit track`` on real frames, and the demo page's video tab driven through
its client API. The weights are the reference's seeded ones in the official layout (those of
test_edgetam.py, which shows them equal to the official code), so masks are real shapes, not
constants."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("sam2", reason="EdgeTAM needs the edgetam extra (Meta's sam2)")

from repvit.cli import main  # noqa: E402
from repvit.data.video import open_frames, write_video  # noqa: E402

from .conftest import shared_data  # noqa: E402
from .test_edgetam import write_reference_checkpoint  # noqa: E402

SIZE = (320, 180)   # the bedroom frames (960x540) downscaled: the model sees 1024 either way
BOXES = ("40,40,150,170", "180,20,300,120")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = write_reference_checkpoint(tmp_path_factory.mktemp("edgetam"))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """Frames 0, 10 and 20 of ../shared/data/videos/bedroom, 320x180, as an mp4."""
    source = shared_data("videos/bedroom", pattern="00020.jpg")
    frames = [np.asarray(Image.open(source / f"{i:05d}.jpg").convert("RGB").resize(SIZE)) for i in (0, 10, 20)]
    return write_video(frames, tmp_path_factory.mktemp("clip") / "bedroom.mp4", fps=8)


def masks_of(folder: Path, obj: int) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) > 0 for p in sorted((folder / "masks" / f"obj{obj}").iterdir())])


def library_track(checkpoint: Path, frames, box: str, threads: int = 2) -> np.ndarray:
    """Object 1's masks (frames x H x W) from ``repvit.edgetam.tracking.track`` (sam2's whole-video API) on
    ``frames`` (an ``open_frames`` JPEG folder), prompted with ``box`` on frame 0."""
    from repvit.edgetam import build_video_predictor
    from repvit.edgetam.tracking import TrackPrompt, track
    predictor = build_video_predictor(checkpoint, fused=True)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        tracks = track(predictor, frames.folder, [TrackPrompt(1, 0, [], tuple(float(v) for v in box.split(",")))],
                       num_frames=len(frames), size=frames.size)
    finally:
        torch.set_num_threads(before)
    return np.stack([tracks.masks[frame][1] for frame in range(len(frames))])


def test_latency_summary_of_known_frame_times():
    """The figures track.json reports, on times whose answer is known: 100, 300 and 200 ms (the 99th
    percentile interpolates between the sorted 200 and 300 at 1.98 of 2 steps: 298)."""
    from repvit.edgetam.live import latency_summary
    assert latency_summary([0.1, 0.3, 0.2]) == {"frames": 3, "median_ms": 200.0, "p99_ms": 298.0, "mean_ms": 200.0,
                                                "max_ms": 300.0, "frames_per_second": 5.0}
    assert latency_summary([]) == {"frames": 0}


def test_cli_tracks_two_objects_each_as_alone(checkpoint, clip, tmp_path, capsys):
    # The clip's frames as the JPEG folder sam2's whole-video API reads: the command streams the same pixels
    # from it (from the .mp4 it would decode them without the JPEG round trip, and a few hundred pixels
    # near the threshold would differ from the reference for that reason alone).
    frames = open_frames(clip, tmp_path / "frames")
    runs = {}
    for name, boxes in (("alone", BOXES[:1]), ("both", BOXES)):
        out = tmp_path / name
        args = ["track", str(frames.folder), "--checkpoint", str(checkpoint), "--output", str(out), "--quiet",
                "--threads", "2"]
        for box in boxes:
            args += ["--box", box]
        assert main(args) == 0, capsys.readouterr().err
        runs[name] = out
    record = json.loads((runs["both"] / "track.json").read_text())
    assert record["objects"] == [1, 2] and record["frames_done"] == 3 and record["stop_reason"] == "end of stream"
    latency = record["latency"]
    assert latency["frames"] == 2 and latency["median_ms"] > 0 and record["fused"] is True
    # two timed frames: the median is their mean, and the rate is its inverse
    assert latency["median_ms"] == pytest.approx(latency["mean_ms"], abs=0.011)
    assert latency["median_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert latency["frames_per_second"] == pytest.approx(1e3 / latency["mean_ms"], abs=1e-3)
    alone, both = masks_of(runs["alone"], 1), masks_of(runs["both"], 1)
    assert alone.shape == (3, SIZE[1], SIZE[0])
    # The library's track() on the same frames, box and weights (fused, at the command's two threads).
    want = library_track(checkpoint, frames, BOXES[0])
    assert [m.any() for m in want] == [True] * 3 and not want.all()   # a shape on every frame: not vacuous
    np.testing.assert_array_equal(alone, want)
    assert (alone != both).mean() < 1e-4     # object 1 tracks the same with object 2 beside it
    assert (masks_of(runs["both"], 2) != both).mean() > 0.01   # and object 2 is another object
    drawn = open_frames(runs["both"] / "overlay.mp4", tmp_path / "decoded")
    assert len(drawn) == 3 and drawn.size == SIZE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_video_tab_through_the_client_api(checkpoint, clip, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    pytest.importorskip("segment_anything")
    from repvit.demo.page import build_app, launch
    from repvit.edgetam import build_video_predictor
    from repvit.edgetam.video_demo import VideoDemo
    from repvit.sam import build_sam
    from repvit.sam.demo import SamDemo

    video = VideoDemo(build_video_predictor(checkpoint), weights="reference (seeded)", output_dir=tmp_path / "out",
                      max_frames=3)
    sam = SamDemo(build_sam(fused=True), weights="random", output_dir=tmp_path / "masks")
    app = build_app(sam, video=video, video_examples=[clip])
    port = free_port()
    launch(app, port=port, block=False, allowed_paths=[clip.parent])
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False,
                                      download_files=str(tmp_path / "downloads"))
        upload = gradio_client.handle_file(str(clip))
        first, points, status = client.predict(upload, api_name="/video_first_frame")
        decoded = open_frames(clip, tmp_path / "frames")
        assert np.array_equal(np.asarray(Image.open(first).convert("RGB")), decoded.frame(0))
        assert points == "" and "3 frames of 320x180" in status
        tracked, drawn, status = client.predict(upload, "95,105,1", api_name="/track")
        assert "tracked through 3 frames" in status
        direct = video.track(clip, [(95.0, 105.0, 1)])   # the page shows what the work object computes
        assert np.array_equal(np.asarray(Image.open(drawn).convert("RGB")), direct.first_overlay)
        out = open_frames(tracked["video"] if isinstance(tracked, dict) else tracked, tmp_path / "tracked")
        assert len(out) == 3 and out.size == SIZE
        with pytest.raises(Exception, match="click the object"):
            client.predict(upload, "", api_name="/track")
    finally:
        app.close()
        video.close()
    assert len(list((tmp_path / "out").glob("tracked-*.mp4"))) == 0   # close() removed its videos
