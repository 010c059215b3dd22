"""``repvit train``: train or fine-tune on an image folder (also under ``torchrun``)."""
from __future__ import annotations

import argparse

from . import _grammar as grammar


def register(subparsers) -> None:
    from ..classification.config import add_options
    parser = subparsers.add_parser(
        "train", help="train or fine-tune on DATA/train, validate on DATA/val (defaults: the paper's recipe)",
        description="Train RepViT. Defaults are the paper's ImageNet recipe; -c FILE.yaml sets other defaults "
                    "and flags override both. Run many processes with torchrun --nproc_per_node N -m repvit train.")
    add_options(parser)
    grammar.add_deprecated(parser, "--skip-bad-images", "--skip-bad", dest="skip_bad", nargs=0)
    grammar.add_deprecated(parser, "--sched", "--schedule", dest="schedule",
                           choices=["cosine", "step", "poly", "none"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..classification.config import resolve
    from ..classification.task import main
    from ._training import run_training
    explicit = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    cfg = resolve(explicit)
    return run_training("repvit train", lambda: main(cfg))
