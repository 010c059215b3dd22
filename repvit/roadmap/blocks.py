"""The units the roadmap needs beyond ``repvit.layers``.

* ``InvertedResidual`` and ``SqueezeExciteV3``: MobileNetV3's block and its gate, for the
  baseline (step 0) and the side ablation that applies step 2 to the original block.
* ``SeparatedBlock``: the RepViT block of Figure 3(b) generalised to the shapes MobileNetV3
  blocks have (stride 2, a change of width, a hidden width that is not a multiple of the
  input), which steps 1-3 need before the macro design makes every block a plain
  ``RepViTBlock``. Its submodules carry RepViT's names, so where both fit the state dicts agree.
* ``LinearClassifier``: MobileNetV3's last Linear, with the same optional distillation head
  and fused form as ``repvit.layers.Classifier``.

Everything that holds a BatchNorm is a ``ConvBN`` or ``RepDWConv``, so the one tree walk in
``repvit.reparam`` fuses these blocks like the RepViT ones.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import StochasticDepth

from ..models.layers import Classifier, ConvBN, RepDWConv, Residual, SqueezeExcite

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "hardswish": nn.Hardswish}


def act_layer(name: str) -> type[nn.Module]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def make_act(name: str) -> nn.Module:
    return act_layer(name)()


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` without losing more than 10% (MobileNet's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SqueezeExciteV3(nn.Module):
    """MobileNetV3's squeeze-and-excitation: squeeze to ``make_divisible(c // 4)``, hard-sigmoid gate.

    It differs from RepViT's ``SqueezeExcite`` in the gate and in the rounding of the squeeze
    width (72 channels squeeze to 24 here, to 16 there), which the baseline's parameter
    count depends on.
    """

    def __init__(self, channels: int):
        super().__init__()
        reduced = make_divisible(channels // 4)
        self.fc1 = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class InvertedResidual(nn.Module):
    """MobileNetV3 block (Figure 3a): 1x1 expand, depthwise kxk, optional SE, 1x1 project.

    The expansion is skipped when ``hidden == in_channels`` (MobileNetV3-L's first block), and
    the residual exists only where shape allows (stride 1, same width).
    """

    __constants__ = ["use_residual"]

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, hidden: int, stride: int,
                 use_se: bool, act: str, drop_path: float = 0.0):
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        if hidden == in_channels:
            self.expand = nn.Identity()
        else:
            self.expand = nn.Sequential(ConvBN(in_channels, hidden, 1), make_act(act))
        self.dw = nn.Sequential(ConvBN(hidden, hidden, kernel_size, stride=stride, groups=hidden), make_act(act))
        self.se = SqueezeExciteV3(hidden) if use_se else nn.Identity()
        self.project = ConvBN(hidden, out_channels, 1)
        use_drop = drop_path > 0 and self.use_residual
        self.drop_path = StochasticDepth(drop_path, "row") if use_drop else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + self.drop_path(y) if self.use_residual else y


class SeparatedBlock(nn.Module):
    """Token mixer (depthwise kxk, then SE) followed by a channel mixer (1x1, act, 1x1).

    Stride 1: the depthwise conv is a re-parameterizable ``RepDWConv``. Stride 2: a plain
    depthwise ``ConvBN`` (an identity branch cannot exist across a stride), as in RepViT's own
    downsampling layer. The channel mixer has a residual only when stride 1 and width kept;
    its last BN then starts at zero, as in ``repvit.layers.channel_mixer``.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int, hidden: int, stride: int,
                 use_se: bool, act: str = "gelu", drop_path: float = 0.0):
        super().__init__()
        if stride == 1:
            dw: nn.Module = RepDWConv(in_channels, kernel_size)
        else:
            dw = ConvBN(in_channels, in_channels, kernel_size, stride=stride, groups=in_channels)
        self.token_mixer = nn.Sequential(dw, SqueezeExcite(in_channels) if use_se else nn.Identity())
        residual = stride == 1 and in_channels == out_channels
        ffn = nn.Sequential(
            ConvBN(in_channels, hidden, 1),
            make_act(act),
            ConvBN(hidden, out_channels, 1, bn_weight_init=0.0 if residual else 1.0),
        )
        self.channel_mixer = Residual(ffn, drop_path=drop_path) if residual else ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


class LinearClassifier(Classifier):
    """MobileNetV3's final Linear, plus an identical distillation head when ``distillation``;
    ``repvit.layers.Classifier``'s train/eval/fuse contract with a plain Linear per head."""

    @staticmethod
    def make_head(in_features: int, num_classes: int) -> nn.Module:
        return nn.Linear(in_features, num_classes)

    @staticmethod
    def fold_head(head: nn.Module) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
        return head, head.weight.float(), head.bias.float()
