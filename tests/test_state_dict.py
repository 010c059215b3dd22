"""The one strict loader: every place that loads saved weights names missing, unexpected and
mis-shaped tensors (with both shapes) and a fix, as one CheckpointError, and copies nothing then."""
from __future__ import annotations

import argparse

import pytest
import torch
from torch import nn

from repvit import create_model
from repvit.models.checkpoint import CheckpointError, load_state_dict
from repvit.models.record import load_recorded_weights
from repvit.models.state_dict import compare, load_strict


def spoil(state: dict, *, drop: str, reshape: str, add: str) -> dict:
    """``state`` with one tensor removed, one with a wrong shape and one that no model has."""
    state = {k: v.clone() for k, v in state.items() if k != drop}
    state[reshape] = torch.zeros(*[n + 1 for n in state[reshape].shape])
    state[add] = torch.zeros(3, 5)
    return state


def assert_names_all_three(err: CheckpointError, *, drop: str, reshape: str, add: str, expected_shape):
    message = str(err)
    wrong = tuple(n + 1 for n in expected_shape)
    assert err.mismatch.missing_keys == [drop]
    assert err.mismatch.unexpected == [(add, (3, 5))]
    assert err.mismatch.wrong_shape == [(reshape, tuple(expected_shape), wrong)]
    assert "missing from the file (1)" in message and drop in message
    assert "unexpected, not in the model (1)" in message and f"{add} (file (3, 5))" in message
    assert f"shape of {reshape}: model {tuple(expected_shape)}, file {wrong}" in message
    assert "How to fix: " in message


def first_weight(state: dict, prefix: str) -> str:
    return next(k for k, v in state.items() if k.startswith(prefix) and k.endswith("weight") and v.dim() > 1)


def unchanged(module: nn.Module, before: dict) -> bool:
    return all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


# ----------------------------------------------------------------------------- the loader itself
def test_mis_shaped_tensor_is_a_checkpoint_error_not_a_runtime_error_and_nothing_is_copied():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.ones_like(v) for k, v in model.state_dict().items()}
    state["0.weight"] = torch.ones(4, 3, 1, 1)
    with pytest.raises(CheckpointError, match=r"shape of 0\.weight: model \(4, 3, 3, 3\), file \(4, 3, 1, 1\)"):
        load_strict(model, state, source="x.pth", fix="use the right file")
    assert unchanged(model, before)   # torch's strict=False would have copied the tensors that fit


def test_counts_are_complete_and_lists_are_short():
    expected = {f"layer.{i}.weight": torch.zeros(2) for i in range(12)}
    mismatch = compare(expected, {})
    assert len(mismatch.missing) == 12 and mismatch.missing_keys[:3] == ["layer.0.weight", "layer.1.weight",
                                                                         "layer.2.weight"]
    text = "\n".join(mismatch.describe())
    assert "missing from the file (12)" in text and "... and 7 more" in text and "layer.11.weight" not in text


def test_ignored_keys_keep_the_module_values_and_counters_may_be_absent():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2))
    head = model[2].weight.clone()
    state = {k: torch.full_like(v, 2) for k, v in model.state_dict().items()
             if not k.startswith("2.") and not k.endswith("num_batches_tracked")}
    state["2.weight"] = torch.zeros(7, 7)   # a head for other classes: ignored
    load_strict(model, state, source="s", ignore="2.")
    assert torch.equal(model[2].weight, head) and torch.equal(model[0].weight, torch.full_like(model[0].weight, 2))


# ----------------------------------------------------------------------------- the six call sites
def test_classification_checkpoint():
    model = create_model("repvit_m0_6", num_classes=10)
    state = model.state_dict()
    drop, reshape = first_weight(state, "features.3."), first_weight(state, "features.5.")
    with pytest.raises(CheckpointError) as err:
        load_state_dict(model, spoil(state, drop=drop, reshape=reshape, add="features.1.bogus"))
    assert_names_all_three(err.value, drop=drop, reshape=reshape, add="features.1.bogus",
                           expected_shape=state[reshape].shape)


def test_dense_record():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))
    state = model.state_dict()
    with pytest.raises(CheckpointError) as err:
        load_recorded_weights(model, {"task": "segmentation", "model": spoil(state, drop="2.bias", reshape="0.weight",
                                                                            add="3.weight")},
                              path="best.pth", what="Semantic FPN")
    assert_names_all_three(err.value, drop="2.bias", reshape="0.weight", add="3.weight",
                           expected_shape=state["0.weight"].shape)
    assert "Semantic FPN" in str(err.value)


def test_dense_record_shape_alone_is_named_not_a_raw_runtime_error():
    # before the one loader, load_state_dict(strict=False) raised torch's RuntimeError here
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    record = {"task": "detection", "model": {"0.weight": torch.zeros(4, 3, 1, 1), "0.bias": torch.zeros(4)}}
    with pytest.raises(CheckpointError, match=r"(?s)best\.pth.*shape of 0\.weight"):
        load_recorded_weights(model, record, path="best.pth", what="Faster R-CNN detector")


