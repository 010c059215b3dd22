"""RepViT-SAM: the model, the official file layout, fusion, and segment-anything running it."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from repvit import create_model, is_fused, reparameterize  # noqa: E402
from repvit.models.checkpoint import CheckpointError  # noqa: E402
from repvit.sam import RepViTSamEncoder, build_sam  # noqa: E402
from repvit.sam.builder import save_sam  # noqa: E402
from repvit.testing import randomize_batchnorm  # noqa: E402

# Measured once from the official repository's build_sam_repvit() (sam/repvit_sam/build_sam.py):
# sha256 of repr(sorted((key, tuple(shape)) for its state dict)), and the number of tensors.
OFFICIAL_LAYOUT_SHA256 = "dea731ff5954d0b60a9d98fc93a2cff2a3cc34715583caeddea1865e52951792"
OFFICIAL_LAYOUT_TENSORS = 1598


def layout_digest(state) -> str:
    items = sorted((k, tuple(v.shape)) for k, v in state.items())
    return hashlib.sha256(repr(items).encode()).hexdigest()


def official_format_file(path, seed: int = 0):
    """An official-format repvit_sam.pt: flat state dict, deterministic non-trivial weights."""
    torch.manual_seed(seed)
    sam = build_sam()
    randomize_batchnorm(sam, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            if name.startswith("image_encoder.neck.") and name.endswith((".1.weight", ".3.weight")):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
    torch.save({k: v.clone() for k, v in sam.state_dict().items()}, path)
    return sam


@pytest.fixture(scope="module")
def sam_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam") / "repvit_sam.pt"
    reference = official_format_file(path)
    return path, reference


def test_layout_matches_the_official_release():
    sam = build_sam()
    state = sam.state_dict()
    assert len(state) == OFFICIAL_LAYOUT_TENSORS
    assert layout_digest(state) == OFFICIAL_LAYOUT_SHA256
    assert not sam.training and not sam.image_encoder.training
    assert sam.image_encoder.img_size == 1024
    # the last downsample of M2.3 runs at stride 1: 1024 -> 64
    assert sam.image_encoder.stride == 16
    assert state["image_encoder.neck.0.weight"].shape == (256, 640, 1, 1)
    assert state["image_encoder.neck.2.weight"].shape == (256, 256, 3, 3)


def test_encoder_output_and_neck_norm():
    enc = RepViTSamEncoder().eval()
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 256, 256))
    assert out.shape == (1, 256, 16, 16)
    # LayerNorm2d with unit weight and zero bias: every pixel normalised over channels
    assert torch.allclose(out.mean(1), torch.zeros(1, 16, 16), atol=1e-5)
    assert enc.neck[1].eps == 1e-6 and enc.neck[3].eps == 1e-6


def test_encoder_is_the_classifier_backbone_with_a_stride_1_last_stage():
    torch.manual_seed(0)
    clf = randomize_batchnorm(create_model("repvit_m2_3"), seed=1).eval()
    enc = RepViTSamEncoder().eval()
    enc.load_backbone(clf.state_dict())
    stride2 = RepViTSamEncoder(last_stride=2).eval()
    stride2.load_backbone(clf.state_dict())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        want = clf.forward_features(x)
        got = x
        for block in stride2.features:
            got = block(got)
        assert torch.allclose(got, want, atol=1e-5)
        # stride 1: stage 3 equal, stage 4 at twice the resolution
        _, stages = clf.forward_intermediates(x)
        y = x
        for i, block in enumerate(enc.features):
            y = block(y)
            if i == clf.feature_info[2]["index"]:
                assert torch.allclose(y, stages[2], atol=1e-5)
        assert y.shape[-1] == 2 * want.shape[-1]


def test_encoder_from_a_classification_checkpoint_file(tmp_path):
    from repvit import save_checkpoint
    torch.manual_seed(0)
    clf = create_model("repvit_m2_3", num_classes=10)
    save_checkpoint(clf, tmp_path / "m2_3.pth")
    sam = build_sam(encoder_checkpoint=tmp_path / "m2_3.pth")
    assert torch.equal(sam.image_encoder.features[5].token_mixer[0].conv.c.weight,
                       clf.features[5].token_mixer[0].conv.c.weight)
    save_checkpoint(create_model("repvit_m0_9"), tmp_path / "m0_9.pth")
    with pytest.raises(CheckpointError, match="does not fit the repvit_m2_3 encoder"):
        build_sam(encoder_checkpoint=tmp_path / "m0_9.pth")


def test_official_file_loads_strictly_and_exactly(sam_file):
    path, reference = sam_file
    sam = build_sam(path)
    for key, value in reference.state_dict().items():
        assert torch.equal(sam.state_dict()[key], value), key


def test_mismatched_files_say_what_is_wrong(sam_file, tmp_path):
    path, reference = sam_file
    state = torch.load(path, weights_only=True)
    del state["mask_decoder.iou_token.weight"]
    state["image_encoder.neck.0.weight"] = torch.zeros(256, 320, 1, 1)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        build_sam(tmp_path / "bad.pt")
    message = str(err.value)
    assert "mask_decoder.iou_token.weight" in message and "shape of image_encoder.neck.0.weight" in message
    torch.save(create_model("repvit_m2_3").state_dict(), tmp_path / "classifier.pt")
    with pytest.raises(CheckpointError, match="encoder_checkpoint"):
        build_sam(tmp_path / "classifier.pt")


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))
    torch.save({"image_encoder.x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not executed"):
        build_sam(tmp_path / "evil.pt")


def test_fusion_is_exact_and_total(sam_file):
    path, _ = sam_file
    sam = build_sam(path)
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        want = sam.image_encoder(x)
        for fused in (build_sam(path, fused=True).image_encoder, reparameterize(sam).image_encoder,
                      reparameterize(sam.image_encoder)):
            assert is_fused(fused) and fused.fused
            assert torch.allclose(fused(x), want, atol=1e-4, rtol=1e-4)
    fused_sam = build_sam(path, fused=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused_sam.modules())
    # a fused whole-SAM file round-trips, and the error names the fix when it meets an unfused model
    save_sam(fused_sam, path.parent / "fused.pt")
    assert torch.equal(build_sam(path.parent / "fused.pt", fused=True).image_encoder.neck[0].weight,
                       fused_sam.image_encoder.neck[0].weight)
    with pytest.raises(CheckpointError, match="fused=True"):
        build_sam(path.parent / "fused.pt")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_encoder_keeps_dtype_and_channels_last(sam_file, dtype):
    path, _ = sam_file
    enc = build_sam(path).image_encoder
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        want = reparameterize(enc)(x)
        low = reparameterize(enc.to(dtype).to(memory_format=torch.channels_last))
        assert all(p.dtype == dtype for p in low.parameters())
        assert low.neck[0].weight.is_contiguous(memory_format=torch.channels_last)
        got = low(x.to(dtype).to(memory_format=torch.channels_last)).float()
    assert (got - want).abs().max() / want.abs().max() < 0.05


def test_segment_anything_predictor_runs_it(sam_file):
    from segment_anything import SamPredictor
    path, _ = sam_file
    sam = build_sam(path, fused=True)
    predictor = SamPredictor(sam)
    image = (np.random.default_rng(0).random((120, 200, 3)) * 255).astype(np.uint8)
    predictor.set_image(image)
    assert predictor.features.shape == (1, 256, 64, 64)
    masks, scores, low = predictor.predict(point_coords=np.array([[100, 60]]), point_labels=np.array([1]),
                                           box=np.array([20, 10, 180, 110]), multimask_output=True)
    assert masks.shape == (3, 120, 200) and scores.shape == (3,) and low.shape == (3, 256, 256)


def test_pretrained_downloads_the_official_file_once(sam_file, tmp_path, monkeypatch, capsys):
    from repvit.cli import main
    from repvit.models.pretrained import MIRROR_ENV, WEIGHTS_DIR_ENV
    from .test_pretrained import ReleaseServer
    path, reference = sam_file
    server = ReleaseServer()
    server.files["repvit_sam.pt"] = path.read_bytes()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv(MIRROR_ENV, server.url)
    monkeypatch.delenv(WEIGHTS_DIR_ENV, raising=False)
    try:
        sam = build_sam(pretrained=True, progress=False)
        assert torch.equal(sam.mask_decoder.iou_token.weight, reference.mask_decoder.iou_token.weight)
        fused = build_sam(pretrained=True, fused=True, progress=False)  # from the cache
        assert is_fused(fused.image_encoder)
        image = tmp_path / "img.png"
        from PIL import Image
        Image.fromarray((np.random.default_rng(0).random((64, 80, 3)) * 255).astype(np.uint8)).save(image)
        assert main(["sam", "predict", str(image), "--point", "40,30", "--pretrained", "repvit_sam", "-o", str(tmp_path / "o")]) == 0
        assert server.requests == ["repvit_sam.pt"]
        from pathlib import Path
        hub = torch.hub.load(str(Path(__file__).resolve().parents[1]), "repvit_sam", source="local", pretrained=True,
                             fused=True, progress=False)
        assert torch.equal(hub.image_encoder.neck[0].weight, fused.image_encoder.neck[0].weight)
        with pytest.raises(ValueError, match="not both"):
            build_sam(path, pretrained=True)
    finally:
        server.close()
