"""Tracking prompted objects through a whole video with a predictor of ``sam2``'s video API.

``track`` works with any predictor that has ``init_state(video_path=...)``,
``add_new_points_or_box(state, frame_idx=, obj_id=, points=, labels=, box=)`` and
``propagate_in_video(state, reverse=)`` (ours from ``build_video_predictor``, or ``sam2``'s own):
it adds every prompt (several objects, corrections on any frame), propagates forward from the
first prompted frame to the end and, when that frame is not the first, backward to frame 0, so
every frame gets a mask for every object. The time between two frames arriving is that frame's
tracking latency (image encoder, memory attention, mask decoder and memory encoder of all objects).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..data.prompts import Prompt


@dataclass
class TrackPrompt:
    """Points ``[(x, y, label)]`` (label 1 on the object, 0 background) and/or a box
    ``(x0, y0, x1, y1)`` for object ``object_id`` on frame ``frame``; pixels of the video's frames."""

    object_id: int = 1
    frame: int = 0
    points: list = field(default_factory=list)
    box: Optional[tuple] = None

    def check(self, num_frames: int, width: int, height: int) -> None:
        where = f"object {self.object_id} on frame {self.frame}"
        if not 0 <= self.frame < num_frames:
            raise ValueError(f"{where}: the video has frames 0-{num_frames - 1}")
        Prompt(self.points, self.box).check(width, height, where=where, picture="frames")

    def as_dict(self) -> dict:
        return {"object": self.object_id, "frame": self.frame, "points": [list(p) for p in self.points],
                "box": None if self.box is None else list(self.box)}


@dataclass
class Tracks:
    """``masks[frame][object_id]``: a boolean HxW mask at the video's resolution for every frame and
    object; ``seconds[frame]``: that frame's tracking time (the prompted frames' entries are the
    time to prompt them); ``setup_seconds``: loading the frames into the predictor's state."""

    masks: dict
    seconds: dict
    object_ids: list
    setup_seconds: float

    def areas(self) -> dict:
        return {obj: [int(self.masks[f][obj].sum()) for f in sorted(self.masks)] for obj in self.object_ids}

    def summary(self, prompted: Sequence[int] = ()) -> dict:
        """Latency over the propagated frames (prompted frames left out: their masks come from the prompt)."""
        times = np.array([s for f, s in sorted(self.seconds.items()) if f not in set(prompted)]) * 1e3
        if not len(times):
            return {"frames": 0}
        return {"frames": int(len(times)), "mean_ms": round(float(times.mean()), 2),
                "median_ms": round(float(np.median(times)), 2), "min_ms": round(float(times.min()), 2),
                "max_ms": round(float(times.max()), 2), "frames_per_second": round(1e3 / float(times.mean()), 3)}


def merged(prompts: Sequence[TrackPrompt]) -> list[TrackPrompt]:
    """One prompt per (object, frame): the predictor replaces an object's points on a frame with each
    call, so points given separately for the same object and frame are joined (one box at most)."""
    joined: dict = {}
    for p in prompts:
        key = (p.object_id, p.frame)
        if key not in joined:
            joined[key] = TrackPrompt(p.object_id, p.frame, list(p.points), p.box)
            continue
        into = joined[key]
        if p.box is not None and into.box is not None:
            raise ValueError(f"object {p.object_id} has two boxes on frame {p.frame}: give one box per object "
                             "and frame (use another object id for another object)")
        into.points += list(p.points)
        into.box = into.box if p.box is None else p.box
    return sorted(joined.values(), key=lambda p: (p.frame, p.object_id))


@torch.inference_mode()
def track(predictor, video_path, prompts: Sequence[TrackPrompt], *, num_frames: int, size: tuple,
          on_frame: Optional[Callable[[int, dict], None]] = None) -> Tracks:
    """Every object of ``prompts`` through every frame of ``video_path`` (a folder of numbered JPEG
    frames, ``repvit.data.video.open_frames``); ``size`` is the frames' (width, height).
    ``on_frame(frame, masks)`` is called as each frame's masks arrive (progress bars, streaming)."""
    if not prompts:
        raise ValueError("give at least one prompt (a point or a box on some frame)")
    prompts = merged(prompts)
    for p in prompts:
        p.check(num_frames, *size)
    start = time.perf_counter()
    state = predictor.init_state(video_path=str(video_path))
    setup = time.perf_counter() - start
    loaded = state.get("num_frames", num_frames) if isinstance(state, dict) else num_frames
    if loaded != num_frames:
        raise ValueError(f"{video_path} holds {loaded} frames, not the {num_frames} expected: pass the folder "
                         "open_frames made (it links only the frames asked for)")
    masks: dict = {}
    seconds: dict = {}
    for p in prompts:
        start = time.perf_counter()
        points = np.array([q[:2] for q in p.points], dtype=np.float32) if p.points else None
        labels = np.array([q[2] for q in p.points], dtype=np.int32) if p.points else None
        box = np.array(p.box, dtype=np.float32) if p.box is not None else None
        predictor.add_new_points_or_box(state, frame_idx=p.frame, obj_id=p.object_id, points=points, labels=labels,
                                        box=box)
        seconds[p.frame] = seconds.get(p.frame, 0.0) + time.perf_counter() - start
    first = min(p.frame for p in prompts)
    object_ids: list = []
    for reverse in ([False, True] if first > 0 else [False]):
        start = time.perf_counter()
        for frame, obj_ids, logits in predictor.propagate_in_video(state, reverse=reverse):
            elapsed = time.perf_counter() - start
            object_ids = [int(o) for o in obj_ids]
            if frame not in masks:
                masks[frame] = {o: (logits[i, 0] > 0).cpu().numpy() for i, o in enumerate(object_ids)}
                seconds.setdefault(frame, elapsed)
                if on_frame is not None:
                    on_frame(frame, masks[frame])
            start = time.perf_counter()
    missing = sorted(set(range(num_frames)) - set(masks))
    if missing:
        raise RuntimeError(f"the predictor returned no masks for frames {missing[:10]} of {num_frames}")
    return Tracks(masks, seconds, object_ids, setup)
