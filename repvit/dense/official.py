"""What the official downstream files (github.com/THU-MIG/RepViT ``detection/``, ``segmentation/``,
written by mmdetection 2.x and mmsegmentation 0.x) share: the RepViT backbone under ``backbone.``
in the classification layout, and an mmcv ``FPN`` neck under ``neck.``. This module maps those
two parts onto ``BackboneWithFPN`` and loads a mapped state dict strictly; the heads are mapped
by ``repvit.segmentation.official`` and ``repvit.detection.official``.

The two FPNs compute the same thing: mmcv's ``lateral_convs[i]`` (1x1) is torchvision's
``inner_blocks[i]``, ``fpn_convs[i]`` (3x3) is ``layer_blocks[i]``, both add the top-down path
by nearest-neighbour upsampling to the lateral's size, and both make Mask R-CNN's fifth level by
max-pooling the last output with kernel 1 and stride 2.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional

import torch
from torch import nn

from ..models.checkpoint import read_checkpoint
from ..models.state_dict import load_strict

_NECK = re.compile(r"^neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)$")
_NECK_TARGET = {"lateral_convs": "inner_blocks", "fpn_convs": "layer_blocks"}


def map_backbone_and_neck(key: str, prefix: str) -> Optional[str]:
    """Our name for an official ``backbone.*`` or ``neck.*`` key under ``prefix`` (the module that
    holds the ``BackboneWithFPN``, e.g. ``"backbone."``); None when the key is neither."""
    if key.startswith("backbone."):
        return f"{prefix}body.body.{key[len('backbone.'):]}"
    m = _NECK.match(key)
    if m:
        return f"{prefix}fpn.{_NECK_TARGET[m.group(1)]}.{m.group(2)}.0.{m.group(3)}"
    return None


def read_official_state(source) -> dict:
    """The state dict of an official downstream file (a path; mmcv keeps it under ``state_dict``),
    or ``source`` itself when it is already a mapping of tensors."""
    if isinstance(source, Mapping):
        return dict(source)
    state, _ = read_checkpoint(source)
    return state


def load_strictly(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy the mapped ``state`` into ``model`` through the project's one strict loader."""
    load_strict(model, state, source=source, fix="build the model the file was trained as (the variant of its "
                                                  "name, its number of classes, the default head widths)")
