"""Per-frame latency of EdgeTAM's streaming trackers on the CPU (``repvit bench --task track``).

A candidate is one streaming tracker (PyTorch, or the exported graphs on ONNX Runtime or OpenVINO,
float or with an INT8 image encoder) holding ``objects`` objects prompted with boxes on the first
frame; one call is one ``step()`` on the next frame of a clip generated here (a textured background
with discs moving across it: no data needed; the masks' content does not change the work), so a
call's time is the stream's clock: image encoder + memory attention + decoder + memory encoder of
every object, with the memory bank in its steady state after the warm-up. Candidates are timed in
interleaved rounds (``engine.timing.time_interleaved``). Beside the rows: each exported graph's
share of a frame (a watcher on its calls, ``OnnxTracker.watch``), every graph's multiply-adds and
the time a frame would take if they all ran at the best sgemm rate of the same threads.
The weights are seeded random ones that find their objects (latency does not depend on them).
"""
from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..engine.timing import environment, torch_threads
from .bench import Report, Result, add_rows, time_with_load

TRACK_RUNTIMES = ("eager-fused", "onnxruntime", "int8", "openvino", "openvino-int8")
LABEL = {"eager-fused": "eager", "onnxruntime": "onnxruntime", "int8": "onnxruntime-int8", "openvino": "openvino",
         "openvino-int8": "openvino-int8"}
DTYPE = {"int8": "int8 image encoder (QDQ)", "openvino-int8": "int8 image encoder (NNCF)"}
FRAME_SIZE = (854, 480)          # DAVIS's 480p
GRAPHS = ("image_encoder", "memory_attention", "prompt_decoder", "memory_encoder")


def generated_clip(count: int = 16, size: tuple = FRAME_SIZE, seed: int = 0) -> list:
    """``count`` HxWx3 uint8 RGB frames: smooth coloured noise with bright discs moving across it."""
    width, height = size
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 2, width // 16 + 2, 3)).astype(np.float32)
    background = np.kron(coarse, np.ones((16, 16, 1), np.float32))[:height, :width]
    ys, xs = np.mgrid[:height, :width]
    frames = []
    for t in range(count):
        frame = background.copy()
        for k, colour in enumerate(((250, 240, 60), (60, 220, 250), (250, 90, 200), (120, 250, 120))):
            cx = (0.2 + 0.2 * k) * width + 6.0 * t
            cy = (0.3 + 0.12 * k) * height + 2.0 * t
            frame[(xs - cx) ** 2 + (ys - cy) ** 2 <= (0.08 * height) ** 2] = colour
        frames.append(frame.astype(np.uint8))
    return frames


def object_boxes(objects: int, size: tuple = FRAME_SIZE) -> list:
    """Boxes around the generated clip's first ``objects`` discs on frame 0."""
    width, height = size
    r = 0.08 * height + 4
    return [((0.2 + 0.2 * k) * width - r, (0.3 + 0.12 * k) * height - r, (0.2 + 0.2 * k) * width + r,
             (0.3 + 0.12 * k) * height + r) for k in range(objects)]


