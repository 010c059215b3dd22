"""``repvit detect predict``: boxes, labels, scores (and masks) drawn over images."""
from __future__ import annotations

import argparse
from pathlib import Path

from .. import _grammar as grammar
from .._dense import add_common, add_skip_bad_images, load_for_inference


def run_predict(args: argparse.Namespace) -> int:
    from ...detection.detectors import load_detector
    from ...detection.evaluation import predict_images
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold is a probability in [0, 1], got {args.score_threshold}")
    images = grammar.input_images(args.images, skip_bad=args.skip_bad)
    model, device = load_for_inference(load_detector, args)
    results = predict_images(model, images, Path(args.output), class_names=model.class_names,
                             score_threshold=args.score_threshold, device=device)
    for r in results:
        found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in r["detections"]) or "nothing above the threshold"
        print(f"{r['image']}: {found} -> {r['drawn']}")
    if args.report:
        grammar.write_report(args.report, results)
    return 0


def register(actions) -> None:
    pr = actions.add_parser("predict", help="draw boxes, labels, scores and masks over images (PNG)")
    add_common(pr, "detector")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    grammar.add(pr, "--output", default="detections", help="folder for the drawn PNGs")
    pr.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this [0.5]")
    add_skip_bad_images(pr)
    pr.set_defaults(func=grammar.with_threads(run_predict))
