"""Loss, top-1 and top-5 of a classifier over a validation loader, each rank scoring its shard and
the sums merged, so every image counts exactly once (``repvit train`` and ``repvit eval``)."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.data import release
from ..engine.distributed import DistEnv, all_reduce
from .data import BadImageError


def next_batch(iterator):
    try:
        return next(iterator)
    except BadImageError as err:
        raise BadImageError.from_worker(err) from None


@torch.no_grad()
def evaluate(model: nn.Module, loader, env: DistEnv, autocast=contextlib.nullcontext) -> dict:
    """Loss, top-1 and top-5 (percent) over the loader; with a ``ShardSampler`` per rank the
    sums are combined so every image counts exactly once."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=env.device)  # loss, top-1 hits, top-5 hits, images
    iterator = iter(loader)
    try:
        for _ in range(len(loader)):
            images, targets = next_batch(iterator)
            images, targets = images.to(env.device, non_blocking=True), targets.to(env.device, non_blocking=True)
            with autocast():
                logits = model(images)
            logits = logits.float()
            k = min(5, logits.shape[1])
            hits = logits.topk(k, dim=1).indices.eq(targets[:, None])
            totals += torch.stack([F.cross_entropy(logits, targets, reduction="sum").double(),
                                   hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
                                   torch.tensor(float(len(targets)), dtype=torch.float64, device=env.device)])
    except BaseException:   # a failed read ends the loader's workers with it
        release(iterator)
        raise
    model.train(was_training)
    all_reduce(totals, env)
    n = max(float(totals[3]), 1.0)
    return {"loss": float(totals[0]) / n, "top1": 100.0 * float(totals[1]) / n, "top5": 100.0 * float(totals[2]) / n,
            "images": int(totals[3])}
