"""Model size figures: parameter counts and multiply-accumulates (MACs).

MACs follow fvcore's convention, which the paper's figures use: every Conv2d and Linear
counts one multiply-add per weight use, the global average pool one per input element;
bias, activations, the SE's mean and elementwise ops are free.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, img_size: Union[int, tuple[int, int]] = 224, in_chans: int = 3) -> int:
    """MACs for one image at ``img_size`` (a side, or ``(height, width)``), counted with forward hooks
    during one forward pass."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal total
        total += out[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal total
        total += out[0].numel() * m.in_features

    def pool_hook(_m, inp, _out):
        nonlocal total
        total += inp[0][0].numel()

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            handles.append(m.register_forward_hook(pool_hook))
    was_training = model.training
    try:
        model.eval()
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
        model(torch.zeros(1, in_chans, height, width, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
