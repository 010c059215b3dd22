"""``TorchStreamingTracker``: EdgeTAM frame by frame in PyTorch, in constant memory (``streaming.py``).

It drives sam2's own video predictor (``build_video_predictor``): the state it hands sam2 is the
one ``init_state`` builds, except that its ``images`` hold only the current frame and its video
is endless, and after each frame it drops what no later frame reads. Each frame runs sam2's
``propagate_in_video`` for exactly that frame (its preflight encodes the prompts' memories, its
body tracks every object), so a stream computes what a whole-video propagation computes.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Optional

import numpy as np
import torch
from torch import nn

from ..data.prompts import Prompt
from .onnx_predictor import frame_input
from .streaming import ENDLESS, MemoryWindows, StepResult, check_frame, check_mask, prompt_points


class _CurrentFrame:
    """sam2's ``state["images"]`` for a stream: the current frame's input, and no other."""

    def __init__(self):
        self.index, self.image = -1, None

    def __len__(self) -> int:
        return ENDLESS

    def __getitem__(self, index: int) -> torch.Tensor:
        if index != self.index or self.image is None:
            raise IndexError(f"frame {index} is not held: a stream keeps only its current frame ({self.index})")
        return self.image


@contextlib.contextmanager
def _quiet_sam2():
    """sam2's ``propagate_in_video`` wraps its frames in tqdm (a one-frame call must not print a bar), and
    without its CUDA extension (every CPU install) it warns in four lines on the first frame that it
    skips filling holes in the masks: ``TorchStreamingTracker.fills_holes`` says that once, as data."""
    import sam2.sam2_video_predictor as video
    with _QUIET_LOCK:   # trackers in several threads (the demo's sessions): swapped by the first, restored by the last
        if _QUIET_USERS[0] == 0:
            _QUIET_USERS[1] = video.tqdm
            video.tqdm = _no_bar
        _QUIET_USERS[0] += 1
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"cannot import name '_C'", category=UserWarning)
            yield
    finally:
        with _QUIET_LOCK:
            _QUIET_USERS[0] -= 1
            if _QUIET_USERS[0] == 0:
                video.tqdm = _QUIET_USERS[1]


def _no_bar(iterable, *args, **kwargs):
    return iterable


_QUIET_LOCK = threading.Lock()
_QUIET_USERS: list = [0, None]   # [trackers inside _quiet_sam2 now, sam2's own tqdm while they are]


def _has_sam2_extension() -> bool:
    try:
        from sam2 import _C  # noqa: F401
    except ImportError:
        return False
    return True


class TorchStreamingTracker:
    """Frame-by-frame EdgeTAM over ``predictor`` (``build_video_predictor()``); see ``repvit.edgetam.streaming``.

    ``corrections_as_cond``: a correction becomes a conditioning frame of its object (sam2's
    ``add_all_frames_to_correct_as_cond``) instead of a tracked frame that ages out of the memory;
    ``max_cond_frames`` bounds them (the first prompt and the latest others stay)."""

    def __init__(self, predictor: nn.Module, *, corrections_as_cond: bool = False, max_cond_frames: int = 4):
        self.predictor = predictor
        self.corrections_as_cond = bool(corrections_as_cond)
        self.windows = MemoryWindows(memories=int(predictor.num_maskmem) - 1,
                                     pointers=int(predictor.max_obj_ptrs_in_encoder) - 1,
                                     stride=int(getattr(predictor, "memory_temporal_stride_for_eval", 1)),
                                     max_cond_frames=max_cond_frames)
        self.device = next(predictor.parameters()).device
        # sam2 fills small holes in the masks (fill_hole_area) only with its CUDA extension built
        self.fills_holes = bool(getattr(predictor, "fill_hole_area", 0)) and _has_sam2_extension()
        self.reset_state()

    # ------------------------------------------------------------------ state
    def reset_state(self) -> None:
        """Forget every object and the frame count: the next ``step`` is frame 0 of a new stream."""
        self.frame_index = -1
        self.frame_size: Optional[tuple] = None
        self._images = _CurrentFrame()
        self._last: Optional[StepResult] = None
        self.state = {
            "images": self._images, "num_frames": ENDLESS, "offload_video_to_cpu": False,
            "offload_state_to_cpu": False, "video_height": 0, "video_width": 0, "device": self.device,
            "storage_device": self.device, "point_inputs_per_obj": {}, "mask_inputs_per_obj": {},
            "cached_features": {}, "constants": {}, "obj_id_to_idx": {}, "obj_idx_to_id": {}, "obj_ids": [],
            "output_dict_per_obj": {}, "temp_output_dict_per_obj": {}, "frames_tracked_per_obj": {}}

    @property
    def object_ids(self) -> list:
        return list(self.state["obj_ids"])

    def _set_frame(self, frame: np.ndarray) -> None:
        frame = check_frame(frame)
        height, width = frame.shape[:2]
        size = int(self.predictor.image_size)
        image, _ = frame_input(frame, size, self.predictor_mean, self.predictor_std)
        self.frame_index += 1
        self._images.index, self._images.image = self.frame_index, torch.from_numpy(image[0]).to(self.device)
        self.state["cached_features"] = {}
        self.state["video_height"], self.state["video_width"] = height, width
        self.frame_size = (height, width)

    predictor_mean = (0.485, 0.456, 0.406)    # sam2's video loader's normalization
    predictor_std = (0.229, 0.224, 0.225)

    # ------------------------------------------------------------------ the stream
    @torch.inference_mode()
    def step(self, frame) -> StepResult:
        """Track every object on ``frame`` (HxWx3 uint8 RGB), the stream's next frame."""
        frame = check_frame(frame)
        if any(temp["cond_frame_outputs"] or temp["non_cond_frame_outputs"]
               for temp in self.state["temp_output_dict_per_obj"].values()):
            # the current frame's prompts join the memory while its features are still held
            self.predictor.propagate_in_video_preflight(self.state)
        self._set_frame(frame)
        if not self.state["obj_ids"]:
            self._last = StepResult(self.frame_index, [], np.zeros((0, *self.frame_size), np.float32))
            return self._last
        t = self.frame_index
        with _quiet_sam2():
            (index, obj_ids, logits), = list(self.predictor.propagate_in_video(
                self.state, start_frame_idx=t, max_frame_num_to_track=0))
        assert index == t
        self._forget(t)
        self._last = StepResult(t, [int(o) for o in obj_ids], logits[:, 0].float().cpu().numpy())
        return self._last

    @torch.inference_mode()
    def add_new_points_or_box(self, obj_id: int, points=None, labels=None, box=None) -> StepResult:
        """Prompt ``obj_id`` on the current frame with clicks (frame pixels; label 1 object, 0
        background) and/or a box ``(x0, y0, x1, y1)``; returns the current frame's masks of every object."""
        self._require_frame()
        coords, marks, corners = prompt_points(points, labels, box)
        height, width = self.frame_size
        pts = [] if coords is None else [(float(x), float(y), int(l)) for (x, y), l in zip(coords, marks)]
        Prompt(pts, None if corners is None else tuple(float(v) for v in corners)).check(
            width, height, where=f"object {obj_id} on frame {self.frame_index}", picture="frame")
        with self._as_cond(), _quiet_sam2():
            _, obj_ids, logits = self.predictor.add_new_points_or_box(
                self.state, frame_idx=self.frame_index, obj_id=int(obj_id), points=coords, labels=marks, box=corners)
        return self._prompted(obj_ids, logits)

    @torch.inference_mode()
    def add_new_mask(self, obj_id: int, mask) -> StepResult:
        """Prompt ``obj_id`` on the current frame with a mask (HxW, the frame's size)."""
        self._require_frame()
        mask = torch.from_numpy(check_mask(mask, self.frame_size))
        with self._as_cond(), _quiet_sam2():
            _, obj_ids, logits = self.predictor.add_new_mask(self.state, frame_idx=self.frame_index,
                                                             obj_id=int(obj_id), mask=mask)
        return self._prompted(obj_ids, logits)

    def remove_object(self, obj_id: int) -> None:
        """Stop tracking ``obj_id`` (its memory is freed); a ValueError names the objects there are."""
        if int(obj_id) not in self.state["obj_id_to_idx"]:
            raise ValueError(f"no object {obj_id} in the stream; objects: {self.object_ids or 'none'}")
        self.predictor.remove_object(self.state, int(obj_id), strict=True, need_output=False)

    # ------------------------------------------------------------------ internals
    def _require_frame(self) -> None:
        if self.frame_index < 0:
            raise RuntimeError("no frame yet: call step(frame) first, then prompt objects on it")

    @contextlib.contextmanager
    def _as_cond(self):
        saved = self.predictor.add_all_frames_to_correct_as_cond
        self.predictor.add_all_frames_to_correct_as_cond = self.corrections_as_cond or saved
        try:
            yield
        finally:
            self.predictor.add_all_frames_to_correct_as_cond = saved

    def _prompted(self, obj_ids, logits: torch.Tensor) -> StepResult:
        """The current frame after a prompt: the prompted objects' new masks, the others' tracked ones
        (sam2 returns -1024 for objects without a prompt on this frame)."""
        obj_ids = [int(o) for o in obj_ids]
        fresh = logits[:, 0].float().cpu().numpy()
        if self._last is not None and self._last.frame == self.frame_index:
            prompted = set(self._prompted_here())
            for i, obj in enumerate(obj_ids):
                if obj not in prompted and obj in self._last.object_ids:
                    fresh[i] = self._last.logit(obj)
        self._last = StepResult(self.frame_index, obj_ids, fresh)
        return self._last

    def _prompted_here(self) -> list:
        t, state = self.frame_index, self.state
        return [state["obj_idx_to_id"][i] for i, temp in state["temp_output_dict_per_obj"].items()
                if t in temp["cond_frame_outputs"] or t in temp["non_cond_frame_outputs"]]

    def _forget(self, t: int) -> None:
        """Drop what no frame after ``t`` reads (the windows of ``streaming.MemoryWindows``)."""
        state = self.state
        for obj_idx, outputs in state["output_dict_per_obj"].items():
            tracked = outputs["non_cond_frame_outputs"]
            for old in self.windows.stale(list(tracked), t):
                del tracked[old]
            for old in self.windows.memory_stale(list(tracked), t):   # only its pointer is read from now on
                tracked[old] = {"obj_ptr": tracked[old]["obj_ptr"], "maskmem_features": None,
                                "maskmem_pos_enc": None, "pred_masks": None,
                                "object_score_logits": tracked[old]["object_score_logits"]}
            cond = outputs["cond_frame_outputs"]
            for old in self.windows.cond_dropped(list(cond)):
                del cond[old]
            for per_frame in (state["point_inputs_per_obj"][obj_idx], state["mask_inputs_per_obj"][obj_idx],
                              state["frames_tracked_per_obj"][obj_idx]):
                for old in [f for f in per_frame if f < t]:
                    del per_frame[old]

    def held_frames(self) -> dict:
        """``{obj_id: {"cond": [...], "tracked": [...], "with_memory": [...]}}``: what the stream keeps."""
        held = {}
        for obj_idx, outputs in self.state["output_dict_per_obj"].items():
            tracked = outputs["non_cond_frame_outputs"]
            held[self.state["obj_idx_to_id"][obj_idx]] = {
                "cond": sorted(outputs["cond_frame_outputs"]), "tracked": sorted(tracked),
                "with_memory": sorted(f for f, out in tracked.items() if out["maskmem_features"] is not None)}
        return held


__all__ = ["TorchStreamingTracker"]
