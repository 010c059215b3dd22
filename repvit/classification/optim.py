"""Optimizer, learning-rate schedule and loss from timm's components, configured by the options."""
from __future__ import annotations

from typing import Optional

from torch import nn


def effective_lr(cfg, world_size: int) -> float:
    """``--lr`` if given, else the paper's linear scaling: lr_base x global batch / lr_base_size."""
    if cfg.lr is not None:
        return cfg.lr
    return cfg.lr_base * cfg.batch_size * world_size / cfg.lr_base_size


def build_optimizer(model: nn.Module, cfg, lr: float):
    """timm optimizer with weight decay on conv/linear weights only (no norms, no biases)."""
    from timm.optim import create_optimizer_v2
    extra = {"eps": cfg.opt_eps} if cfg.opt_eps is not None else {}
    if cfg.opt_betas:
        extra["betas"] = tuple(cfg.opt_betas)
    try:
        return create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay,
                                   momentum=cfg.momentum, filter_bias_and_bn=True, **extra)
    except (AssertionError, ValueError, TypeError) as err:
        raise ValueError(f"--opt {cfg.opt}: {err} (try adamw or sgd)") from None


def build_scheduler(optimizer, cfg, steps_per_epoch: int) -> Optional[object]:
    """A timm scheduler stepped every iteration (``step_on_epochs=False``); None for a constant lr."""
    if cfg.schedule == "none":
        return None
    from timm.scheduler import create_scheduler_v2
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg.schedule, num_epochs=cfg.epochs, decay_epochs=cfg.decay_epochs, decay_rate=cfg.decay_rate,
        min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr, warmup_epochs=cfg.warmup_epochs, step_on_epochs=False,
        updates_per_epoch=steps_per_epoch)
    return scheduler


def build_base_loss(cfg, mixing: bool) -> nn.Module:
    """Soft-target CE when Mixup/CutMix make soft labels (smoothing is folded into them)."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if mixing:
        return SoftTargetCrossEntropy()
    if cfg.smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=cfg.smoothing)
    return nn.CrossEntropyLoss()


def build_mixup(cfg, num_classes: int):
    """timm's Mixup/CutMix (None when both are off)."""
    if not ((cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mixup_prob > 0):
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, prob=cfg.mixup_prob,
                 switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode, label_smoothing=cfg.smoothing,
                 num_classes=num_classes)
