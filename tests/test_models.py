"""Contract suite: every registered RepViT variant behaves like a well-formed timm-style model."""
from __future__ import annotations

import pytest
import torch

import repvit
from repvit import create_model, reparameterize
from repvit.models.profile import count_macs, count_params
from repvit.testing import assert_torchscript_matches, randomize_batchnorm
from repvit.models.variants import VARIANTS

ALL = list(VARIANTS)
IMG = 64  # smallest size the four stride-2 stages handle comfortably; keeps the suite fast

# The official release's figures (issue #2 table): (params no dist, params with dist, fused params, GMACs@224).
OFFICIAL_SIZES = {
    "repvit_m0_6": (2_487_292, 2_808_932, 2_468_072, 0.3851),
    "repvit_m0_9": (5_103_560, 5_489_328, 5_067_056, 0.8156),
    "repvit_m1_0": (6_852_900, 7_302_796, 6_810_312, 1.1062),
    "repvit_m1_1": (8_288_888, 8_802_912, 8_244_312, 1.3371),
    "repvit_m1_5": (14_130_408, 14_644_432, 14_049_992, 2.2736),
    "repvit_m2_3": (23_046_512, 23_688_792, 22_926_792, 4.5160),
}


@pytest.mark.parametrize("name", list(OFFICIAL_SIZES))
def test_sizes_match_official_release(name):
    plain, dist, fused, gmacs = OFFICIAL_SIZES[name]
    assert count_params(create_model(name)) == plain
    model = create_model(name, distillation=True)
    assert count_params(model) == dist
    fused_model = reparameterize(model.eval())
    assert count_params(fused_model) == fused
    assert round(count_macs(fused_model) / 1e9, 4) == gmacs


@pytest.mark.parametrize("name", ALL)
def test_forward_shapes_and_modes(name):
    model = create_model(name, num_classes=7, distillation=True)
    x = torch.randn(2, 3, IMG, IMG)
    model.train()
    cls, dist = model(x)
    assert cls.shape == dist.shape == (2, 7)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    torch.testing.assert_close(out, (model.classifier.classifier(model.forward_head(model.forward_features(x), pre_logits=True))
                                     + model.classifier.classifier_dist(model.forward_head(model.forward_features(x), pre_logits=True))) / 2)


@pytest.mark.parametrize("name", ALL)
def test_every_parameter_gets_a_gradient(name):
    model = randomize_batchnorm(create_model(name, num_classes=5, distillation=True))
    model.train()
    cls, dist = model(torch.randn(2, 3, IMG, IMG))
    (cls.square().mean() + dist.square().mean()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    zero_grad = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() == 0]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    assert not zero_grad, f"parameters whose gradient is exactly zero: {zero_grad[:5]}"


@pytest.mark.parametrize("name", ALL)
def test_fused_equals_unfused_with_random_batchnorm(name):
    model = randomize_batchnorm(create_model(name, num_classes=10, distillation=True), seed=1).eval()
    fused = reparameterize(model)
    assert repvit.is_fused(fused) and not repvit.is_fused(model)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        ref, out = model(x), fused(x)
    assert (ref - out).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


@pytest.mark.parametrize("name", ALL)
def test_features_and_intermediates(name):
    variant = VARIANTS[name]
    backbone = create_model(name, features_only=True).eval()
    assert backbone.feature_info.channels() == list(variant.widths)
    assert backbone.feature_info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        feats = backbone(x)
    assert [tuple(f.shape) for f in feats] == [(1, c, IMG // r, IMG // r) for c, r in zip(variant.widths, (4, 8, 16, 32))]

    model = create_model(name).eval()
    model.load_state_dict({**model.state_dict(), **backbone.state_dict()})
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert all(torch.equal(a, b) for a, b in zip(inter, feats))
        assert torch.equal(final, model.forward_features(x))
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
    assert [f.shape[1] for f in last_two] == list(variant.widths[2:])


@pytest.mark.parametrize("name", ["repvit_m0_6", "repvit_m1"])
def test_features_only_subset_drops_unused_blocks(name):
    backbone = create_model(name, features_only=True, out_indices=(1,))
    full = create_model(name, features_only=True)
    assert len(backbone.features) < len(full.features)
    out = backbone(torch.randn(1, 3, IMG, IMG))
    assert len(out) == 1 and out[0].shape[1] == VARIANTS[name].widths[1]


@pytest.mark.parametrize("name", ALL)
def test_reset_classifier_and_head_conventions(name):
    model = create_model(name, distillation=True)
    assert model.get_classifier() is model.classifier
    model.reset_classifier(3)
    assert model.num_classes == 3 and model.distillation is False
    model.eval()
    x = torch.randn(2, 3, IMG, IMG)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)


def test_distillation_default_agrees_between_constructor_and_reset():
    model = create_model("repvit_m0_6")
    assert model.distillation is False
    model.reset_classifier(10)
    assert model.distillation is False
    assert repvit.RepViT("repvit_m0_6").distillation is False


@pytest.mark.parametrize("name", ALL)
def test_torchscript_fused_and_unfused(name):
    model = randomize_batchnorm(create_model(name, num_classes=10, distillation=True)).eval()
    assert_torchscript_matches(model, torch.randn(1, 3, IMG, IMG))


@pytest.mark.parametrize("name", ["repvit_m0_6", "repvit_m0_9", "repvit_m1"])
def test_torch_export_fused_and_unfused(name):
    model = randomize_batchnorm(create_model(name, num_classes=10, distillation=True)).eval()
    x = torch.randn(1, 3, IMG, IMG)
    for m in (model, reparameterize(model)):
        exported = torch.export.export(m, (x,))
        with torch.no_grad():
            torch.testing.assert_close(exported.module()(x), m(x), rtol=1e-5, atol=1e-5)


def test_grad_checkpointing_matches_plain_backward():
    model = randomize_batchnorm(create_model("repvit_m0_6", num_classes=4))
    x = torch.randn(2, 3, IMG, IMG)
    model.train()
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], rtol=1e-4, atol=1e-6, msg=n)


def test_preprocessing_record_matches_official_eval():
    cfg = create_model("repvit_m0_9").pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["interpolation"] == "bicubic"
    assert cfg["crop_pct"] == 0.875 and cfg["mean"] == (0.485, 0.456, 0.406)


@pytest.mark.parametrize("bad", [torch.randn(3, IMG, IMG), torch.randn(1, 1, IMG, IMG), torch.randn(1, 4, IMG, IMG)])
def test_bad_input_is_a_clear_error(bad):
    model = create_model("repvit_m0_6").eval()
    with pytest.raises(ValueError, match="NCHW"):
        model(bad)


def test_unknown_variant_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown RepViT variant.*repvit_m0_9"):
        create_model("repvit_m9_9")
    with pytest.raises(ValueError, match="num_classes"):
        create_model("repvit_m0_6", num_classes=-1)
    with pytest.raises(ValueError, match="odd"):
        repvit.RepViT("repvit_m0_6", kernel_size=4)
    with pytest.raises(ValueError, match="download"):
        create_model("repvit_m0_6", pretrained=True)


def test_list_models_filters():
    assert set(repvit.list_models("repvit_m1*")) >= {"repvit_m1", "repvit_m1_0", "repvit_m1_1", "repvit_m1_5"}
    assert "repvit_m0_6" not in repvit.list_models("repvit_m1*")
    assert set(VARIANTS) <= set(repvit.list_models())
