"""The official COCO Mask R-CNN files (``repvit_m*_coco.pth`` of the RepViT release, saved by
mmdetection 2.28 from ``detection/configs/mask_rcnn_repvit_*_fpn_1x_coco.py``) as weights of
torchvision's ``MaskRCNN`` on our backbone (``build_detector("maskrcnn", ...)``).

Every tensor has a place, and the load is strict:

=============================================  =============================================
official (mmdetection)                         ours (torchvision)
=============================================  =============================================
``backbone.*``                                 ``backbone.body.body.*`` (detection taps)
``neck.lateral_convs.i`` / ``fpn_convs.i``     ``backbone.fpn.inner_blocks.i`` / ``layer_blocks.i``
``rpn_head.rpn_conv`` / ``rpn_cls`` / ``rpn_reg``  ``rpn.head.conv.0.0`` / ``cls_logits`` / ``bbox_pred``
``roi_head.bbox_head.shared_fcs.0`` / ``.1``   ``roi_heads.box_head.fc6`` / ``fc7``
``roi_head.bbox_head.fc_cls`` (81 rows)        ``roi_heads.box_predictor.cls_score``: background
                                               row moved from last to first
``roi_head.bbox_head.fc_reg`` (80 x 4 rows)    ``roi_heads.box_predictor.bbox_pred``: 4 zero rows
                                               for the background put first
``roi_head.mask_head.convs.i``                 ``roi_heads.mask_head.i.0``
``roi_head.mask_head.upsample``                ``roi_heads.mask_predictor.conv5_mask``
``roi_head.mask_head.conv_logits`` (80)        ``roi_heads.mask_predictor.mask_fcn_logits``: a zero
                                               background map put first
=============================================  =============================================

Label ``k`` (1..80) is the k-th COCO category in id order (``COCO_CATEGORY_IDS``), as in
mmdetection's ``CocoDataset`` and our ``DetectionData``. The anchors (sizes 32..512, ratios 0.5, 1,
2, ratio-major), the box coders (mmdet's stds 0.1/0.2 are torchvision's weights 10/5), the level
assignment of RoIs, the score threshold (0.05), NMS (0.5) and the 100 detections per image agree.
What does not map exactly, so scores can differ slightly from the paper's 39.8 box AP (M1.1):

* RoIAlign: mmcv's is ``aligned=True`` (a half-pixel offset) with adaptive sampling
  (``sampling_ratio=0``); torchvision's ``MultiScaleRoIAlign`` is ``aligned=False`` with 2 samples;
* anchors: torchvision rounds its base anchors to whole pixels, mmdetection does not;
* RPN training proposals: mmdetection keeps 1000 after NMS per image, torchvision 2000 (test: 1000 both).
"""
from __future__ import annotations

import re
from typing import Optional

import torch
from torch import nn

from ..dense.official import load_strictly, map_backbone_and_neck, read_official_state
from ..models.checkpoint import CheckpointError
from ..models.pretrained import fetch
from ..models.releases import DETECTION, release_by_spec
from .detectors import build_detector

COCO_CATEGORY_IDS = (list(range(1, 12)) + list(range(13, 26)) + [27, 28] + list(range(31, 45)) + list(range(46, 66))
                     + [67, 70] + list(range(72, 83)) + list(range(84, 91)))
_RENAMES = [
    (re.compile(r"^rpn_head\.rpn_conv\.(weight|bias)$"), r"rpn.head.conv.0.0.\1"),
    (re.compile(r"^rpn_head\.rpn_cls\.(weight|bias)$"), r"rpn.head.cls_logits.\1"),
    (re.compile(r"^rpn_head\.rpn_reg\.(weight|bias)$"), r"rpn.head.bbox_pred.\1"),
    (re.compile(r"^roi_head\.bbox_head\.shared_fcs\.0\.(weight|bias)$"), r"roi_heads.box_head.fc6.\1"),
    (re.compile(r"^roi_head\.bbox_head\.shared_fcs\.1\.(weight|bias)$"), r"roi_heads.box_head.fc7.\1"),
    (re.compile(r"^roi_head\.mask_head\.convs\.(\d+)\.conv\.(weight|bias)$"), r"roi_heads.mask_head.\1.0.\2"),
    (re.compile(r"^roi_head\.mask_head\.upsample\.(weight|bias)$"), r"roi_heads.mask_predictor.conv5_mask.\1"),
]
_CLASS_SCORES = "roi_head.bbox_head.fc_cls."
_BOX_DELTAS = "roi_head.bbox_head.fc_reg."
_MASK_LOGITS = "roi_head.mask_head.conv_logits."


