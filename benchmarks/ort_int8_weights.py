"""ONNX Runtime INT8 latency by weight encoding (int8, int7, uint8) beside float32, interleaved.

int8 weights saturate in ONNX Runtime's u8s8 kernels on x86 CPUs without VNNI; int7 (reduce_range)
and uint8 do not (see repvit/export/quantize.py). This measures what each costs in time, batch 1:

    PYTHONPATH=. python benchmarks/ort_int8_weights.py --checkpoint runs/imagenette-m0_9/best.pth \\
        --threads 2 --json runs/bench/ort_int8_weights.json

The checkpoint's model at its own size and 224 px, and RepViT-M1.1 (random weights) at 224 px; each
calibrated on --calib-count Imagenette training images. The accuracy of the three encodings is
measured by benchmarks/int8_imagenette.py.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit import create_model, reparameterize  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402
from repvit.export import onnx as fmt_onnx  # noqa: E402
from repvit.export.artifact import export_metadata, resolved_preprocessing  # noqa: E402
from repvit.export.quantize import WEIGHT_ENCODINGS, calibration_batches, quantize_onnx  # noqa: E402
from repvit.engine.timing import environment, load_average, summarize, time_interleaved  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-96"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="runs/imagenette-m0_9/best.pth")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--calib-count", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--json", metavar="FILE")
    args = p.parse_args()
    trained = create_model(checkpoint=args.checkpoint)
    name = trained.variant.name
    models = [(name, trained, trained.preprocessing["input_size"][-1]), (name, trained, 224),
              ("repvit_m1_1", create_model("repvit_m1_1", num_classes=1000, distillation=True), 224)]
    result = {"environment": environment("cpu"), "settings": vars(args), "load_avg_1min_before": load_average()}
    candidates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, model, size in models:
            fused = reparameterize(model.eval())
            pre = dict(resolved_preprocessing(model), input_size=[3, size, size])
            fp32 = Path(tmp) / f"{label}-{size}.onnx"
            fmt_onnx.export_onnx(fused, fp32, img_size=size, metadata=export_metadata(fused, "onnx", pre))
            calib, _ = calibration_batches(Path(args.data) / "train", pre, args.calib_count)
            paths = {"float32": fp32}
            paths.update({w: quantize_onnx(fp32, Path(tmp) / f"{label}-{size}-{w}.onnx", calib, weights=w)
                          for w in ("int8", *[w for w in WEIGHT_ENCODINGS if w != "int8"])})
            x = np.random.default_rng(0).standard_normal((1, 3, size, size)).astype(np.float32)
            for encoding, path in paths.items():
                session = fmt_onnx.session(path, args.threads)
                feed = {session.get_inputs()[0].name: x}
                candidates[f"{label}@{size} {encoding}"] = lambda s=session, f=feed: s.run(None, f)
        samples = time_interleaved(candidates, warmup=10, rounds=args.rounds, iters=args.iters)
    result["load_avg_1min_after"] = load_average()
    result["ms"] = {k: summarize(v) for k, v in samples.items()}
    for key, stats in result["ms"].items():
        base = result["ms"][key.rsplit(" ", 1)[0] + " int8"]["median_ms"]
        print(f"{key}: {stats['median_ms']:.2f} ms [{stats['p10_ms']:.2f}-{stats['p90_ms']:.2f}], "
              f"{stats['median_ms'] / base:.2f}x int8")
    print(f"cpu: {result['environment']['cpu']}, threads {args.threads}, load {result['load_avg_1min_before']:.2f} -> "
          f"{result['load_avg_1min_after']:.2f}")
    if args.json:
        write_report(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
