"""Helpers for checking fusion honestly (shared by tests, the demo and benchmarks)."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters.

    Freshly built BNs (mean 0, var 1, weight 1 or 0, bias 0) make a broken fusion look
    correct; random ones make each term of the folding matter.
    """
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
            if m.weight is not None:
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return model


def random_eval_model(name: str, *, seed: int = 0, bn_seed: int = 0, **kwargs) -> nn.Module:
    """``create_model(name, **kwargs)`` with weights from ``seed`` (reseeds torch's global RNG)
    and randomized BatchNorm statistics from ``bn_seed``, in eval mode."""
    from .models.factory import create_model
    torch.manual_seed(seed)
    return randomize_batchnorm(create_model(name, **kwargs), seed=bn_seed).eval()


def assert_torchscript_matches(model: nn.Module, x: torch.Tensor, tol: float = 1e-5) -> None:
    """TorchScript of ``model`` and of its fused form give the eager outputs on ``x``."""
    from .models.reparam import reparameterize
    for m in (model, reparameterize(model)):
        scripted = torch.jit.script(m)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), m(x), rtol=tol, atol=tol)
