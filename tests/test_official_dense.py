"""The official downstream files load into our models exactly.

No official file is downloaded: each test builds a state dict in the official layout from the
module names and shapes of the official configs (mmsegmentation's FPN neck and FPNHead for
``segmentation/configs/sem_fpn/fpn_repvit_m1_1_ade20k_40k.py``; mmdetection's FPN, RPNHead,
Shared2FCBBoxHead and FCNMaskHead for ``detection/configs/mask_rcnn_repvit_m1_1_fpn_1x_coco.py``),
fills it with random tensors, maps it, loads it strictly and checks that values landed where
they belong. The backbone part is the classification layout under ``backbone.``.
"""
from __future__ import annotations

import math

import pytest
import torch

from repvit.dense.backbone import RepViTBackbone
from repvit.models.checkpoint import CheckpointError
from repvit.models.pretrained import WEIGHTS_DIR_ENV

NAME = "repvit_m1_1"
STAGE_CHANNELS = [64, 128, 256, 512]          # neck in_channels of both official configs for M1.1
FPN, HEAD, ADE_CLASSES, COCO_CLASSES = 256, 128, 150, 80


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen) if shape else torch.tensor(7)


def _conv_bn(prefix, c_out, gen):
    """An mmcv ConvModule with BatchNorm: a bias-free conv and a ``bn`` norm."""
    return {f"{prefix}.conv.weight": None, f"{prefix}.bn.weight": _randn(gen, c_out),
            f"{prefix}.bn.bias": _randn(gen, c_out), f"{prefix}.bn.running_mean": _randn(gen, c_out),
            f"{prefix}.bn.running_var": torch.rand(c_out, generator=gen) + 0.5,
            f"{prefix}.bn.num_batches_tracked": torch.tensor(1000)}


def official_backbone(taps: str, gen) -> dict:
    body = RepViTBackbone(NAME, taps=taps).body

    def fill(key, value):
        if not value.is_floating_point():
            return value.clone()
        if key.endswith("running_var"):
            return torch.rand(value.shape, generator=gen) + 0.5
        return torch.randn(value.shape, generator=gen) * 0.1
    return {f"backbone.{k}": fill(k, v) for k, v in body.state_dict().items()}


def official_neck(gen, num_outs: int = 4) -> dict:
    """mmcv FPN(in_channels=[64, 128, 256, 512], out_channels=256, num_outs): convs with bias, no norm;
    levels past the inputs come from max-pooling, which has no weights."""
    state = {}
    for i, c_in in enumerate(STAGE_CHANNELS):
        state[f"neck.lateral_convs.{i}.conv.weight"] = _randn(gen, FPN, c_in, 1, 1)
        state[f"neck.lateral_convs.{i}.conv.bias"] = _randn(gen, FPN)
        state[f"neck.fpn_convs.{i}.conv.weight"] = _randn(gen, FPN, FPN, 3, 3)
        state[f"neck.fpn_convs.{i}.conv.bias"] = _randn(gen, FPN)
    return state


def official_ade20k_state(seed: int = 0) -> dict:
    """EncoderDecoder(backbone, FPN, FPNHead(feature_strides=[4, 8, 16, 32], channels=128, SyncBN))."""
    gen = torch.Generator().manual_seed(seed)
    state = {**official_backbone("segmentation", gen), **official_neck(gen)}
    strides = [4, 8, 16, 32]
    for i, stride in enumerate(strides):
        length = max(1, int(math.log2(stride) - math.log2(strides[0])))
        position = 0
        for k in range(length):
            block = _conv_bn(f"decode_head.scale_heads.{i}.{position}", HEAD, gen)
            block[f"decode_head.scale_heads.{i}.{position}.conv.weight"] = _randn(gen, HEAD, FPN if k == 0 else HEAD,
                                                                                  3, 3)
            state.update(block)
            position += 2 if stride != strides[0] else 1     # an Upsample module follows each conv past level 0
    state["decode_head.conv_seg.weight"] = _randn(gen, ADE_CLASSES, HEAD, 1, 1)
    state["decode_head.conv_seg.bias"] = _randn(gen, ADE_CLASSES)
    return state


# --------------------------------------------------------------------------- ADE20K Semantic FPN
def test_ade20k_official_layout_loads_strictly_with_values_in_place():
    from repvit.segmentation.official import load_official_segmenter
    from repvit.segmentation.semantic_fpn import SemanticFPN
    official = official_ade20k_state()
    assert "decode_head.scale_heads.3.4.conv.weight" in official and "decode_head.scale_heads.0.1.conv.weight" \
        not in official   # the generator follows the official module positions
    model = SemanticFPN(NAME, num_classes=ADE_CLASSES)
    load_official_segmenter(model, official)
    assert torch.equal(model.heads[3].blocks[2].c.weight, official["decode_head.scale_heads.3.4.conv.weight"])
    assert torch.equal(model.heads[2].blocks[1].bn.running_var, official["decode_head.scale_heads.2.2.bn.running_var"])
    assert torch.equal(model.heads[0].blocks[0].bn.bias, official["decode_head.scale_heads.0.0.bn.bias"])
    assert torch.equal(model.classifier.weight, official["decode_head.conv_seg.weight"])
    assert torch.equal(model.backbone.fpn.inner_blocks[2][0].weight, official["neck.lateral_convs.2.conv.weight"])
    assert torch.equal(model.backbone.fpn.layer_blocks[3][0].bias, official["neck.fpn_convs.3.conv.bias"])
    assert torch.equal(model.backbone.body.body.features[21].channel_mixer.m[0].c.weight,
                       official["backbone.features.21.channel_mixer.m.0.c.weight"])
    # every tensor of the model came from the file
    mapped = {id(p) for p in model.state_dict(keep_vars=True).values()}
    assert len(mapped) == len(official)


