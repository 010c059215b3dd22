"""EdgeTAM's image-encoder trunk: RepViT-M1 (the first release's layout) with timm's tap points.

EdgeTAM builds its trunk with timm's ``features_only`` RepViT-M1, whose stage outputs are not the
ones this project's ``features_only`` returns: timm keeps the last block of each resolution inside
the next stage's downsampling module, so its outputs at strides 4, 8 and 16 are taken one block
before the end of those stages, while the stride-32 output is the network's last block. The trunk
returns those four maps, highest resolution first, and announces ``channel_list`` (widths, lowest
resolution first) as ``sam2``'s ``ImageEncoder`` checks against its FPN neck.

In the official ``edgetam.pt`` the trunk's tensors carry timm's names under
``image_encoder.trunk.body.`` (``stem.*``, ``stages_<i>.*``); here they sit in the official flat
RepViT layout under ``image_encoder.trunk.features.``. ``official_to_ours`` renames the first into
the second (the renaming the project already uses for timm checkpoints).
"""
from __future__ import annotations

from typing import Mapping, Union

import torch
from torch import nn

from ..models.checkpoint import to_official_layout
from ..models.model import RepViT, get_variant
from ..models.variants import Variant

TRUNK_VARIANT = "repvit_m1"
OFFICIAL_TRUNK_PREFIX = "image_encoder.trunk.body."
TRUNK_PREFIX = "image_encoder.trunk."


def timm_tap_indices(variant: Variant) -> list[int]:
    """Indices into the flat ``features`` list (0 is the stem) after which timm's stages end.

    Stages 0 to 2 end one block before their last block (that block is the ``pre_block`` of the
    next stage's downsampling module in timm); the last stage ends at its last block.
    """
    taps, index = [], 0
    for stage, pattern in enumerate(variant.stages):
        index += len(pattern)
        last_stage = stage == len(variant.stages) - 1
        taps.append(index if last_stage else index - 1)
    return taps


class RepViTTrunk(nn.Module):
    """``(B, 3, H, W)`` normalised image -> four maps at strides 4, 8, 16, 32 (timm's tap points)."""

    def __init__(self, variant: Union[str, Variant] = TRUNK_VARIANT):
        super().__init__()
        self.variant = get_variant(variant) if isinstance(variant, str) else variant
        body = RepViT(self.variant, num_classes=0)
        self.features = body.features
        self.taps = timm_tap_indices(self.variant)
        # sam2's ImageEncoder compares this with FpnNeck.backbone_channel_list: lowest resolution first
        self.channel_list = list(reversed(self.variant.widths))
        self.fused = False

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"the EdgeTAM trunk takes a (B, 3, H, W) batch, got shape {list(x.shape)}")
        outputs = []
        for index, block in enumerate(self.features):
            x = block(x)
            if index in self.taps:
                outputs.append(x)
        return outputs


def official_to_ours(state: Mapping[str, torch.Tensor]) -> tuple[dict, dict]:
    """Rename the trunk's timm keys of an official EdgeTAM state dict to this project's layout.

    Returns ``(state, renamed)``: the renamed state dict (other keys untouched) and, for every
    renamed trunk key, ``our name -> the file's name`` (error messages quote the file's names).
    A state dict already in our layout passes through unchanged.
    """
    trunk = {k[len(OFFICIAL_TRUNK_PREFIX):]: k for k in state if k.startswith(OFFICIAL_TRUNK_PREFIX)}
    if not trunk:
        return dict(state), {}
    converted = to_official_layout({short: short for short in trunk})   # key -> key, to read the renaming
    renamed = {TRUNK_PREFIX + new: trunk[old] for new, old in converted.items()}
    out = {k: v for k, v in state.items() if not k.startswith(OFFICIAL_TRUNK_PREFIX)}
    out.update({ours: state[theirs] for ours, theirs in renamed.items()})
    return out, renamed
