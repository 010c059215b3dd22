"""The official ADE20K Semantic FPN files (``repvit_m*_ade20k.pth`` of the RepViT release, saved by
mmsegmentation 0.30 from ``segmentation/configs/sem_fpn/fpn_repvit_*_ade20k_40k.py``) as
``SemanticFPN`` weights, exactly: every tensor has one place and the load is strict.

The official model is an ``EncoderDecoder`` of the RepViT backbone, mmcv's ``FPN`` neck (256
channels, four outputs) and mmseg's ``FPNHead`` (128 channels); the key map:

* ``backbone.*`` -> ``backbone.body.body.*`` and ``neck.*`` -> ``backbone.fpn.*`` (see
  ``repvit.dense.official``);
* ``decode_head.scale_heads.{level}.{2k}.conv|bn.*`` -> ``heads.{level}.blocks.{k}.c|bn.*``: the
  head of level ``level`` is a sequence of (conv + BN + ReLU, 2x upsampling) pairs, so its k-th
  conv sits at position 2k (the upsampling modules hold no weights); level 0 has one conv;
* ``decode_head.conv_seg.*`` -> ``classifier.*``.

Both heads compute the same function on inputs whose sides are multiples of 32 (what the official
evaluation feeds, see ``EvalResize``): mmseg upsamples x2 after each conv and resizes the sum's
terms to the stride-4 size, ours resizes the last step straight to that size.
"""
from __future__ import annotations

import re
from typing import Optional

from ..dense.official import load_strictly, map_backbone_and_neck, read_official_state
from ..models.checkpoint import CheckpointError
from ..models.releases import SEGMENTATION, Release, parse_spec, releases_for

_SCALE_HEAD = re.compile(r"^decode_head\.scale_heads\.(\d+)\.(\d+)\.(conv|bn)\.(.+)$")


def official_key(key: str) -> str:
    """The ``SemanticFPN`` name of an official ADE20K file's key; an unknown key is an error."""
    mapped = map_backbone_and_neck(key, "backbone.")
    if mapped is not None:
        return mapped
    m = _SCALE_HEAD.match(key)
    if m:
        level, position, part, rest = int(m.group(1)), int(m.group(2)), m.group(3), m.group(4)
        if position % 2:
            raise CheckpointError(f"{key}: position {position} of a scale head is an upsampling step, which holds "
                                  "no weights")
        return f"heads.{level}.blocks.{position // 2}.{'c' if part == 'conv' else 'bn'}.{rest}"
    if key.startswith("decode_head.conv_seg."):
        return "classifier." + key[len("decode_head.conv_seg."):]
    raise CheckpointError(f"{key} is not part of an official Semantic FPN file (backbone, neck, decode_head "
                          "scale_heads / conv_seg); is this file an ADE20K Semantic FPN checkpoint?")


def convert_official_state(state: dict) -> dict:
    """An official ADE20K file's state dict renamed to ``SemanticFPN``'s keys (tensors unchanged)."""
    out = {}
    for key, value in state.items():
        target = official_key(key)
        if target in out:
            raise CheckpointError(f"two official keys map to {target}")
        out[target] = value
    return out


def segmentation_release(name: str, pretrained) -> Optional[Release]:
    """The official Semantic FPN release that ``pretrained`` names for variant ``name``
    (``"repvit_m1_1:ade20k"`` or the bare tag ``"ade20k"``); None for anything else (ImageNet weights)."""
    if not isinstance(pretrained, str):
        return None
    model, tag = parse_spec(pretrained) if ":" in pretrained else (name, pretrained)
    for release in releases_for(model, SEGMENTATION):
        if release.tag == tag:
            if model != name:
                raise ValueError(f"pretrained={pretrained!r} is a {model} model, but this Semantic FPN is built "
                                 f"on {name}")
            return release
    return None


def load_official_segmenter(model, source, *, label: Optional[str] = None) -> str:
    """Load an official ADE20K file (path or state dict) into ``model`` (a ``SemanticFPN``), strictly."""
    label = label or (f"official Semantic FPN file {str(source)!r}" if not isinstance(source, dict)
                      else "official Semantic FPN state")
    load_strictly(model, convert_official_state(read_official_state(source)), source=label)
    return label
