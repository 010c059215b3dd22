"""Streaming frame sources and the live overlay writer (``repvit.data.stream``, ``repvit.data.video``),
on the shared bedroom frames (``../shared/data/videos/bedroom``) and small videos made from them in
``tmp_path``. Subprocesses import the data layer alone (it imports nothing above it): they start fast."""
from __future__ import annotations

import http.server
import io
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import weakref
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import repvit.data.stream as stream
import repvit.data.video as video
from repvit.data.stream import (LiveVideoWriter, SourceNotFound, SourceUnavailable, count_frames, from_iterable,
                                open_source)
from repvit.data.video import open_frames
from tests.conftest import REPO_ROOT, shared_data

av = pytest.importorskip("av")

# A child process that imports ``repvit.data`` without ``repvit/__init__.py`` (which loads torch).
DATA_LAYER_ONLY = f"""import sys, types
package = types.ModuleType("repvit"); package.__path__ = [{str(REPO_ROOT / 'repvit')!r}]
sys.modules["repvit"] = package
"""


@pytest.fixture(scope="module")
def bedroom() -> Path:
    return shared_data("videos/bedroom", pattern="*.jpg")


def decoded(path: Path) -> list:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


@pytest.fixture(scope="module")
def clip(bedroom, tmp_path_factory) -> Path:
    """24 bedroom frames at half size as an H.264 .mp4, keyframes every 8 frames."""
    path = tmp_path_factory.mktemp("clip") / "bedroom.mp4"
    with LiveVideoWriter(path, fps=12, keyframe_s=8 / 12) as writer:
        for frame in open_source(bedroom, max_frames=24):
            writer.write(frame.image[::2, ::2])
    return path


def test_a_folder_is_read_one_frame_at_a_time(bedroom, monkeypatch):
    reads = []
    original = stream._read_image
    monkeypatch.setattr(stream, "_read_image", lambda path: reads.append(path.name) or original(path))
    source = open_source(bedroom)
    assert reads == [] and source.size == (960, 540) and source.kind == "folder" and not source.live
    first, second = next(source), next(source)
    assert reads == ["00000.jpg", "00001.jpg"] and first.image.flags.writeable
    assert (first.index, first.source_index, second.source_index, first.timestamp_s) == (0, 0, 1, None)
    assert np.array_equal(first.image, np.asarray(Image.open(bedroom / "00000.jpg").convert("RGB")))
    source.close()
    assert source.stop_reason == "closed" and list(source) == [] and len(reads) == 2


def test_every_and_max_frames_read_only_the_frames_yielded(bedroom, monkeypatch):
    reads = []
    original = stream._read_image
    monkeypatch.setattr(stream, "_read_image", lambda path: reads.append(path.name) or original(path))
    source = open_source(bedroom, every=7, max_frames=4)
    frames = list(source)
    assert [f.source_index for f in frames] == [0, 7, 14, 21] and [f.index for f in frames] == [0, 1, 2, 3]
    assert reads == ["00000.jpg", "00007.jpg", "00014.jpg", "00021.jpg"] and source.stop_reason == "max frames"
    backward = list(open_source(bedroom, start=12, reverse=True, every=5))
    assert [f.source_index for f in backward] == [12, 7, 2]
    assert np.array_equal(backward[1].image, frames[1].image)


def test_natural_order_and_mixed_formats(tmp_path):
    for number, suffix in ((10, ".png"), (2, ".bmp"), (1, ".jpg"), (9, ".webp")):
        Image.fromarray(np.full((8, 10, 3), number * 20, np.uint8)).save(tmp_path / f"{number}{suffix}", lossless=True)
    (tmp_path / "notes.txt").write_text("not a frame")
    frames = list(open_source(tmp_path))
    assert [round(f.image[0, 0, 0] / 20) for f in frames] == [1, 2, 9, 10]
    assert count_frames(tmp_path) == 4


def test_a_truncated_jpeg_in_the_middle_is_skipped_and_counted(bedroom, tmp_path):
    for index in range(5):
        shutil.copyfile(bedroom / f"{index:05d}.jpg", tmp_path / f"{index:05d}.jpg")
    broken = tmp_path / "00002.jpg"
    broken.write_bytes(broken.read_bytes()[:2000])
    source = open_source(tmp_path)
    frames = list(source)
    assert [f.source_index for f in frames] == [0, 1, 3, 4] and [f.index for f in frames] == [0, 1, 2, 3]
    assert len(source.skipped) == 1 and source.skipped[0]["index"] == 2
    assert "00002.jpg" in source.skipped[0]["reason"] and "\n" not in source.skipped[0]["reason"]
    assert source.stop_reason == "end of stream" and all(np.array_equal(
        f.image, np.asarray(Image.open(bedroom / f"{f.source_index:05d}.jpg").convert("RGB"))) for f in frames)


