"""The reference tracking loop over EdgeTAM's four ONNX graphs: numpy, Pillow and ONNX Runtime (or OpenVINO,
which compiles the same ONNX files: ``OnnxTracker(export_dir, runtime="openvino")``) only.

(One file of over 400 lines by design: it is the file a deployment copies beside the exported graphs,
so it imports nothing of this package; the streaming tracker over the same graphs is ``onnx_stream.py``.)

``OnnxTracker(export_dir).track(frames_dir, points=[(x, y)], labels=[1])`` tracks one object
prompted on one frame (clicks and/or a box, video pixels) forward through a folder of numbered
JPEG frames, as sam2's video predictor (``build_video_predictor``: ``add_new_points_or_box`` then
``propagate_in_video``) does, and returns each frame's mask logits at the video's resolution.
Everything it needs besides the graphs is in ``edgetam_export.json`` (written by
``repvit.edgetam.export.export_edgetam``), so this file imports nothing of torch or of this
package and can be copied next to the exported files.

Per frame: the image encoder; on the prompted frame its features plus the no-memory embedding,
elsewhere the memory attention over the bank; the prompt decoder and the choice among its four
masks; the memory encoder on the kept mask. The bank holds the prompted frame (always) and the
tracked frames' memories (rounded to bfloat16, as sam2 stores them) and object pointers; the JSON's
``memory_bank.rules`` say which of them fill the attention's slots. ``track_objects`` tracks several
objects, each with prompts on one or more frames, in one pass over the video.

Interactive use follows sam2's video API step by step: ``state = tracker.init_state(frames_dir)``,
``tracker.add_new_points_or_box(state, frame_idx, obj_id, points=, labels=, box=)``, ``for t, ids,
masks in tracker.propagate_in_video(state)``; then clicks on a frame that was tracked correct it (the
decoder gets the frame's previous mask back through its ``mask_input``, as sam2 does) and another
``propagate_in_video`` carries the correction forward (``reverse=True`` tracks backward from the first
prompted frame). Not covered: mask prompts, correcting a prompted frame after it was propagated (sam2
keeps its first output).
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
from PIL import Image

SPEC_NAME = "edgetam_export.json"
JPEG_SUFFIXES = (".jpg", ".jpeg", ".JPG", ".JPEG")


RUNTIMES = ("onnxruntime", "openvino")


def open_session(path: Union[str, os.PathLike], threads: Optional[int] = None):
    """An ONNX Runtime CPU session with all graph optimizations (``threads`` intra-op threads)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("the EdgeTAM ONNX loop needs onnxruntime: pip install 'repvit-pytorch[onnx]'") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def frame_files(folder: Union[str, os.PathLike]) -> list[Path]:
    """The JPEG frames of ``folder`` in the order of their numeric names (00000.jpg, 00001.jpg, ...)."""
    files = [p for p in Path(folder).iterdir() if p.suffix in JPEG_SUFFIXES]
    if not files:
        raise FileNotFoundError(f"no JPEG frames in {str(folder)!r}")
    try:
        return sorted(files, key=lambda p: int(p.stem))
    except ValueError:
        raise ValueError(f"frames of {str(folder)!r} must be named by their index (00000.jpg, ...)") from None


def load_frame(path: Union[str, os.PathLike], size: int, mean: Sequence[float], std: Sequence[float]):
    """``(1x3xSxS float32 input, (height, width))`` of one frame, computed as sam2's video loader does."""
    with Image.open(path) as img:
        return frame_input(np.asarray(img.convert("RGB")), size, mean, std)


def frame_input(rgb: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]):
    """``(1x3xSxS float32 input, (height, width))`` of an HxWx3 uint8 RGB frame, as sam2's video loader
    computes it from a JPEG (Pillow's resize to SxS, /255, then the mean and std)."""
    height, width = rgb.shape[:2]
    pixels = np.array(Image.fromarray(rgb).resize((size, size)))
    x = (pixels / 255.0).astype(np.float32).transpose(2, 0, 1)
    x = (x - np.asarray(mean, np.float32)[:, None, None]) / np.asarray(std, np.float32)[:, None, None]
    return np.ascontiguousarray(x[None], dtype=np.float32), (height, width)


