"""RepViT as a dense-prediction backbone: tap conventions, weights, frozen statistics and stages,
torchvision's four detectors and the Semantic FPN, each trained one step and fused exactly."""
from __future__ import annotations

import argparse

import pytest
import torch

from repvit import create_model, reparameterize
from repvit.dense.backbone import RepViTBackbone, tap_indices
from repvit.detection.detectors import DETECTORS, build_detector
from repvit.export.verify import load_crop
from repvit.models.checkpoint import CheckpointError
from repvit.models.variants import VARIANTS
from repvit.segmentation.semantic_fpn import SemanticFPN
from repvit.testing import randomize_batchnorm

# The official downstream code's taps (detection/ and segmentation/ configs of THU-MIG/RepViT).
OFFICIAL_TAPS = {
    "repvit_m1_1": ((2, 6, 20, 24), (3, 7, 21, 24)),
    "repvit_m1_5": ((4, 10, 36, 42), (5, 11, 37, 42)),
    "repvit_m2_3": ((6, 14, 50, 54), (7, 15, 51, 54)),
}


@pytest.mark.parametrize("name", OFFICIAL_TAPS)
def test_tap_indices_are_the_official_ones(name):
    detection, segmentation = OFFICIAL_TAPS[name]
    assert tap_indices(name, "detection") == list(detection)
    assert tap_indices(name, "segmentation") == list(segmentation)
    with pytest.raises(ValueError, match="taps must be"):
        tap_indices(name, "classification")