def test_a_video_is_decoded_incrementally_to_the_frames_pyav_gives(clip, tmp_path, monkeypatch):
    produced = []
    original = video.decode_frames

    def counting(container, stream_):
        for item in original(container, stream_):
            produced.append(item[0])
            yield item
    monkeypatch.setattr(video, "decode_frames", counting)
    source = open_source(clip)
    assert source.fps == 12 and source.size == (480, 270) and "h264" in source.description
    head = [next(source) for _ in range(3)]
    assert produced == [0, 1, 2]   # nothing decoded ahead of the consumer
    frames = head + list(source)
    reference = decoded(clip)
    assert len(frames) == len(reference) == 24 and source.stop_reason == "end of stream"
    assert all(np.array_equal(f.image, r) for f, r in zip(frames, reference))
    assert [f.timestamp_s for f in frames[:3]] == pytest.approx([0, 1 / 12, 2 / 12])
    folder = open_frames(clip, tmp_path / "jpegs")   # the whole-video path: JPEG re-encoded, so close, not equal
    assert len(folder) == 24 and np.abs(folder.frame(5).astype(int) - frames[5].image).mean() < 3
    every = list(open_source(clip, every=5, start=2))
    assert [f.source_index for f in every] == [2, 7, 12, 17, 22]
    assert all(np.array_equal(f.image, reference[f.source_index]) for f in every)
    assert count_frames(clip) == 24


def test_a_video_reads_backward_block_by_block_without_holding_it(clip):
    reference = decoded(clip)
    backward = list(video.read_backward(clip, 22, 3, max_bytes=5 * 480 * 270 * 3))   # 5 frames a block
    assert [index for index, *_ in backward] == [22, 19, 16, 13, 10, 7, 4, 1]
    assert all(np.array_equal(image, reference[index]) for index, image, _, _ in backward)
    source = open_source(clip, start=23, reverse=True)
    frames = list(source)
    assert [f.source_index for f in frames] == list(range(23, -1, -1)) and "backward" in source.description
    assert all(np.array_equal(f.image, reference[f.source_index]) for f in frames)
    with pytest.raises(ValueError, match="frame 24 asked for, the video has 24 frames"):
        open_source(clip, start=24, reverse=True)


def test_packets_that_do_not_decode_are_skipped_not_raised(clip, tmp_path):
    broken = tmp_path / "broken.mp4"
    with av.open(str(clip)) as source, av.open(str(broken), "w") as target:
        out = target.add_stream_from_template(source.streams.video[0])
        for number, packet in enumerate(p for p in source.demux(video=0) if p.dts is not None):
            if number in (9, 10):   # two frames' data replaced by noise: the decoder refuses them
                noise = av.Packet(np.random.default_rng(number).integers(0, 256, 400, dtype=np.uint8).tobytes())
                noise.pts, noise.dts, noise.time_base = packet.pts, packet.dts, packet.time_base
                packet = noise
            packet.stream = out
            target.mux(packet)
    source = open_source(broken)
    frames = list(source)
    assert source.stop_reason == "end of stream" and [s["index"] for s in source.skipped] == [9, 10]
    assert source.skipped[0]["reason"] == "decode error: Invalid data found when processing input"
    assert len(frames) == 22 and [f.source_index for f in frames[8:10]] == [8, 11]
    assert np.array_equal(frames[0].image, decoded(clip)[0])


def test_raw_frames_on_stdin_from_a_pipe(monkeypatch):
    width, height, count = 32, 24, 6
    producer = ("import sys, numpy as np\n"
                f"for i in range({count}):\n"
                f"    sys.stdout.buffer.write(np.full(({height}, {width}, 3), i * 30, np.uint8).tobytes())\n"
                "sys.stdout.buffer.write(b'partial')\n")
    child = subprocess.Popen([sys.executable, "-c", producer], stdout=subprocess.PIPE)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(child.stdout))
    source = open_source("-", size=(width, height), fps=10, live=False)
    frames = list(source)
    child.wait(timeout=10)
    assert source.kind == "stdin" and source.description == f"stdin (raw rgb24 {width}x{height})"
    assert [int(f.image[3, 5, 1]) for f in frames] == [i * 30 for i in range(count)]
    assert frames[0].image.shape == (height, width, 3) and frames[2].timestamp_s == pytest.approx(0.2)
    assert source.skipped == [{"index": count, "reason": f"stdin ended mid-frame (7 of {width * height * 3} bytes)"}]
    with pytest.raises(ValueError, match="stdin-size"):
        open_source("-")


