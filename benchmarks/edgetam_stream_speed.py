"""Per-frame latency of the streaming trackers on a CPU, per graph, beside the physical limit.

For each runtime (PyTorch eager on sam2's predictor; the four exported graphs on ONNX Runtime and
OpenVINO) one object (a box on frame 0) streams through ``--frames`` frames of a DAVIS sequence (or the
bedroom video); rounds are interleaved (the runtime order rotates each round) and the first frames of
each round are warm-up. A frame's time is ``step()``'s: image encoder + memory attention + decoder +
memory encoder of every object. For the exported trackers each graph's share is timed by a watcher on its
calls (``OnnxTracker.watch``). The limit: every graph's multiply-adds counted by ``torch.utils.flop_counter`` (matmuls and
attention included, not just convolutions and linears) over the best sgemm rate this process reaches on
the same threads: the time a frame would take if every multiply-add ran at peak.

    PYTHONPATH=. python benchmarks/edgetam_stream_speed.py --threads 2 --objects 1 4 \\
        --json runs/bench/edgetam_stream_speed.json

``repvit bench --task track`` times the same trackers on a generated clip (no data needed) through the bench
command's grammar; this script adds DAVIS frames, several object counts and INT8 of any graph set.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit.data.stream import read_frames  # noqa: E402
from repvit.runtime.track_bench import graph_macs, sgemm_gmacs  # noqa: E402
from repvit.engine.timing import environment, load_average, torch_threads  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BOXES = ((300, 60, 520, 300), (100, 100, 300, 400), (520, 200, 760, 460), (50, 20, 250, 200))


def frames_of(sequence: str, count: int) -> list:
    """The first frames of a shared DAVIS sequence (the bedroom video where there is no such sequence)."""
    folder = SHARED / "davis-2016" / "JPEGImages" / "480p" / sequence
    return read_frames(folder if folder.is_dir() else SHARED / "videos" / "bedroom", max_frames=count)


def timed_graphs(tracker, stack: contextlib.ExitStack) -> dict:
    """Seconds spent in each graph of an OnnxStreamingTracker, kept by a watcher on its graph calls while
    ``stack`` is open."""
    spent = {name: 0.0 for name in tracker.graphs.runners}

    def add(name: str, feed: dict, seconds: float) -> None:
        spent[name] += seconds
    stack.enter_context(tracker.graphs.watch(add))
    return spent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sequence", default="hockey")
    p.add_argument("--frames", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--objects", type=int, nargs="+", default=[1])
    p.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime", "openvino", "openvino-int8"],
                   help="RUNTIME-int8[:GRAPH+GRAPH]: those graphs INT8 (default the image encoder; "
                        "repvit.edgetam.export_int8, calibrated on 16 bedroom frames), the others float")
    p.add_argument("--json", metavar="FILE", required=True)
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
    from repvit.edgetam import build_video_predictor
    from repvit.edgetam.export import export_edgetam
    from repvit.edgetam.onnx_stream import OnnxStreamingTracker
    from repvit.edgetam.stream_torch import TorchStreamingTracker
    frames = frames_of(args.sequence, args.frames)
    result = {"environment": environment("cpu"), "threads": args.threads, "sequence": args.sequence,
              "frame_size": list(frames[0].shape[:2]), "frames": len(frames), "warmup": args.warmup,
              "load_avg_1min_before": load_average(), "runs": {}}
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as watching:
        predictor = build_video_predictor(seed=0, fused=True)
        result["macs"] = {k: round(v / 1e9, 3) for k, v in graph_macs(predictor).items()}
        result["sgemm_gmacs"] = round(sgemm_gmacs(args.threads), 1)
        export_edgetam(predictor, Path(work) / "onnx")
        trackers = {"torch": TorchStreamingTracker(predictor)}
        for rt in args.runtimes:
            if "-int8" in rt:
                from repvit.edgetam.export_int8 import quantize_edgetam
                base, _, graphs = rt.partition(":")
                bedroom = sorted((SHARED / "videos" / "bedroom").glob("*.jpg"))[::12][:16]
                folder = Path(work) / rt.replace(":", "_").replace("+", "_")
                quantize_edgetam(Path(work) / "onnx", folder, [np.asarray(Image.open(f).convert("RGB")) for f in bedroom],
                                 box=(300, 100, 600, 400), runtime=base[:-5], threads=args.threads,
                                 graphs=tuple(graphs.split("+")) if graphs else ("image_encoder",),
                                 source="videos/bedroom")
                trackers[rt] = OnnxStreamingTracker(folder, threads=args.threads, runtime=base[:-5])
            elif rt != "torch":
                trackers[rt] = OnnxStreamingTracker(Path(work) / "onnx", threads=args.threads, runtime=rt)
        trackers = {k: v for k, v in trackers.items() if k in args.runtimes}
        spent = {rt: timed_graphs(t, watching) for rt, t in trackers.items() if rt != "torch"}
        times = {(rt, n): [] for rt in trackers for n in args.objects}
        graph_time = {(rt, n): {g: 0.0 for g in spent[rt]} for rt in spent for n in args.objects}
        for r in range(args.rounds):
            order = list(trackers)[r % len(trackers):] + list(trackers)[:r % len(trackers)]
            for n in args.objects:
                for rt in order:
                    tracker = trackers[rt]
                    tracker.reset_state()
                    for t, frame in enumerate(frames):
                        if rt in spent:
                            before = dict(spent[rt])
                        start = time.perf_counter()
                        tracker.step(frame)
                        elapsed = time.perf_counter() - start
                        if t == 0:
                            for k in range(n):
                                tracker.add_new_points_or_box(k + 1, box=BOXES[k % len(BOXES)])
                        elif t > args.warmup:
                            times[(rt, n)].append(elapsed)
                            if rt in spent:
                                for g in spent[rt]:
                                    graph_time[(rt, n)][g] += spent[rt][g] - before[g]
        for (rt, n), seconds in times.items():
            ms = np.asarray(seconds) * 1e3
            row = {"objects": n, "frames_timed": len(ms), "median_ms": round(float(np.median(ms)), 1),
                   "p99_ms": round(float(np.percentile(ms, 99)), 1), "frames_per_second": round(1e3 / ms.mean(), 2)}
            if rt in spent:
                row["graphs_ms_per_frame"] = {g: round(1e3 * s / len(ms), 1) for g, s in graph_time[(rt, n)].items()}
            result["runs"][f"{rt}/{n}"] = row
            print(rt, n, json.dumps(row), flush=True)
    macs = result["macs"]
    per_frame = macs["image_encoder"] + macs["memory_attention"] + macs["prompt_decoder"] + macs["memory_encoder"]
    result["limit"] = {"gmacs_per_frame_one_object": round(per_frame, 2),
                       "ms_at_sgemm_peak": round(1e3 * per_frame / result["sgemm_gmacs"], 1)}
    for key, row in result["runs"].items():   # each graph's rate, and its share of the sgemm peak
        if "graphs_ms_per_frame" in row:
            row["graphs_gmacs_per_s"] = {g: round(macs[g] * (1 if g == "image_encoder" else row["objects"]) / ms * 1e3,
                                                  1) for g, ms in row["graphs_ms_per_frame"].items() if ms > 0}
    result["load_avg_1min_after"] = load_average()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    print(json.dumps({"macs": macs, "limit": result["limit"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
