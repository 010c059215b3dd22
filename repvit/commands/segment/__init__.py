"""``repvit segment train|eval|predict|export``: Semantic FPN on RepViT: trained, scored with
mIoU (fused by default), drawn, exported. One module per action; the options they share with
``repvit detect`` are in ``commands/_dense.py``."""
from __future__ import annotations

from .. import _grammar as grammar
from . import eval, export, predict, train

ACTIONS = (train, eval, predict, export)


def register(subparsers) -> None:
    grammar.add_group(subparsers, "segment",
                      "semantic segmentation: train, eval, predict, export",
                      ACTIONS, dest="segment_command")
