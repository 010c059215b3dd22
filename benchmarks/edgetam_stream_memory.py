"""Is the streaming tracker's memory flat in the video's length? Peak RSS while tracking a long clip made
by looping ``../shared/data/videos/bedroom`` (200 frames), sampled every ``--every`` frames, for the
PyTorch tracker or the one over the exported graphs.

One object (a box on frame 0), the model's 1024 input (``--image-size`` for a shorter run), seeded
random weights that track (``seed=0``: the object score is positive, so every frame runs the full
decoder and memory encoder). Frames are read from JPEG one at a time as the stream needs them. The
JSON is rewritten at every sample, so a run that is stopped still records what it reached. The
figures to compare are the peak RSS after 500 frames and after the last; ``held_frames`` shows what
the tracker keeps.

    PYTHONPATH=. python benchmarks/edgetam_stream_memory.py --runtime onnxruntime --frames 5000 \\
        --json runs/bench/stream_memory_onnx.json
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

from repvit.edgetam.live import peak_rss_mb  # noqa: E402
from repvit.engine.timing import environment, load_average, torch_threads  # noqa: E402

FRAMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos" / "bedroom"
BOX = (300, 100, 600, 400)


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runtime", choices=("torch", "onnxruntime", "openvino"), default="torch")
    p.add_argument("--frames", type=int, default=5000)
    p.add_argument("--every", type=int, default=100, help="sample RSS every N frames [100]")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--image-size", type=int, default=1024,
                   help="the model's input side [1024]; smaller makes a 5,000-frame run fit in minutes: what the "
                        "tracker keeps per frame (memories, pointers) does not depend on it")
    p.add_argument("--json", metavar="FILE", required=True)
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*cannot import name '_C'.*")
    files = sorted(FRAMES.glob("*.jpg"))
    if not files:
        raise SystemExit(f"no frames in {FRAMES}")
    from repvit.edgetam import build_video_predictor
    result = {"environment": environment("cpu"), "runtime": args.runtime, "threads": args.threads,
              "image_size": args.image_size,
              "source": f"{FRAMES} looped ({len(files)} frames)", "load_avg_1min_before": load_average(),
              "samples": []}
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as work:
        predictor = (build_video_predictor(seed=0, fused=True, image_size=args.image_size) if args.runtime == "torch"
                     else None)
        if args.runtime == "torch":
            from repvit.edgetam.stream_torch import TorchStreamingTracker
            tracker = TorchStreamingTracker(predictor)
        else:   # exported in a child process, so this one's peak is the tracker's alone
            import subprocess
            from repvit.edgetam.onnx_stream import OnnxStreamingTracker
            del predictor
            code = ("import sys, warnings; warnings.filterwarnings('ignore'); from repvit.edgetam import "
                    "build_video_predictor; from repvit.edgetam.export import export_edgetam; "
                    "export_edgetam(build_video_predictor(seed=0, fused=True, image_size=int(sys.argv[2])), sys.argv[1])")
            subprocess.run([sys.executable, "-c", code, str(Path(work) / "onnx"), str(args.image_size)], check=True)
            tracker = OnnxStreamingTracker(Path(work) / "onnx", threads=args.threads, runtime=args.runtime)
        start = time.perf_counter()
        for t in range(args.frames):
            with Image.open(files[t % len(files)]) as image:
                frame = np.asarray(image.convert("RGB"))
            out_t = tracker.step(frame)
            if t == 0:
                out_t = tracker.add_new_points_or_box(1, box=BOX)
            if (t + 1) % args.every == 0 or t + 1 == args.frames:
                result["samples"].append({"frames": t + 1, "peak_rss_mb": peak_rss_mb(), "rss_mb": current_rss_mb(),
                                          "seconds": round(time.perf_counter() - start, 1),
                                          "mask_pixels": int(out_t.mask(1).sum())})
                result["held_frames"] = {str(k): v for k, v in tracker.held_frames().items()}
                result["load_avg_1min_now"] = load_average()
                out.write_text(json.dumps(result, indent=1))
                print(json.dumps(result["samples"][-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