def test_a_slow_consumer_gets_the_newest_frame_and_drops_are_counted():
    made, freed, finished = [], [], []   # list.append is atomic: both threads free frames
    started = time.monotonic()

    def producer():   # 60 frames, one every 5 ms
        for i in range(60):
            image = np.full((48, 64, 3), i, np.uint8)
            made.append(i)
            weakref.finalize(image, freed.append, i)
            yield image
            time.sleep(0.005)
        finished.append(time.monotonic() - started)
    source = from_iterable(producer())
    assert source.live and source.kind == "iterable"
    taken, most_alive = [], 0
    for frame in source:
        most_alive = max(most_alive, len(made) - len(freed))
        taken.append(frame.source_index)
        assert int(frame.image[0, 0, 0]) == frame.source_index
        time.sleep(0.025)   # the tracker, five times slower than the source
    assert source.stop_reason == "end of stream" and taken[-1] == 59 and taken == sorted(set(taken))
    assert source.dropped > 20 and len(taken) + source.dropped == 60
    assert most_alive <= 4          # no queue: the consumer's frame, the newest, the one being made
    assert finished[0] < 60 * 0.025  # the producer never waited for the consumer


def test_a_fast_consumer_drops_nothing_and_a_broken_source_ends_with_a_reason():
    def paced(fail_at=None):
        for i in range(12):
            if i == fail_at:
                raise ConnectionResetError("peer went away")
            time.sleep(0.02)
            yield np.full((8, 8, 3), i, np.uint8)
    source = from_iterable(paced())
    assert [f.source_index for f in source] == list(range(12)) and source.dropped == 0
    for live in (True, False):
        broken = from_iterable(paced(fail_at=5), live=live)
        assert len(list(broken)) >= 1 and broken.stop_reason == "source error: peer went away"


def test_max_frames_stops_an_endless_live_source_and_its_reader():
    before = threading.active_count()
    source = from_iterable(itertools.repeat(np.zeros((4, 4, 3), np.uint8)), max_frames=5)   # endless
    assert len(list(source)) == 5 and source.stop_reason == "max frames"
    assert threading.active_count() == before


@pytest.mark.parametrize("scheme", ["rtsp", "http"])
def test_an_unreachable_url_fails_fast_without_showing_its_password(scheme):
    with socket.socket() as probe:   # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"{scheme}://viewer:s3cret@127.0.0.1:{probe.getsockname()[1]}/live"
    started = time.monotonic()
    with pytest.raises(SourceUnavailable) as caught:
        open_source(url)
    assert time.monotonic() - started < 3
    message = str(caught.value)
    assert message.startswith(f"stream {scheme}://***@127.0.0.1:") and "could not be opened" in message
    assert "s3cret" not in message and "check the address" in message


def test_a_server_that_never_answers_times_out():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        started = time.monotonic()
        with pytest.raises(SourceUnavailable, match="no answer in 1 s"):
            open_source(f"http://127.0.0.1:{server.getsockname()[1]}/v.mp4", timeout_s=1)
        assert time.monotonic() - started < 4


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:   # no request lines in the test's output
        pass


