"""``repvit segment eval``: mIoU, aAcc, mAcc and per-class IoU of a checkpoint (fused by default) or of an
exported file (ONNX, OpenVINO, LiteRT or ExecuTorch; float or INT8) run by its runtime."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...progress_bar import Progress
from .. import _grammar as grammar
from .._dense import add_common, load_for_inference

EXPORTED = (".onnx", ".xml", ".tflite", ".pte")   # files of `repvit segment export`, run by their runtimes


def run_eval(args: argparse.Namespace) -> int:
    from ...segmentation.semantic_fpn import load_segmenter
    from ...segmentation.data import EvalResize, SemanticFolder
    from ...segmentation.evaluation import evaluate_segmenter
    exported = Path(args.checkpoint).suffix in EXPORTED
    if exported:
        from ...segmentation.exported import ExportedSegmenter
        if args.unfused or args.ema:
            raise ValueError(f"{args.checkpoint} is an exported (fused) model: --unfused and --ema apply to "
                             "checkpoints only")
        import torch
        model, device = ExportedSegmenter(args.checkpoint), torch.device("cpu")
    else:
        model, device = load_for_inference(load_segmenter, args)
    ignore = model.ignore_index if args.ignore_index is None else args.ignore_index
    if ignore is None:
        raise ValueError(f"{args.checkpoint} does not record the ignored label value (exported before it was "
                         "recorded): pass --ignore-index N")
    data = SemanticFolder(args.data, num_classes=model.num_classes, ignore_index=ignore, skip_bad=args.skip_bad,
                          reduce_zero_label=model.reduce_zero_label, transforms=EvalResize(model.eval_size),
                          split=args.val_split)
    if data.skip_report():   # what --skip-bad left out, by reason
        print(data.skip_report(), file=sys.stderr)
    bar = Progress(desc="images", unit="img", enabled=not args.quiet)
    try:
        result = evaluate_segmenter(model, data, device=device, class_names=model.class_names, progress=bar.update_to)
    finally:
        bar.close()
    result.update(checkpoint=str(args.checkpoint), fused=not args.unfused, data=str(args.data), ignore_index=ignore)
    what = f"{'unfused' if args.unfused else 'fused'} model"
    if exported:
        result.update(runtime=model.runtime, precision=model.precision)
        what = f"{model.runtime}, {model.precision}"
    print(f"{result['images']} images: mIoU {result['mIoU']:.4f}  aAcc {result['aAcc']:.4f}  mAcc {result['mAcc']:.4f} "
          f"({what})")
    for name, iou in result["IoU"].items():
        print(f"  {name:<20} {'-' if iou is None else f'{iou:.4f}'}")
    if args.report:
        grammar.write_report(args.report, result)
    return 0


def register(actions) -> None:
    ev = actions.add_parser("eval", help="mIoU, aAcc and per-class IoU on a folder of images/ and labels/")
    add_common(ev, "segmentation model", exported="or a file of `repvit segment export` (.onnx, OpenVINO .xml, "
                                                  "LiteRT .tflite, ExecuTorch .pte; float or INT8), run by its runtime")
    grammar.add(ev, "--data", required=True, help="folder with images/ and labels/ (index PNGs)")
    grammar.add(ev, "--ignore-index", help="label value to ignore (default: the checkpoint's)")
    grammar.add(ev, "--val-split", help="--data is then a dataset root: score this "
                    "split's val frames, as `segment train --val-split` made them (e.g. sequence:0006R0)")
    grammar.add(ev, "--skip-bad", help="skip (and count) bad image/label pairs")
    grammar.add(ev, "--quiet")
    ev.set_defaults(func=grammar.with_threads(run_eval))
