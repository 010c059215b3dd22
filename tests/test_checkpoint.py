"""Every accepted checkpoint format round-trips; bad checkpoints fail with errors that say what to do."""
from __future__ import annotations

import argparse
import os
import pickle
import zipfile

import pytest
import torch

from repvit import CheckpointError, create_model, load_checkpoint, read_checkpoint, reparameterize, save_checkpoint
from repvit.testing import randomize_batchnorm
from tests.test_timm_equivalence import timm_model

IMG = 64
X = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def trained():
    """A repvit_m0_6 with a distillation head and non-trivial BN statistics, in eval mode."""
    return randomize_batchnorm(create_model("repvit_m0_6", num_classes=10, distillation=True), seed=11).eval()


def logits(model):
    with torch.no_grad():
        return model.eval()(X)


def test_official_release_file(trained, tmp_path):
    path = tmp_path / "repvit_m0_6_distill_300e.pth"
    torch.save({"model": trained.state_dict()}, path)
    model = create_model("repvit_m0_6", checkpoint=path)
    assert model.distillation and model.num_classes == 10 and not model.fused
    torch.testing.assert_close(logits(model), logits(trained), rtol=0, atol=0)


def test_official_training_checkpoint_with_optimizer_ema_and_args(trained, tmp_path):
    ema = randomize_batchnorm(create_model("repvit_m0_6", num_classes=10, distillation=True), seed=12).eval()
    optimizer = torch.optim.AdamW(trained.parameters())
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": trained.state_dict(), "model_ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": {"last_epoch": 3}, "epoch": 3, "max_accuracy": 71.5,
                "args": argparse.Namespace(model="repvit_m0_6", lr=1e-3)}, path)
    torch.testing.assert_close(logits(create_model("repvit_m0_6", checkpoint=path)), logits(trained), rtol=0, atol=0)
    torch.testing.assert_close(logits(create_model("repvit_m0_6", checkpoint=path, use_ema=True)), logits(ema),
                               rtol=0, atol=0)


def test_timm_state_dicts_unfused_fused_and_wrapped(tmp_path):
    reference = randomize_batchnorm(timm_model("repvit_m0_9", distillation=True, num_classes=10), seed=2).eval()
    expected = logits(reference)
    wrapped = {f"module.{k}": v for k, v in reference.state_dict().items()}  # saved from DDP
    torch.save({"state_dict": wrapped, "epoch": 1}, tmp_path / "timm.pth")
    torch.testing.assert_close(logits(create_model("repvit_m0_9", checkpoint=tmp_path / "timm.pth")), expected,
                               rtol=1e-5, atol=1e-5)
    reference.fuse()
    torch.save(reference.state_dict(), tmp_path / "timm_fused.pth")
    fused = create_model("repvit_m0_9", checkpoint=tmp_path / "timm_fused.pth")
    assert fused.fused
    torch.testing.assert_close(logits(fused), expected, rtol=1e-4, atol=1e-5)


