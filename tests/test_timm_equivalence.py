"""Numerical equivalence with timm's RepViT, which shares the official checkpoints' tensor order.

Each test puts identical random weights into timm's model and ours (through our name-based
key mapping) and compares logits, unfused and fused, with and without the distillation head.
"""
from __future__ import annotations

import pytest
import torch
from timm.models.repvit import RepVit

from repvit import create_model, reparameterize
from repvit.models.checkpoint import load_state_dict, to_official_layout
from repvit.testing import randomize_batchnorm
from repvit.models.variants import VARIANTS

IMG = 64


def timm_model(name: str, distillation: bool, num_classes: int = 1000) -> torch.nn.Module:
    """timm's model for a variant. timm has no M0.6, so build it from its block counts."""
    variant = VARIANTS[name]
    # timm counts per stage the blocks after its downsample; its "pre-block" is our stage's last 0.
    depth = tuple(len(p.lstrip("D")) - (1 if i < 3 else 0) for i, p in enumerate(variant.stages))
    return RepVit(embed_dim=variant.widths, depth=depth, legacy=variant.legacy, distillation=distillation,
                  num_classes=num_classes)


@pytest.mark.parametrize("name, distillation", [(n, True) for n in VARIANTS] + [("repvit_m0_6", False), ("repvit_m2", False)])
def test_same_weights_same_logits_as_timm(name, distillation):
    reference = randomize_batchnorm(timm_model(name, distillation, num_classes=12), seed=7).eval()
    ours = create_model(name, num_classes=12, distillation=distillation)
    load_state_dict(ours, to_official_layout(reference.state_dict()))
    ours.eval()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reparameterize(ours)(x), expected, rtol=1e-4, atol=1e-5)
        reference.fuse()
        torch.testing.assert_close(reparameterize(ours)(x), reference(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["repvit_m0_9", "repvit_m1_5", "repvit_m3"])
def test_tensor_order_matches_timm_and_thus_the_official_release(name):
    """The official files list tensors in the same order as timm's modules: ours must too."""
    ours = create_model(name, distillation=True).state_dict()
    theirs = timm_model(name, distillation=True).state_dict()
    assert len(ours) == len(theirs)
    mapped = list(to_official_layout(theirs))
    assert mapped == list(ours)
    assert all(a.shape == b.shape for a, b in zip(ours.values(), theirs.values()))


def test_official_key_layout():
    keys = set(create_model("repvit_m0_9", distillation=True).state_dict())
    expected = {
        "features.0.0.c.weight", "features.0.0.bn.running_var", "features.0.2.c.weight",
        "features.1.token_mixer.0.conv.c.weight", "features.1.token_mixer.0.conv.bn.weight",
        "features.1.token_mixer.0.conv1.weight", "features.1.token_mixer.0.conv1.bias",
        "features.1.token_mixer.0.bn.running_mean", "features.1.token_mixer.1.fc1.weight",
        "features.1.token_mixer.1.fc2.bias", "features.1.channel_mixer.m.0.c.weight",
        "features.1.channel_mixer.m.2.bn.weight",
        "features.4.token_mixer.0.c.weight", "features.4.token_mixer.2.c.weight",  # first downsample block
        "classifier.classifier.bn.weight", "classifier.classifier.l.weight", "classifier.classifier_dist.l.bias",
    }
    assert expected <= keys
    assert not any(k.startswith("features.2.token_mixer.1.") for k in keys)  # block 2 has no SE


def test_legacy_layout_keys():
    keys = set(create_model("repvit_m1").state_dict())
    assert "features.1.token_mixer.0.conv1.c.weight" in keys and "features.1.token_mixer.0.conv1.bn.weight" in keys
    assert not any(k.startswith("features.1.token_mixer.0.bn.") for k in keys)
