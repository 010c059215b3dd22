"""The paper's RandAugment must not crash on Pillow versions that refuse posterize(bits=0)."""
import random

import numpy as np
import pytest
from PIL import Image, ImageOps

from repvit.classification import config as train_config
from repvit.classification.augment import fix_posterize, posterize_any_bits
from repvit.classification.data import train_transform


def _image(seed=0, size=24, mode="RGB"):
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, len(mode)), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_posterize_keeps_old_meaning_for_every_bit_count(mode):
    img = _image(mode=mode)
    black = posterize_any_bits(img, 0)
    assert black.mode == img.mode and black.size == img.size
    assert np.asarray(black).max() == 0
    assert posterize_any_bits(img, 8) is img
    for bits in range(1, 8):
        assert np.array_equal(np.asarray(posterize_any_bits(img, bits)), np.asarray(ImageOps.posterize(img, bits)))


def _posterize_ops(transform):
    from repvit.classification.augment import _augment_ops
    return [op for op in _augment_ops(transform) if op.name.startswith("Posterize")]


def test_paper_recipe_transform_survives_strongest_posterize():
    # magnitude 10 without noise: every PosterizeIncreasing call asks for 0 bits
    cfg = train_config.parse_args(["--data", "x", "--img-size", "32", "--aa", "rand-m10-mstd0-inc1"])
    transform = train_transform(cfg)
    ops = _posterize_ops(transform)
    assert ops and all(op.aug_fn is posterize_any_bits for op in ops)
    ops[0].prob = 1.0
    assert np.asarray(ops[0](_image())).max() == 0
    random.seed(0)
    np.random.seed(0)
    for seed in range(60):  # ~60 x 2 ops drawn from 15: posterize is drawn several times
        assert tuple(transform(_image(seed)).shape) == (3, 32, 32)


def test_fix_reaches_autoaugment_policies_and_augmix():
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform
    hparams = {"translate_const": 10, "img_mean": (124, 116, 104)}
    for transform in (auto_augment_transform("v0", hparams), augment_and_mix_transform("augmix-m10", hparams)):
        ops = _posterize_ops(fix_posterize(transform))
        assert ops and all(op.aug_fn is posterize_any_bits for op in ops)
