"""Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019), the head the
RepViT paper uses on ADE20K: an FPN with 256 channels on the four stage outputs, then per level
3x3 conv + BN + ReLU blocks with 2x upsampling until stride 4 (128 channels), summed, and a 1x1
classifier. Logits are returned at the input's resolution. Input: RGB in 0..1 (the model
normalizes with the ImageNet mean and std itself, as torchvision's detectors do).

The head's conv + BN pairs are ``ConvBN`` units, so ``repvit.reparameterize`` folds them with the
backbone.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..dense.backbone import RepViTBackbone
from ..dense.neck import BackboneWithFPN
from ..models.record import load_recorded_weights, read_record, save_record
from ..models.layers import ConvBN
from ..models.model import IMAGENET_MEAN, IMAGENET_STD, get_variant
from ..models.pretrained import fetch
from .official import load_official_segmenter, segmentation_release


class ScaleHead(nn.Module):
    """One pyramid level brought to stride 4: ``steps`` x (3x3 ConvBN + ReLU + 2x upsample), at least one conv.

    The last upsampling goes to the stride-4 level's exact size, so inputs whose sides are not
    multiples of 32 work, without a shape-dependent branch (the graph exports with dynamic sizes).
    """

    def __init__(self, in_channels: int, channels: int, steps: int):
        super().__init__()
        self.blocks = nn.ModuleList(ConvBN(in_channels if i == 0 else channels, channels, kernel_size=3)
                                    for i in range(max(1, steps)))
        self.steps = steps

    def forward(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = F.relu(block(x))
            if i < self.steps - 1:
                x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            elif i == self.steps - 1:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return x


class SemanticFPN(nn.Module):
    """Semantic FPN on RepViT ``name``. Backbone weights from ``checkpoint`` (a classification file)
    or ``pretrained`` (``"NAME[:TAG]"`` official ImageNet weights); ``pretrained="repvit_m1_1:ade20k"``
    (or the bare tag ``"ade20k"``) loads the whole official ADE20K model instead (150 classes, see
    ``repvit.segmentation.official``). ``norm_eval=True`` (the official recipe, and the default of
    ``repvit segment train``) keeps the backbone's BatchNorm statistics frozen during training."""

    def __init__(self, name: str = "repvit_m1_1", *, num_classes: int, taps: str = "segmentation",
                 fpn_channels: int = 256, head_channels: int = 128, dropout: float = 0.1, norm_eval: bool = True,
                 frozen_stages: int = -1, checkpoint=None, pretrained=None, drop_path_rate: float = 0.0):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be 1 or more, got {num_classes}")
        official = segmentation_release(get_variant(name).name, pretrained)
        if official is not None and (checkpoint is not None or taps != "segmentation"
                                     or num_classes != official.num_classes):
            raise ValueError(f"{official.spec} is a whole Semantic FPN for {official.num_classes} ADE20K classes "
                             f"with segmentation taps: build it with num_classes={official.num_classes}, "
                             "taps='segmentation' and no backbone checkpoint")
        backbone = RepViTBackbone(name, taps=taps, out_stages=(0, 1, 2, 3), norm_eval=norm_eval,
                                  frozen_stages=frozen_stages, checkpoint=checkpoint,
                                  pretrained=None if official else pretrained, drop_path_rate=drop_path_rate)
        self.backbone = BackboneWithFPN(backbone, out_channels=fpn_channels, extra="none")
        self.heads = nn.ModuleList(ScaleHead(fpn_channels, head_channels, steps=level) for level in range(4))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(head_channels, num_classes, kernel_size=1)
        self.num_classes = num_classes
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        # Every constructor option but the weight sources, so load_segmenter rebuilds this model.
        self.repvit_config = {"name": backbone.name, "num_classes": num_classes, "taps": taps,
                              "fpn_channels": fpn_channels, "head_channels": head_channels, "dropout": dropout,
                              "norm_eval": norm_eval, "frozen_stages": frozen_stages, "drop_path_rate": drop_path_rate}
        if official is not None:   # the whole model, after the frozen stages were set up (weights only change)
            load_official_segmenter(self, fetch(official), label=f"official {official.spec} ({official.filename})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = list(self.backbone((x - self.mean) / self.std).values())
        size = levels[0].shape[-2:]
        fused = self.heads[0](levels[0], size)
        for head, level in zip(self.heads[1:], levels[1:]):
            fused = fused + head(level, size)
        logits = self.classifier(self.dropout(fused))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def save_segmenter(model: SemanticFPN, path, *, class_names, ignore_index: int, extra: Optional[dict] = None):
    """A self-describing segmentation file: ``load_segmenter(path)`` rebuilds it with its classes."""
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
    return save_record(model, path, task="segmentation", config=model.repvit_config, class_names=class_names,
                       extra={"ignore_index": int(ignore_index), **(extra or {})})


def load_segmenter(path, *, use_ema: bool = False) -> SemanticFPN:
    """The model saved at ``path``, in eval mode, with ``class_names`` and ``ignore_index``."""
    record = read_record(path, "segmentation")
    config = dict(record["config"])
    model = SemanticFPN(config.pop("name"), **config)
    load_recorded_weights(model, record, path=path, what="Semantic FPN", use_ema=use_ema)
    model.class_names, model.ignore_index = list(record["class_names"]), int(record["ignore_index"])
    model.reduce_zero_label = bool(record.get("reduce_zero_label", False))
    # The (short, long) bound of the aligned resize validation ran at; None (older files): raw size.
    model.eval_size = tuple(record["eval_size"]) if record.get("eval_size") else None
    return model.eval()
