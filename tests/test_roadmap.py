"""The roadmap models (MobileNetV3-L -> RepViT-M0.9) and the ``repvit roadmap`` command."""
from __future__ import annotations

import json

import pytest
import torch
import torchvision

import repvit
from repvit import create_model, is_fused, reparameterize
from repvit.models.checkpoint import checkpoint_metadata, save_checkpoint
from repvit.cli import main as cli_main
from repvit.models.skeleton import build_skeleton
from repvit.models.profile import count_macs, count_params
from repvit.roadmap import ABLATIONS, STEPS, RoadmapNet, roadmap_names, stage_patterns
from repvit.roadmap import spec as rs
from repvit.testing import assert_torchscript_matches, randomize_batchnorm
from repvit.models.variants import VARIANTS

IMG = 64
STEP_NAMES = [s.name for s in STEPS]
ALL_NAMES = roadmap_names(ablations=True)


def test_every_step_and_ablation_is_registered():
    assert len(STEPS) == 10 and len(ABLATIONS) == 8
    assert set(ALL_NAMES) <= set(repvit.list_models("roadmap_*"))
    assert STEP_NAMES[0] == "roadmap_0_mnv3l" and STEP_NAMES[-1] == "roadmap_8_cross_se"


# --------------------------------------------------------------------------- the two ends are exact
def test_step0_has_mobilenet_v3_large_parameters_in_order():
    ours = create_model("roadmap_0_mnv3l")
    theirs = torchvision.models.mobilenet_v3_large()
    assert count_params(ours) == count_params(theirs) == 5_483_032
    assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]


def test_step0_with_hard_swish_computes_torchvision_mobilenet_v3_large():
    """Restoring hard-swish (and torchvision's BN eps) must give torchvision's network exactly."""
    theirs = torchvision.models.mobilenet_v3_large().eval()
    randomize_batchnorm(theirs)
    ours = RoadmapNet(rs.mobilenet_v3_large(hard_swish="hardswish")).eval()
    theirs_state, ours_state = theirs.state_dict(), ours.state_dict()
    assert len(theirs_state) == len(ours_state)
    ours.load_state_dict({k: v for k, v in zip(ours_state, theirs_state.values())})
    for m in ours.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-3
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_step8_is_repvit_m0_9():
    spec8 = STEPS[-1].build_spec()
    assert stage_patterns(spec8) == VARIANTS["repvit_m0_9"].stages
    ours = randomize_batchnorm(create_model("roadmap_8_cross_se", num_classes=10, distillation=True)).eval()
    reference = repvit.RepViT("repvit_m0_9", num_classes=10, distillation=True).eval()
    reference.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=0)
    fused = reparameterize(create_model("roadmap_8_cross_se").eval())
    assert count_params(fused) == 5_067_056
    assert round(count_macs(fused, 224) / 1e9, 4) == 0.8156
    build_skeleton("repvit_m0_9", fused=True).load_state_dict(fused.state_dict(), strict=True)


# --------------------------------------------------------------------------- each step makes its change
def _spec(label):
    return next(s for s in STEPS if s.label == label).build_spec()


def test_each_step_makes_the_papers_change():
    s0, s1, s2a, s2b, s3, s4, s5, s6, s7, s8 = (s.build_spec() for s in STEPS)
    assert {b.kind for b in s0.blocks} == {"ir"} and s0.head == "mbv3" and len(s0.blocks) == 15
    assert {b.act for b in s0.blocks} == {"relu", "gelu"} and s0.act == "gelu"
    assert {b.kind for b in s1.blocks} == {"mixer"} and [b.hidden for b in s1.blocks] == [b.hidden for b in s0.blocks]
    assert all(b.hidden == 2 * b.in_ch for b in s2a.blocks)
    assert sorted({b.out_ch for b in s2b.blocks if b.stage >= 0}) == [48, 96, 192, 384]
    assert s3.stem == "early" and len(s3.blocks) == len(s2b.blocks) - 2 and s3.blocks[0].in_ch == 48
    assert [b.role for b in s4.blocks].count("down") == 3 and [b.role for b in s4.blocks].count("pre") == 3
    assert s4.head == "mbv3" and s5.head == "linear" and s5.blocks == s4.blocks
    depths = [sum(b.role == "body" and b.stage == i for b in s6.blocks) for i in range(4)]
    assert depths == [2, 2, 14, 2] and {b.kernel for b in s6.blocks} == {3, 5}
    assert {b.kernel for b in s7.blocks} == {3}
    assert [b.se for b in s7.blocks] != [b.se for b in s8.blocks]
    # 5x5 kernels stay re-parameterizable (the 1x1 branch is padded by 2) until step 7.
    model = create_model("roadmap_6_stage_ratio")
    assert any(isinstance(m, repvit.models.layers.RepDWConv) and m.conv.c.kernel_size == (5, 5) for m in model.modules())


def test_step_functions_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="step 2b"):
        rs.step3_early_conv(rs.mobilenet_v3_large())
    with pytest.raises(ValueError, match="already has"):
        rs.step6_stage_ratio(_spec("8"), depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="variant pattern"):
        stage_patterns(_spec("0"))
    with pytest.raises(ValueError, match="num_classes"):
        create_model("roadmap_3_early_conv", num_classes=-1)


