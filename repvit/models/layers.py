"""RepViT building blocks and the rule that folds each one into its inference form.

Module and attribute names follow the official RepViT release (arXiv 2307.09283) so that
released state dicts load by name: ``ConvBN`` holds ``c``/``bn``, the re-parameterizable
depthwise unit holds ``conv``/``conv1``/``bn``, the classifier holds ``classifier`` and
``classifier_dist``.

Every fusable unit has a ``fuse()`` that returns its replacement. Folding is computed in
float32 and cast back, and the new parameters keep the device, dtype and memory format of
the ones they replace, so fusing a half-precision or channels_last model stays faithful.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import StochasticDepth


# --------------------------------------------------------------------------- fusion math
def bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of an eval-mode BatchNorm, in float32."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(f"{bn} has no running statistics (track_running_stats=False) and cannot be folded")
    std = (bn.running_var.float() + bn.eps).sqrt()
    gamma = bn.weight.float() if bn.weight is not None else torch.ones_like(std)
    beta = bn.bias.float() if bn.bias is not None else torch.zeros_like(std)
    scale = gamma / std
    return scale, beta - bn.running_mean.float() * scale


def _param_like(template: torch.Tensor, value: torch.Tensor) -> nn.Parameter:
    """A parameter holding ``value`` with ``template``'s dtype, device and strides."""
    out = torch.empty_like(template, memory_format=torch.preserve_format)
    with torch.no_grad():
        out.copy_(value.to(device=template.device, dtype=template.dtype))
    return nn.Parameter(out, requires_grad=template.requires_grad)


