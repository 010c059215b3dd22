"""Video frames in and out (``repvit.data.video``), whole-video tracking (``repvit.edgetam.tracking``)
and ``repvit track``'s files, with a stand-in predictor of sam2's video API whose masks are known
(EdgeTAM itself, with its equality to the official code, is tested in test_edgetam.py)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repvit.cli import main
from repvit.data.video import open_frames, write_video
from repvit.edgetam.tracking import TrackPrompt, merged, track

from .conftest import shared_data


@pytest.fixture(scope="module")
def bedroom(tmp_path_factory) -> Path:
    """The first 6 real frames of ../shared/data/videos/bedroom, downscaled to 240x136 (numbered JPEGs)."""
    source = shared_data("videos/bedroom", pattern="*.jpg")
    folder = tmp_path_factory.mktemp("bedroom")
    for index in range(6):
        with Image.open(source / f"{index:05d}.jpg") as im:
            im.resize((240, 136)).save(folder / f"{index:05d}.jpg", quality=95)
    return folder


class StandInPredictor:
    """sam2's video API; object K's mask on frame f is the square of side 20 around its prompt point
    (or box centre) moved right by (f - prompted frame) * 3 pixels: tracking that can be checked."""

    def __init__(self):
        self.calls = []

    def init_state(self, video_path):
        frames = sorted(Path(video_path).glob("*.jpg"))
        assert [int(p.stem) for p in frames] == list(range(len(frames))), "frames must be numbered 00000.jpg..."
        width, height = Image.open(frames[0]).size
        return {"num_frames": len(frames), "size": (width, height), "anchors": {}}

    def add_new_points_or_box(self, state, *, frame_idx, obj_id, points=None, labels=None, box=None):
        self.calls.append((frame_idx, obj_id, None if points is None else points.tolist(),
                           None if labels is None else labels.tolist(), None if box is None else box.tolist()))
        centre = points[0] if points is not None else ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        state["anchors"][obj_id] = (frame_idx, float(centre[0]), float(centre[1]))

    def expected(self, state, obj_id, frame):
        width, height = state["size"]
        start, x, y = state["anchors"][obj_id]
        mask = np.zeros((height, width), dtype=bool)
        x = int(x + (frame - start) * 3)
        mask[max(int(y) - 10, 0): int(y) + 10, max(x - 10, 0): x + 10] = True
        return mask

    def propagate_in_video(self, state, reverse=False):
        ids = sorted(state["anchors"])
        first = min(f for f, _, _ in state["anchors"].values())
        order = range(first, -1, -1) if reverse else range(first, state["num_frames"])
        for frame in order:
            masks = np.stack([self.expected(state, o, frame) for o in ids])[:, None]
            yield frame, ids, torch.from_numpy(masks.astype(np.float32) * 20 - 10)


def test_open_frames_links_renames_converts_and_decodes(bedroom, tmp_path):
    frames = open_frames(bedroom, tmp_path / "w0")
    assert frames.folder == bedroom and len(frames) == 6 and frames.size == (240, 136)   # used as it is
    frames = open_frames(bedroom, tmp_path / "w0", max_frames=4)   # the predictor reads whole folders: links
    assert frames.folder == tmp_path / "w0" and sorted(p.name for p in frames.folder.iterdir()) == [
        f"{i:05d}.jpg" for i in range(4)]
    odd = tmp_path / "odd"
    odd.mkdir()
    for index in range(6):   # names sam2 cannot sort (frame_2 < frame_10 only in natural order), and PNGs
        name = f"frame_{index * 5}" + (".png" if index % 2 else ".jpg")
        Image.open(bedroom / f"{index:05d}.jpg").save(odd / name)
    frames = open_frames(odd, tmp_path / "w1", max_frames=5)
    assert len(frames) == 5 and frames.folder == tmp_path / "w1"
    assert [Path(s).name for s in frames.sources] == ["frame_0.jpg", "frame_5.png", "frame_10.jpg", "frame_15.png",
                                                      "frame_20.jpg"]
    assert sorted(p.name for p in frames.folder.iterdir()) == [f"{i:05d}.jpg" for i in range(5)]
    for index in range(5):   # frame i is source i: linked JPEGs as they are, PNGs re-encoded at quality 95
        diff = np.abs(frames.frame(index).astype(int) - np.asarray(Image.open(frames.sources[index])).astype(int))
        assert diff.max() == 0 if index % 2 == 0 else diff.mean() < 1.5, index
    video = write_video((frames.frame(i) for i in range(5)), tmp_path / "clip.mp4", fps=12)
    decoded = open_frames(video, tmp_path / "w2")
    assert len(decoded) == 5 and decoded.size == (240, 136) and decoded.fps == pytest.approx(12)
    for index in range(5):
        assert np.abs(decoded.frame(index).astype(int) - frames.frame(index).astype(int)).mean() < 6, index
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no frames"):
        open_frames(empty, tmp_path / "w3")
    (tmp_path / "clip.json").write_text("{}")
    with pytest.raises(ValueError, match="not a frame folder or a video file"):
        open_frames(tmp_path / "clip.json", tmp_path / "w4")


def test_track_covers_every_frame_and_object_forward_and_backward(bedroom):
    predictor = StandInPredictor()
    prompts = [TrackPrompt(1, 2, [(100.0, 60.0, 1)]), TrackPrompt(2, 3, [], (20.0, 20.0, 60.0, 50.0)),
               TrackPrompt(1, 2, [(104.0, 64.0, 0)])]
    seen = []
    tracks = track(predictor, bedroom, prompts, num_frames=6, size=(240, 136),
                   on_frame=lambda frame, masks: seen.append(frame))
    assert sorted(tracks.masks) == list(range(6)) and sorted(seen) == list(range(6)) and tracks.object_ids == [1, 2]
    replay = StandInPredictor()
    state = replay.init_state(bedroom)
    for call in predictor.calls:
        replay.add_new_points_or_box(state, frame_idx=call[0], obj_id=call[1],
                                        points=None if call[2] is None else np.array(call[2]),
                                        box=None if call[4] is None else np.array(call[4]))
    for frame in range(6):   # frames 0-1 come from the backward pass, 2-5 from the forward one
        for obj in (1, 2):
            assert (tracks.masks[frame][obj] == replay.expected(state, obj, frame)).all(), (frame, obj)
    # The two points of object 1 on frame 2 went in one call (a second call would replace the first).
    assert predictor.calls[:2] == [(2, 1, [[100.0, 60.0], [104.0, 64.0]], [1, 0], None),
                                   (3, 2, None, None, [20.0, 20.0, 60.0, 50.0])]
    assert tracks.areas()[2] == [tracks.masks[f][2].sum() for f in range(6)]
    assert tracks.summary(prompted=[2, 3])["frames"] == 4


def test_track_refuses_bad_prompts(bedroom):
    with pytest.raises(ValueError, match="frames 0-5"):
        track(StandInPredictor(), bedroom, [TrackPrompt(1, 6, [(1.0, 1.0, 1)])], num_frames=6, size=(240, 136))
    with pytest.raises(ValueError, match="outside the 240x136"):
        track(StandInPredictor(), bedroom, [TrackPrompt(1, 0, [(241.0, 1.0, 1)])], num_frames=6, size=(240, 136))
    with pytest.raises(ValueError, match="holds 6 frames, not the 4 expected"):
        track(StandInPredictor(), bedroom, [TrackPrompt(1, 0, [(1.0, 1.0, 1)])], num_frames=4, size=(240, 136))
    with pytest.raises(ValueError, match="two boxes on frame 0"):
        merged([TrackPrompt(1, 0, [], (0, 0, 5, 5)), TrackPrompt(1, 0, [], (1, 1, 5, 5))])


class StandInStream:
    """The streaming trackers' API; object K's mask on frame t is the square of side 20 around its prompt point
    (or box centre, or mask centroid) moved right by (t - prompted frame) * 3 pixels."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.steps, self.anchors, self.frame_index, self.size = delay, [], {}, -1, None

    @property
    def object_ids(self) -> list:
        return list(self.anchors)

    def expected(self, obj_id: int, t: int, size: tuple) -> np.ndarray:
        height, width = size
        start, x, y = self.anchors[obj_id]
        mask = np.zeros((height, width), dtype=bool)
        x = int(x + (t - start) * 3)
        mask[max(int(y) - 10, 0): int(y) + 10, max(x - 10, 0): x + 10] = True
        return mask

    def _result(self):
        from repvit.edgetam.streaming import StepResult
        logits = np.stack([self.expected(o, self.frame_index, self.size) for o in self.anchors]).astype(np.float32) \
            * 20 - 10 if self.anchors else np.zeros((0, *self.size), np.float32)
        return StepResult(self.frame_index, self.object_ids, logits)

    def step(self, frame):
        import time
        time.sleep(self.delay)
        self.frame_index += 1
        self.size = frame.shape[:2]
        self.steps.append(int(frame.astype(np.int64).sum()))
        return self._result()

    def add_new_points_or_box(self, obj_id, points=None, labels=None, box=None):
        from repvit.data.prompts import Prompt
        Prompt([(x, y, 1) for x, y in points or []], box).check(self.size[1], self.size[0], picture="frame")
        centre = points[0] if points else ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
        self.anchors[obj_id] = (self.frame_index, float(centre[0]), float(centre[1]))
        return self._result()

    def reset_state(self):
        self.anchors, self.frame_index = {}, -1

    def add_new_mask(self, obj_id, mask):
        ys, xs = np.nonzero(mask)
        self.anchors[obj_id] = (self.frame_index, float(xs.mean()), float(ys.mean()))
        return self._result()


