"""``repvit segment train``: the Semantic FPN task for the shared dense training loop."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..engine.loop import DenseTask, EpochSeeded
from .data import SemanticFolder, transforms_from_options
from .evaluation import evaluate_segmenter
from .semantic_fpn import SemanticFPN, save_segmenter


def class_names_of(cfg) -> list[str]:
    if cfg.class_names:
        return [n.strip() for n in cfg.class_names.split(",")]
    return [str(i) for i in range(cfg.num_classes)]


def build_task(cfg, env) -> DenseTask:
    names = class_names_of(cfg)
    root = Path(cfg.data)
    train_tf, eval_tf = transforms_from_options(cfg)
    train = SemanticFolder(root / "train", num_classes=len(names), ignore_index=cfg.ignore_index,
                           skip_bad=cfg.skip_bad, reduce_zero_label=cfg.reduce_zero_label,
                           train_transform=train_tf)
    val = SemanticFolder(root / "val", num_classes=len(names), ignore_index=cfg.ignore_index, skip_bad=cfg.skip_bad,
                         reduce_zero_label=cfg.reduce_zero_label, transforms=eval_tf)
    model = SemanticFPN(cfg.model, num_classes=len(names), norm_eval=cfg.norm_eval, frozen_stages=cfg.frozen_stages,
                        checkpoint=cfg.backbone, pretrained=cfg.pretrained)

    def loss(model, batch, device):
        images, labels = batch
        logits = model(images.to(device))
        return F.cross_entropy(logits, labels.to(device), ignore_index=cfg.ignore_index)

    def evaluate(model, device):
        result = evaluate_segmenter(model, val, device=device, class_names=names)
        return {"mIoU": result["mIoU"], "aAcc": result["aAcc"], "mAcc": result["mAcc"]}

    def save(model, path, extra):
        return save_segmenter(model, path, class_names=names, ignore_index=cfg.ignore_index,
                              extra={"reduce_zero_label": cfg.reduce_zero_label, "eval_size": cfg.eval_size, **extra})

    skipped = len(train.skipped) + len(val.skipped)
    return DenseTask("segmentation", model, EpochSeeded(train, cfg.seed), lambda b: tuple(torch.stack(x) for x in
                                                                                           zip(*b)),
                     loss, evaluate, "mIoU", save,
                     describe=f"Semantic FPN on {cfg.model}, {len(names)} classes, {len(val)} val images"
                              + (f", {skipped} bad pairs skipped" if skipped else ""))
