"""``repvit segment train|eval|predict|export``: Semantic FPN on RepViT: trained, scored with
mIoU (fused by default), drawn, exported. One module per action; the options they share with
``repvit detect`` are in ``commands/_dense.py``."""
from __future__ import annotations

from . import eval, export, predict, train

ACTIONS = (train, eval, predict, export)


def register(subparsers) -> None:
    parser = subparsers.add_parser("segment", help="semantic segmentation: train, eval, predict, export")
    actions = parser.add_subparsers(dest="segment_command", metavar="ACTION", required=True)
    for module in ACTIONS:
        module.register(actions)
