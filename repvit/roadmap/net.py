"""``RoadmapNet``: builds any ``NetSpec`` with RepViT's layout and conventions.

The layout is RepViT's official one (``features[0]`` the stem, ``features[1:]`` the blocks,
``classifier`` the head), so a spec that has become RepViT-M0.9 (step 8) produces a network
whose state dict loads into ``RepViT('repvit_m0_9')`` unchanged. A MobileNetV3 head (steps
0-4) adds ``conv_head`` (1x1 conv + act, part of ``forward_features``) and ``head_pre``
(hidden Linear + act, part of ``forward_head``); both are empty modules otherwise.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.utils.checkpoint
from torch import nn

from ..models.layers import Classifier, ConvBN, DownsampleBlock, RepViTBlock, SqueezeExcite, stem
from ..models.model import FeatureInfo, TimmHeadConventions, default_preprocessing
from .blocks import InvertedResidual, LinearClassifier, SeparatedBlock, act_layer, make_act
from .spec import EARLY_CONV_WIDTHS, BlockSpec, NetSpec


def build_block(b: BlockSpec, drop_path: float = 0.0) -> nn.Module:
    if b.kind == "ir":
        return InvertedResidual(b.in_ch, b.out_ch, kernel_size=b.kernel, hidden=b.hidden, stride=b.stride,
                                use_se=b.se, act=b.act, drop_path=drop_path)
    if b.kind == "down":
        if b.hidden % b.out_ch:
            raise ValueError(f"a downsampling unit needs an integer FFN ratio, got hidden {b.hidden} for {b.out_ch}")
        block = DownsampleBlock(b.in_ch, b.out_ch, kernel_size=b.kernel, expansion=b.hidden // b.out_ch,
                                act_layer=act_layer(b.act), drop_path=drop_path)
        if b.se:  # the slot the official code reserves for an SE after the stride-2 depthwise conv
            block.token_mixer[1] = SqueezeExcite(b.in_ch)
        return block
    if b.kind == "mixer":
        if b.stride == 1 and b.in_ch == b.out_ch and b.hidden % b.in_ch == 0:
            return RepViTBlock(b.in_ch, use_se=b.se, kernel_size=b.kernel, expansion=b.hidden // b.in_ch,
                               act_layer=act_layer(b.act), drop_path=drop_path)
        return SeparatedBlock(b.in_ch, b.out_ch, kernel_size=b.kernel, hidden=b.hidden, stride=b.stride,
                              use_se=b.se, act=b.act, drop_path=drop_path)
    raise ValueError(f"unknown block kind {b.kind!r}")


class RoadmapNet(TimmHeadConventions, nn.Module):
    """One network of the RepViT roadmap (see ``repvit.roadmap``), with timm-style conventions."""

    def __init__(self, spec: NetSpec, *, name: str = "roadmap", num_classes: int = 1000, distillation: bool = False,
                 in_chans: int = 3, drop_rate: Optional[float] = None, drop_path_rate: float = 0.0):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int (0 removes the classifier), got {num_classes!r}")
        self.spec, self.model_name, self.in_chans = spec, name, in_chans
        self.grad_checkpointing = False
        self.fused = False
        self.preprocessing = default_preprocessing()

        if spec.stem == "early":
            if spec.stem_width != EARLY_CONV_WIDTHS[1]:
                raise ValueError(f"the early-convolution stem is {EARLY_CONV_WIDTHS} wide, spec asks {spec.stem_width}")
            first = stem(in_chans, spec.stem_width)
        else:
            first = nn.Sequential(ConvBN(in_chans, spec.stem_width, 3, stride=2), make_act(spec.act))
        layers = [first]
        for i, b in enumerate(spec.blocks):
            layers.append(build_block(b, drop_path_rate * i / max(len(spec.blocks) - 1, 1)))
        self.features = nn.ModuleList(layers)
        self.feature_info = _feature_info(spec)

        mbv3_head = spec.head == "mbv3"
        last_conv, hidden = spec.head_widths
        self.conv_head = (nn.Sequential(ConvBN(spec.out_width, last_conv, 1), make_act(spec.act))
                          if mbv3_head else nn.Identity())
        self.num_features = last_conv if mbv3_head else spec.out_width
        self.head_hidden_size = hidden if mbv3_head else self.num_features
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_pre = nn.Sequential(nn.Linear(last_conv, hidden), make_act(spec.act)) if mbv3_head else nn.Identity()
        # MobileNetV3's classifier has dropout 0.2 before its last Linear; RepViT has none by default.
        self.drop_rate = (0.2 if mbv3_head else 0.0) if drop_rate is None else drop_rate
        self.head_drop = nn.Dropout(self.drop_rate)
        self.num_classes, self.distillation = num_classes, distillation
        self.classifier = self._make_classifier(num_classes, distillation)

    def _make_classifier(self, num_classes: int, distillation: bool) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        if self.spec.head == "mbv3":
            return LinearClassifier(self.head_hidden_size, num_classes, distillation=distillation)
        return Classifier(self.head_hidden_size, num_classes, distillation=distillation)

    def __repr__(self) -> str:  # the name first: a roadmap step is easier to recognise by it
        return f"{self.model_name}: {super().__repr__()}"

    @torch.jit.unused
    def _run_checkpointed(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.features:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"{self.model_name} expects a 4-D NCHW image batch with {self.in_chans} channels, "
                             f"got shape {list(x.shape)}")
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            x = self._run_checkpointed(x)
        else:
            for block in self.features:
                x = block(x)
        return self.conv_head(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.head_pre(self.global_pool(x).flatten(1)))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _feature_info(spec: NetSpec) -> FeatureInfo:
    """Per stage (strides 4..32): the last block running at that resolution."""
    info, last_at = FeatureInfo(), {}
    stride = 4 if spec.stem == "early" else 2
    for index, b in enumerate(spec.blocks, start=1):
        stride *= b.stride
        last_at[stride] = (index, b.out_ch)
    for stage, reduction in enumerate((4, 8, 16, 32)):
        if reduction in last_at:
            index, width = last_at[reduction]
            info.append({"num_chs": width, "reduction": reduction, "module": f"features.{index}", "index": index,
                         "stage": stage})
    return info
