"""INT8 post-training static quantization on Imagenette: top-1 change and CPU latency gain.

Starting from a checkpoint trained on ``../shared/data/imagenette-96``:

1. ``repvit export --format onnx --int8``'s library path: fuse, export float32 ONNX (verified
   against PyTorch), calibrate on ``--calib-count`` training images spread over the classes,
   write the INT8 QDQ model;
2. top-1 of the fused PyTorch model, the float32 ONNX model and the INT8 model on the whole
   validation split, every image preprocessed once with the checkpoint's own preprocessing;
3. batch-1 latency of eager fused PyTorch, ONNX Runtime float32 and ONNX Runtime INT8 with
   ``--threads`` threads, interleaved, at the checkpoint's resolution and at 224 px.

    PYTHONPATH=. python benchmarks/int8_imagenette.py --checkpoint runs/imagenette-m0_9/best.pth \
        --json runs/bench/int8_imagenette.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit import create_model, reparameterize  # noqa: E402
from repvit.engine.timing import environment, load_average, summarize, time_interleaved, torch_threads  # noqa: E402
from repvit.classification.export import export_model  # noqa: E402
from repvit.export import onnx as fmt_onnx  # noqa: E402
from repvit.export.artifact import export_metadata, resolved_preprocessing  # noqa: E402
from repvit.export.quantize import calibration_batches, quantize_onnx  # noqa: E402
from repvit.export.verify import IMAGE_SUFFIXES, load_crop, normalize  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-96"


def load_split(root: Path, class_names: list[str], preprocessing: dict, limit: int = 0):
    """All images of ``root`` (class folders) as one normalized tensor, with labels."""
    index = {name: i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name not in index:
            raise SystemExit(f"class folder {folder.name} is not among the checkpoint's classes")
        files = sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES)
        paths += files
        labels += [index[folder.name]] * len(files)
    if limit:
        keep = np.linspace(0, len(paths) - 1, limit).astype(int)
        paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
    images = torch.stack([normalize(load_crop(p, preprocessing), preprocessing) for p in paths])
    return images, torch.tensor(labels)


def predict(run, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([run(images[i:i + batch]).float() for i in range(0, len(images), batch)])


# ONNX Runtime INT8 variants compared: the export's default (every op the quantizer supports, uint8
# weights), int8 weights (fast with VNNI, saturating on x86 CPUs without it) and int7 weights, and only
# the convolutions and the classifier (GELU, SE gate and residual adds stay float).
INT8_VARIANTS = {"onnxruntime_int8": {}, "onnxruntime_int8_s8_weights": {"weights": "int8"},
                 "onnxruntime_int8_int7_weights": {"weights": "int7"},
                 "onnxruntime_int8_conv_only": {"op_types": ("Conv", "Gemm")}}


def float_emulation(path, threads: int):
    """A runner of the ONNX file with every graph optimization off (no integer kernel fusions)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.detach().float().contiguous().numpy()})[0])


