"""``BackboneWithFPN``: a ``RepViTBackbone`` followed by torchvision's feature pyramid network.

torchvision's own ``BackboneWithFPN`` picks outputs by child-module name, which cannot reach into
RepViT's flat block list; this is the same composition over our ordered-dict backbone. It states
``out_channels``, which is all torchvision's detectors ask of a backbone.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, FeaturePyramidNetwork, LastLevelMaxPool, LastLevelP6P7

from .backbone import RepViTBackbone

EXTRA_LEVELS = {"none": None, "pool": "P6 by max-pooling P5 (Faster/Mask R-CNN)", "p6p7": "P6, P7 by strided convs "
                "on P5 (RetinaNet, FCOS)"}


def extra_block(kind: str, channels: int) -> Optional[ExtraFPNBlock]:
    if kind == "none":
        return None
    if kind == "pool":
        return LastLevelMaxPool()
    if kind == "p6p7":
        return LastLevelP6P7(channels, channels)
    raise ValueError(f"extra FPN levels must be one of {', '.join(EXTRA_LEVELS)}, got {kind!r}")


class BackboneWithFPN(nn.Module):
    def __init__(self, backbone: RepViTBackbone, *, out_channels: int = 256, extra: str = "pool"):
        super().__init__()
        self.body = backbone
        self.fpn = FeaturePyramidNetwork(backbone.channels, out_channels, extra_blocks=extra_block(extra, out_channels))
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.fpn(self.body(x))
