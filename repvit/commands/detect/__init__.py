"""``repvit detect train|eval|predict|export``: detectors on RepViT (torchvision Faster/Mask R-CNN,
RetinaNet, FCOS): trained, scored with COCOeval (fused by default), drawn, exported. One module per
action; the options they share with ``repvit segment`` are in ``commands/_dense.py``."""
from __future__ import annotations

from .. import _grammar as grammar
from . import eval, export, predict, train

ACTIONS = (train, eval, predict, export)


def register(subparsers) -> None:
    grammar.add_group(subparsers, "detect",
                      "object detection / instance segmentation: train, eval, predict, export",
                      ACTIONS, dest="detect_command")
