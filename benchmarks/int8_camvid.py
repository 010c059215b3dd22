"""INT8 post-training quantization of the CamVid recipe's Semantic FPN: the mIoU change per runtime.

Starting from the checkpoint of ``configs/camvid-cpu.yaml``:

1. ``repvit segment export``'s library path for each format: fuse, export the float model (ONNX with
   dynamic sizes, an OpenVINO IR, or LiteRT / ExecuTorch at the frames' fixed size), checked against
   PyTorch on real frames; then its INT8 copy
   (``quantize_dense``), calibrated on ``--calib-count`` training frames at the size the model is
   evaluated at, kept only if 90% of the pixels of the check frames keep their class;
2. mIoU, aAcc and per-class IoU of the fused PyTorch model and of every exported file on the whole
   val split, each file run by its own runtime (``ExportedSegmenter``, the same scoring as
   ``repvit segment eval``), and the share of val pixels whose class each file changes.

    PYTHONPATH=. python benchmarks/int8_camvid.py --checkpoint runs/camvid/best.pth --json int8_camvid.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit import reparameterize  # noqa: E402
from repvit.commands._dense import real_images  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402
from repvit.dense import export as dense  # noqa: E402
from repvit.segmentation.exported import ExportedSegmenter  # noqa: E402
from repvit.export.verify import ParityError  # noqa: E402
from repvit.engine.timing import environment, load_average, torch_threads  # noqa: E402
from repvit.segmentation.data import EvalResize, SemanticFolder  # noqa: E402
from repvit.segmentation.evaluation import evaluate_segmenter  # noqa: E402
from repvit.segmentation.semantic_fpn import load_segmenter  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
# (name, float file suffix, INT8 weights encoding or None for the float file)
CANDIDATES = [("onnxruntime", ".onnx", None), ("onnxruntime-int8 (int7 weights)", ".onnx", "int7"),
              ("onnxruntime-int8 (uint8 weights)", ".onnx", "uint8"), ("openvino", ".xml", None),
              ("openvino-int8 (NNCF, int7 weights)", ".xml", "int7"),
              ("openvino-int8 (NNCF, int8 weights)", ".xml", "int8"), ("litert", ".tflite", None),
              ("litert-int8 (full integer)", ".tflite", "pt2e"), ("executorch", ".pte", None),
              ("executorch-int8 (XNNPACK quantizer)", ".pte", "pt2e")]


class Recording(torch.nn.Module):
    """``inner`` as it is, keeping the class map of every image it scores (so one scoring pass gives both
    the metrics and the predictions to compare)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.classes = inner, []

    def forward(self, x):
        logits = self.inner(x)
        self.classes.append(logits.argmax(1)[0])
        return logits


def agreement(reference: list, candidate: list, labels: list, ignore_index: int) -> float:
    """Share of labelled val pixels whose predicted class the candidate keeps from the reference."""
    same = total = 0
    for a, b, label in zip(reference, candidate, labels):
        keep = label != ignore_index
        same += int((a == b)[keep].sum())
        total += int(keep.sum())
    return same / max(total, 1)


