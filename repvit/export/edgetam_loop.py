"""The reference tracking loop over EdgeTAM's four ONNX graphs: numpy, Pillow and ONNX Runtime (or OpenVINO,
which compiles the same ONNX files: ``OnnxTracker(export_dir, runtime="openvino")``) only.

``OnnxTracker(export_dir).track(frames_dir, points=[(x, y)], labels=[1])`` tracks one object
prompted on one frame (clicks and/or a box, video pixels) forward through a folder of numbered
JPEG frames, as sam2's video predictor (``build_video_predictor``: ``add_new_points_or_box`` then
``propagate_in_video``) does, and returns each frame's mask logits at the video's resolution.
Everything it needs besides the graphs is in ``edgetam_export.json`` (written by
``repvit.export.edgetam.export_edgetam``), so this file imports nothing of torch or of this
package and can be copied next to the exported files.

Per frame: the image encoder; on the prompted frame its features plus the no-memory embedding,
elsewhere the memory attention over the bank; the prompt decoder and the choice among its four
masks; the memory encoder on the kept mask. The bank holds the prompted frame (always) and the
tracked frames' memories (rounded to bfloat16, as sam2 stores them) and object pointers; the JSON's
``memory_bank.rules`` say which of them fill the attention's slots. ``track_objects`` tracks several
objects, each with prompts on one or more frames, in one pass over the video. Not covered:
corrections of a frame that already has a mask (sam2 feeds the previous mask back into the decoder,
which the exported decoder has no input for), tracking backward from a later prompt, mask prompts.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

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
        width, height = img.size
        pixels = np.array(img.convert("RGB").resize((size, size)))
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
            raise FileNotFoundError(f"{str(spec_path)!r} not found: export with repvit.export.edgetam.export_edgetam")
        self.spec = json.loads(spec_path.read_text())
        if runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.runtime = runtime
        self.runners = {name: open_runner(folder / file, threads, runtime) for name, file in self.spec["files"].items()}
        self.size = int(self.spec["image_size"])
        self.bank_rules = self.spec["memory_bank"]
        self.no_memory = np.asarray(self.spec["constants"]["no_memory_embedding"], np.float32).reshape(1, -1, 1, 1)

    def run(self, name: str, **feed) -> list:
        return self.runners[name](feed)

    def encode_image(self, image: np.ndarray) -> dict:
        names = self.spec["graphs"]["image_encoder"]["outputs"]
        return dict(zip(names, self.run("image_encoder", image=image)))

    def decode(self, embed: np.ndarray, frame: dict, coords: np.ndarray, labels: np.ndarray, multimask: bool):
        masks, ious, pointers, _ = self.run("prompt_decoder", image_embed=embed, high_res_0=frame["high_res_0"],
                                            high_res_1=frame["high_res_1"], point_coords=coords,
                                            point_labels=labels)
        return choose(self.spec["choice"], masks, ious, pointers, multimask)

    def encode_memory(self, frame: dict, mask: np.ndarray, pointer: np.ndarray, from_points: bool) -> Memory:
        memory, memory_pos = self.run("memory_encoder", features=frame["features"], mask_logits=mask,
                                      from_points=np.array([1.0 if from_points else 0.0], np.float32))
        return Memory(round_to_bfloat16(memory), memory_pos, pointer)

    def condition(self, frame: dict, t: int, cond: dict, tracked: dict, num_frames: int) -> np.ndarray:
        """The memory attention's output for tracked frame ``t`` (the bank as sam2 selects it)."""
        rules = self.bank_rules
        n_mem, stride = rules["num_maskmem"], rules["temporal_stride"]
        slots = [(0, m) for m in cond.values()]
        for t_pos in range(1, n_mem):
            back = n_mem - t_pos
            prev = t - 1 if back == 1 else ((t - 2) // stride) * stride - (back - 2) * stride
            if prev in tracked:
                slots.append((t_pos, tracked[prev]))
        pointers = [m.pointer for c, m in cond.items() if c <= t]
        for step in range(1, min(num_frames, rules["max_obj_ptrs_in_encoder"])):
            if t - step < 0:
                break
            if t - step in tracked:
                pointers.append(tracked[t - step].pointer)
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
        (out,) = self.run("memory_attention", features=frame["features"], features_pos=frame["features_pos"],
                          memory=memory, memory_pos=memory_pos, memory_tpos=tpos, memory_valid=valid,
                          object_pointers=ptrs, pointer_valid=ptr_valid)
        return out

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
        """``{frame index: HxW float32 mask logits}`` of one object prompted on ``frame``, for that frame and
        every later one."""
        callback = None if on_frame is None else (lambda t, masks: on_frame(t, masks[1]))
        out = self.track_objects(frames, [{"obj_id": 1, "frame": frame, "points": points, "labels": labels,
                                           "box": box}], on_frame=callback)
        return {t: masks[1] for t, masks in out.items()}

    def track_objects(self, frames: Union[str, os.PathLike], prompts: Sequence[dict],
                      on_frame=None) -> dict[int, dict[int, np.ndarray]]:
        """Several objects in one pass: ``{frame index: {obj_id: HxW float32 mask logits}}`` from the first
        prompted frame to the last frame, each frame encoded once.

        ``prompts``: dicts with ``obj_id``, ``frame`` and ``points`` (video pixels) + ``labels`` and/or
        ``box``; one per (object, frame) with all of that frame's clicks, as sam2's
        ``add_new_points_or_box`` with ``clear_old_points``. Objects are independent, as in sam2: each
        has its own memory bank. An object prompted on several frames has all of them as conditioning
        frames (``memory_tpos`` 0), and, as sam2 does, frames between the first prompt of the video and
        an object's own first prompt are tracked from its (later) conditioning memories.
        """
        files = frame_files(frames)
        with Image.open(files[0]) as img:
            width, height = img.size
        objects: dict = {}
        for prompt in prompts:
            obj, t = int(prompt.get("obj_id", 1)), int(prompt.get("frame", 0))
            if not 0 <= t < len(files):
                raise ValueError(f"object {obj} is prompted on frame {t}; the video has frames 0-{len(files) - 1}")
            if t in objects.setdefault(obj, {}):
                raise ValueError(f"object {obj} has two prompts on frame {t}: give all of a frame's clicks in one")
            objects[obj][t] = self.prompt_arrays(prompt.get("points"), prompt.get("labels"), prompt.get("box"),
                                                 (height, width))
        if not objects:
            raise ValueError("give at least one prompt")
        pre, choice = self.spec["preprocessing"], self.spec["choice"]
        cache: dict = {}

        def features(t: int) -> tuple[dict, tuple]:
            if t not in cache:
                image, video_size = load_frame(files[t], self.size, pre["mean"], pre["std"])
                cache.clear()   # one frame at a time: the prompted frames are encoded again when reached
                cache[t] = (self.encode_image(image), video_size)
            return cache[t]

        # Every prompt is decoded first (sam2 does so when the prompt is added): later objects' conditioning
        # memories exist before propagation reaches them.
        cond: dict = {obj: {} for obj in objects}
        cond_masks: dict = {}
        for obj, frame_prompts in objects.items():
            for t, (coords, marks) in sorted(frame_prompts.items()):
                feats, _ = features(t)
                multimask = use_multimask(choice, marks.shape[1], prompted=True)
                mask, pointer = self.decode(feats["features"] + self.no_memory, feats, coords, marks, multimask)
                cond[obj][t] = self.encode_memory(feats, mask, pointer, from_points=True)
                cond_masks[(obj, t)] = mask
        tracked: dict = {obj: {} for obj in objects}
        logits: dict = {}
        for t in range(min(min(p) for p in objects.values()), len(files)):
            feats, video_size = features(t)
            logits[t] = {}
            for obj in objects:
                if (obj, t) in cond_masks:
                    mask = cond_masks[(obj, t)]
                else:
                    embed = self.condition(feats, t, cond[obj], tracked[obj], len(files))
                    multimask = use_multimask(choice, 0, prompted=False)
                    mask, pointer = self.decode(embed, feats, np.zeros((1, 1, 2), np.float32),
                                                -np.ones((1, 1), np.float32), multimask)
                    tracked[obj][t] = self.encode_memory(feats, mask, pointer, from_points=False)
                logits[t][obj] = resize_bilinear(mask[0, 0], *video_size)
            if on_frame is not None:
                on_frame(t, logits[t])
        return logits


__all__ = ["OnnxTracker", "choose", "use_multimask", "resize_bilinear", "round_to_bfloat16", "load_frame",
           "frame_files", "open_session", "open_runner", "RUNTIMES", "SPEC_NAME"]
