"""``repvit predict``: the top classes and their probabilities for each image."""
from __future__ import annotations

import argparse
import json

from . import _grammar as grammar
from ._weights import add_weights_options


def register(subparsers) -> None:
    parser = subparsers.add_parser("predict", help="top-5 classes with probabilities for image files",
                                   description="Classify images with the fused model of --checkpoint or "
                                               "--pretrained weights.")
    add_weights_options(parser, required=True, checkpoint_help="a checkpoint of `repvit train` (or any the "
                                                               "library reads)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of images")
    parser.add_argument("--topk", type=int, default=5, help="classes to show per image [5]")
    grammar.add(parser, "--device")
    grammar.add(parser, "--threads")
    grammar.add(parser, "--ema")
    grammar.add(parser, "--json")
    grammar.add(parser, "--skip-bad", help="leave out image files that do not decode, counted on stderr (default: "
                                           "stop before the first image, naming every bad file)")
    parser.set_defaults(func=grammar.with_threads(run))


def run(args: argparse.Namespace) -> int:
    from ..classification.eval_predict import predict
    if args.topk < 1:
        raise ValueError(f"--topk must be 1 or more, got {args.topk}")
    images = grammar.input_images(args.images, skip_bad=args.skip_bad)
    results = predict(args.checkpoint, images, topk=args.topk, device=args.device, use_ema=args.ema,
                      pretrained=args.pretrained)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(result["image"])
        for rank, entry in enumerate(result["top"], 1):
            label = f"  ({entry['label']})" if entry["label"] else ""
            print(f"  {rank}. {entry['probability'] * 100:6.2f}%  {entry['class']}{label}")
    return 0
