"""EdgeTAM on Meta's sam2 against outputs of the OFFICIAL EdgeTAM code (facebookresearch/EdgeTAM),
stored in tests/data/edgetam_reference.npz by scripts/make_edgetam_reference.py from seeded random
weights and real frames of ../shared/data/videos/bedroom. The test redraws the same weights,
writes them as an official ``{"model": ...}`` file (timm's trunk names), loads that file and runs
the same image and video procedure (the script's own functions) with our model.

The official code tracked each object alone (it cannot hold two in one state); ours tracks both in
one state and each must give what the official code gave for it alone, also after a correction
click for one of them (the other must not change)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from repvit.edgetam.builder import INSTALL_HINT
from repvit.models.state_dict import CheckpointError
from tests.conftest import shared_data

# sam2 warns on every propagated frame that its optional CUDA kernel (hole filling) is absent; so does the official code
pytestmark = pytest.mark.filterwarnings("ignore:cannot import name '_C':UserWarning")

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "data" / "edgetam_reference.npz"
# The reference stores float16: allow its rounding (half a unit in the last place is 2^-11 relative).
RTOL, ATOL = 2 ** -10, 1e-4
MAX_MASK_FLIPS = 1e-4   # share of pixels whose side of 0 may differ (logits within rounding of 0)


def _script():
    spec = importlib.util.spec_from_file_location("make_edgetam_reference", REPO / "scripts" /
                                                  "make_edgetam_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCRIPT = _script()


@pytest.fixture(scope="module")
def sam2():
    return pytest.importorskip("sam2", reason="EdgeTAM needs the edgetam extra (Meta's sam2)")


def write_reference_checkpoint(folder: Path) -> Path:
    """The reference's seeded weights (official layout) saved as ``folder/edgetam.pt``: the weights the
    EdgeTAM tests share, shown equal to the official code here, whose object scores are positive."""
    with np.load(REFERENCE, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
    weights = SCRIPT.reference_weights([(n, tuple(s)) for n, s in meta["layout"]], meta["seed"])
    path = Path(folder) / "edgetam.pt"
    torch.save({"model": weights}, path)
    return path


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE, allow_pickle=False) as data:
        return json.loads(str(data["meta"])), {k: data[k] for k in data.files if k != "meta"}


@pytest.fixture(scope="module")
def official_file(reference, tmp_path_factory):
    """The reference's weights as an official-layout ``edgetam.pt``, and the weights."""
    meta, _ = reference
    weights = SCRIPT.reference_weights([(n, tuple(s)) for n, s in meta["layout"]], meta["seed"])
    assert SCRIPT.weights_checksum(weights) == pytest.approx(meta["weights_checksum"], rel=1e-9), (
        f"torch {torch.__version__} draws other numbers from a seeded generator than torch {meta['torch']} did: "
        "regenerate the reference with scripts/make_edgetam_reference.py (this is not a fault of the model)")
    assert any(k.startswith("image_encoder.trunk.body.stages_") for k in weights)   # timm's names, as released
    path = tmp_path_factory.mktemp("edgetam") / "edgetam.pt"
    torch.save({"model": weights}, path)
    return path, weights


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    source = shared_data("videos/bedroom", pattern="00000.jpg")
    return SCRIPT.copy_frames(source, tmp_path_factory.mktemp("bedroom"))


def assert_close(ours, official, what):
    ours, official = np.asarray(ours, dtype=np.float32), np.asarray(official, dtype=np.float32)
    assert ours.shape == official.shape, what
    err = np.abs(ours - official) - (ATOL + RTOL * np.abs(official))
    assert err.max() <= 0, f"{what}: max |ours - official| {np.abs(ours - official).max():.3g} beyond float16 rounding"


def assert_same_masks(ours, packed, width, what):
    official = SCRIPT.unpack(packed, width)
    flips = (official != ours).mean()
    assert flips <= MAX_MASK_FLIPS, f"{what}: {flips:.2%} of pixels differ"
    assert official.any() and not official.all(), what   # the reference compares real masks, not constants


def test_the_trunk_taps_where_timm_does_not_where_features_only_does():
    """EdgeTAM's trunk is timm's features_only RepViT-M1; the project's features_only taps one block later."""
    import timm
    from repvit.edgetam.trunk import RepViTTrunk, official_to_ours
    from repvit.models.factory import create_model
    from repvit.testing import randomize_batchnorm
    torch.manual_seed(0)
    timm_trunk = randomize_batchnorm(timm.create_model("repvit_m1", pretrained=False, features_only=True)).eval()
    state, renamed = official_to_ours({f"image_encoder.trunk.body.{k}": v for k, v in timm_trunk.state_dict().items()})
    assert len(renamed) == len(state)
    trunk = RepViTTrunk().eval()
    trunk.load_state_dict({k[len("image_encoder.trunk."):]: v for k, v in state.items()})
    ours_fo = create_model("repvit_m1", features_only=True).eval()
    ours_fo.load_state_dict(trunk.state_dict(), strict=False)
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        expected, got, later = timm_trunk(x), trunk(x), ours_fo(x)
    for stage, (e, g, l) in enumerate(zip(expected, got, later)):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
        assert (stage == 3) == torch.allclose(l, e, atol=1e-3), f"stage {stage}"
    assert trunk.channel_list == [384, 192, 96, 48]


