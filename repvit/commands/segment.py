"""``repvit segment train|eval|predict|export``: Semantic FPN on RepViT: trained,
scored with mIoU (fused by default), drawn, exported."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import _grammar as grammar
from ._dense import add_common, add_train, load_for_inference, real_images


def _load(args):
    from ..segmentation.semantic_fpn import load_segmenter
    return load_for_inference(load_segmenter, args)


def run_eval(args: argparse.Namespace) -> int:
    from ..segmentation.data import SemanticFolder
    from ..segmentation.evaluation import evaluate_segmenter
    model, device = _load(args)
    ignore = model.ignore_index if args.ignore_index is None else args.ignore_index
    data = SemanticFolder(args.data, num_classes=model.num_classes, ignore_index=ignore, skip_bad=args.skip_bad,
                          reduce_zero_label=model.reduce_zero_label)
    result = evaluate_segmenter(model, data, device=device, class_names=model.class_names)
    result.update(checkpoint=str(args.checkpoint), fused=not args.unfused, data=str(args.data), ignore_index=ignore)
    print(f"{result['images']} images: mIoU {result['mIoU']:.4f}  aAcc {result['aAcc']:.4f}  mAcc {result['mAcc']:.4f} "
          f"({'unfused' if args.unfused else 'fused'} model)")
    for name, iou in result["IoU"].items():
        print(f"  {name:<20} {'-' if iou is None else f'{iou:.4f}'}")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..segmentation.evaluation import predict_images
    from ..classification.eval_predict import expand_images
    model, device = _load(args)
    results = predict_images(model, expand_images(args.images), Path(args.output), class_names=model.class_names,
                             device=device)
    for r in results:
        top = sorted(r["fractions"].items(), key=lambda kv: -kv[1])[:3]
        print(f"{r['image']}: " + ", ".join(f"{k} {v:.0%}" for k, v in top) + f" -> {r['drawn']}")
    if args.report:
        Path(args.report).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..export.dense import export_neck_onnx, export_segmenter_onnx
    from ..segmentation.semantic_fpn import load_segmenter
    model = load_segmenter(args.checkpoint)
    images = real_images(args.images, args.num_real)
    # Two sizes: the images as they are and a crop whose sides are not multiples of 32.
    images = images + [im[:, : im.shape[1] * 2 // 3, : im.shape[2] * 3 // 4] for im in images[:1]]
    report = export_segmenter_onnx(model, args.output, images, class_names=model.class_names)
    print(f"verified: {report['path']} (ONNX, fused, dynamic height/width; max |diff| {report['max_abs_diff']:.3g} "
          f"at sizes {report['image_sizes']})")
    if args.neck_output:
        neck = export_neck_onnx(model.backbone, args.neck_output, images)
        report["neck"] = neck
        print(f"verified: {neck['path']} (backbone + FPN; max |diff| {neck['max_abs_diff']:.3g})")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("segment", help="semantic segmentation: train, eval, predict, export")
    sub = parser.add_subparsers(dest="segment_command", metavar="ACTION", required=True)
    ev = sub.add_parser("eval", help="mIoU, aAcc and per-class IoU on a folder of images/ and labels/")
    add_common(ev, "segmentation model")
    grammar.add(ev, "--data", required=True, help="folder with images/ and labels/ (index PNGs)")
    ev.add_argument("--ignore-index", type=int, default=None, help="label value to ignore (default: the checkpoint's)")
    grammar.add(ev, "--skip-bad", help="skip (and count) bad image/label pairs")
    ev.set_defaults(func=run_eval)
    pr = sub.add_parser("predict", help="colour-coded class maps over images (PNG) and raw class-index PNGs")
    add_common(pr, "segmentation model")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    grammar.add(pr, "--output", default="segmentations", help="folder for the PNGs")
    pr.set_defaults(func=run_predict)
    ex = sub.add_parser("export", help="the fused model to ONNX (dynamic size), checked with ONNX Runtime")
    grammar.add(ex, "--checkpoint", required=True, help="a segmentation model saved by this library")
    grammar.add(ex, "--output", default="segmenter-fused.onnx", help="file to write, used as given")
    ex.add_argument("--neck-output", default=None, help="also export backbone + FPN to this ONNX file")
    grammar.add(ex, "--images", help="folder of real images to check the export on (default: two photos shipped "
                                     "with matplotlib)")
    ex.add_argument("--num-real", type=int, default=2, help="real images to check on [2]")
    grammar.add_report(ex, help="write the check's report to this JSON file")
    ex.set_defaults(func=run_export)
    add_train(sub, "segment", "..segmentation.training")
