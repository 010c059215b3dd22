"""``repvit segment train``: Semantic FPN as a task of the training engine (``repvit.engine``).

The frames come from ``--data`` split by ``--val-split`` (``repvit.segmentation.data``: train/ and
val/ as they are, a held-out sequence, or everything trained on for a final fit), and the run's
log states the split with its frames per sequence. ``--whole-frame-epochs N`` trains the last N
epochs on whole frames as validation sees them instead of the random-scale crops."""
from __future__ import annotations

import functools

import torch.nn.functional as F

from ..engine.data import seeded_batches
from ..engine.optim import adamw_with_warmup, describe_schedule
from ..engine.task import Task, TrainBatches, describe_data, fused_copy
from .data import (SemanticFolder, describe_split, parse_split, stack_padded, transforms_from_options,
                   whole_frame_from_options)
from .evaluation import evaluate_segmenter
from .semantic_fpn import SemanticFPN, save_segmenter


def class_names_of(cfg) -> list[str]:
    if cfg.class_names:
        return [n.strip() for n in cfg.class_names.split(",")]
    return [str(i) for i in range(cfg.num_classes)]


def phased_batches(train: SemanticFolder, cfg, env, *, crops, whole, whole_epochs: int, log=print) -> TrainBatches:
    """The engine's seeded batches of ``train``, whose training transform is ``crops`` before the last
    ``whole_epochs`` epochs and ``whole`` in them (set before each epoch's loader starts its workers,
    so the transform is a function of the epoch and a resumed run sees what the uninterrupted one did)."""
    seeded = seeded_batches(train, functools.partial(stack_padded, ignore_index=cfg.ignore_index), seed=cfg.seed,
                            batch_size=cfg.batch_size, workers=cfg.workers, env=env)
    first_whole = cfg.epochs - whole_epochs

    def batches(epoch: int, first_step: int):
        train.train_transform = whole if epoch >= first_whole else crops
        if whole_epochs and epoch == first_whole and first_step == 0:
            log(f"epoch {epoch + 1}: whole frames from here on (the last {whole_epochs} of {cfg.epochs} epochs)")
        return seeded.batches(epoch, first_step)

    return TrainBatches(batches, seeded.steps_per_epoch, seeded.num_images)


def build_task(cfg, env, log=print, resume=None) -> Task:
    names = class_names_of(cfg)
    spec = getattr(cfg, "val_split", None) or "folders"
    form, _ = parse_split(spec)
    whole_epochs = int(getattr(cfg, "whole_frame_epochs", 0) or 0)
    if not 0 <= whole_epochs <= cfg.epochs:
        raise ValueError(f"--whole-frame-epochs must be between 0 and --epochs ({cfg.epochs}), got {whole_epochs}")
    train_tf, eval_tf = transforms_from_options(cfg)
    common = dict(num_classes=len(names), ignore_index=cfg.ignore_index, skip_bad=cfg.skip_bad,
                  reduce_zero_label=cfg.reduce_zero_label)
    train = SemanticFolder(cfg.data, split=spec, part="train", train_transform=train_tf, **common)
    # A final fit (none) holds nothing out: its scores are on the training frames, whole, as a fit check.
    val = (train.with_transforms(eval_tf) if form == "none"
           else SemanticFolder(cfg.data, split=spec, part="val", transforms=eval_tf, **common))
    log(describe_split(spec, train, None if form == "none" else val))
    if form == "none" and getattr(cfg, "eval_interval", 1) < cfg.epochs:
        log(f"note: with nothing held out, each validation scores the {len(train)} training frames; "
            f"--eval-interval {cfg.epochs} scores them once, after the last epoch")
    model = SemanticFPN(cfg.model, num_classes=len(names), norm_eval=cfg.norm_eval, frozen_stages=cfg.frozen_stages,
                        checkpoint=cfg.backbone, pretrained=cfg.pretrained)
    batches = phased_batches(train, cfg, env, crops=train_tf, whole=whole_frame_from_options(cfg),
                             whole_epochs=whole_epochs, log=log)

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

    for part, folder in (("train", train), ("val", val)) if form != "none" else (("train", train),):
        report = folder.skip_report()
        if report:
            log(f"{part}: {report}")
    skipped = len(train.skipped) + (len(val.skipped) if form != "none" else 0)
    return Task("segmentation", model, batches, loss, lambda m: adamw_with_warmup(m, cfg, batches.steps_per_epoch),
                evaluate, "mIoU", save,
                describe=f"Semantic FPN on {cfg.model}, {len(names)} classes, "
                         + (f"{len(val)} val images" if form != "none" else "no val images (final fit)")
                         + (f", whole frames in the last {whole_epochs} epoch{'s' if whole_epochs != 1 else ''}"
                            if whole_epochs else "")
                         + (f", {skipped} bad pairs skipped" if skipped else "")
                         + f"; {describe_data(batches, env, cfg.batch_size)}, "
                           f"{describe_schedule(cfg, batches.steps_per_epoch)}",
                nonfinite_hint="Lower --lr, raise --warmup-iters or set --clip-grad, or check the labels")

