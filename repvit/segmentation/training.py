"""``repvit segment train``: Semantic FPN as a task of the training engine (``repvit.engine``)."""
from __future__ import annotations

from pathlib import Path

import torch.nn.functional as F

from ..engine.data import seeded_batches, stack_pairs
from ..engine.optim import adamw_with_warmup, describe_schedule
from ..engine.task import Task, describe_data, fused_copy
from .data import SemanticFolder, transforms_from_options
from .evaluation import evaluate_segmenter
from .semantic_fpn import SemanticFPN, save_segmenter


def class_names_of(cfg) -> list[str]:
    if cfg.class_names:
        return [n.strip() for n in cfg.class_names.split(",")]
    return [str(i) for i in range(cfg.num_classes)]


def build_task(cfg, env, log=print, resume=None) -> Task:
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
    batches = seeded_batches(train, stack_pairs, seed=cfg.seed, batch_size=cfg.batch_size, workers=cfg.workers,
                             env=env)

    def loss(model, batch, device):
        images, labels = batch
        logits = model(images.to(device))
        return F.cross_entropy(logits, labels.to(device), ignore_index=cfg.ignore_index)

    def evaluate(model, env):   # every rank scores its share; the confusion matrices are summed
        result = evaluate_segmenter(fused_copy(model), val, device=env.device, class_names=names, env=env)
        return {"mIoU": result["mIoU"], "aAcc": result["aAcc"], "mAcc": result["mAcc"]}

    def save(model, path, extra):
        return save_segmenter(model, path, class_names=names, ignore_index=cfg.ignore_index,
                              extra={"reduce_zero_label": cfg.reduce_zero_label, "eval_size": cfg.eval_size, **extra})

    for split, folder in (("train", train), ("val", val)):
        report = folder.skip_report()
        if report:
            log(f"{split}: {report}")
    skipped = len(train.skipped) + len(val.skipped)
    return Task("segmentation", model, batches, loss, lambda m: adamw_with_warmup(m, cfg, batches.steps_per_epoch),
                evaluate, "mIoU", save,
                describe=f"Semantic FPN on {cfg.model}, {len(names)} classes, {len(val)} val images"
                         + (f", {skipped} bad pairs skipped" if skipped else "")
                         + f"; {describe_data(batches, env, cfg.batch_size)}, "
                           f"{describe_schedule(cfg, batches.steps_per_epoch)}",
                nonfinite_hint="Lower --lr, raise --warmup-iters or set --clip-grad, or check the labels")

