"""``repvit segment export``: the fused model as ONNX or an OpenVINO IR (dynamic size), checked on real images."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import _grammar as grammar
from .._dense import real_images

ENGINES = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml"}


def run_export(args: argparse.Namespace) -> int:
    from ...export import dense
    from ...segmentation.semantic_fpn import load_segmenter
    fmt = args.format
    output = args.output or f"segmenter-fused{SUFFIXES[fmt]}"
    for path in (output, args.neck_output):
        if path and Path(path).suffix != SUFFIXES[fmt]:
            raise ValueError(f"--format {fmt} writes {SUFFIXES[fmt]} files, got {path!r}")
    model = load_segmenter(args.checkpoint)
    images = real_images(args.images, args.num_real)
    # Two sizes: the images as they are and a crop whose sides are not multiples of 32.
    images = images + [im[:, : im.shape[1] * 2 // 3, : im.shape[2] * 3 // 4] for im in images[:1]]
    export_model = dense.export_segmenter_onnx if fmt == "onnx" else dense.export_segmenter_openvino
    export_neck = dense.export_neck_onnx if fmt == "onnx" else dense.export_neck_openvino
    report = export_model(model, output, images, class_names=model.class_names)
    report["format"] = fmt
    print(f"verified: {report['path']} ({fmt}, fused, dynamic height/width; {ENGINES[fmt]} max |diff| "
          f"{report['max_abs_diff']:.3g} at sizes {report['image_sizes']})")
    if args.neck_output:
        neck = export_neck(model.backbone, args.neck_output, images)
        report["neck"] = neck
        print(f"verified: {neck['path']} (backbone + FPN; max |diff| {neck['max_abs_diff']:.3g})")
    if args.report:
        grammar.write_report(args.report, report)
    return 0


def register(actions) -> None:
    ex = actions.add_parser("export", help="the fused model to ONNX or OpenVINO (dynamic size), checked on real "
                                           "images")
    grammar.add(ex, "--checkpoint", required=True, help="a segmentation model saved by this library")
    ex.add_argument("--format", default="onnx", choices=list(SUFFIXES),
                    help="onnx (checked with ONNX Runtime) or openvino (an IR .xml with its .bin beside it, "
                         "checked with OpenVINO) [onnx]")
    grammar.add(ex, "--output", default=None, help="file to write, used as given [segmenter-fused.onnx or .xml]")
    ex.add_argument("--neck-output", default=None, help="also export backbone + FPN to this file (same format)")
    grammar.add(ex, "--images", help="folder of real images to check the export on (default: two photos shipped "
                                     "with matplotlib)")
    grammar.add(ex, "--num-real", default=2)
    grammar.add_report(ex, help="write the check's report to this JSON file")
    ex.set_defaults(func=run_export)
