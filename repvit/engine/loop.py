"""The training loop shared by detection and segmentation (``repvit detect train``,
``repvit segment train``), with the guarantees of ``repvit train``:

* atomic ``last.pth`` every epoch and ``best.pth`` on a new best validation score, both
  self-describing (``repvit detect|segment eval`` read them with no other flag);
* exact resume (``--resume auto``) after a kill: the data order is a function of (seed, epoch),
  each sample's augmentation a function of (seed, epoch, index), and the RNG states, optimizer and
  schedule are saved, so the resumed run computes what the uninterrupted one would have;
* Ctrl-C / SIGTERM save at the end of the current step and exit 130 / 143;
* torchrun DDP (every rank trains on its shard; rank 0 validates, writes and logs; SyncBatchNorm
  when BatchNorm statistics are trained);
* a progress bar on a terminal (plain lines otherwise), ``metrics.csv``/``.jsonl``,
  ``steps.csv`` and ``curves.png``.

The task (model, data, loss, evaluation, file format) comes in as a ``DenseTask``; SAM encoder
distillation (``repvit sam distill``) is one too.
"""
from __future__ import annotations

import copy
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from ..models.reparam import reparameterize
from ..runtime.timing import resolve_threads, torch_threads
from .checkpointing import capture_rng, restore_rng
from .distributed import DistEnv, barrier, broadcast_object, setup, teardown
from .signals import NonFiniteLossError, StopSignal
from .metrics_log import MetricsLog
from .progress import Reporter, format_seconds


@dataclass
class DenseTask:
    name: str                                                   # "detection", "segmentation", "sam-distill"
    model: nn.Module
    train_set: torch.utils.data.Dataset                         # an EpochSeeded dataset
    collate: Callable
    loss: Callable[[nn.Module, tuple, torch.device], torch.Tensor]
    evaluate: Callable[[nn.Module, torch.device], dict]         # flat metrics, fractions
    primary: str                                                # the metric that picks best.pth
    save: Callable[[nn.Module, Path, dict], Path]               # self-describing file with ``extra`` entries
    describe: str = ""
    lower_is_better: bool = False                               # the primary metric is an error (an MSE)
    evaluate_at_start: bool = False                             # score the initial weights (epoch 0 of a new run)

    def improves(self, score: float, best: float) -> bool:
        return score < best if self.lower_is_better else score > best


class EpochSeeded(torch.utils.data.Dataset):
    """Wraps a dataset whose ``__getitem__`` takes ``(index, generator)``: each sample's augmentation
    is drawn from a generator seeded by (seed, epoch, index), whatever the worker or resume point."""

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


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def train(task_factory: Callable[[DistEnv], DenseTask], cfg, *, config: dict) -> dict:
    """Run training. ``cfg`` holds the loop options (see ``repvit.dense.options``); ``config`` is the
    resolved option dict, saved with every checkpoint."""
    threads, why = resolve_threads(cfg.threads)
    with torch_threads(threads):
        env = setup(cfg.device, timeout=cfg.dist_timeout)
        reporter = Reporter(enabled=env.is_main, interval=cfg.log_interval)
        try:
            with StopSignal(reporter.log) as stop:
                return _train(task_factory, cfg, config, env, reporter, stop, why)
        finally:
            teardown(env)


