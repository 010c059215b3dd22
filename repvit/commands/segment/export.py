"""``repvit segment export``: the fused model as ONNX (dynamic size), checked with ONNX Runtime."""
from __future__ import annotations

import argparse

from .. import _grammar as grammar
from .._dense import real_images


def run_export(args: argparse.Namespace) -> int:
    from ...export.dense import export_neck_onnx, export_segmenter_onnx
    from ...segmentation.semantic_fpn import load_segmenter
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
        grammar.write_report(args.report, report)
    return 0


def register(actions) -> None:
    ex = actions.add_parser("export", help="the fused model to ONNX (dynamic size), checked with ONNX Runtime")
    grammar.add(ex, "--checkpoint", required=True, help="a segmentation model saved by this library")
    grammar.add(ex, "--output", default="segmenter-fused.onnx", help="file to write, used as given")
    ex.add_argument("--neck-output", default=None, help="also export backbone + FPN to this ONNX file")
    grammar.add(ex, "--images", help="folder of real images to check the export on (default: two photos shipped "
                                     "with matplotlib)")
    grammar.add(ex, "--num-real", default=2)
    grammar.add_report(ex, help="write the check's report to this JSON file")
    ex.set_defaults(func=run_export)
