"""The work behind the demo page's video tab: a clip in, its first frame to click on, the clicked
objects tracked through the clip, an overlay video out. Plain arrays and file paths, no web code
(``repvit.demo.page`` lays the page over it), so it is tested directly.

Every call names its video, so two people on one page never track each other's clip. Opened clips
are cached by path and modification time (the last ``cache_size``); output videos live in a
``BoundedFolder`` that keeps the last ``keep_files`` of them. A clip longer than ``max_frames`` is
cut there: tracking costs a few hundred milliseconds a frame on a CPU.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from ..data.images import overlay
from ..data.output_files import BoundedFolder
from ..data.video import DEFAULT_FPS, FrameFolder, open_frames, write_video
from .tracking import TrackPrompt, track

DEFAULT_MAX_FRAMES = 60
KEEP_FILES = 8


@dataclass
class VideoResult:
    video: str              # the overlay .mp4
    first_overlay: np.ndarray
    status: str
    latency: dict


class VideoDemo:
    """``first_frame(video)`` and ``track(video, points, box=)`` for a predictor of sam2's video API."""

    def __init__(self, predictor, *, weights: str = "", max_frames: int = DEFAULT_MAX_FRAMES,
                 output_dir: Union[str, Path, None] = None, keep_files: int = KEEP_FILES, cache_size: int = 2):
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        self.predictor, self.weights, self.max_frames = predictor, weights, max_frames
        self.files = BoundedFolder(output_dir, keep=keep_files, prefix="repvit-video-demo-")
        self._work = Path(tempfile.mkdtemp(prefix="repvit-video-frames-"))
        self._remove_work = weakref.finalize(self, shutil.rmtree, str(self._work), ignore_errors=True)
        self._opened: OrderedDict = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()   # the predictor's state is one video at a time

    def close(self) -> None:
        self.files.close()
        self._remove_work()

    def open(self, video: Union[str, Path]) -> FrameFolder:
        if video is None or not str(video).strip():
            raise ValueError("choose a video first (upload a clip or pick the sample)")
        path = Path(video)
        if not path.exists():
            raise ValueError(f"video {str(video)!r} does not exist")
        key = (str(path.resolve()), path.stat().st_mtime_ns)
        if key in self._opened:
            self._opened.move_to_end(key)
            return self._opened[key]
        folder = self._work / f"clip{len(self._opened)}-{abs(hash(key)) % 10**8}"
        shutil.rmtree(folder, ignore_errors=True)
        frames = open_frames(path, folder, max_frames=self.max_frames)
        self._opened[key] = frames
        while len(self._opened) > self._cache_size:
            _, old = self._opened.popitem(last=False)
            if Path(old.folder).is_relative_to(self._work):
                shutil.rmtree(old.folder, ignore_errors=True)
        return frames

    def first_frame(self, video) -> tuple[np.ndarray, str]:
        frames = self.open(video)
        width, height = frames.size
        return frames.frame(0), (f"{len(frames)} frames of {width}x{height}"
                                 f"{f' (cut at {self.max_frames})' if len(frames) == self.max_frames else ''}: "
                                 "click the object to track on the first frame")

    def track(self, video, points: Sequence[Sequence[float]], *, box: Optional[Sequence[float]] = None,
              on_frame: Optional[Callable[[int, int], None]] = None) -> VideoResult:
        """Track one object given by ``points`` ``[(x, y, label)]`` and/or ``box`` on frame 0."""
        if not points and box is None:
            raise ValueError("click the object on the first frame (or give a box) before tracking")
        with self._lock:
            frames = self.open(video)
            prompt = TrackPrompt(1, 0, [tuple(p) for p in points], None if box is None else tuple(box))
            done = []
            tracks = track(self.predictor, frames.folder, [prompt], num_frames=len(frames), size=frames.size,
                           on_frame=(lambda frame, masks: (done.append(frame), on_frame(len(done), len(frames))))
                           if on_frame else None)
        drawn = [overlay(frames.frame(f), [tracks.masks[f][o] for o in tracks.object_ids]) for f in range(len(frames))]
        first = drawn[0]
        if points:
            first = overlay(first, [], points=np.array([p[:2] for p in points]), labels=np.array([p[2] for p in points]))
        path = self.files.new_path("tracked", ".mp4")
        write_video(drawn, path, fps=frames.fps or DEFAULT_FPS)
        latency = tracks.summary([0])
        speed = (f"{latency['mean_ms']:.0f} ms a frame ({latency['frames_per_second']:.1f} frames/s)"
                 if latency.get("frames") else "one frame")
        status = f"tracked through {len(frames)} frames: {speed}. Weights: {self.weights or 'given'}."
        return VideoResult(str(path), first, status, latency)
