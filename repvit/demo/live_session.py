"""The work behind the demo page's live tab: a visitor's camera frames in, EdgeTAM tracking them as
they come, a view with the mask drawn out. Plain arrays and files, no web code (``live_tab.py`` lays
the tab over it), so it is tested directly.

One ``LiveSession`` per visitor: its own tracker (a ``TorchStreamingTracker``, made on the first
click), its own worker thread and its own view files. The page keeps it in that visitor's Gradio
session state and nowhere else, so one visitor's stream never reaches another's. ``LiveDemo`` holds
what the sessions share: the predictor (weights, no stream state) and a lock that lets one frame
compute at a time (a CPU has few cores to share, and sam2's per-call helpers swap module globals).

A camera is faster than a CPU tracker (EdgeTAM takes about a second a frame on two cores), so
``offer(frame)`` returns at once: the worker tracks the newest frame, and a frame that arrives while
another waits replaces it and is counted as dropped. The status gives the frames tracked per second
over the last ``rate_window`` seconds, the time to track one, how long after its arrival a frame was
shown, and the dropped count. A session that gets no frame and no click for ``idle_seconds`` frees
its tracker and its worker ends; ``close()`` (the page calls it when Gradio drops the session's
state) also deletes its view files, of which it never keeps more than ``keep_views``.
"""
from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from ..data.images import overlay
from ..data.output_files import BoundedFolder

OBJECT_ID = 1            # the live tab tracks one object
IDLE_SECONDS = 60.0
RATE_WINDOW_S = 5.0
STREAM_EVERY_S = 0.2     # the browser sends a camera frame this often
CAMERA_VIEW_EVERY_S = 1.0   # before a click the view shows a new camera frame this often (see LiveDemo)
STREAM_SECONDS = 300.0   # one stream's length; the visitor presses record again after it
MAX_STREAMS = 4          # streams served at once; further visitors wait in Gradio's queue
KEEP_VIEWS = 8           # view images per session on disk (the browser fetches each once, at once)


class FairLock:
    """A lock handed over in the order it was asked for: with ``threading.Lock`` a session's worker, which
    asks again as soon as it lets go, could keep it from every other session for as long as it streams."""

    def __init__(self):
        self._cond = threading.Condition()
        self._queue: deque = deque()
        self._held = False

    def __enter__(self):
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            while self._held or self._queue[0] is not ticket:
                self._cond.wait()
            self._queue.popleft()
            self._held = True
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


def torch_tracker(predictor):
    from ..edgetam.stream_torch import TorchStreamingTracker
    return TorchStreamingTracker(predictor)


@dataclass(frozen=True)
class LiveClick:
    x: float
    y: float
    label: int          # 1 the object, 0 background


@dataclass
class LiveView:
    """What the page shows after a call: ``image`` a new view file (``None``: the view is unchanged)."""

    image: Optional[str]
    status: str


