"""``repvit eval``: top-1/top-5 and loss of a checkpoint (fused) on a labelled image folder."""
from __future__ import annotations

import argparse

from . import _grammar as grammar
from ._weights import add_weights_options


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="accuracy of a checkpoint on a folder of class folders (or a root holding val/)",
        description="Evaluate the fused model of --checkpoint or --pretrained weights with the preprocessing "
                    "they record. Official ImageNet weights match folders named by WordNet id (n01440764 ...), "
                    "so an ImageNet subset such as Imagenette is evaluated over all 1000 outputs.")
    add_weights_options(parser, required=True, checkpoint_help="a checkpoint of `repvit train` (or any the "
                                                               "library reads)")
    grammar.add(parser, "--data", required=True, help="folder of class folders, or a dataset root holding val/")
    grammar.add_report(parser, help="also write the results to this JSON file (top1 in percent)")
    grammar.add(parser, "--batch-size", default=64, help="images per batch")
    grammar.add(parser, "--workers", default=2)
    grammar.add(parser, "--device")
    grammar.add(parser, "--threads")
    grammar.add(parser, "--ema", help="evaluate the EMA weights stored in the checkpoint")
    grammar.add(parser, "--skip-bad", help="check every image first and skip unreadable ones (default: stop naming "
                                           "the file)")
    grammar.add_deprecated(parser, "--skip-bad-images", "--skip-bad", dest="skip_bad", nargs=0)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..engine.timing import resolve_threads, torch_threads
    from ..classification.eval_predict import evaluate_checkpoint
    with torch_threads(resolve_threads(args.threads)[0]):
        result = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size, workers=args.workers,
                                     device=args.device, use_ema=args.ema, skip_bad=args.skip_bad,
                                     pretrained=args.pretrained)
    print(f"{result['images']} images in {result['classes']} classes ({result['data']}), fused model at "
          f"{result['img_size']} px: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
          f"loss {result['loss']:.4f}")
    if args.report:
        grammar.write_report(args.report, result)
    return 0
