"""EdgeTAM's tracking loop through ONNX Runtime and OpenVINO (``repvit.edgetam.onnx_predictor.OnnxTracker`` on the
same exported ONNX files) beside the fused eager PyTorch predictor, per frame on a CPU, interleaved (the
order rotates every round).

Both track one object (a point on frame 0) through the first ``--frames`` frames of
``../shared/data/videos/bedroom``; a frame's time is the time between two frames arriving. Random
weights (seeded) are fine for latency. The first round warms up and is not counted.

    PYTHONPATH=. python benchmarks/edgetam_onnx_loop.py --threads 2 --json runs/bench/edgetam_onnx.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit.data.video import open_frames  # noqa: E402
from repvit.edgetam.tracking import TrackPrompt, track  # noqa: E402
from repvit.engine.timing import environment, load_average, summarize, torch_threads  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402

FRAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "bedroom"
POINT = (480.0, 300.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runtimes", nargs="+", default=["onnxruntime", "openvino"],
                   help="loop runtimes to time beside eager (onnxruntime, openvino) [both]")
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
    from repvit.edgetam import build_video_predictor
    from repvit.edgetam.export import export_edgetam
    from repvit.edgetam.onnx_predictor import OnnxTracker
    result = {"environment": environment("cpu"), "threads": args.threads, "frames": args.frames,
              "load_avg_1min_before": load_average()}
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as work:
        frames = open_frames(FRAMES, Path(work) / "frames", max_frames=args.frames)
        torch.manual_seed(0)
        predictor = build_video_predictor(fused=True)
        start = time.perf_counter()
        export_edgetam(predictor, Path(work) / "onnx")
        result["export_seconds"] = round(time.perf_counter() - start, 1)
        trackers = {rt: OnnxTracker(Path(work) / "onnx", threads=args.threads, runtime=rt) for rt in args.runtimes}
        prompt = [TrackPrompt(1, 0, [(*POINT, 1)])]

        def eager():
            return [s * 1e3 for f, s in track(predictor, frames.folder, prompt, num_frames=len(frames),
                                              size=frames.size).seconds.items() if f]

        def loop(tracker):
            times, last = [], [time.perf_counter()]

            def on_frame(t, _):
                now = time.perf_counter()
                if t:
                    times.append((now - last[0]) * 1e3)
                last[0] = now
            tracker.track(frames.folder, points=[POINT], labels=[1], on_frame=on_frame)
            return times

        runs = {"eager-fused": eager, **{f"{rt}-loop": (lambda t=t: loop(t)) for rt, t in trackers.items()}}
        samples = {k: [] for k in runs}
        names = list(runs)
        for r in range(args.rounds + 1):
            for name in names[r % len(names):] + names[:r % len(names)]:
                got = runs[name]()
                if r:
                    samples[name] += got
                print(f"round {r} {name}: {sum(got) / len(got):.0f} ms/frame", flush=True)
    result["ms_per_frame"] = {k: summarize(v) for k, v in samples.items()}
    result["load_avg_1min_after"] = load_average()
    eager_ms = result["ms_per_frame"]["eager-fused"]["median_ms"]
    result["eager_over_loop"] = {k: eager_ms / v["median_ms"] for k, v in result["ms_per_frame"].items()
                                 if k != "eager-fused"}
    print(json.dumps({k: result[k] for k in ("ms_per_frame", "eager_over_loop", "export_seconds",
                                             "load_avg_1min_before", "load_avg_1min_after")}, indent=2))
    print(f"cpu: {result['environment']['cpu']}, threads {args.threads}")
    if args.json:
        write_report(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