def test_timm_features_only_state_dict_into_backbone(tmp_path):
    import timm
    reference = timm.create_model("repvit_m1_1", features_only=True)
    randomize_batchnorm(reference, seed=4).eval()
    torch.save(reference.state_dict(), tmp_path / "timm_features.pth")
    backbone = create_model("repvit_m1_1", features_only=True, checkpoint=tmp_path / "timm_features.pth")
    # timm taps each stage before its downsample's pre-block; ours after it. The deepest stage is the same.
    with torch.no_grad():
        torch.testing.assert_close(backbone(X)[-1], reference(X)[-1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_our_checkpoint_is_self_describing(trained, tmp_path, suffix):
    names = [f"class_{i}" for i in range(10)]
    path = save_checkpoint(trained, tmp_path / f"model{suffix}", class_names=names, epoch=5)
    model = create_model(checkpoint=path)  # no name, no flags: the file says it all
    assert model.variant.name == "repvit_m0_6" and model.distillation and model.class_names == names
    torch.testing.assert_close(logits(model), logits(trained), rtol=0, atol=0)
    _, meta = read_checkpoint(path)
    assert meta["epoch"] == 5 and meta["preprocessing"]["crop_pct"] == 0.875 and meta["fused"] is False


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_fused_checkpoint_round_trip(trained, tmp_path, suffix):
    fused = reparameterize(trained)
    path = save_checkpoint(fused, tmp_path / f"model-fused{suffix}")
    model = create_model(checkpoint=path)
    assert model.fused
    torch.testing.assert_close(logits(model), logits(fused), rtol=0, atol=0)
    raw = tmp_path / "raw-fused.pth"
    torch.save(fused.state_dict(), raw)  # a bare fused state dict: fused-ness and variant are inferred
    torch.testing.assert_close(logits(create_model(checkpoint=raw)), logits(fused), rtol=0, atol=0)


def test_load_checkpoint_into_existing_model_and_finetune_head(trained, tmp_path):
    path = save_checkpoint(trained, tmp_path / "m.pth")
    model = create_model("repvit_m0_6", num_classes=10, distillation=True)
    meta = load_checkpoint(model, path)
    assert meta["variant"] == "repvit_m0_6"
    new_head = create_model("repvit_m0_6", num_classes=3)
    head_before = new_head.classifier.classifier.l.weight.clone()
    load_checkpoint(new_head, path, ignore_classifier=True)
    assert torch.equal(new_head.classifier.classifier.l.weight, head_before)
    assert torch.equal(new_head.features[5].channel_mixer.m[0].c.weight, trained.features[5].channel_mixer.m[0].c.weight)


def test_legacy_checkpoint_loads_into_legacy_variant(tmp_path):
    reference = randomize_batchnorm(timm_model("repvit_m1", distillation=True), seed=5).eval()
    torch.save({"model": reference.state_dict()}, tmp_path / "edgesam_like.pth")
    model = create_model("repvit_m1", checkpoint=tmp_path / "edgesam_like.pth")
    torch.testing.assert_close(logits(model), logits(reference), rtol=1e-5, atol=1e-5)
    with pytest.raises(CheckpointError, match="repvit_m1"):
        create_model("repvit_m0_9", checkpoint=tmp_path / "edgesam_like.pth")


# ----------------------------------------------------------------------------- failures
def test_wrong_variant_names_the_right_one(trained, tmp_path):
    torch.save({"model": trained.state_dict()}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match=r"(?s)missing.*match repvit_m0_6, not repvit_m0_9"):
        create_model("repvit_m0_9", checkpoint=tmp_path / "m.pth")


def test_distillation_and_class_count_mismatch_suggest_the_fix(trained, tmp_path):
    torch.save({"model": trained.state_dict()}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="pass distillation=True"):
        create_model("repvit_m0_6", checkpoint=tmp_path / "m.pth", distillation=False)
    with pytest.raises(CheckpointError, match="pass num_classes=10"):
        create_model("repvit_m0_6", checkpoint=tmp_path / "m.pth", num_classes=5)
    # fused=True with unfused weights loads them, then fuses (exact); the reverse cannot be undone.
    fused = create_model("repvit_m0_6", checkpoint=tmp_path / "m.pth", fused=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), trained.eval()(x), atol=1e-4, rtol=1e-4)
    assert fused.fused
    torch.save({"model": fused.state_dict()}, tmp_path / "f.pth")
    with pytest.raises(CheckpointError, match="fused=True"):
        create_model("repvit_m0_6", checkpoint=tmp_path / "f.pth", fused=False)
    plain = create_model("repvit_m0_6", num_classes=10)
    with pytest.raises(CheckpointError, match="distillation=True"):
        load_checkpoint(plain, tmp_path / "m.pth")


def test_recorded_variant_conflict(trained, tmp_path):
    path = save_checkpoint(trained, tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="saved from repvit_m0_6, not repvit_m1_1"):
        create_model("repvit_m1_1", checkpoint=path)


def test_corrupt_missing_and_foreign_files(trained, tmp_path):
    good = save_checkpoint(trained, tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        create_model(checkpoint=truncated)
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model("repvit_m0_6", checkpoint=tmp_path / "nope.pth")
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(bad_st)
    torch.save({"weights": [1, 2, 3]}, tmp_path / "foreign.pth")
    with pytest.raises(CheckpointError, match="no state dict found"):
        read_checkpoint(tmp_path / "foreign.pth")
    torch.save({"model": {"encoder.weight": torch.zeros(3)}}, tmp_path / "other_arch.pth")
    with pytest.raises(CheckpointError, match="matches none"):
        create_model(checkpoint=tmp_path / "other_arch.pth")


class _Payload:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_carries_code_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"features.0.0.c.weight": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match="refused.*not executed"):
        create_model("repvit_m0_6", checkpoint=path)
    assert not marker.exists()


def test_safetensors_rejects_training_state(trained, tmp_path):
    with pytest.raises(ValueError, match="weights only"):
        save_checkpoint(trained, tmp_path / "m.safetensors", extra_state={"optimizer": {}})


def test_atomic_write_keeps_previous_file_when_writing_fails(trained, tmp_path):
    path = save_checkpoint(trained, tmp_path / "last.pth", epoch=1)
    with pytest.raises(ValueError):
        save_checkpoint(trained, path, class_names=["too", "few"])  # rejected before anything is written
    with pytest.raises((TypeError, AttributeError, pickle.PicklingError)):
        save_checkpoint(trained, path, extra_state={"bad": lambda: None})  # fails half-way through writing
    assert read_checkpoint(path)[1]["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]
