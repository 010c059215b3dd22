"""The semi-supervised video object segmentation protocol with a streaming tracker (DAVIS layout).

For each sequence every object of its first annotation is prompted with its mask on the first
frame, then the frames stream through the tracker one by one; each frame's prediction is written
in the annotations' own format (DAVIS 2016 0/255 masks, DAVIS 2017 palette PNGs with an index per
object; where objects overlap the lower index wins, as sam2's VOS tool writes them). A sequence's
predictions are written under a hidden partial folder and renamed when complete, so a folder
under its final name is always a whole result and a rerun skips it (``skip_done``).
``evaluation.evaluate_predictions`` then scores the folder.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
from PIL import Image

from ..data.davis import VOID, annotation_path, frames_folder, list_annotated_frames, list_frames, read_annotation, \
    write_annotation

PathLike = Union[str, os.PathLike]


def index_mask(result) -> np.ndarray:
    """One HxW uint8 index per pixel from a ``StepResult``: 0 background, else the object's id (lower ids win)."""
    height, width = result.logits.shape[1:] if len(result.logits) else (0, 0)
    out = np.zeros((height, width), np.uint8)
    for obj_id in sorted(result.object_ids, reverse=True):
        out[result.mask(obj_id)] = obj_id
    return out


def is_done(output: PathLike, sequence: str, frames: list) -> bool:
    folder = Path(output) / sequence
    return folder.is_dir() and all((folder / f"{name}.png").is_file() for name in frames)


def track_sequence(tracker, root: PathLike, sequence: str, output: PathLike, *,
                   on_frame: Optional[Callable[[int, float], None]] = None) -> dict:
    """Track ``sequence`` of the DAVIS folder ``root`` with ``tracker`` (a streaming tracker) and write
    ``output/<sequence>/<frame>.png``; returns ``{"frames", "objects", "seconds": [per frame]}``.
    ``on_frame(index, seconds)`` follows each frame."""
    frames = list_frames(root, sequence)
    annotated = list_annotated_frames(root, sequence)
    if annotated[0] != frames[0]:
        raise ValueError(f"sequence {sequence!r}: its first annotation is frame {annotated[0]}, its first frame "
                         f"{frames[0]}: the semi-supervised protocol prompts the first frame")
    like = annotation_path(root, sequence, annotated[0])
    first = read_annotation(like)
    objects = [int(v) for v in np.unique(first) if v not in (0, VOID)]
    if not objects:
        raise ValueError(f"sequence {sequence!r}: the first annotation ({like}) holds no object")
    final = Path(output) / sequence
    partial = Path(output) / f".{sequence}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tracker.reset_state()
    seconds = []
    source = frames_folder(root) / sequence
    for i, name in enumerate(frames):
        with Image.open(source / f"{name}.jpg") as image:
            rgb = np.asarray(image.convert("RGB"))
        start = time.perf_counter()
        result = tracker.step(rgb)
        if i == 0:
            for obj in objects:
                result = tracker.add_new_mask(obj, first == obj)
        seconds.append(time.perf_counter() - start)
        write_annotation(partial / f"{name}.png", index_mask(result), like=like)
        if on_frame is not None:
            on_frame(i, seconds[-1])
    if final.exists():
        shutil.rmtree(final)
    partial.rename(final)
    return {"frames": len(frames), "objects": objects, "seconds": seconds}


__all__ = ["index_mask", "is_done", "track_sequence"]