def latency(fused, fp32_path, int8_paths: dict, img_size: int, threads: int, rounds: int, iters: int,
            calib_images: Path, calib_count: int) -> dict:
    x = torch.randn(1, 3, img_size, img_size)
    feed = x.numpy()
    with tempfile.TemporaryDirectory() as tmp:
        if img_size != fused.preprocessing["input_size"][-1]:
            # The ONNX graphs have a fixed spatial size; re-export at this size (same weights, same recipe).
            pre = resolved_preprocessing(fused, img_size)
            fp32_path = Path(tmp) / "fp32.onnx"
            fmt_onnx.export_onnx(fused, fp32_path, img_size=img_size, metadata=export_metadata(fused, "onnx", pre))
            arrays, _ = calibration_batches(calib_images, pre, calib_count)
            int8_paths = {label: quantize_onnx(fp32_path, Path(tmp) / f"{label}.onnx", arrays, **INT8_VARIANTS[label])
                          for label in int8_paths}
        sessions = {"onnxruntime_fp32": fmt_onnx.session(fp32_path, threads)}
        sessions.update({label: fmt_onnx.session(path, threads) for label, path in int8_paths.items()})
        name = sessions["onnxruntime_fp32"].get_inputs()[0].name
        candidates = {"eager_fused_fp32": lambda: fused(x)}
        candidates.update({k: (lambda s=s: s.run(None, {name: feed})) for k, s in sessions.items()})
        with torch.inference_mode():
            before = load_average()
            samples = time_interleaved(candidates, warmup=10, rounds=rounds, iters=iters)
            after = load_average()
    stats = {k: summarize(v) for k, v in samples.items()}
    speedups = {label: {"vs_onnxruntime_fp32": stats["onnxruntime_fp32"]["median_ms"] / stats[label]["median_ms"],
                        "vs_eager_fused": stats["eager_fused_fp32"]["median_ms"] / stats[label]["median_ms"]}
                for label in int8_paths}
    return {"img_size": img_size, "threads": threads, "load_before": before, "load_after": after,
            "stats": stats, "int8_speedup": speedups}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="runs/imagenette-m0_9/best.pth")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--calib-count", type=int, default=300)
    parser.add_argument("--calib-method", default="percentile", choices=["minmax", "percentile", "entropy"])
    parser.add_argument("--val-limit", type=int, default=0, help="evaluate on this many val images (0: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="*", help="latency resolutions (default: checkpoint's and 224; "
                        "pass --sizes with no value to skip the latency part)")
    parser.add_argument("--out", default="runs/bench/int8", help="folder for the ONNX artifacts")
    parser.add_argument("--runtimes", nargs="*", default=["openvino", "litert", "executorch"],
                        help="also measure the top-1 of these formats, float and INT8, where installed "
                             "(openvino, litert, executorch) [all three]")
    parser.add_argument("--accuracy-only", action="store_true", help="skip the latency part")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    data = Path(args.data)

    model = create_model(checkpoint=args.checkpoint)
    class_names = list(getattr(model, "class_names", None) or sorted(p.name for p in (data / "train").iterdir()))
    pre = resolved_preprocessing(model)
    size = pre["input_size"][-1]
    print(f"{args.checkpoint}: {model.variant.name}, {model.num_classes} classes, {size}px, preprocessing {pre}")
    with torch_threads(args.threads) as threads:
        start = time.time()
        result = export_model(model, "onnx", Path(args.out), images=data / "val", num_real=16, int8=True,
                              calib_images=data / "train", calib_count=args.calib_count,
                              calib_method=args.calib_method, log=print)
        print(f"export + INT8 calibration: {time.time() - start:.0f} s")
        int8_paths = {"onnxruntime_int8": result.int8_path}
        calib, _ = calibration_batches(data / "train", pre, args.calib_count)
        for label, options in INT8_VARIANTS.items():
            if label not in int8_paths:
                int8_paths[label] = quantize_onnx(
                    result.path, result.int8_path.with_name(f"{result.int8_path.stem}-{label}.onnx"), calib,
                    method=args.calib_method, calibration_source=str(data / "train"), **options)
        fused = reparameterize(model.eval())
        images, labels = load_split(data / "val", class_names, pre, args.val_limit)
        print(f"validation: {len(images)} images")
        exports, runners = {}, {}
        for fmt in args.runtimes:   # OpenVINO (NNCF), LiteRT (PT2E full integer), ExecuTorch (XNNPACK quantizer)
            module = __import__(f"repvit.export.{fmt}", fromlist=["available"])
            if not module.available():
                print(f"{fmt}: not installed, skipped")
                continue
            suffix = {"openvino": ".xml", "litert": ".tflite", "executorch": ".pte"}[fmt]
            done = export_model(model, fmt, Path(args.out) / f"model{suffix}", images=data / "val", num_real=16,
                                int8=True, calib_images=data / "train", calib_count=args.calib_count, log=print)
            exports[fmt] = done.as_dict()
            extra = () if fmt == "executorch" else (threads,)   # ExecuTorch's runtime keeps its own thread pool
            runners[f"{fmt}_fp32"] = module.runner(done.path, *extra)
            runners[f"{fmt}_int8"] = module.runner(done.int8_path, *extra)
        int8_paths_accuracy = list(int8_paths) + [k for k in runners if k.endswith("_int8")]
        with torch.inference_mode():
            logits = {"pytorch_fused_fp32": predict(fused, images),
                      "onnxruntime_fp32": predict(fmt_onnx.runner(result.path, threads), images)}
            logits.update({label: predict(fmt_onnx.runner(path, threads), images) for label, path in int8_paths.items()})
            # The int8-weight file with ONNX Runtime's graph optimizations off: each QDQ-wrapped op runs in
            # float, exactly what the quantized graph means, so the gap to the row above is the integer
            # kernels' (u8s8 saturation on x86 CPUs without VNNI), not the quantization's.
            emulated = "onnxruntime_int8_s8_weights_float_emulated"
            logits[emulated] = predict(float_emulation(int8_paths["onnxruntime_int8_s8_weights"], threads), images)
            int8_paths_accuracy.append(emulated)
            logits.update({label: predict(run, images) for label, run in runners.items()})
        top1 = {k: (v.argmax(1) == labels).float().mean().item() * 100 for k, v in logits.items()}
        reference = logits["pytorch_fused_fp32"]
        accuracy = {"val_images": len(images), "top1": top1,
                    "max_abs_diff_ort_fp32": (logits["onnxruntime_fp32"] - reference).abs().max().item()}
        for label in int8_paths_accuracy:
            agree = (logits[label].argmax(1) == reference.argmax(1)).float().mean().item()
            accuracy[label] = {"top1_change_points": top1[label] - top1["pytorch_fused_fp32"],
                               "prediction_agreement": agree * 100}
        for k, v in top1.items():
            print(f"top-1 {k}: {v:.2f}%")
        for label in int8_paths_accuracy:
            print(f"{label} - float top-1: {accuracy[label]['top1_change_points']:+.2f} points; predictions agree on "
                  f"{accuracy[label]['prediction_agreement']:.2f}% of images")
        with torch.inference_mode():
            lat = [] if args.accuracy_only else [latency(fused, result.path, int8_paths, s, threads, args.rounds, args.iters,
                           data / "train", args.calib_count)
                   for s in ([size, 224] if args.sizes is None else args.sizes)]
        for entry in lat:
            s = entry["stats"]
            print(f"{entry['img_size']}px, batch 1, {threads} threads (load {entry['load_before']}->{entry['load_after']}): "
                  + ", ".join(f"{k} {v['median_ms']:.2f} ms [{v['p10_ms']:.2f}-{v['p90_ms']:.2f}]" for k, v in s.items()))
            for label, gain in entry["int8_speedup"].items():
                print(f"  {label}: {gain['vs_onnxruntime_fp32']:.2f}x faster than ONNX Runtime fp32, "
                      f"{gain['vs_eager_fused']:.2f}x faster than eager fused PyTorch")
    if args.json:
        write_report(args.json, {
            "environment": environment("cpu"), "checkpoint": args.checkpoint, "settings": vars(args),
            "export": result.as_dict(), "other_exports": exports, "accuracy": accuracy, "latency": lat})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