def sgemm_gmacs(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """The best multiply-add rate (GMAC/s) of a float32 matrix product on ``threads`` threads."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    with torch_threads(threads):
        torch.mm(a, b)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - start)
    return size ** 3 / best / 1e9


def graph_macs(model) -> dict:
    """Multiply-adds of each exported graph for one object (half of torch's FLOP count), attention on
    PyTorch's math backend: the flop counter has no formula for the fused CPU attention kernel and would
    count its products as zero (most of the memory attention's work)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    from ..edgetam.export import bank_sizes, examples, fused_copy, graph_modules
    fused = fused_copy(model)
    max_frames, max_pointers = bank_sizes(fused, None, None)
    modules = graph_modules(fused, max_frames=max_frames, max_pointers=max_pointers)
    inputs = examples(fused, max_frames=max_frames, max_pointers=max_pointers)
    out = {}
    for name, module in modules.items():
        counter = FlopCounterMode(display=False)
        with sdpa_kernel(SDPBackend.MATH), counter, torch.no_grad():
            module(*inputs[name])
        out[name] = counter.get_total_flops() / 2
    return out


def _stepper(tracker, frames: list) -> Callable[[], object]:
    """One call: ``tracker.step`` on the next frame, the clip played forward and back (no jump the model sees)."""
    order = list(range(1, len(frames))) + list(range(len(frames) - 2, 0, -1))
    position = [0]

    def step():
        frame = frames[order[position[0] % len(order)]]
        position[0] += 1
        return tracker.step(frame)
    return step


def _adder(spent: dict) -> Callable[[str, dict, float], None]:
    def add(name: str, feed: dict, seconds: float) -> None:
        spent[name] += seconds
    return add


def track_latency(*, img_size: int = 1024, frame_size: tuple = FRAME_SIZE, objects: int = 1, threads: int = 2,
                  runtimes: Sequence[str] = ("eager-fused", "onnxruntime", "openvino"), warmup: int = 3,
                  rounds: int = 4, iters: int = 5, log: Callable[[str], None] = lambda _: None) -> tuple:
    """Per-frame latency of every requested tracker (see the module docstring): the bench report (one row per
    tracker) and ``{"graphs_ms_per_frame": {runtime: {graph: ms}}, "limit": {...}}``."""
    from ..edgetam import build_video_predictor
    from ..edgetam.export import export_edgetam
    from ..edgetam.onnx_stream import OnnxStreamingTracker
    from ..edgetam.stream_torch import TorchStreamingTracker
    unknown = [r for r in runtimes if r not in TRACK_RUNTIMES]
    if unknown:
        raise ValueError(f"--task track runs on {', '.join(TRACK_RUNTIMES)}; not {', '.join(unknown)}")
    if not 1 <= objects <= 4:
        raise ValueError(f"--objects is 1 to 4 for the generated clip, got {objects}")
    frames, boxes = generated_clip(16, frame_size), object_boxes(objects, frame_size)
    report = Report(environment=environment("cpu"), settings={
        "task": "track", "img_size": img_size, "frame_size": list(frame_size), "objects": objects, "threads": threads,
        "warmup": warmup, "rounds": rounds, "iters": iters, "interleaved": True,
        "timing": "one call = one step() on the next frame of a generated clip, perf_counter",
        "weights": "seeded random (seed 0): latency does not depend on them"})
    candidates, meta, spent = {}, {}, {}
    with torch_threads(threads) as used, tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as watching:
        report.environment["torch_threads"] = used
        predictor = build_video_predictor(seed=0, fused=True, image_size=img_size, progress=False)
        float_dir = Path(tmp) / "graphs"
        if any(r != "eager-fused" for r in runtimes):
            log("exporting the four graphs (checked against PyTorch) ...")
            export_edgetam(predictor, float_dir)
        for runtime in runtimes:
            log(f"preparing {runtime} ...")
            if runtime == "eager-fused":
                tracker = TorchStreamingTracker(predictor)
            else:
                folder, engine = float_dir, "openvino" if runtime.startswith("openvino") else "onnxruntime"
                if runtime in DTYPE:
                    from ..edgetam.export_int8 import quantize_edgetam
                    folder = Path(tmp) / runtime
                    quantize_edgetam(float_dir, folder, frames, box=boxes[0], runtime=engine, threads=used,
                                     source="the generated clip")
                tracker = OnnxStreamingTracker(folder, threads=used, runtime=engine)
                spent[runtime] = {name: 0.0 for name in GRAPHS}
                watching.enter_context(tracker.graphs.watch(_adder(spent[runtime])))
            tracker.step(frames[0])
            for k, box in enumerate(boxes):
                tracker.add_new_points_or_box(k + 1, box=box)
            candidates[runtime] = _stepper(tracker, frames)
            meta[runtime] = Result(model=f"EdgeTAM stream, {objects} object(s)", runtime=LABEL[runtime],
                                   source="repvit", device="cpu", threads=used, dtype=DTYPE.get(runtime, "float32"),
                                   memory_format="NCHW", batch=1, img_size=img_size, fused=True,
                                   note="INT8 calibrated on the generated clip" if runtime in DTYPE else "")
        log(f"timing {len(candidates)} trackers: {warmup} warm-up frames, {rounds} interleaved rounds x {iters} "
            f"frames, {used} threads")
        with torch.inference_mode():
            samples = time_with_load(report, candidates, warmup=warmup, rounds=rounds, iters=iters)
        steps = warmup + rounds * iters
        details = {"graphs_ms_per_frame": {}, "limit": {}}
        details["graphs_ms_per_frame"] = {LABEL[r]: {g: round(1e3 * s / steps, 2) for g, s in t.items()}
                                                  for r, t in spent.items()}
        macs = graph_macs(predictor)
        per_frame = macs["image_encoder"] + objects * (macs["memory_attention"] + macs["prompt_decoder"]
                                                       + macs["memory_encoder"])
        rate = sgemm_gmacs(used)
        details["limit"] = {"gmacs_per_graph_one_object": {g: round(v / 1e9, 3) for g, v in macs.items()},
                                    "gmacs_per_frame": round(per_frame / 1e9, 2), "sgemm_gmacs_per_s": round(rate, 1),
                                    "ms_per_frame_at_sgemm_peak": round(per_frame / 1e9 / rate * 1e3, 1)}
    return add_rows(report, samples, meta, batch=1), details


__all__ = ["TRACK_RUNTIMES", "generated_clip", "graph_macs", "object_boxes", "sgemm_gmacs", "track_latency"]
