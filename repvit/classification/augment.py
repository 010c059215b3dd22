"""Keeps timm's auto-augment policies working with recent Pillow (13.0 here).

timm maps the strongest Posterize level (``rand-m9-mstd0.5-inc1`` samples magnitude 10 now and
then; AutoAugment's ``('Posterize', 0.8, 2)`` always) to "keep 0 bits", which older Pillow turned
into a black image and newer Pillow refuses with "bits must be between or equal to 1 and 8". A
training run with the paper's recipe then dies at a random step. We give the Posterize ops of a
built transform a version that keeps the old meaning, without touching timm's module state.
"""
from __future__ import annotations

from PIL import Image, ImageOps


def posterize_any_bits(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """``ImageOps.posterize`` for 0-8 bits; 0 bits keeps nothing, i.e. a black image."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point([0] * 256 * len(img.getbands()))
    return ImageOps.posterize(img, bits_to_keep)


def _augment_ops(transform):
    """Every timm ``AugmentOp`` inside ``transform`` (Compose, RandAugment, AutoAugment, AugMix)."""
    from timm.data.auto_augment import AugmentOp
    if isinstance(transform, AugmentOp):
        yield transform
        return
    if isinstance(transform, (list, tuple)):
        for child in transform:
            yield from _augment_ops(child)
        return
    for attr in ("transforms", "ops", "policy"):
        children = getattr(transform, attr, None)
        if isinstance(children, (list, tuple)):
            for child in children:
                yield from _augment_ops(child)


def fix_posterize(transform):
    """Swap the Posterize ops found in ``transform`` for ``posterize_any_bits``; returns ``transform``."""
    for op in _augment_ops(transform):
        if op.name.startswith("Posterize"):
            op.aug_fn = posterize_any_bits
    return transform
