"""``--checkpoint PATH`` / ``--pretrained NAME[:TAG]``: the two ways a classifier command names its weights."""
from __future__ import annotations

from . import _grammar as grammar

PRETRAINED_HELP = ("official ImageNet-1k weights: NAME (the best file, e.g. repvit_m1_1) or NAME:TAG "
                   "(dist_300e, dist_450e); downloaded once into the torch hub cache and verified, or read "
                   "from $REPVIT_WEIGHTS_DIR")


def add_weights_options(parser, *, required: bool, checkpoint_help: str) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    grammar.add(group, "--checkpoint", help=checkpoint_help)
    grammar.add(group, "--pretrained", help=PRETRAINED_HELP)
