"""``--checkpoint PATH`` / ``--pretrained NAME[:TAG]``: the two ways a classifier command names its weights,
and how the EdgeTAM commands (``repvit track``, ``repvit sam predict --family edgetam``) read theirs."""
from __future__ import annotations

from . import _grammar as grammar

PRETRAINED_HELP = ("official ImageNet-1k weights: NAME (the best file, e.g. repvit_m1_1) or NAME:TAG "
                   "(dist_300e, dist_450e); downloaded once into the torch hub cache and verified, or read "
                   "from $REPVIT_WEIGHTS_DIR")


def add_weights_options(parser, *, required: bool, checkpoint_help: str) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    grammar.add(group, "--checkpoint", help=checkpoint_help)
    grammar.add(group, "--pretrained", help=PRETRAINED_HELP)


EDGETAM_RELEASE = "edgetam"


def add_edgetam_weights_options(parser) -> None:
    """``--checkpoint`` / ``--pretrained edgetam`` / ``--random-weights`` (one of them) and ``--unfused``: how
    every EdgeTAM command names its weights (``edgetam_weights`` reads them)."""
    group = parser.add_mutually_exclusive_group()
    grammar.add(group, "--checkpoint", help="EdgeTAM weights: the official edgetam.pt or a file written by this "
                                            "library")
    grammar.add(group, "--pretrained", help=f"official weights: {EDGETAM_RELEASE} (downloaded once into the torch "
                                            "hub cache)")
    grammar.add(group, "--random-weights")
    grammar.add(parser, "--unfused", help="keep the RepViT trunk's BatchNorms and branches (for comparison)")


def edgetam_weights(args):
    """``(pretrained, device, seed)`` of an EdgeTAM command's ``--checkpoint`` / ``--pretrained edgetam`` /
    ``--random-weights`` (seed 0: ``repvit.edgetam.builder.seeded_weights``, which track something) and
    ``--device``. One clear line when the release named is not EdgeTAM's or no weights are named."""
    from ..engine.distributed import pick_device
    pretrained = args.pretrained is not None
    if pretrained and args.pretrained not in (EDGETAM_RELEASE, f"{EDGETAM_RELEASE}:default"):
        raise ValueError(f"--pretrained {args.pretrained}: EdgeTAM's official weights are "
                         f"--pretrained {EDGETAM_RELEASE}")
    if not (args.checkpoint or pretrained or args.random_weights):
        raise ValueError(f"say which weights to use: --checkpoint edgetam.pt, --pretrained {EDGETAM_RELEASE} "
                         "(official) or --random-weights (pipeline check only)")
    return pretrained, pick_device(args.device), (0 if args.random_weights else None)