@pytest.mark.parametrize("name", list(VARIANTS))
@pytest.mark.parametrize("taps", ["detection", "segmentation"])
def test_backbone_outputs_strides_4_to_32(name, taps):
    backbone = RepViTBackbone(name, taps=taps).eval()
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 96))
    assert list(out) == ["0", "1", "2", "3"] and backbone.strides == [4, 8, 16, 32]
    for (key, value), channels, stride in zip(out.items(), backbone.channels, backbone.strides):
        assert tuple(value.shape) == (1, channels, 64 // stride, 96 // stride), key


def test_detection_taps_are_one_block_before_the_segmentation_taps():
    x = torch.randn(1, 3, 64, 64)
    det, seg = RepViTBackbone("repvit_m0_6", taps="detection").eval(), RepViTBackbone("repvit_m0_6", taps="segmentation").eval()
    seg.load_state_dict(det.state_dict())
    with torch.no_grad():
        a, b = det(x), seg(x)
        manual = x
        for block in det.body.features[: tap_indices("repvit_m0_6", "detection")[0] + 1]:
            manual = block(manual)
    torch.testing.assert_close(a["0"], manual)
    assert not torch.allclose(a["0"], b["0"]) and torch.equal(a["3"], b["3"])


def test_backbone_loads_a_classification_checkpoint_strictly(tmp_path):
    classifier = randomize_batchnorm(create_model("repvit_m0_6", distillation=True))
    torch.save({"model": classifier.state_dict(), "args": argparse.Namespace(lr=1e-3)}, tmp_path / "official.pth")
    backbone = RepViTBackbone("repvit_m0_6", checkpoint=tmp_path / "official.pth")
    for key, value in backbone.body.state_dict().items():
        assert torch.equal(value, classifier.state_dict()[key]), key
    dropped = next(k for k in classifier.state_dict() if k.startswith("features.3.") and k.endswith("weight"))
    broken = {k: v for k, v in classifier.state_dict().items() if k != dropped}
    torch.save({"model": broken}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="missing"):
        RepViTBackbone("repvit_m0_6", checkpoint=tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="repvit_m0_6"):
        RepViTBackbone("repvit_m0_9", checkpoint=tmp_path / "official.pth")


def test_norm_eval_keeps_statistics_and_frozen_stages_get_no_gradient():
    backbone = RepViTBackbone("repvit_m0_6", norm_eval=True, frozen_stages=2).train()
    before = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    out = backbone(torch.randn(2, 3, 64, 64))
    sum(o.mean() for o in out.values()).backward()
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())   # statistics untouched
    ends = tap_indices("repvit_m0_6", "segmentation")
    for index, block in enumerate(backbone.body.features):
        grads = [p.grad for p in block.parameters()]
        if index <= ends[1]:
            assert all(g is None for g in grads), index
        else:
            assert any(g is not None and g.abs().sum() > 0 for g in grads), index
    trainable = RepViTBackbone("repvit_m0_6", norm_eval=False).train()
    trainable(torch.randn(2, 3, 64, 64))
    assert any(not torch.equal(v, trainable.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="frozen_stages"):
        RepViTBackbone("repvit_m0_6", frozen_stages=5)


def real_image(root, size: int) -> torch.Tensor:
    """One real Imagenette photo, resized and centre-cropped to ``size``, as a 0..1 tensor."""
    from torchvision.transforms.functional import to_tensor
    path = sorted((root / "val").rglob("*.JPEG"))[0]
    return to_tensor(load_crop(path, {"input_size": (3, size, size), "crop_pct": 1.0}))


def _targets(kind: str, size: int = 128):
    boxes = torch.tensor([[10.0, 12.0, 70.0, 90.0], [40.0, 30.0, 120.0, 110.0]])
    target = {"boxes": boxes, "labels": torch.tensor([1, 2])}
    if kind == "maskrcnn":
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
            m[y0:y1, x0:x1] = 1
        target["masks"] = masks
    return [target]


def assert_same_detections(want: dict, got: dict, *, min_count: int = 10, box_tol: float = 0.05,
                           score_tol: float = 1e-3, mask_tol: float = 0.02) -> int:
    """Each detection of ``want`` at or above its ``min_count``-th best score is in ``got`` (same label,
    box corners within ``box_tol`` px, score within ``score_tol``, mask probabilities within
    ``mask_tol``), and the other way round; returns how many were compared.

    Detections are matched by value, not position: fusion moves scores by ~1e-6, which may swap
    the order of near-equal scores, and the threshold keeps the comparison away from the
    detections-per-image cap, where such a swap can drop one detection and admit another.
    """
    assert len(want["scores"]) >= min_count and len(got["scores"]) >= min_count, \
        f"only {len(want['scores'])} / {len(got['scores'])} detections: the comparison would say little"
    threshold = want["scores"].sort(descending=True).values[min_count - 1].item()
    compared = 0
    for a, b in ((want, got), (got, want)):
        for i in torch.nonzero(a["scores"] >= threshold).flatten().tolist():
            same = ((b["labels"] == a["labels"][i]) & ((b["boxes"] - a["boxes"][i]).abs().amax(dim=1) <= box_tol)
                    & ((b["scores"] - a["scores"][i]).abs() <= score_tol))
            assert same.any(), (f"detection {i} (label {a['labels'][i].item()}, score {a['scores'][i].item():.6f}, "
                                f"box {a['boxes'][i].tolist()}) has no counterpart")
            if "masks" in a:
                j = torch.nonzero(same).flatten()[0]
                worst = (b["masks"][j] - a["masks"][i]).abs().max().item()
                assert worst <= mask_tol, f"detection {i}: mask probabilities differ by {worst:.3g}"
            compared += 1
    return compared


# RetinaNet and FCOS start from a 0.01 class prior, below their 0.05 default threshold: keep every
# detection so there is something to compare.
NO_SCORE_FLOOR = {"retinanet": {"score_thresh": 0.0}, "fcos": {"score_thresh": 0.0}}


@pytest.mark.parametrize("kind", list(DETECTORS))
def test_each_detector_trains_a_step_and_fuses_exactly(kind, imagenette_root):
    torch.manual_seed(0)
    model = build_detector(kind, "repvit_m0_6", num_classes=3, min_size=128, max_size=128,
                           **NO_SCORE_FLOOR.get(kind, {}))
    randomize_batchnorm(model)
    model.train()
    losses = model([torch.rand(3, 128, 128)], _targets(kind))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.body.parameters())
    model.eval()
    image = real_image(imagenette_root, 128)
    fused = reparameterize(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    with torch.no_grad():
        x = image[None]
        a, b = model.backbone(x), fused.backbone(x)
        for key in a:
            torch.testing.assert_close(b[key], a[key], atol=1e-4, rtol=1e-4)
        out_a, out_b = model([image]), fused([image])
    assert set(out_a[0]) == set(out_b[0]) and {"boxes", "scores", "labels"} <= set(out_a[0])
    assert_same_detections(out_a[0], out_b[0])


def test_fused_mask_rcnn_finds_the_same_objects_on_real_photos():
    """Randomized BatchNorm statistics (fresh ones make fusion trivially exact), eval mode, two
    fruit photos in one batch: the fused detector's boxes, labels, scores and masks match."""
    from torchvision.io import read_image
    from .test_dense_data import need
    photos = sorted((need("fruit") / "images").glob("*.jpg"))[:2]
    # at 320x240 (the detector works at 256 px anyway), so pasting 100 masks per image stays cheap
    images = [torch.nn.functional.interpolate(read_image(str(path))[None].float() / 255.0, size=(240, 320),
                                              mode="bilinear", antialias=True, align_corners=False)[0]
              for path in photos]
    torch.manual_seed(0)
    # 200 proposals per image instead of 1000 keep the box head's cost small on 2 CPU cores
    model = randomize_batchnorm(build_detector("maskrcnn", "repvit_m0_6", num_classes=4, min_size=256, max_size=352,
                                               rpn_pre_nms_top_n_test=400, rpn_post_nms_top_n_test=200)).eval()
    fused = reparameterize(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    with torch.no_grad():
        want, got = model(images), fused(images)
    for a, b in zip(want, got):
        assert a["masks"].shape[-2:] == (240, 320)
        assert assert_same_detections(a, b, min_count=20) >= 35   # both ways, ties at the threshold aside
    # the check can fail: another image's detections do not match
    with pytest.raises(AssertionError, match="no counterpart"):
        assert_same_detections(want[0], got[1], min_count=20)


def test_semantic_fpn_trains_and_fuses_exactly(imagenette_root):
    model = randomize_batchnorm(SemanticFPN("repvit_m0_6", num_classes=5))
    model.train()
    x = torch.rand(2, 3, 96, 80)
    logits = model(x)
    assert logits.shape == (2, 5, 96, 80)
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 5, (2, 96, 80))).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    image = real_image(imagenette_root, 96)
    fused = reparameterize(model)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(image[None]), model(image[None]), atol=1e-4, rtol=1e-4)