def conv_with_params(template: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    """A biased Conv2d configured like ``template`` carrying the given float32 weight and bias."""
    conv = nn.Conv2d(
        template.in_channels, template.out_channels, template.kernel_size,
        stride=template.stride, padding=template.padding, dilation=template.dilation,
        groups=template.groups, bias=True, padding_mode=template.padding_mode, device="meta",
    )
    conv.weight = _param_like(template.weight, weight)
    bias_template = template.bias if template.bias is not None else template.weight.new_empty(template.out_channels)
    conv.bias = _param_like(bias_template, bias)
    return conv


def fold_bn_into_conv(conv: nn.Conv2d, bn: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (weight, bias) of ``bn(conv(x))``."""
    scale, shift = bn_scale_shift(bn)
    weight = conv.weight.float() * scale.view(-1, 1, 1, 1)
    bias = shift if conv.bias is None else shift + conv.bias.float() * scale
    return weight, bias


def _pad_to_kernel(weight: torch.Tensor, kernel_size: tuple[int, int]) -> torch.Tensor:
    """Zero-pad a centred 1x1 kernel to ``kernel_size`` (odd), so branches can be summed."""
    pad_h, pad_w = (kernel_size[0] - weight.shape[-2]) // 2, (kernel_size[1] - weight.shape[-1]) // 2
    return F.pad(weight, [pad_w, pad_w, pad_h, pad_h])


# --------------------------------------------------------------------------- basic units
class ConvBN(nn.Sequential):
    """Bias-free convolution followed by BatchNorm; folds into one biased convolution."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *, stride: int = 1,
                 groups: int = 1, bn_weight_init: float = 1.0):
        super().__init__()
        _check_odd_kernel(kernel_size)
        self.c = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                           groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        return conv_with_params(self.c, *fold_bn_into_conv(self.c, self.bn))


class NormLinear(nn.Sequential):
    """BatchNorm1d followed by Linear (the official classifier head); folds into one Linear."""

    def __init__(self, in_features: int, out_features: int, *, init_std: float = 0.02):
        super().__init__()
        self.bn = nn.BatchNorm1d(in_features)
        self.l = nn.Linear(in_features, out_features)
        nn.init.trunc_normal_(self.l.weight, std=init_std)
        nn.init.zeros_(self.l.bias)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 (weight, bias) of ``l(bn(x))``."""
        scale, shift = bn_scale_shift(self.bn)
        weight = self.l.weight.float()
        bias = weight @ shift + (self.l.bias.float() if self.l.bias is not None else 0.0)
        return weight * scale.view(1, -1), bias

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        return linear_with_params(self.l, *self.folded())


def linear_with_params(template: nn.Linear, weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    linear = nn.Linear(template.in_features, template.out_features, bias=True, device="meta")
    linear.weight = _param_like(template.weight, weight)
    bias_template = template.bias if template.bias is not None else template.weight.new_empty(template.out_features)
    linear.bias = _param_like(bias_template, bias)
    return linear


def _check_odd_kernel(kernel_size: int) -> None:
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer (got {kernel_size!r}); "
                         "even kernels cannot keep the feature map centred under 'same' padding")


# --------------------------------------------------------------------------- token mixer
class RepDWConv(nn.Module):
    """Re-parameterizable depthwise unit: ``BN(DWConvBN_kxk(x) + DWConv_1x1(x) + x)``.

    The three branches are linear in ``x``, so at inference they sum into one kxk depthwise
    kernel. ``legacy=True`` is the first public release's form (BN on the 1x1 branch, no outer
    BN), kept so older checkpoints such as EdgeSAM's encoder still load.
    """

    __constants__ = ["legacy"]  # lets TorchScript drop the branch for the absent outer BN

    def __init__(self, channels: int, kernel_size: int = 3, *, legacy: bool = False):
        super().__init__()
        self.legacy = legacy
        self.conv = ConvBN(channels, channels, kernel_size, groups=channels)
        if legacy:
            self.conv1 = ConvBN(channels, channels, 1, groups=channels)
        else:
            self.conv1 = nn.Conv2d(channels, channels, 1, groups=channels, bias=True)
            self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x) + self.conv1(x) + x
        return y if self.legacy else self.bn(y)

    @torch.no_grad()
    def fuse(self) -> nn.Conv2d:
        kxk = self.conv.c
        weight, bias = fold_bn_into_conv(kxk, self.conv.bn)
        if self.legacy:
            w1, b1 = fold_bn_into_conv(self.conv1.c, self.conv1.bn)
        else:
            w1, b1 = self.conv1.weight.float(), self.conv1.bias.float()
        identity = torch.ones_like(w1)  # depthwise: one input channel per output channel
        weight = weight + _pad_to_kernel(w1 + identity, kxk.kernel_size)
        bias = bias + b1
        if not self.legacy:
            scale, shift = bn_scale_shift(self.bn)
            weight, bias = weight * scale.view(-1, 1, 1, 1), bias * scale + shift
        return conv_with_params(kxk, weight, bias)


class SqueezeExcite(nn.Module):
    """Channel gate: mean-pool, 1x1 reduce, ReLU, 1x1 expand, sigmoid."""

    def __init__(self, channels: int, rd_ratio: float = 0.25, divisor: int = 8):
        super().__init__()
        reduced = max(divisor, int(channels * rd_ratio + divisor / 2) // divisor * divisor)
        self.fc1 = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(reduced, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


# --------------------------------------------------------------------------- channel mixer
class Residual(nn.Module):
    """``x + m(x)`` with optional stochastic depth on the branch."""

    def __init__(self, m: nn.Module, drop_path: float = 0.0):
        super().__init__()
        self.m = m
        self.drop_path = StochasticDepth(drop_path, "row") if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.m(x))


def channel_mixer(channels: int, *, expansion: int = 2, act_layer: type[nn.Module] = nn.GELU,
                  drop_path: float = 0.0) -> Residual:
    """The 1x1 FFN with a residual; the last BN starts at zero so each block starts as identity."""
    hidden = channels * expansion
    return Residual(nn.Sequential(
        ConvBN(channels, hidden, 1),
        act_layer(),
        ConvBN(hidden, channels, 1, bn_weight_init=0.0),
    ), drop_path=drop_path)


# --------------------------------------------------------------------------- blocks
class RepViTBlock(nn.Module):
    """Stride-1 block: token mixer (RepDWConv, then SE or nothing) and a residual channel mixer."""

    def __init__(self, channels: int, *, use_se: bool, kernel_size: int = 3, legacy: bool = False,
                 expansion: int = 2, act_layer: type[nn.Module] = nn.GELU, drop_path: float = 0.0):
        super().__init__()
        self.token_mixer = nn.Sequential(
            RepDWConv(channels, kernel_size, legacy=legacy),
            SqueezeExcite(channels) if use_se else nn.Identity(),
        )
        self.channel_mixer = channel_mixer(channels, expansion=expansion, act_layer=act_layer, drop_path=drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


class DownsampleBlock(nn.Module):
    """Stride-2 block: depthwise kxk s2 then 1x1 to the new width (no residual), then the FFN.

    ``stride=1`` keeps the resolution (RepViT-SAM's encoder does this for its last stage). Index 1 of the token mixer is an empty slot where the official code allows an SE, kept
    so the 1x1 projection sits at ``token_mixer.2`` as in released checkpoints.
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 3, expansion: int = 2,
                 act_layer: type[nn.Module] = nn.GELU, drop_path: float = 0.0, stride: int = 2):
        super().__init__()
        self.token_mixer = nn.Sequential(
            ConvBN(in_channels, in_channels, kernel_size, stride=stride, groups=in_channels),
            nn.Identity(),
            ConvBN(in_channels, out_channels, 1),
        )
        self.channel_mixer = channel_mixer(out_channels, expansion=expansion, act_layer=act_layer,
                                           drop_path=drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.channel_mixer(self.token_mixer(x))


def stem(in_channels: int, out_channels: int, *, act_layer: type[nn.Module] = nn.GELU) -> nn.Sequential:
    """Early convolutions: two 3x3 stride-2 ConvBNs (to half, then full width), stride 4 overall."""
    return nn.Sequential(
        ConvBN(in_channels, out_channels // 2, 3, stride=2),
        act_layer(),
        ConvBN(out_channels // 2, out_channels, 3, stride=2),
    )


# --------------------------------------------------------------------------- classifier
class Classifier(nn.Module):
    """BN+Linear head, plus an identical distillation head when ``distillation``.

    Training returns ``(cls, dist)`` so each head gets its own loss; evaluation returns their
    mean, which is also what the fused single Linear computes. Subclasses change the kind of
    head through ``make_head`` / ``fold_head`` and keep this contract.
    """

    __constants__ = ["distillation"]  # lets TorchScript drop the branch for the absent head

    def __init__(self, in_features: int, num_classes: int, *, distillation: bool = False):
        super().__init__()
        self.distillation = distillation
        self.classifier = self.make_head(in_features, num_classes)
        if distillation:
            self.classifier_dist = self.make_head(in_features, num_classes)

    @staticmethod
    def make_head(in_features: int, num_classes: int) -> nn.Module:
        return NormLinear(in_features, num_classes)

    @staticmethod
    def fold_head(head: nn.Module) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
        """The head as ``(linear whose dtype/device to keep, float32 weight, float32 bias)``."""
        return (head.l, *head.folded())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(x)
        if self.distillation:
            logits_dist = self.classifier_dist(x)
            if self.training and not torch.jit.is_scripting():
                return logits, logits_dist
            return (logits + logits_dist) / 2
        return logits

    @torch.no_grad()
    def fuse(self) -> nn.Linear:
        template, weight, bias = self.fold_head(self.classifier)
        if self.distillation:
            _, weight_dist, bias_dist = self.fold_head(self.classifier_dist)
            weight, bias = (weight + weight_dist) / 2, (bias + bias_dist) / 2
        return linear_with_params(template, weight, bias)


def is_fusable(module: nn.Module) -> bool:
    return callable(getattr(module, "fuse", None))