def test_a_video_over_http_streams_live_or_in_full(clip):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(QuietHandler, directory=str(clip.parent)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{clip.name}"
    try:
        live = open_source(url)
        taken = [f.source_index for f in live]
        assert live.live and live.kind == "url" and live.description.startswith(f"stream {url} (h264 480x270")
        assert live.stop_reason == "end of stream" and len(taken) + live.dropped == 24 and taken[-1] == 23
        whole = open_source(url, live=False)
        assert all(np.array_equal(f.image, r) for f, r in zip(whole, decoded(clip), strict=True))
    finally:
        server.shutdown()
        server.server_close()


def test_a_missing_camera_or_path_says_what_was_tried_and_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        open_source(57)
    assert isinstance(caught.value, SourceNotFound) and isinstance(caught.value, ValueError)
    assert str(caught.value) == ("camera 57 (/dev/video57) could not be opened: no such device; "
                                 "list cameras with `v4l2-ctl --list-devices`")
    with pytest.raises(SourceNotFound, match="no such frame folder or video file"):
        open_source(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceNotFound, match="no frames"):
        open_source(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceUnavailable, match="not a frame folder or a video file"):
        open_source(tmp_path / "notes.txt")
    (tmp_path / "fake.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(SourceUnavailable, match="fake.mp4 could not be opened"):
        open_source(tmp_path / "fake.mp4")
    with pytest.raises(ValueError, match="need a file or a folder"):
        open_source("rtsp://127.0.0.1/x", reverse=True)


def test_the_writer_leaves_exactly_the_frames_written(tmp_path):
    frames = [np.random.default_rng(i).integers(0, 256, (121, 161, 3), dtype=np.uint8) for i in range(7)]
    writer = LiveVideoWriter(tmp_path / "out" / "overlay.mp4", fps=10)
    for frame in frames:
        writer.write(frame)
    assert writer.close() == tmp_path / "out" / "overlay.mp4" and writer.frames == 7
    result = decoded(writer.path)
    assert len(result) == 7 and result[0].shape == (122, 162, 3)   # odd sides padded for 4:2:0
    with pytest.raises(ValueError, match="closed"):
        writer.write(frames[0])
    timed = LiveVideoWriter(tmp_path / "timed.mp4", fps=10)
    for seconds in (5.0, 5.5, 5.6, 7.0):
        timed.write(frames[0], timestamp_s=seconds)
    timed.close()
    with av.open(str(timed.path)) as container:
        assert [f.time for f in container.decode(video=0)] == pytest.approx([0, 0.5, 0.6, 2.0])


def test_the_mpeg4_fallback_flushes_what_its_encoder_holds(tmp_path, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", set(av.codecs_available) - {"libx264"})
    with LiveVideoWriter(tmp_path / "overlay.mp4", fps=8) as writer:
        for i in range(9):
            writer.write(np.full((64, 80, 3), i * 25, np.uint8))
    assert len(decoded(writer.path)) == writer.frames == 9


def test_close_from_a_signal_handler_in_the_middle_of_a_write(tmp_path):
    writer = LiveVideoWriter(tmp_path / "overlay.mp4", fps=10)
    for i in range(3):
        writer.write(np.full((32, 32, 3), i * 60, np.uint8))
    real = writer._stream

    def encode_then_handler(frame):   # a SIGTERM handler calling close() between encoding a frame and muxing it
        packets = real.encode(frame)
        if frame is not None:
            writer.close()
        return packets
    writer._stream = types.SimpleNamespace(encode=encode_then_handler)
    writer.write(np.zeros((32, 32, 3), np.uint8))
    assert writer.closed and len(decoded(writer.path)) == writer.frames == 4


WRITER_CHILD = DATA_LAYER_ONLY + """
import signal, sys, time
import numpy as np
from repvit.data.video import LiveVideoWriter
path, how = sys.argv[1], sys.argv[2]
writer = LiveVideoWriter(path, fps=10, keyframe_s=0.5)
def on_term(signum, frame):
    if how == "handler":
        writer.close()
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
rng = np.random.default_rng(0)
try:
    for i in range(10 ** 6):
        writer.write(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
        if i == 11:
            print("ready", flush=True)
        time.sleep(0.002)
finally:
    if how == "finally":
        writer.close()
    print(writer.frames, flush=True)
"""


@pytest.mark.parametrize("how", ["handler", "finally", "kill"])
def test_the_overlay_is_playable_after_sigterm_or_even_sigkill(tmp_path, how):
    script = tmp_path / "child.py"
    script.write_text(WRITER_CHILD)
    path = tmp_path / "overlay.mp4"
    child = subprocess.Popen([sys.executable, str(script), str(path), how], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        child.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        output, _ = child.communicate(timeout=20)
    finally:
        child.kill()
    if how == "kill":   # fragments end at keyframes (every 5 frames here): all but the last few survive
        played = open_source(path)   # a player's view: what decodes, the cut-off fragment skipped
        assert child.returncode == -signal.SIGKILL and len(list(played)) >= 10
    else:
        assert child.returncode == 143 and len(decoded(path)) == int(output.split()[-1]) >= 12


def test_without_pyav_the_writer_leaves_png_frames_and_one_note(tmp_path, monkeypatch, capsys):
    def missing():
        raise ImportError("reading and writing video files needs PyAV")
    monkeypatch.setattr(video, "require_av", missing)
    with LiveVideoWriter(tmp_path / "overlay.mp4") as writer:
        for i in range(3):
            writer.write(np.full((6, 8, 3), i, np.uint8))
    assert writer.path == tmp_path / "overlay" and sorted(p.name for p in writer.path.iterdir()) == [
        "00000.png", "00001.png", "00002.png"]
    assert capsys.readouterr().err.count("note:") == 1
