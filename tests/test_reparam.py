"""Re-parameterization: exact, and robust where the anchors are not (dtype, memory format, kernels, modes)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import repvit
from repvit import create_model, reparameterize
from repvit.models.layers import RepDWConv
from repvit.testing import randomize_batchnorm

IMG = 64


def _model(name="repvit_m0_6", **kw):
    return randomize_batchnorm(create_model(name, num_classes=10, distillation=True, **kw), seed=3).eval()


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
def test_any_odd_kernel_fuses_exactly(kernel_size):
    model = _model(kernel_size=kernel_size)
    fused = reparameterize(model)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
    assert fused.features[1].token_mixer[0].kernel_size == (kernel_size, kernel_size)


@pytest.mark.parametrize("legacy", [False, True])
def test_depthwise_unit_folds_all_three_branches(legacy):
    unit = RepDWConv(6, 3, legacy=legacy)
    randomize_batchnorm(unit, seed=5)
    with torch.no_grad():
        (unit.conv1.c if legacy else unit.conv1).weight.normal_()
    unit.eval()
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(unit.fuse()(x), unit(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_stays_half_and_faithful(dtype):
    model = _model()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        reference = reparameterize(model)(x)
        half_fused = reparameterize(model.to(dtype))
    assert {p.dtype for p in half_fused.parameters()} == {dtype}
    with torch.no_grad():
        out = half_fused(x.to(dtype)).float()
    # Folding happened in float32: the only error is the final rounding of weights to half precision.
    assert (out - reference).abs().max() <= 0.05 * reference.abs().max()


def test_channels_last_and_device_are_kept():
    model = _model().to(memory_format=torch.channels_last)
    fused = reparameterize(model)
    stem_weight = fused.features[0][0].weight  # dense 3x3: the layouts differ, so this is a real check
    assert stem_weight.is_contiguous(memory_format=torch.channels_last) and not stem_weight.is_contiguous()
    assert {p.device for p in fused.parameters()} == {torch.device("cpu")}
    x = torch.randn(1, 3, IMG, IMG).to(memory_format=torch.channels_last)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)


def test_meta_device_fuse_builds_topology_without_memory():
    with torch.device("meta"):
        model = create_model("repvit_m1_5", distillation=True).eval()
    fused = reparameterize(model)
    assert {p.device.type for p in fused.parameters()} == {"meta"}


def test_training_mode_is_refused_with_a_clear_error():
    model = _model().train()
    with pytest.raises(RuntimeError, match=r"model\.eval\(\)"):
        reparameterize(model)
    model.eval()
    model.features[3].token_mixer[0].bn.train()  # a single stray training-mode BN is caught too
    with pytest.raises(RuntimeError, match="features.3"):
        reparameterize(model)


def test_input_untouched_unless_inplace_and_fuse_is_idempotent():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = reparameterize(model)
    assert fused is not model and not repvit.is_fused(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = reparameterize(fused)
    assert again.state_dict().keys() == fused.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), fused.state_dict().values()))
    same = reparameterize(model, inplace=True)
    assert same is model and repvit.is_fused(model)


def test_no_batchnorm_left_and_single_linear_head():
    fused = reparameterize(_model("repvit_m1_1"))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert isinstance(fused.classifier, nn.Linear) and fused.fused


def test_features_only_backbone_fuses():
    backbone = randomize_batchnorm(create_model("repvit_m0_9", features_only=True)).eval()
    fused = reparameterize(backbone)
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        for a, b in zip(fused(x), backbone(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["repvit_m0_6", "repvit_m2"])
def test_fused_constructor_matches_reparameterize(name):
    model = _model(name)
    fused = reparameterize(model)
    direct = create_model(name, num_classes=10, fused=True)
    assert {k: v.shape for k, v in direct.state_dict().items()} == {k: v.shape for k, v in fused.state_dict().items()}
    direct.load_state_dict(fused.state_dict())
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(direct.eval()(x), model(x), rtol=1e-4, atol=1e-4)
    assert all(torch.isfinite(p).all() for p in create_model(name, fused=True).parameters())