def stand_in(monkeypatch, stream: StandInStream) -> StandInStream:
    import repvit.commands._tracking as command
    monkeypatch.setattr(command, "make_tracker", lambda args, threads: (stream, {"runtime": "stand-in"}))
    return stream


def read_masks(folder: Path) -> dict:
    return {int(p.stem): np.asarray(Image.open(p)) > 0 for p in sorted(folder.iterdir())}


def test_cli_track_streams_a_video_file_writing_masks_overlay_and_record(bedroom, tmp_path, monkeypatch, capsys):
    stream = stand_in(monkeypatch, StandInStream())
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"object": 7, "frame": 2, "points": [[50, 40]]}]))
    video = write_video((np.asarray(Image.open(p)) for p in sorted(bedroom.iterdir())), tmp_path / "in.mp4", fps=10)
    out = tmp_path / "out"
    assert main(["track", str(video), "--prompts", str(prompts), "--box", "150,60,200,120",
                 "--output", str(out), "--quiet", "--threads", "1"]) == 0
    record = json.loads((out / "track.json").read_text())
    assert record["objects"] == [7, 8] and record["frames_done"] == 6 and record["stop_reason"] == "end of stream"
    assert record["runtime"] == "stand-in" and record["frames_dropped"] == 0 and record["frames_skipped"] == []
    assert set(record["latency"]) >= {"median_ms", "p99_ms", "frames_per_second", "peak_rss_mb"}
    assert record["latency"]["frames"] == 4        # frames 0 and 2 took prompts: timed apart
    assert [(p["object"], p["frame"]) for p in record["prompts"]] == [(7, 2), (8, None)]
    size = (136, 240)
    masks = {obj: read_masks(out / "masks" / f"obj{obj}") for obj in (7, 8)}
    assert sorted(masks[8]) == list(range(6)) and sorted(masks[7]) == [2, 3, 4, 5]   # object 7 starts on frame 2
    for obj, frames in masks.items():
        for t, mask in frames.items():
            assert (mask == stream.expected(obj, t, size)).all(), (obj, t)
    drawn = open_frames(out / "overlay.mp4", tmp_path / "decoded")
    assert len(drawn) == 6 and drawn.size == (240, 136)
    assert "2 object(s) through 6 frames (end of stream)" in capsys.readouterr().out


