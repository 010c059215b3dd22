"""Do INT8 graphs keep the stream's masks? The float and the INT8 exported trackers on the DAVIS sequences.

The graphs are exported from seeded random weights (``seed=0``, which find objects: the official weights
are not reachable offline); the INT8 copies (``repvit.edgetam.export_int8``) are calibrated on frames of
``../shared/data/videos/bedroom`` (not the DAVIS frames they are scored on). Each DAVIS sequence's object is
prompted by the box around its first annotated mask on frame 0 (the exported decoder takes points and
boxes) and tracked through the first ``--frames`` frames by both trackers; the figure is the mean IoU of
the INT8 tracker's mask with the float tracker's, per sequence and over all compared frames.

    PYTHONPATH=. python benchmarks/edgetam_stream_int8.py --graphs image_encoder \\
        image_encoder,memory_attention --json runs/bench/edgetam_stream_int8.json
"""
from __future__ import annotations

import argparse
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
from repvit.engine.timing import environment, load_average  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def first_box(sequence: str) -> tuple:
    mask = np.asarray(Image.open(sorted((SHARED / "davis-2016" / "Annotations" / "480p" / sequence).glob("*.png"))[0]))
    ys, xs = np.nonzero(mask.reshape(mask.shape[0], mask.shape[1], -1).max(-1))
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=20, help="frames of each DAVIS sequence [20]")
    p.add_argument("--calibration", type=int, default=16, help="bedroom frames to calibrate on [16]")
    p.add_argument("--graphs", nargs="+", default=["image_encoder"],
                   help="comma-separated graphs made INT8, one setting per argument")
    p.add_argument("--runtime", default="openvino", choices=("openvino", "onnxruntime"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", metavar="FILE", required=True)
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
    from repvit.edgetam import build_video_predictor
    from repvit.edgetam.export import export_edgetam
    from repvit.edgetam.export_int8 import KEEP_FLOAT, mask_agreement, quantize_edgetam
    from repvit.edgetam.onnx_stream import OnnxStreamingTracker
    sequences = sorted(p.name for p in (SHARED / "davis-2016" / "JPEGImages" / "480p").iterdir())
    calibration = read_frames(SHARED / "videos" / "bedroom", every=200 // args.calibration,
                              max_frames=args.calibration)
    result = {"environment": environment("cpu"), "runtime": args.runtime, "frames_per_sequence": args.frames,
              "calibration": f"{len(calibration)} frames of videos/bedroom, box (300, 100, 600, 400) on the first",
              "kept_float": KEEP_FLOAT, "load_avg_1min_before": load_average(), "settings": {}}
    with tempfile.TemporaryDirectory() as work:
        float_dir = Path(work) / "float"
        export_edgetam(build_video_predictor(seed=0, fused=True), float_dir)
        reference = OnnxStreamingTracker(float_dir, threads=args.threads, runtime=args.runtime)
        for setting in args.graphs:
            graphs = tuple(setting.split(","))
            start = time.perf_counter()
            int8_dir = Path(work) / setting.replace(",", "+")
            quantize_edgetam(float_dir, int8_dir, calibration, box=(300, 100, 600, 400), runtime=args.runtime,
                             graphs=graphs, threads=args.threads, source="videos/bedroom")
            made = time.perf_counter() - start
            candidate = OnnxStreamingTracker(int8_dir, threads=args.threads, runtime=args.runtime)
            rows, ious = {}, []
            for sequence in sequences:
                frames = read_frames(SHARED / "davis-2016" / "JPEGImages" / "480p" / sequence, max_frames=args.frames)
                row = mask_agreement(reference, candidate, frames, first_box(sequence))
                rows[sequence] = row
                ious += row["per_frame_iou"]
                print(setting, sequence, round(row["mean_iou"], 4), "min", round(row["min_iou"], 4),
                      "empty reference masks", row["empty_reference_masks"], flush=True)
            result["settings"][setting] = {"mean_iou": round(float(np.mean(ious)), 4),
                                           "min_iou": round(float(np.min(ious)), 4), "frames": len(ious),
                                           "quantize_s": round(made, 1), "sequences": rows}
            print(setting, "mean IoU over", len(ious), "frames:", result["settings"][setting]["mean_iou"], flush=True)
    result["load_avg_1min_after"] = load_average()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
