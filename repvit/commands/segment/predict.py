"""``repvit segment predict``: colour-coded class maps over images and raw class-index PNGs."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import _grammar as grammar
from .._dense import add_common, add_skip_bad_images, load_for_inference


def run_predict(args: argparse.Namespace) -> int:
    from ...segmentation.semantic_fpn import load_segmenter
    from ...segmentation.evaluation import predict_images
    images = grammar.input_images(args.images, skip_bad=args.skip_bad)
    model, device = load_for_inference(load_segmenter, args)
    results = predict_images(model, images, Path(args.output), class_names=model.class_names,
                             device=device, eval_size=model.eval_size)
    for r in results:
        top = sorted(r["fractions"].items(), key=lambda kv: -kv[1])[:3]
        print(f"{r['image']}: " + ", ".join(f"{k} {v:.0%}" for k, v in top) + f" -> {r['drawn']}")
    if args.report:
        grammar.write_report(args.report, results)
    return 0


def register(actions) -> None:
    pr = actions.add_parser("predict", help="colour-coded class maps over images (PNG) and raw class-index PNGs")
    add_common(pr, "segmentation model")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    grammar.add(pr, "--output", default="segmentations", help="folder for the PNGs")
    add_skip_bad_images(pr)
    pr.set_defaults(func=grammar.with_threads(run_predict))
