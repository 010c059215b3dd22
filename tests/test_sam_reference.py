"""Our RepViT-SAM image encoder against outputs of the OFFICIAL one (THU-MIG/RepViT's
sam/repvit_sam/modeling/repvit.py), stored in tests/data/sam_encoder_reference.npz by
scripts/make_sam_reference.py, which runs the official code on seeded random weights. The test
redraws the same weights from the stored layout and seed, loads them through the official-format
whole-SAM loader, and compares the stride-16 features and the 256-channel embedding."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from repvit.sam import build_sam  # noqa: E402
from repvit.sam.builder import load_sam_weights  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "tests" / "data" / "sam_encoder_reference.npz"


def _script():
    spec = importlib.util.spec_from_file_location("make_sam_reference", REPO / "scripts" / "make_sam_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE, allow_pickle=False) as data:
        meta = json.loads(str(data["meta"]))
        return meta, torch.from_numpy(data["features"]), torch.from_numpy(data["embedding"])


@pytest.fixture(scope="module")
def ours(reference):
    """Our RepViT-SAM with the reference's weights in its image encoder, and the input."""
    meta, _, _ = reference
    script = _script()
    layout = [(name, tuple(shape)) for name, shape in meta["layout"]]
    weights = script.reference_weights(layout, meta["seed"])
    assert script.weights_checksum(weights) == pytest.approx(meta["weights_checksum"], rel=1e-9), (
        f"torch {torch.__version__} draws other numbers from a seeded generator than torch {meta['torch']} did: "
        "regenerate the reference with scripts/make_sam_reference.py (this is not a fault of the encoder)")
    sam = build_sam(variant="repvit_m2_3")
    state = {f"image_encoder.{k}": v for k, v in weights.items()}
    state.update({k: v for k, v in sam.state_dict().items() if not k.startswith("image_encoder.")})
    load_sam_weights(sam, state)   # the strict loader of official-format files: every official name fits
    return sam.image_encoder.eval(), script.reference_input(meta["seed"])


def run(encoder, x):
    with torch.no_grad():
        features = x
        for block in encoder.features:
            features = block(features)
        return features, encoder(x)


def assert_close(got, want, what):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, official {tuple(want.shape)}"
    error = (got - want).abs().max().item()
    scale = want.abs().max().item()
    assert error <= 1e-5 * max(1.0, scale), f"{what}: max |ours - official| = {error:.3g} (official |max| {scale:.3g})"


def test_reference_file_is_small_and_from_the_official_code(reference):
    meta, features, embedding = reference
    assert REFERENCE.stat().st_size < 1_000_000
    assert meta["official"].startswith("THU-MIG/RepViT@") and meta["official"].endswith("repvit_sam/modeling/repvit.py")
    # the official encoder's own structure facts, as it computed them: stride 16 (its last downsample
    # keeps stride 1), 640 channels before the neck, 256 after
    h, w = meta["input_shape"][2:]
    assert tuple(features.shape) == (1, 640, h // 16, w // 16) and tuple(embedding.shape) == (1, 256, h // 16, w // 16)
    assert features.std() > 0.1 and embedding.std() > 0.5   # the random weights give non-trivial outputs


def test_encoder_matches_the_official_outputs(reference, ours):
    _, want_features, want_embedding = reference
    encoder, x = ours
    assert encoder.stride == 16 and encoder.last_stride == 1
    features, embedding = run(encoder, x)
    assert_close(features, want_features, "features before the neck")
    assert_close(embedding, want_embedding, "embedding")


def test_fused_encoder_matches_the_official_outputs(reference, ours):
    from repvit import reparameterize
    _, _, want_embedding = reference
    encoder, x = ours
    fused = reparameterize(encoder)
    with torch.no_grad():
        got = fused(x)
    error = (got - want_embedding).abs().max().item()
    assert error <= 1e-4 * max(1.0, want_embedding.abs().max().item()), error   # folding reorders float sums


def test_the_comparison_would_notice_a_changed_block(reference, ours):
    import copy
    _, want_features, _ = reference
    encoder, x = ours
    changed = copy.deepcopy(encoder)
    with torch.no_grad():
        changed.features[30].token_mixer[0].bn.weight.mul_(1.01)   # one BatchNorm scale, 1 % off, deep inside
    features, _ = run(changed, x)
    with pytest.raises(AssertionError, match="max"):
        assert_close(features, want_features, "features before the neck")