# --------------------------------------------------------------------------- contract per model
@pytest.mark.parametrize("name", ALL_NAMES)
def test_fused_equals_unfused_with_random_batchnorm(name):
    model = randomize_batchnorm(create_model(name, num_classes=10, distillation=True)).eval()
    fused = reparameterize(model)
    assert is_fused(fused)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-4, atol=1e-4)
    skeleton = build_skeleton(name, fused=True, num_classes=10, distillation=True)
    skeleton.load_state_dict(fused.state_dict(), strict=True)


@pytest.mark.parametrize("name", STEP_NAMES)
def test_trains_a_few_steps(name):
    model = create_model(name, num_classes=10).train()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, IMG, IMG), torch.randint(0, 10, (4,))
    for _ in range(2):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        missing = [k for k, p in model.named_parameters() if p.grad is None]
        assert not missing, f"no gradient for {missing[:3]}"
        optimizer.step()
    changed = sum(not torch.equal(before[k], p) for k, p in model.named_parameters())
    assert changed == len(before)


@pytest.mark.parametrize("name", STEP_NAMES)
def test_torchscript_fused_and_unfused(name):
    model = randomize_batchnorm(create_model(name, num_classes=10, distillation=True)).eval()
    assert_torchscript_matches(model, torch.randn(1, 3, IMG, IMG))


@pytest.mark.parametrize("name", ["roadmap_0_mnv3l", "roadmap_4_deeper_down"])
def test_onnx_export_of_fused_model_matches(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    fused = reparameterize(randomize_batchnorm(create_model(name, num_classes=10)).eval())
    x = torch.randn(1, 3, IMG, IMG)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(fused, (x,), str(path), dynamo=True, verbose=False, external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(out), fused(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["roadmap_0_mnv3l", "roadmap_3_early_conv", "roadmap_5_simple_classifier"])
def test_head_conventions_and_feature_info(name):
    model = create_model(name, num_classes=10, distillation=True).eval()
    x = torch.randn(2, 3, IMG, IMG)
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features and feats.shape[-1] == IMG // 32
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    assert model.feature_info.channels()[-1] == model.spec.out_width
    assert model.get_classifier() is model.classifier
    model.reset_classifier(0)
    assert model(x).shape == (2, model.head_hidden_size)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.distillation is False
    assert model.preprocessing["input_size"] == (3, 224, 224)
    with pytest.raises(ValueError, match="NCHW"):
        model(torch.randn(3, IMG, IMG))


def test_checkpoint_records_the_step_and_round_trips(tmp_path):
    model = randomize_batchnorm(create_model("roadmap_3_early_conv", num_classes=10)).eval()
    assert checkpoint_metadata(model)["variant"] == "roadmap_3_early_conv"
    path = save_checkpoint(model, tmp_path / "step3.pth")
    loaded = create_model(checkpoint=path)
    assert loaded.model_name == "roadmap_3_early_conv" and loaded.num_classes == 10
    x = torch.randn(1, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    fused_path = save_checkpoint(reparameterize(model), tmp_path / "step3_fused.pth")
    assert is_fused(create_model(checkpoint=fused_path))


def test_ablation_models_share_the_fused_network_they_are_compared_with():
    norep = reparameterize(create_model("roadmap_norep_m0_9").eval())
    build_skeleton("repvit_m0_9", fused=True).load_state_dict(norep.state_dict(), strict=True)
    assert count_params(create_model("roadmap_norep_m0_9")) < count_params(create_model("repvit_m0_9"))
    se_none, se_all = (create_model(f"roadmap_se_{p}_m0_9") for p in ("none", "all"))
    assert se_none.variant.stages == ("000", "D000", "D" + "0" * 15, "D00")
    assert se_all.variant.stages == ("111", "D111", "D" + "1" * 15, "D11")
    assert count_params(se_none) < count_params(create_model("repvit_m0_9")) < count_params(se_all)


# --------------------------------------------------------------------------- the command
def test_roadmap_command_prints_table_json_and_plot(tmp_path, capsys):
    accuracy = tmp_path / "acc.json"
    accuracy.write_text(json.dumps({"results": [{"name": "roadmap_0_mnv3l", "top1": 41.5},
                                                {"name": "roadmap_8_cross_se", "top1": 55.0}]}))
    plot = tmp_path / "roadmap.png"
    assert cli_main(["roadmap", "--img-size", str(IMG), "--repeats", "1", "--warmup", "0", "--threads", "1",
                     "--accuracy", str(accuracy), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "roadmap_2b_wider" in out and "ours top-1" in out and "71.5" in out and "plot written" in out
    assert plot.stat().st_size > 20_000 and plot.read_bytes()[:4] == b"\x89PNG"

    assert cli_main(["roadmap", "--json", "--no-latency", "--ablations", "--img-size", str(IMG)]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {r["name"]: r for r in rows}
    assert set(ALL_NAMES) <= set(by_name) and "repvit_m0_9" in by_name
    assert by_name["roadmap_0_mnv3l"]["params_train"] == 5_483_032
    assert by_name["roadmap_8_cross_se"]["params_fused"] == 5_067_056
    assert by_name["roadmap_8_cross_se"]["paper_top1"] == 77.4 and "cpu_ms" not in by_name["roadmap_8_cross_se"]


def test_roadmap_command_rejects_bad_options(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:   # --threads is checked by the parser (a count or auto)
        cli_main(["roadmap", "--threads", "0"])
    assert stop.value.code == 2
    assert cli_main(["roadmap", "--accuracy", str(tmp_path / "missing.json")]) == 2
    assert "error" in capsys.readouterr().err
