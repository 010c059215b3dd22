"""Resumable training data for tasks whose samples carry their own randomness: each sample's
augmentation is a function of (seed, epoch, index) and each epoch's order a function of (seed,
epoch), so a run resumed at any step sees the batches the uninterrupted one would have, whatever
the number of loader workers."""
from __future__ import annotations

import math
from typing import Callable

import torch

from .distributed import DistEnv
from .signals import leave_stop_signals_to_main
from .task import TrainBatches


class EpochSeeded(torch.utils.data.Dataset):
    """Wraps a dataset whose ``get(index, generator)`` draws its augmentation from ``generator``:
    that generator is seeded by (seed, epoch, index), whatever the worker or resume point."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index)
        return self.dataset.get(index, gen)


def epoch_order(n: int, seed: int, epoch: int, rank: int, world_size: int, batch_size: int) -> list[int]:
    """This rank's sample order for ``epoch``: one permutation for all ranks, padded to whole global
    batches by repeating its start, then dealt out rank by rank."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
    per_step = batch_size * world_size
    total = max(per_step, math.ceil(n / per_step) * per_step)
    perm = (perm * (total // n + 1))[:total]
    return perm[rank::world_size]


def seeded_batches(dataset, collate: Callable, *, seed: int, batch_size: int, workers: int,
                   env: DistEnv) -> TrainBatches:
    """``TrainBatches`` over ``dataset`` (it has ``get(index, generator)`` and ``__len__``)."""
    seeded = EpochSeeded(dataset, seed)
    n = len(dataset)
    steps = len(epoch_order(n, seed, 0, env.rank, env.world_size, batch_size)) // batch_size

    def batches(epoch: int, first_step: int):
        seeded.set_epoch(epoch)
        order = epoch_order(n, seed, epoch, env.rank, env.world_size, batch_size)
        # The loader gets its own generator: drawing its worker seed from the global one would shift
        # the model's random numbers (dropout, proposal sampling) when a run resumes mid-epoch.
        loader = torch.utils.data.DataLoader(
            seeded, batch_size=batch_size, sampler=order[first_step * batch_size:], num_workers=workers,
            collate_fn=collate, drop_last=True, generator=torch.Generator().manual_seed(seed * 7919 + epoch),
            worker_init_fn=leave_stop_signals_to_main if workers > 0 else None)
        return iter(loader)

    return TrainBatches(batches, steps, n)


def stack_pairs(batch: list) -> tuple:
    """Collate ``(tensor, tensor)`` samples into two stacked tensors."""
    return tuple(torch.stack(items) for items in zip(*batch))


def release(batches) -> None:
    """End what an epoch's batch iterator holds after a step raised: close a generator and shut a
    multi-process DataLoader iterator's workers down. Without this, the workers of a run that failed
    can outlive it, waiting for indices, and the interpreter waits for them at exit."""
    close = getattr(batches, "close", None)
    if callable(close):
        close()
    shutdown = getattr(batches, "_shutdown_workers", None)
    if callable(shutdown):
        shutdown()