def test_ade20k_official_file_through_pretrained_spec(tmp_path, monkeypatch):
    from repvit.segmentation.semantic_fpn import SemanticFPN
    official = official_ade20k_state(seed=1)
    torch.save({"meta": {"CLASSES": ["wall"] * ADE_CLASSES}, "state_dict": official}, tmp_path / f"{NAME}_ade20k.pth")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    model = SemanticFPN(NAME, num_classes=ADE_CLASSES, pretrained=f"{NAME}:ade20k")
    assert torch.equal(model.classifier.bias, official["decode_head.conv_seg.bias"])
    assert model.backbone.body.norm_eval   # the official recipe's default
    out = model.eval()(torch.rand(1, 3, 64, 96))
    assert out.shape == (1, ADE_CLASSES, 64, 96) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="num_classes=150"):
        SemanticFPN(NAME, num_classes=11, pretrained="ade20k")


def test_ade20k_official_file_that_does_not_fit_is_named():
    from repvit.segmentation.official import load_official_segmenter
    from repvit.segmentation.semantic_fpn import SemanticFPN
    official = official_ade20k_state()
    official.pop("decode_head.scale_heads.1.0.bn.running_mean")
    with pytest.raises(CheckpointError, match=r"heads\.1\.blocks\.0\.bn\.running_mean"):
        load_official_segmenter(SemanticFPN(NAME, num_classes=ADE_CLASSES), official)
    official = official_ade20k_state()
    official["decode_head.conv_seg.weight"] = torch.zeros(19, HEAD, 1, 1)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        load_official_segmenter(SemanticFPN(NAME, num_classes=ADE_CLASSES), official)
    official = official_ade20k_state()
    official["auxiliary_head.conv_seg.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="auxiliary_head"):
        load_official_segmenter(SemanticFPN(NAME, num_classes=ADE_CLASSES), official)


# --------------------------------------------------------------------------- COCO Mask R-CNN
def official_coco_state(seed: int = 0) -> dict:
    """MaskRCNN(backbone, FPN(num_outs=5), RPNHead(3 anchors, sigmoid), Shared2FCBBoxHead(1024, 80
    classes), FCNMaskHead(4 convs, deconv, 80 classes)) with mmdetection 2.x module names."""
    gen = torch.Generator().manual_seed(seed)
    state = {**official_backbone("detection", gen), **official_neck(gen, num_outs=5)}
    parts = {"rpn_head.rpn_conv": (FPN, FPN, 3, 3), "rpn_head.rpn_cls": (3, FPN, 1, 1),
             "rpn_head.rpn_reg": (12, FPN, 1, 1), "roi_head.bbox_head.shared_fcs.0": (1024, FPN * 7 * 7),
             "roi_head.bbox_head.shared_fcs.1": (1024, 1024), "roi_head.bbox_head.fc_cls": (COCO_CLASSES + 1, 1024),
             "roi_head.bbox_head.fc_reg": (COCO_CLASSES * 4, 1024),
             **{f"roi_head.mask_head.convs.{i}.conv": (FPN, FPN, 3, 3) for i in range(4)},
             "roi_head.mask_head.upsample": (FPN, FPN, 2, 2), "roi_head.mask_head.conv_logits": (COCO_CLASSES, FPN, 1, 1)}
    for name, shape in parts.items():
        state[f"{name}.weight"] = _randn(gen, *shape)
        state[f"{name}.bias"] = _randn(gen, shape[0] if "upsample" not in name else shape[1])
    return state


def test_coco_official_layout_loads_strictly_with_background_moved_first():
    from repvit.detection.detectors import build_detector
    from repvit.detection.official import load_official_detector
    official = official_coco_state()
    model = build_detector("maskrcnn", NAME, num_classes=COCO_CLASSES + 1)
    load_official_detector(model, official)
    heads = model.roi_heads
    fc_cls, fc_reg = official["roi_head.bbox_head.fc_cls.weight"], official["roi_head.bbox_head.fc_reg.weight"]
    assert torch.equal(heads.box_predictor.cls_score.weight[0], fc_cls[COCO_CLASSES])       # background
    assert torch.equal(heads.box_predictor.cls_score.weight[1:], fc_cls[:COCO_CLASSES])     # person .. toothbrush
    assert torch.equal(heads.box_predictor.cls_score.bias[0], official["roi_head.bbox_head.fc_cls.bias"][-1])
    assert not heads.box_predictor.bbox_pred.weight[:4].any()
    assert torch.equal(heads.box_predictor.bbox_pred.weight[4:], fc_reg)
    assert torch.equal(heads.mask_predictor.mask_fcn_logits.weight[1:], official["roi_head.mask_head.conv_logits.weight"])
    assert torch.equal(heads.mask_predictor.conv5_mask.weight, official["roi_head.mask_head.upsample.weight"])
    assert torch.equal(heads.mask_head[2][0].weight, official["roi_head.mask_head.convs.2.conv.weight"])
    assert torch.equal(heads.box_head.fc7.bias, official["roi_head.bbox_head.shared_fcs.1.bias"])
    assert torch.equal(model.rpn.head.conv[0][0].weight, official["rpn_head.rpn_conv.weight"])
    assert torch.equal(model.rpn.head.bbox_pred.weight, official["rpn_head.rpn_reg.weight"])
    assert torch.equal(model.backbone.fpn.inner_blocks[1][0].weight, official["neck.lateral_convs.1.conv.weight"])
    assert torch.equal(model.backbone.body.body.features[20].token_mixer[0].conv.c.weight,
                       official["backbone.features.20.token_mixer.0.conv.c.weight"])
    assert model.backbone.body.body.tap_indices == [2, 6, 20, 24]    # the official detection out_indices


def test_coco_official_file_into_faster_rcnn_and_refused_by_retinanet(tmp_path, monkeypatch):
    from repvit.detection.detectors import build_detector
    from repvit.detection.official import COCO_CATEGORY_IDS, load_official_detector, official_detector
    official = official_coco_state(seed=2)
    torch.save({"meta": {}, "state_dict": official}, tmp_path / f"{NAME}_coco.pth")
    monkeypatch.setenv(WEIGHTS_DIR_ENV, str(tmp_path))
    model = official_detector(f"{NAME}:coco", kind="fasterrcnn")
    assert torch.equal(model.roi_heads.box_head.fc6.weight, official["roi_head.bbox_head.shared_fcs.0.weight"])
    assert model.category_ids == COCO_CATEGORY_IDS and len(set(COCO_CATEGORY_IDS)) == 80
    assert model.transform.min_size == (800,) and model.transform.max_size == 1333
    with pytest.raises(ValueError, match="Mask R-CNN"):
        load_official_detector(build_detector("retinanet", NAME, num_classes=81), official)
    official["roi_head.bbox_head.fc_cls.weight"] = official["roi_head.bbox_head.fc_cls.weight"][:21]
    with pytest.raises(CheckpointError, match="cls_score"):
        load_official_detector(build_detector("maskrcnn", NAME, num_classes=81), official)


def _official_semantic_fpn_forward(state: dict, features: list, size) -> torch.Tensor:
    """The official neck and head written from their definitions (mmcv FPN: 1x1 laterals, nearest
    top-down sums, 3x3 outputs; mmseg FPNHead: per level conv-BN-ReLU then x2 bilinear upsampling,
    terms resized to level 0 and summed; conv_seg; logits resized to the input), reading the
    official state dict by its own key names."""
    import torch.nn.functional as F
    laterals = [F.conv2d(x, state[f"neck.lateral_convs.{i}.conv.weight"], state[f"neck.lateral_convs.{i}.conv.bias"])
                for i, x in enumerate(features)]
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:], mode="nearest")
    outs = [F.conv2d(x, state[f"neck.fpn_convs.{i}.conv.weight"], state[f"neck.fpn_convs.{i}.conv.bias"], padding=1)
            for i, x in enumerate(laterals)]
    total = None
    for level, x in enumerate(outs):
        position = 0
        while f"decode_head.scale_heads.{level}.{position}.conv.weight" in state:
            p = f"decode_head.scale_heads.{level}.{position}"
            x = F.conv2d(x, state[f"{p}.conv.weight"], padding=1)
            x = F.relu(F.batch_norm(x, state[f"{p}.bn.running_mean"], state[f"{p}.bn.running_var"],
                                    state[f"{p}.bn.weight"], state[f"{p}.bn.bias"], training=False, eps=1e-5))
            if level > 0:
                x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            position += 2 if level > 0 else 1
        total = x if total is None else total + F.interpolate(x, size=total.shape[2:], mode="bilinear",
                                                              align_corners=False)
    logits = F.conv2d(total, state["decode_head.conv_seg.weight"], state["decode_head.conv_seg.bias"])
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def test_ade20k_loaded_model_computes_the_official_function():
    from repvit.segmentation.official import load_official_segmenter
    from repvit.segmentation.semantic_fpn import SemanticFPN
    official = official_ade20k_state(seed=3)
    model = SemanticFPN(NAME, num_classes=ADE_CLASSES)
    load_official_segmenter(model, official)
    model.eval()
    image = torch.rand(1, 3, 64, 96)          # sides multiples of 32, as the official evaluation feeds
    with torch.no_grad():
        features = list(model.backbone.body((image - model.mean) / model.std).values())
        expected = _official_semantic_fpn_forward(official, features, image.shape[-2:])
        got = model(image)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
