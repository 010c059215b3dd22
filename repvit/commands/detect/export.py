"""``repvit detect export``: the fused detector as TorchScript, checked on real images."""
from __future__ import annotations

import argparse

from .. import _grammar as grammar
from .._dense import real_images


def run_export(args: argparse.Namespace) -> int:
    from ...detection.detectors import load_detector
    from ...detection.export import export_detector_torchscript
    model = load_detector(args.checkpoint)
    report = export_detector_torchscript(model, args.output, real_images(args.images, args.num_real),
                                         class_names=model.class_names, category_ids=model.category_ids)
    print(f"verified: {report['path']} (TorchScript, fused; max |diff| {report['max_abs_diff']:.3g} on "
          f"{len(report['detections'])} real images)")
    if args.report:
        grammar.write_report(args.report, report)
    return 0


def register(actions) -> None:
    ex = actions.add_parser("export", help="the fused detector to TorchScript, checked on real images")
    grammar.add(ex, "--checkpoint", required=True, help="a detector saved by this library")
    grammar.add(ex, "--output", default="detector-fused.pt", help="file to write, used as given")
    grammar.add(ex, "--images", help="folder of real images to check the export on (default: two photos shipped "
                                     "with matplotlib)")
    grammar.add(ex, "--num-real", default=4)
    grammar.add_report(ex, help="write the check's report to this JSON file")
    ex.set_defaults(func=run_export)
