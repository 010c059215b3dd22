"""``build_skeleton``: a registered model with random weights, in training or fused (deploy) form.

It sits below checkpoint reading (which builds skeletons to tell which variant a file holds)
and below ``create_model`` (which builds one and loads weights into it)."""
from __future__ import annotations

import torch
from torch import nn

from .model import MODEL_BUILDERS, RepViT, RepViTFeatures, get_variant
from .reparam import reparameterize


def build_skeleton(name: str, *, fused: bool = False, features_only: bool = False, **kwargs) -> nn.Module:
    """Random-weight model; with ``fused=True`` the inference topology is built directly.

    The fused form is obtained by fusing a meta-device model, so it is by construction the
    topology ``reparameterize`` produces and fused state dicts load into it by name.
    """
    if name in MODEL_BUILDERS:
        builder = lambda: MODEL_BUILDERS[name](**kwargs)  # noqa: E731
    else:
        variant = get_variant(name)
        cls = RepViTFeatures if features_only else RepViT
        builder = lambda: cls(variant, **kwargs)  # noqa: E731
    if not fused:
        return builder()
    with torch.device("meta"):
        model = reparameterize(builder().eval(), inplace=True)
    model.to_empty(device="cpu")
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.reset_parameters()
    return model