class LiveDemo:
    """The live tab's settings and what its sessions share; ``new_session()`` makes one visitor's stream.

    ``tracker_factory(predictor)`` makes a session's tracker (``TorchStreamingTracker`` by default).

    Before the first click the view shows a camera frame every ``camera_view_every`` seconds (the camera
    preview beside it is live), and the click lands on the frame it shows. Each new view swaps the
    image on the page, and a click that lands during a swap may be lost or misplaced by the browser
    page (Gradio reads the image's size as it loads): fewer swaps, fewer lost clicks."""

    def __init__(self, predictor, *, weights: str = "", idle_seconds: float = IDLE_SECONDS,
                 rate_window: float = RATE_WINDOW_S, stream_every: float = STREAM_EVERY_S,
                 stream_seconds: float = STREAM_SECONDS, max_streams: int = MAX_STREAMS,
                 camera_view_every: float = CAMERA_VIEW_EVERY_S,
                 keep_views: int = KEEP_VIEWS, tracker_factory: Callable = torch_tracker):
        for name, value in (("idle_seconds", idle_seconds), ("rate_window", rate_window),
                            ("stream_every", stream_every), ("stream_seconds", stream_seconds)):
            if not value > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value}")
        if camera_view_every < 0:
            raise ValueError(f"camera_view_every must be 0 or more seconds, got {camera_view_every}")
        if max_streams < 1 or keep_views < 2:
            raise ValueError(f"max_streams must be at least 1 and keep_views at least 2 (the browser may still be "
                             f"fetching the previous view), got {max_streams} and {keep_views}")
        self.predictor, self.weights = predictor, weights
        self.idle_seconds, self.rate_window = float(idle_seconds), float(rate_window)
        self.stream_every, self.stream_seconds = float(stream_every), float(stream_seconds)
        self.max_streams, self.keep_views = int(max_streams), int(keep_views)
        self.camera_view_every = float(camera_view_every)
        self.tracker_factory = tracker_factory
        self.compute_lock = FairLock()   # sessions take turns, a frame each
        self._sessions: "weakref.WeakSet[LiveSession]" = weakref.WeakSet()
        self._roots: dict = {}
        self._lock = threading.Lock()

    def new_session(self, *, under: Union[str, Path, None] = None) -> "LiveSession":
        """A visitor's stream. Its view files go in a folder of this demo's inside ``under`` (the page
        gives Gradio's cache, whose files Gradio serves without copying them), or in a temporary one."""
        folder = None
        if under is not None:
            with self._lock:
                key = str(Path(under).resolve())
                if key not in self._roots:
                    Path(key).mkdir(parents=True, exist_ok=True)
                    root = Path(tempfile.mkdtemp(prefix="repvit-live-", dir=key))
                    self._roots[key] = (root, weakref.finalize(self, shutil.rmtree, str(root), ignore_errors=True))
                folder = self._roots[key][0] / uuid.uuid4().hex[:12]
        session = LiveSession(self, folder=folder)
        self._sessions.add(session)
        return session

    def sessions(self) -> list:
        """The sessions not closed yet."""
        return [s for s in list(self._sessions) if not s.closed]

    def close(self) -> None:
        for session in list(self._sessions):
            session.close()
        with self._lock:
            for _, remove in self._roots.values():
                remove()
            self._roots.clear()


