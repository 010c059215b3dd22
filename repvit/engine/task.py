"""What a capability hands the training loop (``repvit.engine.loop.train``): a ``Task``.

A task is data, model, loss, metric and file format; the loop owns everything else (checkpoints,
exact resume, signals, DDP, EMA, progress, metrics files). The call contract:

* ``build(env, log, resume)`` makes the task once per process, after the loop has seeded every
  random generator with ``--seed`` (so each rank builds the same initial weights); ``resume`` is the
  ``last.pth`` being continued, or None. ``log`` writes to the terminal and ``train.log`` (rank 0).
* ``train.batches(epoch, first_step)`` returns an iterator over this rank's batches of ``epoch``
  from ``first_step`` on (``train.steps_per_epoch - first_step`` of them). Its order must be a
  function of (seed, epoch, rank) so a resumed run sees what the uninterrupted one would have. When a
  run resumes, the loop restores the random state saved with ``last.pth`` just *before* this call at
  an epoch boundary and just *after* it mid-epoch (a loader drawing its worker seed from the global
  generator draws it when the iterator is made).
* ``loss(model, batch, device)`` is one forward pass and the loss (a scalar tensor); ``model`` may
  be wrapped in DistributedDataParallel. The loop does backward, clipping, the optimizer and
  schedule steps, and the EMA update.
* ``optimization(model)`` builds the optimizer and schedule (an ``Optimization``) for the bare model
  after the loop has moved it to the device and converted it to SyncBatchNorm where asked.
* ``evaluate(model, env)`` is called ON EVERY RANK with the bare model (or its EMA copy): the task
  scores its share of the validation data and merges with the collectives of
  ``repvit.engine.distributed``, so every rank returns the same flat dict of numbers.
* ``save(model, path, extra)`` writes a self-describing file atomically. For ``best.pth``, ``extra``
  holds ``epoch``, ``metrics`` (the epoch's row), ``train_config`` and ``model_ema`` (with EMA); for
  ``last.pth`` also ``optimizer``, ``scheduler``, ``scaler``, ``next_step``, ``num_updates``,
  ``best`` and ``rng`` (every rank's random state). ``read_state(path)`` gives that dict back, with
  the weights under ``model`` (default: a ``repvit.models.record`` file of task ``name``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import torch
from torch import nn

from .distributed import DistEnv


@dataclass
class TrainBatches:
    """A task's training data as the loop consumes it."""
    batches: Callable[[int, int], Iterator]     # (epoch, first_step) -> this rank's batches from first_step
    steps_per_epoch: int
    num_images: int                             # training images (for the log)


@dataclass
class Optimization:
    """How the weights move. ``advance(num_updates)`` runs after every update (a per-iteration
    schedule); ``scaler`` is a float16 loss scaler called as timm's ``NativeScaler`` is
    (``scaler(loss, optimizer, clip_grad=, clip_mode=, parameters=)``); ``clip_mode`` is ``norm``,
    ``value`` or ``agc`` (adaptive gradient clipping); ``ema_decay`` keeps an exponential moving
    average of the weights (timm's ``ModelEmaV3``), evaluated and saved beside them."""
    optimizer: torch.optim.Optimizer
    scheduler: Optional[Any] = None             # state_dict()/load_state_dict(), saved in last.pth
    advance: Optional[Callable[[int], None]] = None
    scaler: Optional[Any] = None
    clip_grad: float = 0.0
    clip_mode: str = "norm"
    ema_decay: Optional[float] = None


@dataclass
class Task:
    name: str                                   # "classification", "detection", "segmentation", "sam-distill"
    model: nn.Module
    train: TrainBatches
    loss: Callable[[nn.Module, Any, torch.device], torch.Tensor]
    optimization: Callable[[nn.Module], Optimization]
    evaluate: Callable[[nn.Module, DistEnv], dict]      # flat metrics, the same dict on every rank
    primary: str                                # the metric (a key of ``evaluate``'s dict) that picks best.pth
    save: Callable[[nn.Module, Path, dict], Path]
    read_state: Optional[Callable[[Path], dict]] = None
    load_weights: Optional[Callable[[nn.Module, Mapping, str], None]] = None   # default: strict load_state_dict
    describe: str = ""                          # logged once before the first step
    lower_is_better: bool = False               # the primary metric is an error (an MSE)
    evaluate_at_start: bool = False             # score the initial weights (epoch 0 of a new run)
    primary_label: str = ""                     # how logs name the primary metric (default: its key)
    score_format: str = "{:.4f}"
    report: Optional[Callable[[dict], str]] = None   # the scores of an epoch's row, for its log line
    nonfinite_hint: str = "Lower --lr or raise the warm-up"
    resume_sensitive: tuple = ()                # config keys whose change on resume is worth a note
    find_unused_parameters: bool = False        # DDP: some parameters may get no gradient in a step

    def improves(self, score: float, best: float) -> bool:
        return score < best if self.lower_is_better else score > best

    @property
    def label(self) -> str:
        return self.primary_label or self.primary


def fused_copy(model: nn.Module) -> nn.Module:
    """An evaluation copy of ``model`` with every fusable unit fused (the training model is untouched)."""
    from ..models.reparam import reparameterize
    return reparameterize(copy.deepcopy(model).eval())


def describe_data(train: TrainBatches, env: DistEnv, batch_size: int) -> str:
    """The sizes a reader needs to reproduce a run, for a task's ``describe``."""
    threads = torch.get_num_threads()
    return (f"{train.num_images} training images, {train.steps_per_epoch} steps per epoch, world size "
            f"{env.world_size}, batch {batch_size} per process, {threads} thread{'s' if threads != 1 else ''}")