@pytest.fixture()
def segment_anything():
    return pytest.importorskip("segment_anything")   # an optional dependency (the [sam] extra)


def test_sam_builder(segment_anything):
    from repvit.sam import build_sam
    from repvit.sam.builder import load_sam_weights
    model = build_sam(variant="repvit_m0_6", img_size=256)
    state = model.state_dict()
    with pytest.raises(CheckpointError) as err:
        load_sam_weights(model, spoil(state, drop="mask_decoder.iou_token.weight",
                                      reshape="image_encoder.neck.0.weight", add="mask_decoder.bogus"))
    assert_names_all_three(err.value, drop="mask_decoder.iou_token.weight", reshape="image_encoder.neck.0.weight",
                           add="mask_decoder.bogus", expected_shape=state["image_encoder.neck.0.weight"].shape)


def test_sam_builder_names_the_whole_sam_file_when_given_one_part(segment_anything, tmp_path):
    from repvit.sam import build_sam
    model = build_sam(variant="repvit_m0_6", img_size=256)
    torch.save({k: v for k, v in model.state_dict().items() if k.startswith("image_encoder.")}, tmp_path / "enc.pt")
    with pytest.raises(CheckpointError, match="holds no prompt_encoder, mask_decoder: pass the whole-SAM file"):
        build_sam(tmp_path / "enc.pt", variant="repvit_m0_6", img_size=256)


def test_sam_encoder_backbone(segment_anything):
    from repvit.sam import RepViTSamEncoder
    encoder = RepViTSamEncoder("repvit_m0_6")
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    state = create_model("repvit_m0_6").state_dict()
    drop, reshape = first_weight(state, "features.2."), first_weight(state, "features.4.")
    with pytest.raises(CheckpointError) as err:
        encoder.load_backbone(spoil(state, drop=drop, reshape=reshape, add="features.99.weight"))
    assert_names_all_three(err.value, drop=drop, reshape=reshape, add="features.99.weight",
                           expected_shape=state[reshape].shape)
    assert "the repvit_m0_6 encoder of RepViT-SAM" in str(err.value) and unchanged(encoder, before)


@pytest.fixture()
def tiny_vit_b(segment_anything, monkeypatch):
    from repvit.sam import teacher
    monkeypatch.setitem(teacher.TEACHERS, "vit_b", teacher.ViTSpec(embed_dim=32, depth=2, num_heads=2,
                                                                   global_blocks=(1,)))
    return teacher


def test_sam_teacher(tiny_vit_b, tmp_path):
    state = tiny_vit_b.build_teacher("vit_b", img_size=64, seed=0).state_dict()
    spoiled = spoil(state, drop="neck.0.weight", reshape="blocks.0.mlp.lin1.weight", add="blocks.0.bogus")
    torch.save({f"image_encoder.{k}": v for k, v in spoiled.items()}, tmp_path / "t.pth")
    with pytest.raises(CheckpointError) as err:
        tiny_vit_b.build_teacher("vit_b", img_size=64, checkpoint=tmp_path / "t.pth")
    assert_names_all_three(err.value, drop="neck.0.weight", reshape="blocks.0.mlp.lin1.weight", add="blocks.0.bogus",
                           expected_shape=state["blocks.0.mlp.lin1.weight"].shape)
    assert "SAM's vit_b image encoder" in str(err.value)


def test_sam_distill_decoder(segment_anything, tmp_path):
    from repvit.sam.builder import sam_with_encoder
    from repvit.sam.distill import build_student
    from repvit.sam.encoder import RepViTSamEncoder
    state = sam_with_encoder(RepViTSamEncoder("repvit_m0_6", img_size=64), img_size=64).state_dict()
    drop, reshape, add = "mask_decoder.iou_token.weight", "prompt_encoder.mask_downscaling.0.weight", "mask_decoder.x"
    torch.save(spoil(state, drop=drop, reshape=reshape, add=add), tmp_path / "sam.pth")
    cfg = argparse.Namespace(model="repvit_m0_6", img_size=64, student_init=None, pretrained=False,
                             decoder_from=str(tmp_path / "sam.pth"))
    with pytest.raises(CheckpointError) as err:
        build_student(cfg)
    assert_names_all_three(err.value, drop=drop, reshape=reshape, add=add, expected_shape=state[reshape].shape)
    # a shape alone used to escape as torch's RuntimeError from load_state_dict(strict=False)
    only_shape = dict(state)
    only_shape[reshape] = torch.zeros(1)
    torch.save(only_shape, tmp_path / "shape.pth")
    cfg.decoder_from = str(tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=f"shape of {reshape}"):
        build_student(cfg)
