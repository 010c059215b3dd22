"""Human-readable class names for the ImageNet-1k outputs of the official weights.

torchvision ships the 1000 names (in output order, one short name each) in its weights
metadata, and timm ships the WordNet ids that ImageNet folders are named after, so both come
without a download.
"""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    from torchvision.models import get_weight
    names = tuple(get_weight("ResNet18_Weights.IMAGENET1K_V1").meta["categories"])
    if len(names) != 1000:
        raise RuntimeError(f"torchvision lists {len(names)} ImageNet classes, expected 1000")
    return names


@lru_cache(maxsize=1)
def imagenet_class_ids() -> tuple[str, ...]:
    """The WordNet ids (``n01440764`` ...) in output order: the folder names of ImageNet-style data."""
    from timm.data import ImageNetInfo
    ids = tuple(ImageNetInfo().label_names())
    if len(ids) != 1000:
        raise RuntimeError(f"timm lists {len(ids)} ImageNet WordNet ids, expected 1000")
    return ids