class LiveSession:
    """One visitor's stream: ``offer(frame)`` for each camera frame, ``click(x, y)`` on the view,
    ``reset()``, ``close()``. Only its worker thread touches its tracker."""

    def __init__(self, demo: LiveDemo, *, folder: Union[str, Path, None] = None):
        self.demo = demo
        self.views = BoundedFolder(folder, keep=demo.keep_views, prefix="repvit-live-")
        self._remove_folder = folder is not None   # made for this session in the demo's folder
        self._cond = threading.Condition()
        self._tracker = None
        self._tracking = False          # a click was made since the start or the last reset
        self._generation = 0            # a reset starts a new one; work of an older one is dropped
        self._pending = None            # (frame, arrival time): the newest frame not tracked yet
        self._clicks: list = []         # (LiveClick, the frame it lands on or None for the current one)
        self._raw: Optional[np.ndarray] = None      # the camera frame the view shows: a first click lands on it
        self._raw_shown_at = -np.inf
        self._current: Optional[np.ndarray] = None  # the tracker's current frame
        self._points: list = []         # clicks on the current frame, drawn on its view
        self._worker: Optional[threading.Thread] = None
        self._last_activity = time.monotonic()
        self._view: Optional[str] = None
        self._view_sent: Optional[str] = None
        self._shown_size = (0, 0)       # (height, width) of the view's image: clicks land on it
        self._note = ""
        self.closed = False
        self._reset_counts()

    def _reset_counts(self) -> None:
        self.frames_received = 0        # while tracking
        self.frames_tracked = 0
        self.frames_dropped = 0
        self._done: deque = deque()     # (done at, seconds to track, seconds from arrival to view)

    # ------------------------------------------------------------------ the page's calls
    def offer(self, frame) -> LiveView:
        """A camera frame (HxWx3 uint8 RGB). Returns at once with the newest view and the status."""
        from ..edgetam.streaming import check_frame
        frame = check_frame(frame)
        now = time.monotonic()
        with self._cond:
            self._require_open()
            self._last_activity = now
            if self._tracking:
                self.frames_received += 1
                if self._pending is not None:
                    self.frames_dropped += 1      # the newest frame wins
                self._pending = (frame, now)
                self._start_worker()
                self._cond.notify_all()
            elif now - self._raw_shown_at >= self.demo.camera_view_every:
                self._raw, self._raw_shown_at = frame, now
                self._show(frame, "camera")
            return self._update()

    def click(self, x: float, y: float, label: int = 1) -> str:
        """A click on the view at frame pixel ``(x, y)``: the first marks the object on the frame shown
        (the tracker is made then), later ones correct it on the tracker's current frame."""
        with self._cond:
            self._require_open()
            frame = None if self._tracking else self._raw
            if frame is None and not self._tracking:
                raise ValueError("start the camera first (its record button): a click marks the object on the "
                                 "live view")
            if not self._tracking and label != 1:
                raise ValueError("the first click marks the object: choose 'object' and click it")
            height, width = self._shown_size
            if not (0 <= x < width and 0 <= y < height):
                raise ValueError(f"click ({x:g}, {y:g}) is outside the {width}x{height} view")
            self._clicks.append((LiveClick(float(x), float(y), int(label)), frame))
            self._tracking = True
            self._note = ""
            self._last_activity = time.monotonic()
            self._start_worker()
            self._cond.notify_all()
            return self.status()

    def reset(self) -> LiveView:
        """Forget the object and the counts; the view shows the camera again until the next click."""
        with self._cond:
            self._require_open()
            self._forget("")
            if self._raw is not None:
                self._show(self._raw, "camera")
            return self._update()

    def close(self) -> None:
        """End the stream: the worker stops, the tracker and the view files go."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._forget("")
            self._cond.notify_all()
        self.views.close()
        if self._remove_folder:
            shutil.rmtree(self.views.folder, ignore_errors=True)

    # ------------------------------------------------------------------ what the page shows
    def rate(self) -> dict:
        """Over the last ``rate_window`` seconds: frames tracked, frames per second, median ms to track
        one, median ms from a frame's arrival to its view."""
        with self._cond:
            now = time.monotonic()
            recent = [d for d in self._done if d[0] >= now - self.demo.rate_window]
        out = {"frames": len(recent)}
        if len(recent) >= 2 and recent[-1][0] > recent[0][0]:
            out["frames_per_second"] = (len(recent) - 1) / (recent[-1][0] - recent[0][0])
        if recent:
            out["track_ms"] = float(np.median([d[1] for d in recent])) * 1e3
            out["delay_ms"] = float(np.median([d[2] for d in recent])) * 1e3
        return out

    def status(self) -> str:
        with self._cond:
            if self.closed:
                return "This live session has ended: reload the page to start another."
            note = f" {self._note}" if self._note else ""
            if not self._tracking:
                if self._raw is None:
                    return self.status_before_camera() + note
                return "Click the object on the live view to track it." + note
            if not self.frames_tracked:
                return "Tracking starts with the next frame..." + note
            tracked, dropped = self.frames_tracked, self.frames_dropped
        rate = self.rate()
        fps = f"**{rate['frames_per_second']:.1f} frames/s**" if "frames_per_second" in rate else "**- frames/s**"
        timing = (f", {rate['track_ms']:.0f} ms to track a frame, shown {rate['delay_ms']:.0f} ms after it arrived "
                  f"(medians)") if "track_ms" in rate else ""
        return (f"{fps} over the last {self.demo.rate_window:g} s{timing}. {tracked} frames tracked, {dropped} "
                f"dropped (the newest frame wins).{note}")

    @staticmethod
    def status_before_camera() -> str:
        return "Start the camera (its record button), then click the object on the live view."

    # ------------------------------------------------------------------ internals
    def _require_open(self) -> None:
        if self.closed:
            raise ValueError("this live session has ended: reload the page to start another")

    def _update(self) -> LiveView:
        image = self._view if self._view != self._view_sent else None
        self._view_sent = self._view
        return LiveView(image, self.status())

    def _show(self, image: np.ndarray, stem: str) -> None:
        self._view = self.views.write(image, stem)
        self._shown_size = image.shape[:2]

    def _forget(self, note: str) -> None:
        """Drop the tracker and what waits for it (the caller holds the condition)."""
        self._generation += 1
        self._tracker, self._tracking, self._pending, self._clicks = None, False, None, []
        self._current, self._points = None, []
        self._raw_shown_at = -np.inf   # the next camera frame is shown at once
        self._note = note
        self._reset_counts()

    def _start_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, name=f"repvit-live-{id(self):x}", daemon=True)
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self.closed and self._pending is None and not self._clicks:
                    left = self._last_activity + self.demo.idle_seconds - time.monotonic()
                    if left <= 0:
                        if self._tracking:
                            self._forget(f"(No frame for {self.demo.idle_seconds:g} s: the tracker was freed; "
                                         "click the object again.)")
                        self._worker = None
                        return
                    self._cond.wait(left)
                if self.closed:
                    self._worker = None
                    return
                job = (self._generation, self._tracker, self._current, self._pending, self._clicks)
                self._pending, self._clicks = None, []
            self._finish(job, self._track(job))

    def _track(self, job) -> dict:
        """Apply the clicks, then track the frame: under the demo's compute lock, outside the session's."""
        _, tracker, current, pending, clicks = job
        out = {"tracker": tracker, "current": current, "result": None, "points": [], "error": None, "fatal": False}
        try:
            with self.demo.compute_lock:
                for click, frame in clicks:
                    if out["tracker"] is None:
                        out["tracker"] = self.demo.tracker_factory(self.demo.predictor)
                        out["tracker"].step(frame)
                        out["current"] = frame
                    try:
                        out["result"] = out["tracker"].add_new_points_or_box(
                            OBJECT_ID, points=[(click.x, click.y)], labels=[click.label])
                        out["points"].append(click)
                    except ValueError as err:   # a click off a smaller frame: the others stand
                        out["error"] = str(err)
                if pending is not None and out["tracker"] is not None:
                    frame, arrived = pending
                    start = time.perf_counter()
                    out["result"] = out["tracker"].step(frame)
                    out["seconds"] = time.perf_counter() - start
                    out["arrived"], out["current"], out["points"] = arrived, frame, []
        except Exception as err:   # shown in the status; the session goes back to waiting for a click
            out["error"], out["fatal"] = f"{type(err).__name__}: {err}", True
        return out

    def _finish(self, job, out: dict) -> None:
        with self._cond:
            if self.closed or job[0] != self._generation:
                return                  # reset or closed while the frame was tracked
            if out["fatal"]:
                self._forget(f"(Tracking stopped: {out['error']}; click the object again.)")
                return
            self._tracker, self._current = out["tracker"], out["current"]
            self._note = f"({out['error']})" if out["error"] else ""
            if "seconds" in out:
                self.frames_tracked += 1
                done = time.monotonic()
                self._done.append((done, out["seconds"], done - out["arrived"]))
                while self._done and self._done[0][0] < done - self.demo.rate_window:
                    self._done.popleft()
                self._points = []
            self._points += out["points"]
            result = out["result"]
            if result is not None and self._current is not None:
                masks = [result.mask(OBJECT_ID)] if OBJECT_ID in result.object_ids else []
                points = (np.array([[p.x, p.y] for p in self._points]) if self._points else None)
                labels = np.array([p.label for p in self._points]) if self._points else None
                self._show(overlay(self._current, masks, points=points, labels=labels), "tracked")


__all__ = ["LiveClick", "LiveDemo", "LiveSession", "LiveView"]
