"""``OnnxStreamingTracker``: EdgeTAM frame by frame over the four exported graphs (ONNX Runtime or
OpenVINO), in constant memory, with the API of ``repvit.edgetam.streaming``.

Each frame runs what ``OnnxTracker.propagate_in_video`` runs for one frame (the image encoder once,
then for every object the memory attention over its bank, the prompt decoder and the memory
encoder; the objects in one call per graph, along the graphs' objects axis), on a bank that holds only what the windows of ``MemoryWindows`` say: the objects'
conditioning frames, the memories and pointers the current and the next frame read. Prompts
follow ``OnnxTracker.add_new_points_or_box`` (and so sam2): a new object's prompt is decoded from
the frame alone; a prompt for an object already tracked on the current frame corrects it, the
decoder seeing the memory, the clicks and the frame's previous mask. A mask prompt is the object's
output and memory on its frame, the decoder making only its pointer (``OnnxTracker.decode_mask``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np

from ..data.prompts import Prompt
from .onnx_predictor import Memory, OnnxTracker, frame_input, resize_bilinear, use_multimask
from .streaming import ENDLESS, MemoryWindows, StepResult, check_frame, check_mask, prompt_points


@dataclass
class _Object:
    """One object's bank: ``cond`` its conditioning memories, ``tracked`` the other frames' (pointer
    only once out of the memory window), ``mask`` its 1x1x256x256 logits on the current frame,
    ``pending`` a prompt on the current frame not yet in the bank (mask, memory, is it a cond frame)."""

    cond: dict = field(default_factory=dict)
    tracked: dict = field(default_factory=dict)
    mask: Optional[np.ndarray] = None
    pending: Optional[tuple] = None


class OnnxStreamingTracker:
    """Frame-by-frame EdgeTAM over the graphs in ``export_dir`` (``repvit.edgetam.export.export_edgetam``).

    ``runtime``: ``"onnxruntime"`` or ``"openvino"``; ``threads``: intra-op threads per graph.
    ``corrections_as_cond`` and ``max_cond_frames`` as in ``TorchStreamingTracker``; the graphs' memory
    slots bound the conditioning frames further (``max_frames - (num_maskmem - 1)`` of them)."""

    def __init__(self, export_dir: Union[str, os.PathLike], threads: Optional[int] = None,
                 runtime: str = "onnxruntime", *, corrections_as_cond: bool = False,
                 max_cond_frames: Optional[int] = None):
        self.graphs = OnnxTracker(export_dir, threads=threads, runtime=runtime)
        rules = self.graphs.bank_rules
        memories, pointers = int(rules["num_maskmem"]) - 1, int(rules["max_obj_ptrs_in_encoder"]) - 1
        slots = min(int(rules["max_frames"]) - memories, int(rules["max_pointers"]) - pointers)
        if max_cond_frames is not None and max_cond_frames > slots:
            raise ValueError(f"the exported memory attention has room for {slots} conditioning frame(s) per "
                             f"object, not {max_cond_frames}: export with more memory frames "
                             f"(export_edgetam(max_memory_frames=...)) or keep max_cond_frames <= {slots}")
        self.windows = MemoryWindows(memories, pointers, stride=int(rules["temporal_stride"]),
                                     max_cond_frames=max_cond_frames or slots)
        self.corrections_as_cond = bool(corrections_as_cond)
        self.runtime = runtime
        self.reset_state()

    def reset_state(self) -> None:
        """Forget every object and the frame count: the next ``step`` is frame 0 of a new stream."""
        self.frame_index = -1
        self.frame_size: Optional[tuple] = None
        self.objects: dict[int, _Object] = {}
        self._features: Optional[dict] = None
        self._image: Optional[np.ndarray] = None

    @property
    def object_ids(self) -> list:
        return list(self.objects)

    # ------------------------------------------------------------------ the stream
    def step(self, frame) -> StepResult:
        """Track every object on ``frame`` (HxWx3 uint8 RGB), the stream's next frame."""
        frame = check_frame(frame)
        t = self.frame_index
        for obj in self.objects.values():       # the current frame's prompts join the bank
            if obj.pending is not None:
                mask, memory, cond = obj.pending
                if cond:
                    obj.cond[t] = memory
                    obj.tracked.pop(t, None)
                else:
                    obj.tracked[t] = memory
                obj.mask, obj.pending = mask, None
        pre = self.graphs.spec["preprocessing"]
        self._image, self.frame_size = frame_input(frame, self.graphs.size, pre["mean"], pre["std"])
        self._features = None
        self.frame_index = t = t + 1
        if self.objects:   # every object in one call per graph (graphs with an objects axis)
            feats, objects = self._frame_features(), list(self.objects.values())
            embeds = self.graphs.condition_objects(
                feats, [self.graphs.bank(t, obj.cond, obj.tracked, ENDLESS) for obj in objects])
            decoded = self.graphs.decode_tracked(embeds, feats, use_multimask(self.graphs.spec["choice"], 0,
                                                                               prompted=False))
            memories = self.graphs.encode_memories(feats, [m for m, _ in decoded], [p for _, p in decoded],
                                                   from_points=False)
            for obj, (mask, _), memory in zip(objects, decoded, memories):
                obj.tracked[t], obj.mask = memory, mask
                self._forget(obj, t)
        return self._result()

    def add_new_points_or_box(self, obj_id: int, points=None, labels=None, box=None) -> StepResult:
        """Prompt ``obj_id`` on the current frame with clicks (frame pixels; label 1 object, 0
        background) and/or a box ``(x0, y0, x1, y1)``; returns the current frame's masks of every object."""
        if self.frame_index < 0:
            raise RuntimeError("no frame yet: call step(frame) first, then prompt objects on it")
        obj_id, t = int(obj_id), self.frame_index
        coords, marks, corners = prompt_points(points, labels, box)
        height, width = self.frame_size
        pts = [] if coords is None else [(float(x), float(y), int(m)) for (x, y), m in zip(coords, marks)]
        Prompt(pts, None if corners is None else tuple(float(v) for v in corners)).check(
            width, height, where=f"object {obj_id} on frame {t}", picture="frame")
        obj = self.objects.get(obj_id)
        pending_cond = obj is not None and obj.pending is not None and obj.pending[2]
        correction = obj is not None and t in obj.tracked and not pending_cond
        if correction and not self.graphs.takes_mask_input:
            raise ValueError("these graphs were exported without the decoder's mask input (before corrections "
                             "were supported): export again with repvit.edgetam.export.export_edgetam")
        feats = self._frame_features()
        in_coords, in_marks = self.graphs.prompt_arrays(coords, marks, corners, self.frame_size)
        obj = self.objects.setdefault(obj_id, _Object())
        if correction:
            embed = self.graphs.condition(feats, t, obj.cond, obj.tracked, ENDLESS)
        else:
            embed = feats["features"] + self.graphs.no_memory
        previous = obj.pending[0] if obj.pending is not None else obj.mask
        multimask = use_multimask(self.graphs.spec["choice"], in_marks.shape[1], prompted=not correction)
        mask_input = None if previous is None else np.clip(previous, -32.0, 32.0)
        mask, pointer = self.graphs.decode(embed, feats, in_coords, in_marks, multimask, mask_input=mask_input)
        memory = self.graphs.encode_memory(feats, mask, pointer, from_points=True)
        obj.pending = (mask, memory, not correction or self.corrections_as_cond)
        return self._result()

    def add_new_mask(self, obj_id: int, mask) -> StepResult:
        """Prompt ``obj_id`` on the current frame with a mask (HxW, the frame's size): the mask is the
        object's output on this frame and its memory, the decoder making only its pointer (as sam2 does)."""
        if self.frame_index < 0:
            raise RuntimeError("no frame yet: call step(frame) first, then prompt objects on it")
        obj_id, t = int(obj_id), self.frame_index
        mask = check_mask(mask, self.frame_size)
        obj = self.objects.get(obj_id)
        pending_cond = obj is not None and obj.pending is not None and obj.pending[2]
        correction = obj is not None and t in obj.tracked and not pending_cond
        feats = self._frame_features()
        logits, pointer = self.graphs.decode_mask(feats, mask)
        memory = self.graphs.encode_memory(feats, logits, pointer, from_points=True)
        self.objects.setdefault(obj_id, _Object()).pending = (logits, memory, not correction or self.corrections_as_cond)
        return self._result()

    def remove_object(self, obj_id: int) -> None:
        """Stop tracking ``obj_id`` (its memory is freed); a ValueError names the objects there are."""
        if int(obj_id) not in self.objects:
            raise ValueError(f"no object {obj_id} in the stream; objects: {self.object_ids or 'none'}")
        del self.objects[int(obj_id)]

    # ------------------------------------------------------------------ internals
    def _frame_features(self) -> dict:
        if self._features is None:
            self._features = self.graphs.encode_image(self._image)
        return self._features

    def _forget(self, obj: _Object, t: int) -> None:
        for old in self.windows.stale(list(obj.tracked), t):
            del obj.tracked[old]
        for old in self.windows.memory_stale(list(obj.tracked), t):
            if obj.tracked[old].memory is not None:
                obj.tracked[old] = Memory(None, None, obj.tracked[old].pointer)
        for old in self.windows.cond_dropped(list(obj.cond)):
            del obj.cond[old]

    def _result(self) -> StepResult:
        height, width = self.frame_size
        logits = np.full((len(self.objects), height, width), np.float32(self.graphs.no_object), np.float32)
        for i, obj in enumerate(self.objects.values()):
            mask = obj.pending[0] if obj.pending is not None else obj.mask
            if mask is not None:
                logits[i] = resize_bilinear(mask[0, 0], height, width)
        return StepResult(self.frame_index, self.object_ids, logits)

    def held_frames(self) -> dict:
        """``{obj_id: {"cond": [...], "tracked": [...], "with_memory": [...]}}``: what the stream keeps."""
        return {obj_id: {"cond": sorted(obj.cond), "tracked": sorted(obj.tracked),
                         "with_memory": sorted(f for f, m in obj.tracked.items() if m.memory is not None)}
                for obj_id, obj in self.objects.items()}


__all__ = ["OnnxStreamingTracker"]
