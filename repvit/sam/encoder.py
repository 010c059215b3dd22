"""RepViT-SAM's image encoder: RepViT-M2.3 at stride 16 plus SAM's 256-channel neck.

Layout of the official ``repvit_sam.pt`` (``image_encoder.`` prefix there): ``features.*`` is the
classification network's flat block list with its last downsample at stride 1, so the 1024x1024
input ends at 64x64 with 640 channels; ``neck`` is 1x1 conv 640->256 (no bias), LayerNorm2d,
3x3 conv 256->256 (no bias), LayerNorm2d, as in SAM's ViT encoders.
"""
from __future__ import annotations

import os
from typing import Mapping, Union

import torch
from torch import nn

from ..models.checkpoint import read_checkpoint
from ..models.model import get_variant
from ..models.state_dict import load_strict
from ..models.variants import Variant

SAM_IMAGE_SIZE = 1024
SAM_EMBED_DIM = 256


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of an NCHW map (SAM's neck norm; eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in float32 so half-precision inputs keep SAM's numbers.
        mean = x.float().mean(1, keepdim=True)
        var = (x.float() - mean).pow(2).mean(1, keepdim=True)
        y = ((x.float() - mean) * torch.rsqrt(var + self.eps)).to(x.dtype)
        return y * self.weight[:, None, None] + self.bias[:, None, None]


def sam_neck(in_channels: int, out_channels: int = SAM_EMBED_DIM) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, bias=False),
        LayerNorm2d(out_channels),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        LayerNorm2d(out_channels),
    )


class RepViTSamEncoder(nn.Module):
    """``(B, 3, img_size, img_size)`` normalised image -> ``(B, 256, img_size/16, img_size/16)``.

    ``last_stride=1`` is RepViT-SAM's choice (the official code hard-wires it by testing for the
    320-channel input); 2 gives a stride-32 encoder whose embedding would not fit SAM's decoder.
    ``img_size`` is what ``SamPredictor`` resizes the longest side to.
    """

    def __init__(self, variant: Union[str, Variant] = "repvit_m2_3", *, img_size: int = SAM_IMAGE_SIZE,
                 out_chans: int = SAM_EMBED_DIM, last_stride: int = 1, drop_path_rate: float = 0.0):
        super().__init__()
        from ..models.model import RepViT
        body = RepViT(variant, num_classes=0, last_stride=last_stride, drop_path_rate=drop_path_rate)
        self.variant = get_variant(variant) if isinstance(variant, str) else variant
        self.features = body.features
        self.stride = body.feature_info[-1]["reduction"]
        self.img_size = img_size
        self.last_stride = last_stride
        self.fused = False
        self.neck = sam_neck(body.num_features, out_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"the SAM image encoder takes a (B, 3, H, W) batch, got shape {list(x.shape)}")
        for block in self.features:
            x = block(x)
        return self.neck(x)

    def load_backbone(self, source: Union[str, os.PathLike, Mapping[str, torch.Tensor]]) -> None:
        """Initialise ``features`` from a RepViT classification checkpoint (file or state dict).

        The classifier and anything outside ``features`` are ignored; every backbone tensor must
        be present with the right shape (the last downsample's weights do not depend on its stride).
        """
        if isinstance(source, Mapping):
            state, label = dict(source), "state dict"
        else:
            state, _ = read_checkpoint(source)
            label = f"checkpoint {str(source)!r}"
        state = {k: v for k, v in state.items() if k.startswith("features.")}
        # the neck is SAM's, not the classifier's: it keeps its own values (the classifier is dropped above)
        load_strict(self, state, source=label, what=f"the {self.variant.name} encoder of RepViT-SAM", ignore="neck.",
                    fix=f"start from a {self.variant.name} classification checkpoint (e.g. create_model("
                        f"'{self.variant.name}', pretrained=True)), or build the encoder with the variant the "
                        "checkpoint was trained as")
