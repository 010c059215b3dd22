"""``repvit detect train|eval|predict|export``: detectors on RepViT (torchvision Faster/Mask R-CNN,
RetinaNet, FCOS): trained, scored with COCOeval (fused by default), drawn, exported. One module per
action; the options they share with ``repvit segment`` are in ``commands/_dense.py``."""
from __future__ import annotations

from . import eval, export, predict, train

ACTIONS = (train, eval, predict, export)


def register(subparsers) -> None:
    parser = subparsers.add_parser("detect", help="object detection / instance segmentation: train, eval, predict, export")
    actions = parser.add_subparsers(dest="detect_command", metavar="ACTION", required=True)
    for module in ACTIONS:
        module.register(actions)