def test_cli_track_never_mixes_two_runs_and_refuses_bad_prompts(bedroom, tmp_path, monkeypatch, capsys):
    stand_in(monkeypatch, StandInStream())
    out = tmp_path / "out"
    assert main(["track", str(bedroom), "--point", "10,10", "--point", "30,30", "--box", "20,20,60,60",
                 "--output", str(out), "--quiet"]) == 0
    assert main(["track", str(bedroom), "--point", "10,10", "--output", str(out), "--quiet"]) == 2
    assert "holds a previous run" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["obj1"]
    stand_in(monkeypatch, StandInStream())
    assert main(["track", str(bedroom), "--box", "10,10,40,40", "--box", "50,50,90,90", "--output", str(out),
                 "--overwrite", "--max-frames", "3", "--quiet"]) == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["obj1", "obj2"]      # the old run is gone
    assert [len(list((out / "masks" / o).iterdir())) for o in ("obj1", "obj2")] == [3, 3]
    assert json.loads((out / "track.json").read_text())["stop_reason"] == "max frames"
    stand_in(monkeypatch, StandInStream())
    assert main(["track", str(bedroom), "--box", "200,100,300,130", "--output", str(tmp_path / "o2"), "--quiet"]) == 2
    assert "reaches outside the 240x136 frame" in capsys.readouterr().err
    assert json.loads((tmp_path / "o2" / "track.json").read_text())["stop_reason"].startswith("error: ValueError")
    assert main(["track", str(bedroom), "--output", str(tmp_path / "o3")]) == 2
    assert "give a prompt" in capsys.readouterr().err
    assert main(["track", str(bedroom), "--point", "1,1", "--every", "2", "--frame", "3",
                 "--output", str(tmp_path / "o4")]) == 2
    assert "would never be tracked" in capsys.readouterr().err


