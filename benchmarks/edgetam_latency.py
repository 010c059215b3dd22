"""Per-frame video tracking latency on a CPU: EdgeTAM (ours, fused and unfused) beside SAM 2.1-tiny
from Meta's ``sam2`` package, plus the image encoder alone beside RepViT-SAM's.

Tracking: each model tracks one object (a point on frame 0) through the first ``--frames`` frames of
``../shared/data/videos/bedroom`` (960x540; every model resizes to its 1024 input); a frame's time is
the time between two frames arriving from ``propagate_in_video`` (image encoder, memory attention,
mask decoder, memory encoder). The models run in interleaved rounds (A B C, B C A, ...) so a change
in machine load touches all of them; the median over every propagated frame of every round is
reported. Random weights (seeded) are fine for latency: the work does not depend on the values.

    PYTHONPATH=. python benchmarks/edgetam_latency.py --threads 2 --json runs/bench/edgetam.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit.data.video import open_frames  # noqa: E402
from repvit.edgetam.tracking import TrackPrompt, track  # noqa: E402
from repvit.engine.timing import environment, load_average, summarize, time_interleaved, torch_threads  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402

FRAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "bedroom"


def sam21_tiny_predictor():
    from sam2.build_sam import build_sam2_video_predictor
    return build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=12, help="frames tracked per round [12]")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds [3]")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", metavar="FILE", help="write the results here")
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
    from repvit.edgetam import build_edgetam, build_video_predictor
    from repvit.sam import build_sam
    load_before = load_average()
    result = {"environment": environment("cpu"), "threads": args.threads, "frames": args.frames,
              "rounds": args.rounds, "load_avg_1min_before": load_before}
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as work:
        frames = open_frames(FRAMES, work, max_frames=args.frames)
        torch.manual_seed(0)
        predictors = {"edgetam-fused": build_video_predictor(fused=True),
                      "edgetam-unfused": build_video_predictor(fused=False),
                      "sam2.1-tiny": sam21_tiny_predictor()}
        prompt = [TrackPrompt(1, 0, [(480.0, 300.0, 1)])]
        per_frame = {name: [] for name in predictors}
        names = list(predictors)
        for r in range(args.rounds + 1):    # round 0 warms up (first-call set-up) and is not counted
            for name in names[r % len(names):] + names[:r % len(names)]:
                tracks = track(predictors[name], frames.folder, prompt, num_frames=len(frames), size=frames.size)
                if r:
                    per_frame[name] += [s * 1e3 for f, s in tracks.seconds.items() if f != 0]
                print(f"round {r} {name}: median {statistics.median(s * 1e3 for f, s in tracks.seconds.items() if f):.0f}"
                      " ms/frame", flush=True)
        result["tracking_ms_per_frame"] = {name: summarize(v) for name, v in per_frame.items()}
        # The image encoder alone at 1024: EdgeTAM's (RepViT-M1 trunk + FPN neck) vs RepViT-SAM's (M2.3).
        edgetam = build_edgetam(fused=True).eval()
        sam = build_sam(fused=True).eval()
        x = torch.randn(1, 3, 1024, 1024)
        with torch.inference_mode():
            samples = time_interleaved({"edgetam-encoder-fused": lambda: edgetam.image_encoder(x),
                                        "repvit-sam-encoder-fused": lambda: sam.image_encoder(x)},
                                       warmup=2, rounds=5, iters=2)
        result["encoder_ms"] = {name: summarize(v) for name, v in samples.items()}
    result["load_avg_1min_after"] = load_average()
    track_ms = {k: v["median_ms"] for k, v in result["tracking_ms_per_frame"].items()}
    result["ratios"] = {"sam2.1-tiny / edgetam-fused": track_ms["sam2.1-tiny"] / track_ms["edgetam-fused"],
                        "edgetam-unfused / edgetam-fused": track_ms["edgetam-unfused"] / track_ms["edgetam-fused"]}
    print(json.dumps({k: result[k] for k in ("tracking_ms_per_frame", "encoder_ms", "ratios",
                                             "load_avg_1min_before", "load_avg_1min_after")}, indent=2))
    print(f"cpu: {result['environment']['cpu']}, threads {args.threads}")
    if args.json:
        write_report(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
