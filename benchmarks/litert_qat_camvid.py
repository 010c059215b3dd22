"""Quantization-aware fine-tuning for LiteRT's full-integer CamVid segmenter: what it recovers over
post-training quantization, and how much of that is the extra training rather than the quantization.

Post-training full-integer quantization with litert-torch's PT2E quantizer lost 1.26 mIoU points on the
CamVid recipe's model (benchmarks/deployment.md), the one runtime beyond the 1-point goal. This script
scores, on all val frames, with the frames' 360x480 as the files' fixed size:

* the fused PyTorch model (the float reference);
* the post-training file (50 calibration frames, as ``repvit segment export --int8 --calib-images``);
* for each ``--seeds``, the QAT file ``repvit segment export --int8 --qat-data`` writes (the library's
  ``export_litert(qat=...)``: one epoch over the training frames, flips, batch 1, AdamW lr 1e-5);
* for each seed, the control: the same loop (same order, flips, optimizer, steps) on the exported float
  graph with no fake-quantize ops, scored in PyTorch: what the fine-tune gives a float model, so the
  QAT file minus its control is what the quantization costs.

    PYTHONPATH=. python benchmarks/litert_qat_camvid.py --checkpoint runs/camvid/best.pth --seeds 0 1 \
        --json litert_qat.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit import reparameterize  # noqa: E402
from repvit.commands._dense import real_images  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402
from repvit.export import litert as fmt_lt  # noqa: E402
from repvit.engine.qat import QATSetting, fine_tune  # noqa: E402
from repvit.engine.timing import environment, load_average, torch_threads  # noqa: E402
from repvit.segmentation.data import EvalResize, ResizeFlip, SemanticFolder  # noqa: E402
from repvit.segmentation.evaluation import evaluate_segmenter  # noqa: E402
from repvit.segmentation.semantic_fpn import load_segmenter  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


class Calls(torch.nn.Module):
    """A function of an image batch as a module (a ``.tflite`` runner, an exported graph's forward)."""

    def __init__(self, run):
        super().__init__()
        self.run = run

    def forward(self, x):
        return self.run(x)


def file_segmenter(path: Path, threads: int) -> Calls:
    """A ``.tflite`` segmenter run by the LiteRT interpreter, logits back as float."""
    return Calls(fmt_lt.runner(path, threads))


def no_quantization():
    """A PT2E quantizer that annotates nothing: ``fine_tune`` then trains the float graph."""
    from torchao.quantization.pt2e.quantizer import Quantizer

    class NoQuantization(Quantizer):
        def annotate(self, model):
            return model

        def validate(self, model):
            return None
    return NoQuantization()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--calib-count", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-control", action="store_true", help="skip the float fine-tune")
    p.add_argument("--json")
    args = p.parse_args()
    root = Path(args.data)
    model = load_segmenter(args.checkpoint)
    fused = reparameterize(model).eval()
    resize = EvalResize(model.eval_size)
    common = dict(num_classes=model.num_classes, ignore_index=model.ignore_index,
                  reduce_zero_label=model.reduce_zero_label)
    val = SemanticFolder(root / "val", transforms=resize, **common)
    size = tuple(val[0][0].shape[-2:])
    train = SemanticFolder(root / "train", train_transform=ResizeFlip(size), **common)

    def setting(seed: int) -> QATSetting:
        def loss(logits, label):
            return F.cross_entropy(logits, label, ignore_index=model.ignore_index)
        return QATSetting(train, loss, epochs=args.epochs, lr=args.lr, seed=seed)

    report = {"environment": environment(), "checkpoint": args.checkpoint, "load_before": load_average(),
              "epochs": args.epochs, "lr": args.lr, "size": list(size), "results": {}}
    start = time.perf_counter()

    def record(name: str, module, extra: dict = None) -> None:
        with torch.no_grad():
            entry = evaluate_segmenter(module, val, class_names=model.class_names)
        if "pytorch fused" in report["results"]:
            entry["mIoU_change_points"] = 100 * (entry["mIoU"] - report["results"]["pytorch fused"]["mIoU"])
        entry.update(extra or {})
        report["results"][name] = entry
        change = f" ({entry['mIoU_change_points']:+.2f} points)" if "mIoU_change_points" in entry else ""
        print(f"{name}: mIoU {entry['mIoU']:.4f}{change}", flush=True)

    with torch_threads(args.threads), tempfile.TemporaryDirectory() as tmp:
        record("pytorch fused", fused)
        calibration = [resize(im, None)[0][None].numpy()
                       for im in real_images(str(root / "train" / "images"), args.calib_count)]
        ptq = fmt_lt.export_litert(fused, Path(tmp) / "ptq.tflite", img_size=size, calibration=calibration)
        record("litert-int8, post-training", file_segmenter(ptq, args.threads))
        for seed in args.seeds:
            qat = setting(seed)
            path = fmt_lt.export_litert(fused, Path(tmp) / f"qat{seed}.tflite", img_size=size, qat=qat)
            record(f"litert-int8, QAT seed {seed}", file_segmenter(path, args.threads), {"qat": dict(qat.report)})
            if not args.no_control:
                control = setting(seed)
                graph = fine_tune(reparameterize(load_segmenter(args.checkpoint)).eval(),
                                  (torch.rand(1, 3, *size),), no_quantization(), control)
                # fine_tune returns the graph in eval mode; the evaluator's .eval() must not reach it
                record(f"pytorch float, the same fine-tune (seed {seed})", Calls(graph.forward),
                       {"fine_tune": control.report})
    report["load_after"] = load_average()
    report["wall_seconds"] = time.perf_counter() - start
    print(f"{report['environment']['cpu']}, load {report['load_before']} -> {report['load_after']}")
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