def _train(task_factory, cfg, config, env: DistEnv, reporter: Reporter, stop: StopSignal, why: str) -> dict:
    output = Path(cfg.output)
    resume_path = output / "last.pth" if cfg.resume == "auto" else (Path(cfg.resume) if cfg.resume else None)
    if cfg.resume == "auto" and not resume_path.is_file():
        resume_path = None
    if resume_path is None and not cfg.overwrite and (output / "last.pth").is_file():
        raise ValueError(f"{output} already holds a run (last.pth): continue it with --resume auto, start over "
                         "with --overwrite, or choose another --output")
    if env.is_main:
        output.mkdir(parents=True, exist_ok=True)
        if resume_path is None:
            (output / "train.log").unlink(missing_ok=True)
        reporter.set_log_file(output / "train.log")
    if why:
        reporter.log(f"threads: {why}")
    torch.manual_seed(cfg.seed)   # the same initial weights on every rank
    task = task_factory(env)
    model = task.model.to(env.device)
    if env.distributed and getattr(cfg, "sync_bn", False):
        if env.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            reporter.log("BatchNorm statistics synchronised across ranks (SyncBatchNorm)")
        else:
            reporter.log("note: SyncBatchNorm runs on GPUs only; on CPU each rank keeps its own BatchNorm statistics")
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    n = len(task.train_set)
    steps_per_epoch = len(epoch_order(n, cfg.seed, 0, env.rank, env.world_size, cfg.batch_size)) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    factor = lambda step: lr_factor(step, total=total, warmup=min(cfg.warmup_iters, total // 2),  # noqa: E731
                                    schedule=cfg.schedule, power=cfg.power, milestones=cfg.milestones,
                                    steps_per_epoch=steps_per_epoch,
                                    warmup_ratio=getattr(cfg, "warmup_ratio", 1e-3),
                                    floor=getattr(cfg, "min_lr", 0.0) / cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    start_epoch, first_step, best = 0, 0, (math.inf if task.lower_is_better else -math.inf)
    if resume_path is not None:
        from ..models.record import read_record
        state = read_record(resume_path, task.name)
        _unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, first_step, best = int(state["epoch"]), int(state["next_step"]), float(state["best"])
        restore_rng(state["rng"][min(env.rank, len(state["rng"]) - 1)])
        reporter.log(f"resumed from {resume_path}: {start_epoch} epochs done"
                     + (f", continuing epoch {start_epoch + 1} at step {first_step + 1}" if first_step else ""))
    # Detectors may leave a head unused in a step (no positive proposal for the mask head).
    train_model = (nn.parallel.DistributedDataParallel(model, find_unused_parameters=task.name == "detection")
                   if env.distributed else model)
    metrics = (MetricsLog(output, tensorboard=False, resume=resume_path is not None,
                          metric=(f"val {task.primary}", (f"val_{task.primary}",))) if env.is_main else None)
    reporter.log(f"{task.describe}; {n} training images, {steps_per_epoch} steps per epoch, world size "
                 f"{env.world_size}, batch {cfg.batch_size} per process, lr {cfg.lr:g} ({cfg.schedule}, "
                 f"{cfg.warmup_iters} warm-up iterations), {torch.get_num_threads()} threads")
    if resume_path is None and task.evaluate_at_start:
        if env.is_main:
            scores = task.evaluate(reparameterize(copy.deepcopy(_unwrap(model)).eval()), env.device)
            with warnings.catch_warnings():   # the loss panel of curves.png has nothing to label yet
                warnings.filterwarnings("ignore", message="No artists with labels")
                metrics.add({"epoch": 0, **{f"val_{k}": v for k, v in scores.items()}})
            reporter.log(f"before training: val {task.primary} {scores[task.primary]:.4f}")
        barrier(env)
    t_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            task.train_set.set_epoch(epoch)
            order = epoch_order(n, cfg.seed, epoch, env.rank, env.world_size, cfg.batch_size)
            # The loader gets its own generator: drawing its worker seed from the global RNG would shift
            # the model's random numbers (dropout, proposal sampling) when a run resumes mid-epoch.
            loader = torch.utils.data.DataLoader(
                task.train_set, batch_size=cfg.batch_size, sampler=order[first_step * cfg.batch_size:],
                num_workers=cfg.workers, collate_fn=task.collate, drop_last=True,
                generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch))
            train_model.train()
            reporter.start_epoch(epoch, cfg.epochs, steps_per_epoch, first_step)
            losses = []
            step = first_step
            for step, batch in enumerate(loader, start=first_step):
                loss = task.loss(train_model, batch, env.device)
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(f"the loss became {loss.item()} in epoch {epoch + 1}, step {step + 1}; "
                                             "lower --lr or check the data")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                scheduler.step()
                losses.append(loss.item())
                lr = optimizer.param_groups[0]["lr"]
                reporter.step(step, loss.item(), lr, cfg.batch_size * env.world_size)
                if metrics is not None and (step + 1) % cfg.log_interval == 0:
                    metrics.add_step(epoch * steps_per_epoch + step + 1, loss.item(), lr,
                                     epoch + (step + 1) / steps_per_epoch)
                if stop.requested and step + 1 < steps_per_epoch:
                    _save_last(task, model, optimizer, scheduler, env, output, config, epoch=epoch,
                               next_step=step + 1, best=best)
                    reporter.log(f"interrupted: stopped in epoch {epoch + 1} before step {step + 2}; saved "
                                 f"{output / 'last.pth'}. Continue with the same command plus --resume auto")
                    return {"interrupted": True, "signal": stop.signum, "epoch": epoch, "next_step": step + 1}
            first_step = 0
            seconds = reporter.end_epoch()
            row = {"epoch": epoch + 1, "train_loss": sum(losses) / max(1, len(losses)), "lr": lr,
                   "epoch_seconds": seconds}
            validate = (epoch + 1) % cfg.eval_interval == 0 or epoch + 1 == cfg.epochs
            if env.is_main and validate:
                scores = task.evaluate(reparameterize(copy.deepcopy(_unwrap(model)).eval()), env.device)
                row.update({f"val_{k}": v for k, v in scores.items()})
            row = broadcast_object(row, env)
            score = row.get(f"val_{task.primary}")
            is_best = score is not None and task.improves(score, best)
            if is_best:
                best = score
            _save_last(task, model, optimizer, scheduler, env, output, config, epoch=epoch + 1, next_step=0,
                       best=best)
            if env.is_main:
                metrics.add({k: v for k, v in row.items() if isinstance(v, (int, float))})
                if is_best:
                    task.save(_unwrap(model), output / "best.pth", {"epoch": epoch + 1, "metrics": row,
                                                                    "train_config": config})
                reporter.log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, "
                             + (f"val {task.primary} {score:.4f}, " if score is not None else "")
                             + f"{format_seconds(seconds)}" + (" *best*" if is_best else ""))
            barrier(env)
            if cfg.stop_after_epoch == epoch + 1:
                os.kill(os.getpid(), signal.SIGKILL)   # test hook: die as a crash would, right after saving
            if stop.requested and epoch + 1 < cfg.epochs:
                reporter.log(f"interrupted after epoch {epoch + 1}; continue with --resume auto")
                return {"interrupted": True, "signal": stop.signum, "epoch": epoch + 1, "next_step": 0}
    finally:
        if metrics is not None:
            metrics.close()
    total_time = time.perf_counter() - t_start
    reporter.log(f"done in {format_seconds(total_time)}: best val {task.primary} {best:.4f}; checkpoints in {output}")
    return {"interrupted": False, "best": best, "seconds": total_time, "output": str(output)}


def _save_last(task: DenseTask, model, optimizer, scheduler, env: DistEnv, output: Path, config: dict, *,
               epoch: int, next_step: int, best: float) -> None:
    from .distributed import gather_objects
    rng = gather_objects(capture_rng(), env)
    if env.is_main:
        task.save(_unwrap(model), output / "last.pth", {
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
            "next_step": next_step, "best": best, "rng": rng, "train_config": config})
