"""INT8 EdgeTAM graphs for the exported stream, checked by the masks the stream then tracks.

``quantize_edgetam(float_dir, out_dir, frames, box=...)`` copies the float graphs of ``float_dir``
(``repvit.edgetam.export.export_edgetam``) and replaces some of them by post-training INT8 copies:
the image encoder (a RepViT CNN, where INT8 kernels pay most) and, with ``graphs=("image_encoder",
"memory_attention")``, the memory attention too (OpenVINO only: its calibration feeds are the
eight inputs of real memory banks). Calibration data is what the float stream itself computes on
``frames`` with one object prompted by ``box`` on the first: the frames' encoder inputs, and the
memory attention's feeds as the bank fills and slides. The prompt decoder and the memory encoder
stay float (a few percent of a frame's multiply-adds, and the memory the next frames read).

An INT8 graph is not within a float tolerance of its float one, so the check is what a user sees:
``mask_agreement`` tracks the same frames with both folders and reports the masks' IoU per frame.
The spec of the INT8 folder names its files and says which graphs are INT8 (``"int8"``); OpenVINO
IR files run on ``runtime="openvino"`` only, and ``OnnxTracker`` says so.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

from .export import SPEC_NAME
from .onnx_stream import OnnxStreamingTracker

INT8_GRAPHS = ("image_encoder", "memory_attention")
# Operations that stay float in an INT8 image encoder: the stem (its input is the picture itself) and the
# neck with the decoder's two high-resolution projections, whose outputs the decoder reads directly
# (about 2.5 of the encoder's 19.3 GMAC). With seeded random weights on a DAVIS sequence this lifted the
# masks' mean IoU against the float tracker from 0.92 to 0.95 (benchmarks/edgetam.md).
KEEP_FLOAT = {"image_encoder": (r".*/neck/.*", r".*/conv_s[01]/.*", r".*/trunk/features\.0/.*"),
              "memory_attention": ()}
INT8_RUNTIMES = ("openvino", "onnxruntime")
SUFFIX = {"openvino": ".xml", "onnxruntime": ".onnx"}


def calibration_feeds(float_dir: Union[str, os.PathLike], frames: Sequence[np.ndarray], box: Sequence[float], *,
                      threads: Optional[int] = None, runtime: str = "onnxruntime") -> dict:
    """``{graph: [feed, ...]}`` of the image encoder (its ``image``) and the memory attention (every input)
    as the float stream runs them on ``frames`` with one object prompted by ``box`` on the first frame."""
    stream = OnnxStreamingTracker(float_dir, threads=threads, runtime=runtime)
    feeds = {name: [] for name in INT8_GRAPHS}

    def record(name: str, feed: dict, seconds: float) -> None:
        if name in feeds:
            feeds[name].append({key: np.array(value) for key, value in feed.items()})
    with stream.graphs.watch(record):
        for t, frame in enumerate(frames):
            stream.step(frame)
            if t == 0:
                stream.add_new_points_or_box(1, box=box)
    return feeds


def quantize_edgetam(float_dir: Union[str, os.PathLike], out_dir: Union[str, os.PathLike],
                     frames: Sequence[np.ndarray], *, box: Sequence[float], runtime: str = "openvino",
                     graphs: Sequence[str] = ("image_encoder",), threads: Optional[int] = None,
                     weights: str = "int7", source: str = "", log: Callable[[str], None] = lambda _: None) -> dict:
    """Write ``out_dir``: the graphs of ``float_dir`` with ``graphs`` made INT8 for ``runtime``; returns the
    report. The folder is written beside its final name and renamed into place when complete."""
    float_dir, out_dir = Path(float_dir), Path(out_dir)
    if runtime not in INT8_RUNTIMES:
        raise ValueError(f"INT8 EdgeTAM graphs are made for {' or '.join(INT8_RUNTIMES)}, not {runtime!r}")
    unknown = sorted(set(graphs) - set(INT8_GRAPHS))
    if unknown or not graphs:
        raise ValueError(f"graphs to quantize: one or more of {', '.join(INT8_GRAPHS)} (got {list(graphs)})")
    if "memory_attention" in graphs and runtime != "openvino":
        raise ValueError("the memory attention is quantized for OpenVINO only (ONNX Runtime's static quantizer "
                         "calibrates single-input graphs): use runtime='openvino' or graphs=('image_encoder',)")
    if len(frames) < 2:
        raise ValueError("INT8 calibration needs at least 2 frames (the first is prompted, the rest are tracked)")
    spec = json.loads((float_dir / SPEC_NAME).read_text())
    if spec.get("int8"):
        raise ValueError(f"{float_dir} holds INT8 graphs already: quantize the float export")
    if out_dir.resolve() == float_dir.resolve():
        raise ValueError("write the INT8 graphs to another folder than the float ones")
    log(f"calibrating on {len(frames)} frames tracked by the float graphs")
    feeds = calibration_feeds(float_dir, frames, box, threads=threads)
    partial = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(float_dir, partial)
    report = {"runtime": runtime, "calibration": {"frames": len(frames), "source": source,
                                                   "memory_attention_feeds": len(feeds["memory_attention"])},
              "graphs": {}}
    for name in graphs:
        float_path = float_dir / spec["files"][name]
        path = partial / f"edgetam_{name}_int8{SUFFIX[runtime]}"
        calibration = ([f["image"] for f in feeds[name]] if name == "image_encoder" else feeds[name])
        if runtime == "openvino":
            from ..export import openvino as fmt_ov
            fmt_ov.quantize_openvino(float_path, path, calibration, calibration_source=source or "frames",
                                     weights=weights, keep_float=KEEP_FLOAT[name])
            tool = f"NNCF post-training quantization (mixed preset, {weights} weights)"
        else:
            from ..export.quantize import quantize_onnx
            quantize_onnx(float_path, path, calibration, calibration_source=source or "frames", weights=weights,
                          keep_float=KEEP_FLOAT[name])
            tool = f"onnxruntime quantize_static (QDQ, {weights} weights, percentile)"
        (partial / spec["files"][name]).unlink()
        spec["files"][name] = path.name
        report["graphs"][name] = {"file": path.name, "tool": tool, "calibration_feeds": len(calibration)}
        log(f"{name}: INT8 {path.name}")
    spec["int8"] = {"runtime": runtime, **report["graphs"]}
    (partial / SPEC_NAME).write_text(json.dumps(spec, indent=1))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    partial.rename(out_dir)
    report["out_dir"] = str(out_dir)
    return report


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks; 1.0 when both are empty (the trackers agree there is nothing)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def mask_agreement(reference: OnnxStreamingTracker, candidate: OnnxStreamingTracker,
                   frames: Sequence[np.ndarray], box: Sequence[float]) -> dict:
    """Both trackers on ``frames``, one object prompted by ``box`` on the first: the IoU of the candidate's
    mask with the reference's on every frame after the first, their mean and minimum, and how many of
    the reference's masks were empty (a comparison of empty masks shows nothing)."""
    ious, empty = [], 0
    for tracker in (reference, candidate):
        tracker.reset_state()
    for t, frame in enumerate(frames):
        want, got = reference.step(frame), candidate.step(frame)
        if t == 0:
            reference.add_new_points_or_box(1, box=box)
            candidate.add_new_points_or_box(1, box=box)
            continue
        empty += int(not want.mask(1).any())
        ious.append(mask_iou(want.mask(1), got.mask(1)))
    return {"frames": len(ious), "mean_iou": float(np.mean(ious)) if ious else float("nan"),
            "min_iou": float(np.min(ious)) if ious else float("nan"), "empty_reference_masks": empty,
            "per_frame_iou": [round(v, 4) for v in ious]}


__all__ = ["KEEP_FLOAT", "quantize_edgetam", "calibration_feeds", "mask_agreement", "mask_iou", "INT8_GRAPHS", "INT8_RUNTIMES"]
