"""The engine's default optimisation (detection, segmentation, SAM distillation): AdamW without
weight decay on norms and biases, a linear warm-up over iterations, then poly, step or cosine decay
stepped every iteration. Classification brings its own (timm's optimizers and schedulers)."""
from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from .task import Optimization


def lr_factor(step: int, *, total: int, warmup: int, schedule: str, power: float, milestones: list[int],
              steps_per_epoch: int, warmup_ratio: float = 1e-3, floor: float = 0.0) -> float:
    """Multiplier of the base lr at iteration ``step``: linear warm-up from ``warmup_ratio``, then
    poly decay or cosine from 1 down to ``floor`` (mmcv's ``min_lr`` / base lr:
    ``floor + (1 - floor) * decay``), or steps of 0.1 at the ``milestones`` epochs."""
    if step < warmup:
        return warmup_ratio + (1 - warmup_ratio) * step / warmup
    if schedule == "poly":
        return floor + (1 - floor) * max(0.0, 1 - step / total) ** power
    if schedule == "step":
        return 0.1 ** sum(step >= m * steps_per_epoch for m in milestones)
    if schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
    return 1.0


def build_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms and biases (1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def adamw_with_warmup(model: nn.Module, cfg, steps_per_epoch: int) -> Optimization:
    """AdamW and its per-iteration schedule from the loop options (``lr``, ``weight_decay``,
    ``epochs``, ``warmup_iters`` (capped at half the run), ``schedule``, ``power``, ``milestones``,
    ``clip_grad``, ``clip_mode``; ``warmup_ratio`` and ``min_lr`` where the task's table has them)."""
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    total = steps_per_epoch * cfg.epochs
    factor = partial(lr_factor, total=total, warmup=warmup_iters(cfg, steps_per_epoch), schedule=cfg.schedule,
                     power=cfg.power, milestones=cfg.milestones, steps_per_epoch=steps_per_epoch,
                     warmup_ratio=getattr(cfg, "warmup_ratio", 1e-3), floor=getattr(cfg, "min_lr", 0.0) / cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return Optimization(optimizer, scheduler, advance=lambda num_updates: scheduler.step(),
                        clip_grad=cfg.clip_grad or 0.0, clip_mode=getattr(cfg, "clip_mode", "norm"))


def warmup_iters(cfg, steps_per_epoch: int) -> int:
    """The warm-up the schedule uses: ``warmup_iters``, capped at half the run."""
    return min(cfg.warmup_iters, steps_per_epoch * cfg.epochs // 2)


def describe_schedule(cfg, steps_per_epoch: int) -> str:
    """The optimisation for the run's log, with the warm-up the schedule uses (and why, when capped)."""
    used = warmup_iters(cfg, steps_per_epoch)
    capped = (f" (--warmup-iters {cfg.warmup_iters} capped at half the run's {steps_per_epoch * cfg.epochs})"
              if used < cfg.warmup_iters else "")
    return f"AdamW lr {cfg.lr:g} ({cfg.schedule}, {used} warm-up iteration{'s' if used != 1 else ''}{capped})"
