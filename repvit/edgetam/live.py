"""Tracking a frame source as it arrives, writing every output as it comes (``repvit track``'s work).

``run_live(tracker, source, prompts, output)`` steps a streaming tracker (``streaming.py``) through a
``repvit.data.stream`` source: prompts join on their frame (the first frame tracked for the command
line's ``--point/--box/--mask``; an object's later entries correct it there), each frame's masks are
written at once (``masks/obj<K>/<frame>.png``) and drawn into the overlay writer, and the record
that ``track.json`` holds is returned whatever ends the run: the source's end, ``max_frames``, a
stop request (Ctrl-C, SIGTERM: ``stop`` is set by the caller's handler), or an error, which is
recorded and raised again after the outputs are closed. Nothing is held but the current frame.
"""
from __future__ import annotations

import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image


@dataclass
class LivePrompt:
    """Points ``[(x, y, label)]``, a box ``(x0, y0, x1, y1)`` or a mask (HxW bool at the frame's size)
    for object ``object_id`` on frame ``frame`` (the source's numbering; ``None``: the first tracked)."""

    object_id: int = 1
    frame: Optional[int] = None
    points: list = field(default_factory=list)
    box: Optional[tuple] = None
    mask: Optional[np.ndarray] = None
    mask_source: Optional[str] = None

    def as_dict(self) -> dict:
        return {"object": self.object_id, "frame": self.frame, "points": [list(p) for p in self.points],
                "box": None if self.box is None else list(self.box), "mask": self.mask_source}


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def latency_summary(seconds: Sequence[float]) -> dict:
    """Median, 99th percentile, mean and max of the per-frame times in ms, and the frames per second
    they sustain (1 / mean)."""
    if not len(seconds):
        return {"frames": 0}
    ms = np.asarray(seconds, np.float64) * 1e3
    return {"frames": int(len(ms)), "median_ms": round(float(np.median(ms)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "mean_ms": round(float(ms.mean()), 2),
            "max_ms": round(float(ms.max()), 2), "frames_per_second": round(1e3 / float(ms.mean()), 3)}


def _apply(tracker, prompt: LivePrompt):
    """The trackers check the prompt against the current frame (inside it, labels, mask size)."""
    if prompt.mask is not None:
        return tracker.add_new_mask(prompt.object_id, prompt.mask)
    points = [p[:2] for p in prompt.points] or None
    labels = [p[2] for p in prompt.points] or None
    return tracker.add_new_points_or_box(prompt.object_id, points=points, labels=labels, box=prompt.box)


def run_live(tracker, source, prompts: Sequence[LivePrompt], output: Union[str, os.PathLike], *,
             overlay=None, draw: Optional[Callable] = None, max_frames: Optional[int] = None,
             stop: Optional[threading.Event] = None, on_frame: Optional[Callable[[int, float], None]] = None
             ) -> tuple[dict, Optional[BaseException]]:
    """Track ``source`` with ``tracker`` (see the module docstring); ``overlay.write(image)`` gets
    ``draw(frame, [masks])`` of every frame. Returns the run's record (frames done, dropped, skipped,
    why it stopped, latency, peak RSS) and the error that ended it, if one did: the caller closes its
    outputs, writes the record, then raises it."""
    out = Path(output)
    pending = sorted(prompts, key=lambda p: (-1 if p.frame is None else p.frame, p.object_id))
    seconds: list = []
    record: dict = {"frames_done": 0, "stop_reason": None, "first_frame": None, "last_frame": None}
    folders: dict = {}
    error: Optional[BaseException] = None
    try:
        for frame in source:
            if stop is not None and stop.is_set():
                record["stop_reason"] = "stopped (signal)"
                break
            start = time.perf_counter()
            result = tracker.step(frame.image)
            here = [p for p in pending if p.frame is None or p.frame == frame.source_index]
            for prompt in here:
                result = _apply(tracker, prompt)
            pending = [p for p in pending if p not in here]
            elapsed = time.perf_counter() - start
            if here:
                record.setdefault("prompt_seconds", []).append(round(elapsed, 5))
            else:
                seconds.append(elapsed)
            if record["first_frame"] is None:
                record["first_frame"] = frame.source_index
            record["last_frame"] = frame.source_index
            for obj_id in result.object_ids:
                if obj_id not in folders:
                    folders[obj_id] = out / "masks" / f"obj{obj_id}"
                    folders[obj_id].mkdir(parents=True, exist_ok=True)
                Image.fromarray(result.mask(obj_id).astype(np.uint8) * 255).save(
                    folders[obj_id] / f"{frame.source_index:05d}.png")
            if overlay is not None and draw is not None:
                # a live source's frames are placed at their arrival times: the overlay plays in real time
                overlay.write(draw(frame.image, [result.mask(o) for o in result.object_ids]),
                              timestamp_s=frame.timestamp_s if getattr(source, "live", False) else None)
            record["frames_done"] += 1
            if on_frame is not None:
                on_frame(frame.source_index, elapsed)
            if max_frames is not None and record["frames_done"] >= max_frames:
                record["stop_reason"] = f"max frames ({max_frames})"
                break
        else:
            record["stop_reason"] = getattr(source, "stop_reason", None) or "end of stream"
    except KeyboardInterrupt:
        record["stop_reason"] = "interrupted (Ctrl-C)"
    except BaseException as err:       # recorded, outputs closed, then raised again
        record["stop_reason"] = f"error: {type(err).__name__}: {err}"
        error = err
    if pending and error is None:
        record["prompts_never_reached"] = [p.as_dict() for p in pending]
    record.update(frames_dropped=int(getattr(source, "dropped", 0)),
                  frames_skipped=list(getattr(source, "skipped", [])),
                  objects=sorted(folders), latency={**latency_summary(seconds), "peak_rss_mb": peak_rss_mb()})
    return record, error


__all__ = ["LivePrompt", "latency_summary", "peak_rss_mb", "run_live"]
