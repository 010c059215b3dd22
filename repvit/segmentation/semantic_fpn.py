"""Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019), the head the
RepViT paper uses on ADE20K: an FPN with 256 channels on the four stage outputs, then per level
3x3 conv + BN + ReLU blocks with 2x upsampling until stride 4 (128 channels), summed, and a 1x1
classifier. Logits are returned at the input's resolution.

The head's conv + BN pairs are ``ConvBN`` units, so ``repvit.reparameterize`` folds them with the
backbone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..dense.backbone import RepViTBackbone
from ..dense.neck import BackboneWithFPN
from ..models.layers import ConvBN


class ScaleHead(nn.Module):
    """One pyramid level brought to stride 4: ``steps`` x (3x3 ConvBN + ReLU + 2x upsample), at least one conv."""

    def __init__(self, in_channels: int, channels: int, steps: int):
        super().__init__()
        self.blocks = nn.ModuleList(ConvBN(in_channels if i == 0 else channels, channels, kernel_size=3)
                                    for i in range(max(1, steps)))
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = F.relu(block(x))
            if i < self.steps:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return x


class SemanticFPN(nn.Module):
    def __init__(self, name: str = "repvit_m1_1", *, num_classes: int, taps: str = "segmentation",
                 fpn_channels: int = 256, head_channels: int = 128, dropout: float = 0.1, norm_eval: bool = False,
                 frozen_stages: int = -1, checkpoint=None, pretrained=None, drop_path_rate: float = 0.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be 1 or more, got {num_classes}")
        backbone = RepViTBackbone(name, taps=taps, out_stages=(0, 1, 2, 3), norm_eval=norm_eval,
                                  frozen_stages=frozen_stages, checkpoint=checkpoint, pretrained=pretrained,
                                  drop_path_rate=drop_path_rate)
        self.backbone = BackboneWithFPN(backbone, out_channels=fpn_channels, extra="none")
        self.heads = nn.ModuleList(ScaleHead(fpn_channels, head_channels, steps=level) for level in range(4))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, kernel_size=1)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = list(self.backbone(x).values())
        fused = self.heads[0](levels[0])
        for head, level in zip(self.heads[1:], levels[1:]):
            out = head(level)
            # Inputs whose side is not a multiple of 32 give levels that round differently.
            fused = fused + (out if out.shape[-2:] == fused.shape[-2:] else
                             F.interpolate(out, size=fused.shape[-2:], mode="bilinear", align_corners=False))
        logits = self.classifier(self.dropout(fused))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