def test_image_mode_equals_the_official_code(sam2, reference, official_file, frames):
    from sam2.sam2_image_predictor import SAM2ImagePredictor
    from repvit.edgetam import build_edgetam
    meta, ref = reference
    model = build_edgetam(official_file[0])            # the official layout, read with weights_only=True
    assert not model.training
    out = SCRIPT.image_outputs(SAM2ImagePredictor(model), SCRIPT.load_frame(frames))
    for key in ("embed", "feat_s1", "feat_s0", "image_lowres", "image_iou"):
        assert_close(out[key], ref[key], key)
    assert_same_masks(out["image_masks"], ref["image_masks"], meta["width"], "image masks")


def test_two_objects_in_one_state_track_as_the_official_code_tracks_each_alone(sam2, reference, official_file,
                                                                                frames):
    """Both objects in one state, then a correction click for the first on the last frame."""
    from repvit.edgetam import build_video_predictor
    meta, ref = reference
    predictor = build_video_predictor(official_file[0])
    before, after = SCRIPT.track(predictor, frames, SCRIPT.VIDEO_PROMPTS, SCRIPT.CORRECTION)
    assert len(before) == 2 and len(before[0]["lowres"]) == len(meta["frames"])
    # official: run 0 = the girl alone, run 1 = the boy alone, run 2 = the girl alone after the correction
    for run, official in ((before[0], 0), (before[1], 1), (after[0], 2), (after[1], 1)):
        what = f"official run {official}"
        assert_close(run["lowres"], ref[f"video{official}_lowres"], f"{what}: mask logits")
        assert_close(run["score"], ref[f"video{official}_score"], f"{what}: scores")
        assert_same_masks(run["masks"], ref[f"video{official}_masks"], meta["width"], f"{what}: masks")
    assert (before[0]["masks"][-1] != after[0]["masks"][-1]).mean() > 0.05    # the click changed the last frame


def test_the_perceiver_treats_each_batch_element_alone(sam2):
    from repvit.edgetam.assembly import spatial_perceiver
    torch.manual_seed(0)
    perceiver = spatial_perceiver().eval()
    x, pos = torch.randn(2, 64, 64, 64), torch.randn(2, 64, 64, 64)
    with torch.no_grad():
        both, both_pos = perceiver(x, pos)
        alone = [perceiver(x[i:i + 1], pos[i:i + 1]) for i in range(2)]
    assert both.shape == (2, 512, 64)
    for i, (latents, latent_pos) in enumerate(alone):
        torch.testing.assert_close(both[i:i + 1], latents, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(both_pos[i:i + 1], latent_pos)
    assert not torch.allclose(both[0], both[1], atol=1e-2)          # the two elements did differ
    assert both_pos[:, :256].abs().max() == 0 and both_pos[:, 256:].abs().max() > 0.5


def test_fusing_the_trunk_keeps_the_outputs(sam2, official_file):
    from repvit.edgetam import build_edgetam
    from repvit.models.reparam import is_fused
    plain, fused = build_edgetam(official_file[0]), build_edgetam(official_file[0], fused=True)
    assert is_fused(fused.image_encoder.trunk) and not is_fused(plain.image_encoder.trunk)
    # the inference form stores convolution weights channels_last, in the trunk and beyond it
    for module in (fused.image_encoder.trunk, fused.memory_encoder):
        convs = [m for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1)]
        assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x = torch.randn(1, 3, 256, 320)
    with torch.no_grad():
        a, b = plain.forward_image(x), fused.forward_image(x)
        # the memory encoder (convolutions on 64x64 maps) gives the same memory in either layout
        pix, masks = a["vision_features"], torch.randn(1, 1, 256, 320)
        mem_a = plain.memory_encoder(pix, masks, skip_mask_sigmoid=False)
        mem_b = fused.memory_encoder(pix, masks, skip_mask_sigmoid=False)
    for level, (p, f) in enumerate(zip(a["backbone_fpn"], b["backbone_fpn"])):
        torch.testing.assert_close(f, p, rtol=1e-4, atol=1e-4, msg=f"FPN level {level}")
    assert a["vision_features"].abs().mean() > 0.1
    torch.testing.assert_close(mem_b["vision_features"], mem_a["vision_features"], rtol=1e-4, atol=1e-4)
    assert mem_a["vision_features"].abs().mean() > 0.01


