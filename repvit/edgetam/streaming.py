"""Frame-by-frame tracking: the API both streaming trackers share, and what they keep.

A stream has no end and no past: frames arrive one at a time (a camera, a URL, a video of any
length) and each is tracked as it arrives. Both trackers (``TorchStreamingTracker`` over sam2's
predictor, ``repvit.edgetam.stream_torch``; ``OnnxStreamingTracker`` over the exported graphs,
``repvit.edgetam.onnx_stream``) follow sam2's video vocabulary::

    tracker.step(frame)                          # frame 0 becomes the current frame
    tracker.add_new_points_or_box(1, points=[(x, y)], labels=[1])   # object 1 on the current frame
    for frame in frames:                         # later frames
        out = tracker.step(frame)                # out.logits[i]: object out.object_ids[i], frame's size
    tracker.add_new_points_or_box(1, points=[(x, y)], labels=[0])   # correct it on the current frame
    tracker.add_new_mask(2, mask)                # add an object later in the stream
    tracker.remove_object(1); tracker.reset_state()

``step`` takes an HxWx3 uint8 RGB array of any size (each frame may have its own) and returns a
``StepResult``. A prompt on the current frame makes it the object's conditioning frame when the
object is new (decoded from the frame alone, as sam2's first prompt), and corrects it when the
object was already tracked on this frame (the decoder sees the memory, the clicks and the previous
mask, as sam2's ``add_new_points_or_box`` on a tracked frame). Prompts take effect in the memory
when the next frame arrives (sam2 encodes them when propagation starts).

What is kept (constant memory, whatever the stream's length), per object: its conditioning frames
(the memory of the frame it was prompted on; with ``corrections_as_cond=True`` each correction
becomes one too, and then the first and the latest ``max_cond_frames - 1`` stay: a bounded policy);
the memories of the current frame and the ``num_maskmem - 1`` before it, the object pointers of the
current frame and the ``max_obj_ptrs_in_encoder - 1`` before it (what the next frame reads, and what a
correction of the current frame reads again); the current frame's mask. Of the video: the current
frame's input and image features. Nothing else: no frame, mask or memory older than these windows.

For prompts on the first frame a stream computes what sam2's ``propagate_in_video`` computes on
the same frames (the tests compare both, and both exported runtimes): EdgeTAM adds no temporal
encoding to its object pointers, so a video's length never enters a frame's computation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# A stream's length is unknown: sam2's loops bound their look-back by the video's length, and an
# endless video bounds nothing (the look-back windows above do).
ENDLESS = 2 ** 62


@dataclass
class StepResult:
    """One frame's output: ``logits[i]`` (HxW float32 at the frame's size) of object ``object_ids[i]``."""

    frame: int
    object_ids: list
    logits: np.ndarray

    @property
    def masks(self) -> np.ndarray:
        return self.logits > 0

    def mask(self, obj_id: int) -> np.ndarray:
        return self.logits[self.object_ids.index(obj_id)] > 0

    def logit(self, obj_id: int) -> np.ndarray:
        return self.logits[self.object_ids.index(obj_id)]


@dataclass(frozen=True)
class MemoryWindows:
    """How far back a tracked frame reads: ``memories`` frames of mask memory, ``pointers`` frames of
    object pointers (sam2's ``num_maskmem - 1`` and ``max_obj_ptrs_in_encoder - 1`` at temporal stride
    ``stride``), and at most ``max_cond_frames`` conditioning frames per object."""

    memories: int
    pointers: int
    stride: int = 1
    max_cond_frames: int = 4

    def __post_init__(self):
        if self.max_cond_frames < 1:
            raise ValueError(f"max_cond_frames must be at least 1 (the object's first prompt), got "
                             f"{self.max_cond_frames}")

    @property
    def frames(self) -> int:
        """Frames behind the current one that it may read (memory or pointer)."""
        return max(self.memories * self.stride, self.pointers)

    def stale(self, frames: Sequence[int], current: int) -> list[int]:
        """The tracked frames of ``frames`` that neither ``current`` (a correction conditions it again) nor
        a later frame will read."""
        return [t for t in frames if t < current - self.frames]

    def memory_stale(self, frames: Sequence[int], current: int) -> list[int]:
        """Frames whose mask memory neither ``current`` nor a later frame reads (their pointers may be)."""
        return [t for t in frames if t < current - self.memories * self.stride]

    def cond_dropped(self, frames: Sequence[int]) -> list[int]:
        """Conditioning frames over the bound: all but the first and the latest ``max_cond_frames - 1``."""
        ordered = sorted(frames)
        if len(ordered) <= self.max_cond_frames:
            return []
        keep = {ordered[0], *ordered[len(ordered) - (self.max_cond_frames - 1):]} if self.max_cond_frames > 1 \
            else {ordered[0]}
        return [t for t in ordered if t not in keep]


def check_frame(frame) -> np.ndarray:
    """``frame`` as a contiguous HxWx3 uint8 RGB array, or a ValueError that says what was given."""
    array = np.asarray(frame)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"a frame is an HxWx3 RGB array; got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"a frame is uint8 RGB (0-255); got {array.dtype}: convert with "
                         "(frame * 255).round().astype(np.uint8) for 0-1 floats")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"a frame has no pixels: shape {array.shape}")
    return np.ascontiguousarray(array)


def check_mask(mask, size: tuple) -> np.ndarray:
    """A mask prompt as an HxW bool array at the frame's ``size`` (height, width)."""
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ValueError(f"a mask prompt is an HxW array; got shape {array.shape}")
    if tuple(array.shape) != tuple(size):
        raise ValueError(f"the mask prompt is {array.shape[1]}x{array.shape[0]}, the current frame "
                         f"{size[1]}x{size[0]}: give it at the frame's size")
    if not array.any():
        raise ValueError("the mask prompt is empty: give at least one pixel of the object")
    return array.astype(bool)


def prompt_points(points, labels, box) -> tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """Points (Nx2 float32, frame pixels), labels (N int32) and box (4 float32) as the trackers take them."""
    if points is None and box is None:
        raise ValueError("give points (with labels), a box, or a mask")
    coords = None if points is None else np.asarray(points, np.float32).reshape(-1, 2)
    if coords is not None:
        marks = np.ones(len(coords), np.int32) if labels is None else np.asarray(labels, np.int32).reshape(-1)
        if len(marks) != len(coords):
            raise ValueError(f"{len(coords)} points but {len(marks)} labels")
    else:
        marks = None
    corners = None if box is None else np.asarray(box, np.float32).reshape(4)
    return coords, marks, corners


__all__ = ["ENDLESS", "MemoryWindows", "StepResult", "check_frame", "check_mask", "prompt_points"]