def _axis(n_in: int, n_out: int):
    scale = np.float32(n_in) / np.float32(n_out)
    src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5), 0)
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, np.float32(1) - w1, w1


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of the last two axes with half-pixel centres (torch's ``align_corners=False``)."""
    i0, i1, a0, a1 = _axis(x.shape[-1], width)
    x = x[..., i0] * a0 + x[..., i1] * a1
    j0, j1, b0, b1 = _axis(x.shape[-2], height)
    return (x[..., j0, :] * b0[:, None] + x[..., j1, :] * b1[:, None]).astype(np.float32)


def _antialias_weights(n_in: int, n_out: int) -> np.ndarray:
    """n_out x n_in weights of torch's antialiased bilinear resize along one axis (a triangle filter
    stretched by the scale when shrinking, each row normalized; half-pixel centres)."""
    scale = n_in / n_out
    support, inv = (scale, 1.0 / scale) if scale >= 1.0 else (1.0, 1.0)
    weights = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        centre = scale * (i + 0.5)
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        w = np.maximum(1.0 - np.abs((np.arange(lo, hi) - centre + 0.5) * inv), 0.0).astype(np.float32)
        weights[i, lo:hi] = w / w.sum() if w.sum() > 0 else w
    return weights


def resize_antialiased(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """``x`` (HxW) resized as torch's ``F.interpolate(mode="bilinear", align_corners=False, antialias=True)``."""
    rows, cols = _antialias_weights(x.shape[0], height), _antialias_weights(x.shape[1], width)
    return (rows @ x.astype(np.float32) @ cols.T).astype(np.float32)


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), kept as float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (rounded & np.uint32(0xFFFF0000)).view(np.float32)


def use_multimask(choice: dict, num_points: int, prompted: bool) -> bool:
    return bool(choice["multimask_output_in_sam"] and (prompted or choice["multimask_output_for_tracking"])
                and choice["multimask_min_points"] <= num_points <= choice["multimask_max_points"])


def choose(choice: dict, masks: np.ndarray, ious: np.ndarray, pointers: np.ndarray, multimask: bool):
    """The kept ``(mask 1x1x256x256, pointer 1x256)`` among the decoder's four, as sam2 picks them."""
    best = 1 + int(np.argmax(ious[0, 1:]))
    if multimask:
        pointer = pointers[:, best] if choice["multimask_token_for_pointer"] else pointers[:, 0]
        return masks[:, best:best + 1], pointer
    single = masks[:, 0:1]
    if choice["dynamic_stability"]:
        delta = choice["stability_delta"]
        inter, union = np.float32((single > delta).sum()), np.float32((single > -delta).sum())
        stability = inter / union if union > 0 else np.float32(1.0)
        if stability < choice["stability_threshold"]:
            single = masks[:, best:best + 1]
    return single, pointers[:, 0]


def open_runner(path: Union[str, os.PathLike], threads: Optional[int] = None, runtime: str = "onnxruntime"):
    """``run(feed: {input name: array}) -> [output arrays]`` for one ONNX graph: an ONNX Runtime session, or
    the same file compiled by OpenVINO's CPU plugin (float32 precision, one stream, ``threads`` threads)."""
    if runtime == "onnxruntime":
        session = open_session(path, threads)
        return lambda feed: session.run(None, feed)
    if runtime != "openvino":
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    try:
        import openvino as ov
    except ImportError:
        raise ImportError("the EdgeTAM loop on OpenVINO needs openvino: pip install 'repvit-pytorch[deploy]'") from None
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    count = len(compiled.outputs)

    def run(feed: dict) -> list:
        request.infer({name: np.ascontiguousarray(a) for name, a in feed.items()})
        return [request.get_output_tensor(i).data.copy() for i in range(count)]
    return run


@dataclass
class Memory:
    """One frame's entry in the bank: memory tokens (bfloat16-rounded), their encoding, the object pointer."""

    memory: np.ndarray
    memory_pos: np.ndarray
    pointer: np.ndarray


class OnnxTracker:
    """EdgeTAM's tracking loop over the exported graphs of ``export_dir`` (see the module docstring)."""

    def __init__(self, export_dir: Union[str, os.PathLike], threads: Optional[int] = None,
                 runtime: str = "onnxruntime"):
        folder = Path(export_dir)
        spec_path = folder / SPEC_NAME
        if not spec_path.is_file():
            raise FileNotFoundError(f"{str(spec_path)!r} not found: export with repvit.edgetam.export.export_edgetam")
        self.spec = json.loads(spec_path.read_text())
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.runtime = runtime
        ir = sorted(file for file in self.spec["files"].values() if file.endswith(".xml"))
        if ir and runtime != "openvino":
            raise ValueError(f"{folder} holds OpenVINO IR ({', '.join(ir)}, INT8 for OpenVINO): run it with "
                             f"runtime 'openvino'")
        self.runners = {name: open_runner(folder / file, threads, runtime) for name, file in self.spec["files"].items()}
        self.size = int(self.spec["image_size"])
        self.bank_rules = self.spec["memory_bank"]
        self.no_memory = np.asarray(self.spec["constants"]["no_memory_embedding"], np.float32).reshape(1, -1, 1, 1)
        self.no_object = float(self.spec["constants"].get("no_object_score", -1024.0))
        # graphs exported before corrections were supported have no mask input
        self.takes_mask_input = "mask_input" in self.spec["graphs"]["prompt_decoder"]["inputs"]
        # graphs with an objects axis: one call per graph serves every object of a frame
        self.batched = bool(self.spec.get("objects_axis", False))
        self._watchers: list = []

    def run(self, name: str, **feed) -> list:
        if not self._watchers:
            return self.runners[name](feed)
        start = time.perf_counter()
        outputs = self.runners[name](feed)
        seconds = time.perf_counter() - start
        for watcher in list(self._watchers):
            watcher(name, feed, seconds)
        return outputs

    @contextlib.contextmanager
    def watch(self, watcher: Callable[[str, dict, float], None]):
        """Inside the block, ``watcher(graph name, feed, seconds)`` follows every graph call (to count, time or
        record them: calibration feeds, per-graph timings)."""
        self._watchers.append(watcher)
        try:
            yield self
        finally:
            self._watchers.remove(watcher)

    def encode_image(self, image: np.ndarray) -> dict:
        names = self.spec["graphs"]["image_encoder"]["outputs"]
        return dict(zip(names, self.run("image_encoder", image=image)))

    def decode(self, embed: np.ndarray, frame: dict, coords: np.ndarray, labels: np.ndarray, multimask: bool,
               mask_input: Optional[np.ndarray] = None):
        masks, ious, pointers, _ = self.run("prompt_decoder", **self._decoder_feed(embed, frame, coords, labels,
                                                                                  mask_input))
        return choose(self.spec["choice"], masks, ious, pointers, multimask)

    def _decoder_feed(self, embeds: np.ndarray, frame: dict, coords: np.ndarray, labels: np.ndarray,
                      mask_input: Optional[np.ndarray] = None) -> dict:
        """The prompt decoder's inputs for a batch of objects' ``embeds`` (no mask input: sam2's no-mask embedding)."""
        count = embeds.shape[0]
        feed = dict(image_embed=embeds, high_res_0=frame["high_res_0"], high_res_1=frame["high_res_1"],
                    point_coords=coords, point_labels=labels)
        if self.takes_mask_input:
            feed["mask_input"] = (np.zeros((count, 1, 4 * embeds.shape[-2], 4 * embeds.shape[-1]), np.float32)
                                  if mask_input is None else np.ascontiguousarray(mask_input, np.float32))
            feed["has_mask_input"] = np.full((count,), 0.0 if mask_input is None else 1.0, np.float32)
        return feed

    def decode_mask(self, frame: dict, mask: np.ndarray) -> tuple:
        """A mask prompt as sam2 takes it (``_use_mask_as_output``): ``mask`` (HxW bool, the frame's size) ->
        (its 1x1x256x256 logits, the decoder's pointer for it): the mask is the output, the decoder only
        makes the pointer, from the frame's own features and the mask as its mask input."""
        constants = self.spec["constants"].get("mask_prompt")
        if constants is None or not self.takes_mask_input:
            raise ValueError("these graphs were exported before mask prompts were supported: export again with "
                             "repvit.edgetam.export.export_edgetam")
        size, low = self.size, self.size // 4
        binary = (resize_antialiased(np.asarray(mask, np.float32), size, size) >= 0.5).astype(np.float32)
        logits = resize_antialiased(binary * 20.0 - 10.0, low, low)[None, None]
        kernel = np.asarray(constants["downsample_weight"], np.float32).reshape(4, 4)
        mask_input = np.einsum("iajb,ab->ij", binary.reshape(low, 4, low, 4), kernel) + constants["downsample_bias"]
        _, pointer = self.decode(frame["features"], frame, np.zeros((1, 1, 2), np.float32),
                                 -np.ones((1, 1), np.float32), False, mask_input=mask_input[None, None])
        return logits.astype(np.float32), pointer

    def encode_memory(self, frame: dict, mask: np.ndarray, pointer: np.ndarray, from_points: bool) -> Memory:
        memory, memory_pos = self.run("memory_encoder", features=frame["features"], mask_logits=mask,
                                      from_points=np.array([1.0 if from_points else 0.0], np.float32))
        return Memory(round_to_bfloat16(memory), memory_pos, pointer)

    def condition(self, frame: dict, t: int, cond: dict, tracked: dict, num_frames: int,
                  reverse: bool = False) -> np.ndarray:
        """The memory attention's output for tracked frame ``t`` (the bank as sam2 selects it; ``reverse``:
        tracking backward, the memories of the frames after ``t``)."""
        return self.condition_objects(frame, [self.bank(t, cond, tracked, num_frames, reverse)])

    def bank(self, t: int, cond: dict, tracked: dict, num_frames: int, reverse: bool = False) -> dict:
        """One object's memory-attention inputs for tracked frame ``t`` (batch 1): its slots as sam2 fills them."""
        rules = self.bank_rules
        n_mem, stride = rules["num_maskmem"], rules["temporal_stride"]
        slots = [(0, m) for m in cond.values()]
        for t_pos in range(1, n_mem):
            back = n_mem - t_pos
            if not reverse:
                prev = t - 1 if back == 1 else ((t - 2) // stride) * stride - (back - 2) * stride
            else:
                prev = t + 1 if back == 1 else -(-(t + 2) // stride) * stride + (back - 2) * stride
            if prev in tracked:
                slots.append((t_pos, tracked[prev]))
        pointers = [m.pointer for c, m in cond.items() if (c >= t if reverse else c <= t)]
        direction = -1 if reverse else 1
        for step in range(1, min(num_frames, rules["max_obj_ptrs_in_encoder"])):
            other = t - direction * step
            if not 0 <= other < num_frames:
                break
            if other in tracked:
                pointers.append(tracked[other].pointer)
        if len(slots) > rules["max_frames"] or len(pointers) > rules["max_pointers"]:
            raise ValueError(f"frame {t} needs {len(slots)} memory and {len(pointers)} pointer slots; the graph has "
                             f"{rules['max_frames']} and {rules['max_pointers']} (export with larger maxima)")
        first = slots[0][1]
        memory = np.zeros((1, rules["max_frames"], *first.memory.shape[1:]), np.float32)
        memory_pos = np.zeros_like(memory)
        tpos = np.zeros((1, rules["max_frames"]), np.int64)
        valid = np.zeros((1, rules["max_frames"]), np.float32)
        for i, (t_pos, m) in enumerate(slots):
            memory[0, i], memory_pos[0, i], tpos[0, i], valid[0, i] = m.memory[0], m.memory_pos[0], t_pos, 1.0
        ptrs = np.zeros((1, rules["max_pointers"], first.pointer.shape[-1]), np.float32)
        ptr_valid = np.zeros((1, rules["max_pointers"]), np.float32)
        for i, p in enumerate(pointers):
            ptrs[0, i], ptr_valid[0, i] = p[0], 1.0
        return dict(memory=memory, memory_pos=memory_pos, memory_tpos=tpos, memory_valid=valid,
                    object_pointers=ptrs, pointer_valid=ptr_valid)

    def condition_objects(self, frame: dict, banks: list) -> np.ndarray:
        """The memory attention for several objects on one frame (``banks`` from ``bank``): Bx256x64x64,
        in one call when the graphs have an objects axis."""
        if len(banks) > 1 and not self.batched:
            return np.concatenate([self.condition_objects(frame, [b]) for b in banks])
        feed = {key: np.concatenate([b[key] for b in banks]) for key in banks[0]}
        (out,) = self.run("memory_attention", features=frame["features"], features_pos=frame["features_pos"], **feed)
        return out

    def decode_tracked(self, embeds: np.ndarray, frame: dict, multimask: bool) -> list:
        """The decoder on frames with no prompt (a tracked step) for a batch of objects' ``embeds``:
        ``[(mask 1x1x256x256, pointer 1x256), ...]``, one per object, in one call when the graphs allow."""
        count = embeds.shape[0]
        if count > 1 and not self.batched:
            return [self.decode_tracked(embeds[i:i + 1], frame, multimask)[0] for i in range(count)]
        feed = self._decoder_feed(embeds, frame, np.zeros((count, 1, 2), np.float32), -np.ones((count, 1), np.float32))
        masks, ious, pointers, _ = self.run("prompt_decoder", **feed)
        return [choose(self.spec["choice"], masks[i:i + 1], ious[i:i + 1], pointers[i:i + 1], multimask)
                for i in range(count)]

    def encode_memories(self, frame: dict, masks: list, pointers: list, from_points: bool) -> list:
        """``encode_memory`` for several objects of one frame, in one call when the graphs allow."""
        if len(masks) > 1 and not self.batched:
            return [self.encode_memory(frame, m, p, from_points) for m, p in zip(masks, pointers)]
        memory, memory_pos = self.run("memory_encoder", features=frame["features"], mask_logits=np.concatenate(masks),
                                      from_points=np.full((len(masks),), 1.0 if from_points else 0.0, np.float32))
        return [Memory(round_to_bfloat16(memory[i:i + 1]), memory_pos[i:i + 1], p) for i, p in enumerate(pointers)]

    def prompt_arrays(self, points, labels, box, video_size) -> tuple[np.ndarray, np.ndarray]:
        coords = np.asarray(points if points is not None else [], np.float32).reshape(-1, 2)
        marks = np.asarray(labels if labels is not None else [1] * len(coords), np.float32).reshape(-1)
        if len(marks) != len(coords):
            raise ValueError(f"{len(coords)} points but {len(marks)} labels")
        if box is not None:
            coords = np.concatenate([np.asarray(box, np.float32).reshape(2, 2), coords])
            marks = np.concatenate([np.array([2, 3], np.float32), marks])
        if not len(coords):
            raise ValueError("give at least one point or a box")
        height, width = video_size
        coords = coords / np.array([width, height], np.float32) * np.float32(self.size)
        return coords[None].astype(np.float32), marks[None]

    def track(self, frames: Union[str, os.PathLike], points=None, labels=None, *, box=None, frame: int = 0,
              on_frame=None) -> dict[int, np.ndarray]:
        """``{frame index: HxW float32 mask logits}`` of one object prompted on ``frame``, for every frame (those
        before ``frame`` tracked backward)."""
        callback = None if on_frame is None else (lambda t, masks: on_frame(t, masks[1]))
        out = self.track_objects(frames, [{"obj_id": 1, "frame": frame, "points": points, "labels": labels,
                                           "box": box}], on_frame=callback)
        return {t: masks[1] for t, masks in out.items()}

    def track_objects(self, frames: Union[str, os.PathLike], prompts: Sequence[dict],
                      on_frame=None) -> dict[int, dict[int, np.ndarray]]:
        """Several objects in one pass: ``{frame index: {obj_id: HxW float32 mask logits}}`` from the first
        prompted frame to the last frame, each frame encoded once.

        ``prompts``: dicts with ``obj_id``, ``frame`` and ``points`` (video pixels) + ``labels`` and/or
        ``box``; one per (object, frame) with all of that frame's clicks. Every prompt is added before
        the video is propagated (``init_state``, ``add_new_points_or_box`` per prompt, then
        ``propagate_in_video``, forward, then backward to frame 0 when the first prompt is on a later
        frame, as ``repvit track`` does): an object prompted on several frames has all of them as
        conditioning frames, and, as sam2 does, frames between the first prompt of the video and an
        object's own first prompt are tracked from its (later) conditioning memories. Corrections of
        tracked frames need the step-by-step API (see ``add_new_points_or_box``).
        """
        state = self.init_state(frames)
        seen = set()
        for prompt in prompts:
            obj, t = int(prompt.get("obj_id", 1)), int(prompt.get("frame", 0))
            if (obj, t) in seen:
                raise ValueError(f"object {obj} has two prompts on frame {t}: give all of a frame's clicks in one")
            seen.add((obj, t))
            self.add_new_points_or_box(state, t, obj, points=prompt.get("points"), labels=prompt.get("labels"),
                                       box=prompt.get("box"))
        if not seen:
            raise ValueError("give at least one prompt")
        logits: dict = {}
        first = min(t for _, t in seen)
        for reverse in ([False, True] if first > 0 else [False]):
            for t, obj_ids, masks in self.propagate_in_video(state, reverse=reverse):
                if t in logits:
                    continue
                logits[t] = {obj: masks[i, 0] for i, obj in enumerate(obj_ids)}
                if on_frame is not None:
                    on_frame(t, logits[t])
        return dict(sorted(logits.items()))

    # ------------------------------------------------------------------ sam2's video API, step by step
    def init_state(self, frames: Union[str, os.PathLike]) -> "TrackingState":
        """A tracking state for the numbered JPEG frames of ``frames`` (nothing is encoded yet)."""
        files = frame_files(frames)
        with Image.open(files[0]) as img:
            width, height = img.size
        return TrackingState(files, (height, width))

    def add_new_points_or_box(self, state: "TrackingState", frame_idx: int, obj_id: int, points=None, labels=None,
                              box=None):
        """Prompt object ``obj_id`` on frame ``frame_idx`` (clicks in video pixels, labels 1 object / 0
        background, and/or a box ``(x0, y0, x1, y1)``), as sam2's ``add_new_points_or_box`` with
        ``clear_old_points``; returns ``(frame_idx, obj_ids, masks)``, ``masks`` Nx1xHxW logits of every
        object on that frame (-1024 for those not prompted there since the last propagation).

        On a frame the object has not been tracked on, the prompt makes it a conditioning frame (decoded
        from the frame alone; prompting it again before propagating refines it, the previous mask fed
        back). On a frame it *has* been tracked on, the prompt corrects that frame: the decoder sees the
        frame conditioned on the memory bank, the clicks and the frame's previous mask, and the corrected
        mask is kept, and remembered by later frames, when ``propagate_in_video`` runs again.
        """
        t, obj = int(frame_idx), int(obj_id)
        if not 0 <= t < state.num_frames:
            raise ValueError(f"object {obj} is prompted on frame {t}; the video has frames 0-{state.num_frames - 1}")
        coords, marks = self.prompt_arrays(points, labels, box, state.video_size)
        track = state.objects.setdefault(obj, ObjectTrack())
        correction = t in track.visited
        if correction and t in track.cond:
            raise ValueError(f"frame {t} is a prompted frame of object {obj} and was propagated: sam2 keeps a "
                             f"prompted frame's output from then on. Correct another frame, or start again with "
                             f"init_state and all of frame {t}'s clicks in one prompt")
        pending = track.pending.get(t)
        previous = pending.mask if pending is not None else track.outputs.get(t)
        if correction and not self.takes_mask_input:
            raise ValueError("these graphs were exported without the decoder's mask input (before corrections "
                             "were supported): export again with repvit.edgetam.export.export_edgetam")
        feats, _ = state.features(t, self)
        if correction:   # conditioned in the direction the frame was tracked in, as sam2 does
            embed = self.condition(feats, t, track.cond, track.tracked, state.num_frames, reverse=track.visited[t])
        else:
            embed = feats["features"] + self.no_memory
        multimask = use_multimask(self.spec["choice"], marks.shape[1], prompted=not correction)
        mask_input = None if previous is None else np.clip(previous, -32.0, 32.0)
        mask, pointer = self.decode(embed, feats, coords, marks, multimask, mask_input=mask_input)
        memory = self.encode_memory(feats, mask, pointer, from_points=True)
        track.pending[t] = Pending(mask, memory, cond=not correction)
        masks = np.full((len(state.objects), 1, *state.video_size), np.float32(self.no_object), np.float32)
        for i, other in enumerate(state.objects.values()):
            entry = other.pending.get(t)
            if entry is not None and entry.cond == (not correction):
                masks[i, 0] = resize_bilinear(entry.mask[0, 0], *state.video_size)
        return t, list(state.objects), masks

    def propagate_in_video(self, state: "TrackingState", reverse: bool = False):
        """Track every object from the first prompted frame to the end (``reverse``: back to frame 0),
        yielding ``(frame_idx, obj_ids, masks)`` (Nx1xHxW logits at the video's size), as sam2's
        ``propagate_in_video``."""
        if not state.objects:
            raise ValueError("no object has a prompt: call add_new_points_or_box first")
        for track in state.objects.values():   # sam2's preflight: the prompts' outputs join the memory bank
            for t, entry in sorted(track.pending.items()):
                (track.cond if entry.cond else track.tracked)[t] = entry.memory
                track.outputs[t] = entry.mask
                if not entry.cond:
                    track.corrected.add(t)
            track.pending.clear()
        start = min(t for track in state.objects.values() for t in track.cond)
        order = range(start, -1, -1) if reverse else range(start, state.num_frames)
        if reverse and start == 0:
            order = range(0)   # sam2 skips a backward pass from frame 0
        for t in order:
            feats, video_size = state.features(t, self)
            obj_ids, masks = list(state.objects), []
            for track in state.objects.values():
                if t not in track.cond and t not in track.corrected:
                    embed = self.condition(feats, t, track.cond, track.tracked, state.num_frames, reverse=reverse)
                    multimask = use_multimask(self.spec["choice"], 0, prompted=False)
                    mask, pointer = self.decode(embed, feats, np.zeros((1, 1, 2), np.float32),
                                                -np.ones((1, 1), np.float32), multimask)
                    track.tracked[t] = self.encode_memory(feats, mask, pointer, from_points=False)
                    track.outputs[t] = mask
                track.visited[t] = reverse
                masks.append(resize_bilinear(track.outputs[t][0, 0], *video_size)[None])
            yield t, obj_ids, np.stack(masks)


@dataclass
class Pending:
    """A prompt's output before the next propagation (sam2's temporary outputs)."""

    mask: np.ndarray
    memory: Memory
    cond: bool


@dataclass
class ObjectTrack:
    """One object's memory bank and outputs: ``cond`` its prompted frames' memories, ``tracked`` the other
    frames' (tracked or corrected), ``outputs`` every frame's kept 1x1x256x256 logits, ``corrected`` the
    tracked frames that hold a correction, ``visited`` the frames a propagation went through (and whether
    it went backward)."""

    cond: dict = field(default_factory=dict)
    tracked: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    corrected: set = field(default_factory=set)
    visited: dict = field(default_factory=dict)
    pending: dict = field(default_factory=dict)


class TrackingState:
    """What ``OnnxTracker.init_state`` returns: the frames, the objects' tracks, the last encoded frame."""

    def __init__(self, files: list, video_size: tuple):
        self.files, self.video_size = files, video_size
        self.num_frames = len(files)
        self.objects: dict[int, ObjectTrack] = {}
        self._cache: dict = {}

    def features(self, t: int, tracker: "OnnxTracker") -> tuple[dict, tuple]:
        """Frame ``t``'s image-encoder outputs; one frame is kept (frames are encoded again when revisited)."""
        if t not in self._cache:
            pre = tracker.spec["preprocessing"]
            image, video_size = load_frame(self.files[t], tracker.size, pre["mean"], pre["std"])
            self._cache = {t: (tracker.encode_image(image), video_size)}
        return self._cache[t]


__all__ = ["OnnxTracker", "TrackingState", "choose", "use_multimask", "resize_antialiased", "resize_bilinear", "round_to_bfloat16",
           "load_frame", "frame_input", "frame_files", "open_session", "open_runner", "RUNTIMES", "SPEC_NAME"]
