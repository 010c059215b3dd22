"""Detectors from torchvision with a RepViT backbone: Mask R-CNN and Faster R-CNN on FPN levels
P2-P6, RetinaNet and FCOS on P3-P7 (torchvision's level choices for each).

The detector classes, heads, losses and post-processing are torchvision's; this module only
builds the backbone + FPN they take. ``repvit.reparameterize(detector.eval())`` folds the
backbone exactly, as it does for a classifier.
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn
from torchvision.models import detection as tvd

from ..dense.backbone import RepViTBackbone
from ..dense.neck import BackboneWithFPN
from ..models.record import load_recorded_weights, read_record, save_record

# kind -> (torchvision class, backbone stages fed to the FPN, extra FPN levels)
DETECTORS = {
    "maskrcnn": (tvd.MaskRCNN, (0, 1, 2, 3), "pool"),
    "fasterrcnn": (tvd.FasterRCNN, (0, 1, 2, 3), "pool"),
    "retinanet": (tvd.RetinaNet, (1, 2, 3), "p6p7"),
    "fcos": (tvd.FCOS, (1, 2, 3), "p6p7"),
}


def build_detector(kind: str, name: str = "repvit_m1_1", *, num_classes: int, taps: str = "detection",
                   norm_eval: bool = True, frozen_stages: int = -1, fpn_channels: int = 256,
                   checkpoint=None, pretrained=None, drop_path_rate: float = 0.0,
                   backbone: Optional[RepViTBackbone] = None, **detector_kwargs) -> nn.Module:
    """A torchvision ``kind`` detector on RepViT ``name``.

    ``num_classes`` counts the background, torchvision's convention for all four (80 COCO
    classes -> 81; labels run 1..80, as ``DetectionData`` gives them). Backbone weights come from ``checkpoint`` or
    ``pretrained`` (see ``RepViTBackbone``); other keywords (``min_size``, ``max_size``,
    ``box_detections_per_img``, ...) go to the torchvision class. ``model.repvit_config`` records
    them all, so ``load_detector`` rebuilds the same detector (input sizes included).
    """
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}; choose one of {', '.join(DETECTORS)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be 1 or more, got {num_classes}")
    cls, stages, extra = DETECTORS[kind]
    if backbone is None:
        backbone = RepViTBackbone(name, taps=taps, out_stages=stages, norm_eval=norm_eval, frozen_stages=frozen_stages,
                                  checkpoint=checkpoint, pretrained=pretrained, drop_path_rate=drop_path_rate)
    elif list(backbone.out_stages) != list(stages):
        raise ValueError(f"{kind} takes backbone stages {list(stages)}, the given backbone has {backbone.out_stages}")
    model = cls(BackboneWithFPN(backbone, out_channels=fpn_channels, extra=extra), num_classes=num_classes,
                **detector_kwargs)
    model.kind = kind
    # What rebuilds this detector from a saved file: every constructor option, values as given
    # (tuples stay tuples; save_detector refuses options that are not plain data). The weight
    # sources (checkpoint, pretrained, backbone) are not recorded: the file's weights replace them.
    model.repvit_config = {"kind": kind, "name": backbone.name, "num_classes": num_classes, "taps": backbone.taps,
                           "norm_eval": backbone.norm_eval, "frozen_stages": backbone.frozen_stages,
                           "fpn_channels": fpn_channels, "drop_path_rate": drop_path_rate, **detector_kwargs}
    return model


def save_detector(model: nn.Module, path, *, class_names: Sequence[str], category_ids: Sequence[int],
                  extra: Optional[dict] = None):
    """A self-describing detector file: ``load_detector(path)`` rebuilds it with its classes."""
    if len(class_names) != len(category_ids) or len(class_names) + 1 != model.repvit_config["num_classes"]:
        raise ValueError(f"{len(class_names)} class names and {len(category_ids)} category ids for a detector "
                         f"with {model.repvit_config['num_classes']} outputs (classes + background)")
    return save_record(model, path, task="detection", config=model.repvit_config, class_names=class_names,
                       extra={"category_ids": list(category_ids), **(extra or {})})


def load_detector(path, *, use_ema: bool = False) -> nn.Module:
    """The detector saved at ``path``, in eval mode, with ``class_names`` and ``category_ids``."""
    record = read_record(path, "detection")
    config = dict(record["config"])
    kind, name = config.pop("kind"), config.pop("name")
    model = build_detector(kind, name, **config)
    load_recorded_weights(model, record, path=path, what=f"{kind} detector", use_ema=use_ema)
    model.class_names, model.category_ids = list(record["class_names"]), list(record["category_ids"])
    return model.eval()
