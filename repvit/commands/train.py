"""``repvit train``: train or fine-tune on an image folder (also under ``torchrun``)."""
from __future__ import annotations

import argparse
import signal
import sys


def register(subparsers) -> None:
    from ..classification.config import add_options
    parser = subparsers.add_parser(
        "train", help="train or fine-tune on DATA/train, validate on DATA/val (defaults: the paper's recipe)",
        description="Train RepViT. Defaults are the paper's ImageNet recipe; -c FILE.yaml sets other defaults "
                    "and flags override both. Run many processes with torchrun --nproc_per_node N -m repvit train.")
    add_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..classification.config import resolve
    from ..classification.task import NonFiniteLossError, main
    explicit = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    cfg = resolve(explicit)
    try:
        summary = main(cfg)
    except NonFiniteLossError as err:
        print(f"repvit train: {err}", file=sys.stderr)
        return 3
    if summary.get("interrupted"):  # the shell's convention: 128 + the signal (130 Ctrl-C, 143 SIGTERM)
        return 128 + (summary.get("signal") or signal.SIGINT)
    return 0