def convert_official_state(state: dict, *, masks: bool = True) -> dict:
    """An official Mask R-CNN state dict in torchvision's layout (background first); ``masks=False``
    leaves out the mask branch (for ``fasterrcnn``). An unknown key is an error."""
    out = {}
    for key, value in state.items():
        target = map_backbone_and_neck(key, "backbone.")
        if target is None:
            for pattern, replacement in _RENAMES:
                if pattern.match(key):
                    target = pattern.sub(replacement, key)
                    break
        if target is None and key.startswith(_CLASS_SCORES):   # [80 classes, background] -> [background, 80]
            target = "roi_heads.box_predictor.cls_score." + key[len(_CLASS_SCORES):]
            value = torch.cat([value[-1:], value[:-1]])
        elif target is None and key.startswith(_BOX_DELTAS):   # per-class deltas; none for the background
            target = "roi_heads.box_predictor.bbox_pred." + key[len(_BOX_DELTAS):]
            value = torch.cat([value.new_zeros((4,) + value.shape[1:]), value])
        elif target is None and key.startswith(_MASK_LOGITS):
            target = "roi_heads.mask_predictor.mask_fcn_logits." + key[len(_MASK_LOGITS):]
            value = torch.cat([value.new_zeros((1,) + value.shape[1:]), value])
        if target is None:
            raise CheckpointError(f"{key} is not part of an official Mask R-CNN file (backbone, neck, rpn_head, "
                                  "roi_head bbox_head / mask_head); is this file a COCO Mask R-CNN checkpoint?")
        if not masks and target.startswith(("roi_heads.mask_head.", "roi_heads.mask_predictor.")):
            continue
        out[target] = value
    return out


def load_official_detector(model: nn.Module, source, *, label: Optional[str] = None) -> str:
    """Load an official COCO file (path or state dict) into a ``maskrcnn`` or ``fasterrcnn`` from
    ``build_detector`` with 81 classes, strictly."""
    kind = getattr(model, "kind", None)
    if kind not in ("maskrcnn", "fasterrcnn"):
        raise ValueError(f"the official COCO files are Mask R-CNNs: they load into a maskrcnn (or, without the mask "
                         f"branch, a fasterrcnn), not a {kind}; take only their backbone with "
                         "RepViTBackbone.load_weights on the official ImageNet file instead")
    label = label or (f"official Mask R-CNN file {str(source)!r}" if not isinstance(source, dict)
                      else "official Mask R-CNN state")
    state = convert_official_state(read_official_state(source), masks=kind == "maskrcnn")
    load_strictly(model, state, source=label)
    return label


def official_detector(spec: str = "repvit_m1_1:coco", kind: str = "maskrcnn", **detector_kwargs) -> nn.Module:
    """The official COCO model ``spec`` (``NAME:coco``) as a torchvision ``kind`` (maskrcnn or
    fasterrcnn) with the official test size (800, at most 1333), in eval mode, with ``category_ids``."""
    release = release_by_spec(spec)
    if release.kind != DETECTION:
        raise ValueError(f"{spec} is not an official detection file; those are "
                         "repvit_m1_1:coco, repvit_m1_5:coco, repvit_m2_3:coco")
    detector_kwargs = {"min_size": 800, "max_size": 1333, **detector_kwargs}
    model = build_detector(kind, release.model, num_classes=release.num_classes + 1, taps="detection",
                           norm_eval=True, **detector_kwargs)
    load_official_detector(model, fetch(release), label=f"official {release.spec} ({release.filename})")
    model.category_ids = list(COCO_CATEGORY_IDS)
    return model.eval()
