"""``repvit segment eval``: mIoU, aAcc, mAcc and per-class IoU, fused by default."""
from __future__ import annotations

import argparse

from .. import _grammar as grammar
from .._dense import add_common, load_for_inference


def run_eval(args: argparse.Namespace) -> int:
    from ...segmentation.semantic_fpn import load_segmenter
    from ...segmentation.data import EvalResize, SemanticFolder
    from ...segmentation.evaluation import evaluate_segmenter
    model, device = load_for_inference(load_segmenter, args)
    ignore = model.ignore_index if args.ignore_index is None else args.ignore_index
    data = SemanticFolder(args.data, num_classes=model.num_classes, ignore_index=ignore, skip_bad=args.skip_bad,
                          reduce_zero_label=model.reduce_zero_label, transforms=EvalResize(model.eval_size))
    result = evaluate_segmenter(model, data, device=device, class_names=model.class_names)
    result.update(checkpoint=str(args.checkpoint), fused=not args.unfused, data=str(args.data), ignore_index=ignore)
    print(f"{result['images']} images: mIoU {result['mIoU']:.4f}  aAcc {result['aAcc']:.4f}  mAcc {result['mAcc']:.4f} "
          f"({'unfused' if args.unfused else 'fused'} model)")
    for name, iou in result["IoU"].items():
        print(f"  {name:<20} {'-' if iou is None else f'{iou:.4f}'}")
    if args.report:
        grammar.write_report(args.report, result)
    return 0


def register(actions) -> None:
    ev = actions.add_parser("eval", help="mIoU, aAcc and per-class IoU on a folder of images/ and labels/")
    add_common(ev, "segmentation model")
    grammar.add(ev, "--data", required=True, help="folder with images/ and labels/ (index PNGs)")
    ev.add_argument("--ignore-index", type=int, default=None, help="label value to ignore (default: the checkpoint's)")
    grammar.add(ev, "--skip-bad", help="skip (and count) bad image/label pairs")
    ev.set_defaults(func=run_eval)