def test_strict_loading_names_the_wrong_tensor(sam2, official_file, tmp_path):
    from repvit.edgetam import build_edgetam
    _, weights = official_file
    bad = dict(weights)
    key = "image_encoder.trunk.body.stages_1.downsample.pre_block.token_mixer.conv.c.weight"
    assert key in bad
    bad[key] = bad[key][:, :, :2]
    bad["spatial_perceiver.latents_2d_typo"] = bad.pop("spatial_perceiver.latents_2d")
    torch.save({"model": bad}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        build_edgetam(tmp_path / "bad.pt")
    message = str(err.value)
    assert "spatial_perceiver.latents_2d (model (256, 64))" in message
    assert "spatial_perceiver.latents_2d_typo" in message
    assert key in message and "1 missing, 1 unexpected, 1 mis-shaped" in message
    torch.save({"model": {k: v for k, v in weights.items() if not k.startswith("spatial_perceiver.")}},
               tmp_path / "no_perceiver.pt")
    with pytest.raises(CheckpointError, match="the file holds no spatial_perceiver"):
        build_edgetam(tmp_path / "no_perceiver.pt")


def test_pretrained_goes_through_the_release_machinery(sam2, official_file, monkeypatch, tmp_path):
    from repvit.edgetam import build_edgetam
    from repvit.models.pretrained import MIRROR_ENV, WEIGHTS_DIR_ENV, read_recorded_sha256, sha256_of
    from repvit.models.releases import EDGETAM, find_release
    from tests.test_pretrained import ReleaseServer
    release = find_release("edgetam", kind=EDGETAM)
    assert release.url.startswith("https://github.com/facebookresearch/EdgeTAM/raw/") and release.filename == "edgetam.pt"
    path, weights = official_file
    server = ReleaseServer()
    server.files["edgetam.pt"] = path.read_bytes()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv(MIRROR_ENV, server.url)
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    try:
        model = build_edgetam(pretrained=True, progress=False)
        build_edgetam(pretrained=True, progress=False)          # the second load reads the cache
    finally:
        server.close()
    assert server.requests == ["edgetam.pt"]
    cached = tmp_path / "hub" / "checkpoints" / "edgetam.pt"
    assert read_recorded_sha256(cached) == sha256_of(path)
    key = "spatial_perceiver.latents_2d"
    torch.testing.assert_close(model.state_dict()[key], weights[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="pass one of pretrained=True .*, checkpoint= .* and seed="):
        build_edgetam(path, pretrained=True)


def test_without_sam2_the_error_is_one_line_naming_the_extra(monkeypatch):
    from repvit.edgetam import build_edgetam, build_video_predictor
    monkeypatch.setitem(sys.modules, "sam2", None)    # `import sam2` now raises ImportError
    for build in (build_edgetam, build_video_predictor):
        with pytest.raises(ImportError) as err:
            build()
        assert str(err.value) == INSTALL_HINT and "\n" not in INSTALL_HINT
        assert "repvit-pytorch[edgetam]" in INSTALL_HINT


def test_sam_predict_model_edgetam_gives_the_official_image_masks(sam2, reference, official_file, frames, tmp_path,
                                                                  capsys):
    """Image mode from the command line: `repvit sam predict --family edgetam` (fused, through the prompt
    code RepViT-SAM uses) picks the official code's best candidate mask for the same clicks."""
    from PIL import Image
    from repvit.cli import main
    meta, ref = reference
    (fg, bg), labels = SCRIPT.IMAGE_PROMPT["points"], SCRIPT.IMAGE_PROMPT["labels"]
    assert labels == [1, 0]
    out = tmp_path / "out"
    assert main(["sam", "predict", str(frames / "00000.jpg"), "--family", "edgetam", "--checkpoint", str(official_file[0]),
                 "--point", f"{fg[0]},{fg[1]},1", "--point", f"{bg[0]},{bg[1]},0", "--multimask", "on",
                 "--output", str(out)]) == 0
    record = json.loads((out / "00000_scores.json").read_text())
    best = int(np.argmax(ref["image_iou"]))
    (obj,) = record["objects"]
    assert record["model"] == "edgetam" and record["fused"] and obj["chosen"] == best
    assert_close(obj["scores"], ref["image_iou"], "predicted IoUs")
    mask = np.asarray(Image.open(out / obj["mask"])) > 0
    assert_same_masks(mask, ref["image_masks"][best], meta["width"], "the chosen mask")
    capsys.readouterr()
    # The SAM release's name or no weights at all: one clear line, nothing built.
    assert main(["sam", "predict", str(frames / "00000.jpg"), "--family", "edgetam", "--pretrained", "repvit_sam",
                 "--point", "10,10", "--output", str(out)]) == 2
    assert "--pretrained edgetam" in capsys.readouterr().err
    assert main(["sam", "predict", str(frames / "00000.jpg"), "--family", "edgetam", "--point", "10,10"]) == 2
    assert "--checkpoint edgetam.pt" in capsys.readouterr().err
