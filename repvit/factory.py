"""``create_model``: one entry point for every registered model, fused or not, with weights or not."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .checkpoint import CheckpointError, describe_state_dict, load_state_dict, read_checkpoint
from .model import MODEL_BUILDERS, RepViT, RepViTFeatures, get_variant
from .reparam import reparameterize
from .variants import VARIANTS

_UNSET = object()


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


def create_model(name: Optional[str] = None, *, num_classes=_UNSET, distillation=_UNSET,
                 checkpoint: Union[str, os.PathLike, None] = None, fused=_UNSET, features_only: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2, 3), use_ema: bool = False, pretrained: bool = False,
                 **kwargs) -> nn.Module:
    """Build a registered model, optionally loading ``checkpoint`` (any accepted format).

    Without explicit ``num_classes``/``distillation``/``fused``, a given checkpoint decides them
    (defaults otherwise: 1000 classes, no distillation head, unfused); ``name`` may be omitted
    when the checkpoint records its variant. Returns the model in eval mode when weights were
    loaded, so it is ready for inference or ``reparameterize``.
    """
    if pretrained:
        raise ValueError("pretrained=True would download weights, which this library never does; "
                         "download the official file yourself and pass checkpoint=PATH")
    state, meta = (None, {})
    if checkpoint is not None:
        state, meta = read_checkpoint(checkpoint, use_ema=use_ema)
        found = {**describe_state_dict(state), **{k: meta[k] for k in ("num_classes", "distillation", "fused")
                                                  if k in meta}}
        recorded = meta.get("variant")
        if name is None:
            name = recorded or _infer_variant(state, checkpoint)
        elif recorded and recorded != name and recorded in list(VARIANTS) + list(MODEL_BUILDERS):
            raise CheckpointError(f"checkpoint {str(checkpoint)!r} was saved from {recorded}, not {name}: "
                                  f"use create_model({recorded!r}, checkpoint=...) or omit the name")
        num_classes = found["num_classes"] if num_classes is _UNSET else num_classes
        distillation = found["distillation"] if distillation is _UNSET else distillation
        fused = found["fused"] if fused is _UNSET else fused
    if name is None:
        raise ValueError("create_model needs a model name (see repvit.list_models()) or a checkpoint that records one")
    options = dict(kwargs)
    if features_only:
        options["out_indices"] = out_indices
    else:
        options["num_classes"] = 1000 if num_classes is _UNSET else num_classes
        options["distillation"] = False if distillation is _UNSET else distillation
    model = build_skeleton(name, fused=bool(fused) if fused is not _UNSET else False,
                           features_only=features_only, **options)
    if meta.get("preprocessing") and hasattr(model, "preprocessing"):
        model.preprocessing = {**model.preprocessing, **meta["preprocessing"]}
    if meta.get("class_names"):
        model.class_names = list(meta["class_names"])
    if state is not None:
        load_state_dict(model, state, source=f"checkpoint {str(checkpoint)!r}")
        model.eval()
    return model


def _infer_variant(state, checkpoint) -> str:
    from .checkpoint import matching_variants
    matches = matching_variants(state)
    if not matches:
        raise CheckpointError(f"cannot tell which variant {str(checkpoint)!r} holds (it matches none); "
                              "pass the model name explicitly")
    return matches[0]