def test_cli_track_skips_a_corrupt_frame_and_tracks_every_nth(bedroom, tmp_path, monkeypatch):
    folder = tmp_path / "frames"
    shutil.copytree(bedroom, folder)
    data = (folder / "00003.jpg").read_bytes()
    (folder / "00003.jpg").write_bytes(data[: len(data) // 3])       # a truncated JPEG in the middle
    stream = stand_in(monkeypatch, StandInStream())
    out = tmp_path / "out"
    assert main(["track", str(folder), "--point", "100,60", "--output", str(out), "--quiet"]) == 0
    record = json.loads((out / "track.json").read_text())
    assert record["frames_done"] == 5 and len(stream.steps) == 5          # the tracker never saw frame 3
    assert [s["index"] for s in record["frames_skipped"]] == [3] and record["frames_skipped"][0]["reason"]
    assert sorted(read_masks(out / "masks" / "obj1")) == [0, 1, 2, 4, 5]
    stand_in(monkeypatch, StandInStream())
    assert main(["track", str(bedroom), "--point", "100,60", "--every", "2", "--output", str(tmp_path / "o2"),
                 "--quiet"]) == 0
    assert sorted(read_masks(tmp_path / "o2" / "masks" / "obj1")) == [0, 2, 4]


def test_cli_track_stops_cleanly_on_sigterm(bedroom, tmp_path):
    """SIGTERM mid-run: every mask so far written, a playable overlay of exactly those frames, and a track.json
    that says where and why the run stopped."""
    import signal
    import subprocess
    import sys
    import time
    from repvit.data.video import open_frames as decode
    out = tmp_path / "out"
    code = ("import sys; sys.path.insert(0, {repo!r})\n"
            "from tests.test_track import StandInStream\n"
            "import repvit.commands._tracking as command\n"
            "command.make_tracker = lambda args, threads: (StandInStream(delay=0.4), {{'runtime': 'stand-in'}})\n"
            "from repvit.cli import main\n"
            "sys.exit(main(['track', {src!r}, '--point', '100,60', '--output', {out!r}, '--quiet']))\n")
    frames = tmp_path / "long"
    frames.mkdir()
    for i in range(60):
        shutil.copy(bedroom / f"{i % 6:05d}.jpg", frames / f"{i:05d}.jpg")
    repo = str(Path(__file__).resolve().parents[1])
    process = subprocess.Popen([sys.executable, "-c", code.format(repo=repo, src=str(frames), out=str(out))],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "masks" / "obj1").glob("*.png"))
                                         if (out / "masks" / "obj1").is_dir() else []) < 3:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    record = json.loads((out / "track.json").read_text())
    assert record["stop_reason"] == "stopped (signal)" and 3 <= record["frames_done"] < 60
    assert len(list((out / "masks" / "obj1").glob("*.png"))) == record["frames_done"]
    assert len(decode(out / "overlay.mp4", tmp_path / "decoded")) == record["frames_done"]


def test_cli_track_a_later_prompt_tracks_forward_then_backward_reading_the_file_again(bedroom, tmp_path, monkeypatch):
    stream = stand_in(monkeypatch, StandInStream())
    out = tmp_path / "out"
    assert main(["track", str(bedroom), "--point", "100,60", "--frame", "3", "--output", str(out), "--quiet"]) == 0
    record = json.loads((out / "track.json").read_text())
    masks = read_masks(out / "masks" / "obj1")
    assert sorted(masks) == list(range(6)) and record["frames_done"] == 6
    assert record["backward"]["from_frame"] == 3 and record["backward"]["frames_done"] == 4
    square = np.zeros((136, 240), bool)
    square[50:70, 90:110] = True
    assert (masks[3] == square).all()
    for t in (2, 1, 0):      # the backward pass: one stand-in step further from the prompt per frame
        assert (masks[t] == np.roll(square, 3 * (3 - t), axis=1)).all(), t
    assert (masks[5] == np.roll(square, 6, axis=1)).all()
    assert len(stream.steps) == 3 + 4                       # frames 3-5 forward, 3-0 backward: none held
    assert len(open_frames(out / "overlay.mp4", tmp_path / "decoded")) == 3
