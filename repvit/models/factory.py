"""``create_model``: one entry point for every registered model, fused or not, with weights or not."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from torch import nn

from .checkpoint import CheckpointError, describe_state_dict, load_state_dict, matching_variants, read_checkpoint
from .class_names import imagenet_class_ids, imagenet_class_names
from .model import MODEL_BUILDERS
from .pretrained import fetch
from .releases import find_release, parse_spec
from .reparam import reparameterize
from .skeleton import build_skeleton
from .variants import VARIANTS

_UNSET = object()


def create_model(name: Optional[str] = None, *, pretrained: Union[bool, str] = False, num_classes=_UNSET,
                 distillation=_UNSET, checkpoint: Union[str, os.PathLike, None] = None, fused=_UNSET,
                 features_only: bool = False, out_indices: Sequence[int] = (0, 1, 2, 3), use_ema: bool = False,
                 progress: bool = True, **kwargs) -> nn.Module:
    """Build a registered model, optionally with weights.

    ``pretrained=True`` loads the variant's best official ImageNet-1k file; a tag
    (``"dist_300e"``, ``"dist_450e"``) picks one (see ``repvit.models.releases``). The file is
    downloaded once into the torch hub cache and verified on every load (see
    ``repvit.models.pretrained`` for offline use); the model then carries the 1000 ImageNet
    class names. With a ``num_classes`` other than the file's, the backbone is loaded and the
    classifier starts from random weights (fine-tuning).

    ``checkpoint=PATH`` loads any accepted file. Without explicit ``num_classes`` /
    ``distillation`` / ``fused`` the weights decide them (defaults otherwise: 1000 classes, no
    distillation head, unfused); ``name`` may be omitted when the file records its variant.
    ``fused=True`` with unfused weights loads them, then fuses. A model with weights is
    returned in eval mode, ready for inference or ``reparameterize``.
    """
    release = None
    if pretrained is not False and pretrained is not None:
        if not isinstance(pretrained, (bool, str)):
            raise TypeError(f"pretrained must be True, False or a tag such as 'dist_300e', got {pretrained!r}")
        if checkpoint is not None:
            raise ValueError("pass pretrained= (official weights) or checkpoint= (a file), not both")
        if name is None:
            raise ValueError("pretrained= needs a model name, e.g. create_model('repvit_m1_1', pretrained=True)")
        release = find_release(name, None if pretrained is True else pretrained)
        checkpoint = fetch(release, progress=progress)
    state, meta = (None, {})
    new_head = fuse_after_loading = False
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
        if release is not None:
            # Official weights under another head: keep the backbone, start the head afresh.
            new_head = num_classes is not _UNSET and num_classes != found["num_classes"]
            if new_head or distillation is False:
                state = {k: v for k, v in state.items() if not k.startswith("classifier.classifier_dist.")}
        num_classes = found["num_classes"] if num_classes is _UNSET else num_classes
        distillation = (found["distillation"] and not new_head) if distillation is _UNSET else distillation
        fuse_after_loading = fused is True and not found["fused"]
        fused = found["fused"] if fused is _UNSET or fuse_after_loading else fused
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
    if state is not None:
        source = f"official {release.spec} ({checkpoint})" if release else f"checkpoint {str(checkpoint)!r}"
        load_state_dict(model, state, ignore_classifier=new_head, source=source)
        model.eval()
        if fuse_after_loading:
            model = reparameterize(model, inplace=True)
    if meta.get("class_names") and not new_head:
        model.class_names = list(meta["class_names"])
    elif release is not None and not new_head and not features_only and release.num_classes == 1000:
        model.class_names = list(imagenet_class_names())
        model.class_ids = list(imagenet_class_ids())   # matches ImageNet-style folders (n01440764, ...)
    if release is not None:
        model.pretrained_tag = release.spec
    return model


def create_model_from(*, checkpoint: Union[str, os.PathLike, None] = None, pretrained: Optional[str] = None,
                      use_ema: bool = False, **kwargs) -> nn.Module:
    """The model of a file (``checkpoint``) or of official weights named ``"NAME[:TAG]"`` (``pretrained``):
    what the command line's ``--checkpoint`` / ``--pretrained`` load."""
    if (checkpoint is None) == (pretrained is None):
        raise ValueError("name the weights with either a checkpoint file or pretrained='NAME[:TAG]' "
                         "(e.g. 'repvit_m1_1' or 'repvit_m1_1:dist_300e')")
    if pretrained is not None:
        name, tag = parse_spec(pretrained)
        return create_model(name, pretrained=tag or True, **kwargs)
    return create_model(checkpoint=checkpoint, use_ema=use_ema, **kwargs)


def _infer_variant(state, checkpoint) -> str:
    matches = matching_variants(state)
    if not matches:
        raise CheckpointError(f"cannot tell which variant {str(checkpoint)!r} holds (it matches none); "
                              "pass the model name explicitly")
    return matches[0]