def prepare(model, fused, path: Path, weights, checks, calibration, *, size, source: str):
    """The file to score for one candidate (exported, and quantized when ``weights`` is set) and its checks.
    The float ONNX and OpenVINO files are exported once and reused by their INT8 candidates."""
    entry = {}
    if path.suffix in (".tflite", ".pte"):   # a fixed size: the val frames' (CamVid's are all 360x480)
        target = dense.int8_path_for(path) if weights else path
        export = dense.export_segmenter_litert if path.suffix == ".tflite" else dense.export_segmenter_executorch
        check = export(model, target, checks, class_names=model.class_names, size=size,
                       calibration=calibration if weights else None)
        return target, ({"int8_check": check} if weights else entry)
    if not path.exists():
        export = dense.export_segmenter_onnx if path.suffix == ".onnx" else dense.export_segmenter_openvino
        export(model, path, checks, class_names=model.class_names)
    if not weights:
        return path, entry
    entry["int8_check"] = dense.quantize_dense(fused, path, checks, calibration,
                                               weights=weights,
                                               calibration_source=source)
    return Path(entry["int8_check"]["path"]), entry


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--calib-count", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--candidates", nargs="*", default=[c[0] for c in CANDIDATES])
    p.add_argument("--json", default=None)
    args = p.parse_args()
    data_root = Path(args.data)
    model = load_segmenter(args.checkpoint)
    fused = reparameterize(model)
    resize = EvalResize(model.eval_size)
    val = SemanticFolder(data_root / "val", num_classes=model.num_classes, ignore_index=model.ignore_index,
                         reduce_zero_label=model.reduce_zero_label, transforms=resize)
    checks = real_images(str(data_root / "val" / "images"), 4)
    calibration = [resize(im, None)[0][None].numpy()
                   for im in real_images(str(data_root / "train" / "images"), args.calib_count)]
    report = {"environment": environment(), "checkpoint": args.checkpoint, "threads": args.threads,
              "calibration_images": len(calibration), "val_images": len(val), "load_before": load_average(),
              "results": {}}
    start = time.perf_counter()
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        reference = Recording(fused)
        report["results"]["pytorch fused"] = {**evaluate_segmenter(reference, val, class_names=model.class_names),
                                              "seconds": time.perf_counter() - t}
        labels = [val[i][1] for i in range(len(val))]
        if any(c.shape != label.shape for c, label in zip(reference.classes, labels)):
            raise SystemExit("the model's eval size differs from the labels' size: compare at the labels' size")
        print(f"pytorch fused: mIoU {report['results']['pytorch fused']['mIoU']:.4f}", flush=True)
        for name, suffix, weights in CANDIDATES:
            if name not in args.candidates:
                continue
            try:
                target, entry = prepare(model, fused, Path(tmp) / f"camvid{suffix}", weights, checks, calibration,
                                        size=tuple(val[0][0].shape[-2:]), source=str(data_root / "train" / "images"))
            except ParityError as err:   # a copy outside the limits is removed: say so and go on
                report["results"][name] = {"failed_check": str(err)}
                print(f"{name}: {err}", flush=True)
                continue
            runner = Recording(ExportedSegmenter(target, threads=args.threads))
            t = time.perf_counter()
            entry.update(evaluate_segmenter(runner, val, class_names=model.class_names))
            entry["seconds"] = time.perf_counter() - t
            entry["val_pixel_agreement"] = agreement(reference.classes, runner.classes, labels, val.ignore_index)
            entry["mIoU_change_points"] = 100 * (entry["mIoU"] - report["results"]["pytorch fused"]["mIoU"])
            report["results"][name] = entry
            print(f"{name}: mIoU {entry['mIoU']:.4f} ({entry['mIoU_change_points']:+.2f} points), "
                  f"{entry['val_pixel_agreement']:.2%} of val pixels unchanged", flush=True)
    report["load_after"] = load_average()
    report["wall_seconds"] = time.perf_counter() - start
    print(f"\n{report['environment']['cpu']}, {args.threads} threads, load {report['load_before']} -> "
          f"{report['load_after']}, {len(val)} val frames, {len(calibration)} calibration frames")
    print(f"{'model':<36} {'mIoU':>7} {'change':>7} {'aAcc':>7} {'pixels same':>12}")
    base = report["results"]["pytorch fused"]
    for name, r in report["results"].items():
        if "failed_check" in r:
            print(f"{name:<36} failed its INT8 check (removed): {r['failed_check']}")
            continue
        change = 100 * (r["mIoU"] - base["mIoU"])
        same = r.get("val_pixel_agreement")
        print(f"{name:<36} {100 * r['mIoU']:>7.2f} {change:>+7.2f} {100 * r['aAcc']:>7.2f} "
              f"{'-' if same is None else f'{100 * same:.2f}%':>12}")
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
