"""Structural re-parameterization: turn a trained RepViT into its plain inference form.

One tree walk replaces every unit that has a ``fuse()`` (ConvBN, RepDWConv, NormLinear,
Classifier) with the module that computes the same eval-mode function. The result has no
BatchNorm, no multi-branch unit and one Linear head.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from .layers import is_fusable


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return the fused, eval-mode equivalent of ``model``.

    The input is left untouched unless ``inplace=True``. Fusing an already fused model is a
    no-op. A model in training mode is refused: its BatchNorms would use batch statistics, so
    no fused model could match what it computes.
    """
    in_training = sorted(name or "<root>" for name, m in model.named_modules()
                         if m.training and (is_fusable(m) or isinstance(m, nn.modules.batchnorm._BatchNorm)))
    if in_training:
        raise RuntimeError(
            "reparameterize() needs a model in eval mode (BatchNorm must use its running statistics); "
            f"call model.eval() first. Modules in training mode: {', '.join(in_training[:5])}"
            + (" ..." if len(in_training) > 5 else ""))
    if not inplace:
        model = copy.deepcopy(model)
    with torch.no_grad():
        if is_fusable(model):
            raise TypeError(f"cannot reparameterize a bare {type(model).__name__}; call its .fuse() instead")
        _fuse_children(model)
    for m in model.modules():
        if hasattr(m, "fused"):
            m.fused = True
    return model.eval()


def _fuse_children(parent: nn.Module) -> None:
    for name, child in parent.named_children():
        if is_fusable(child):
            setattr(parent, name, child.fuse())
        else:
            _fuse_children(child)


def is_fused(model: nn.Module) -> bool:
    """True when nothing in ``model`` is left to fold."""
    return not any(is_fusable(m) or isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
