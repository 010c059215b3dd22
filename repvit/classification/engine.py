"""The training engine: ``train_one_epoch``, ``evaluate`` and ``main(cfg)``, which wires the data,
model, optimizer, schedule, EMA, distillation and checkpoints together for one process or
many (torchrun)."""
from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.timing import resolve_threads, torch_threads
from ..models.checkpoint import load_state_dict
from ..models.factory import create_model
from . import config as config_mod
from ..engine.signals import NonFiniteLossError, StopRequested, StopSignal
from ..engine.checkpointing import (capture_rng, read_training_state, resolve_resume, restore_rng, rng_for_rank,
                            save_training_state, save_weights)
from .data import BadImageError, TrainData, build_data, preprocessing
from .distill import DistillationLoss, build_teacher
from ..engine.distributed import DistEnv, all_reduce, any_rank, gather_objects, setup, teardown
from .finetune import load_finetune_weights, read_finetune_source, read_pretrained_source
from ..engine.metrics_log import MetricsLog
from .optim import build_base_loss, build_mixup, build_optimizer, build_scheduler, effective_lr
from ..engine.progress import Reporter, format_seconds

# Settings that change what "continuing" means; a resume with other values is reported.
_RESUME_SENSITIVE = ("model", "data", "batch_size", "epochs", "lr", "lr_base", "img_size", "seed", "sched",
                     "aug_repeats", "distillation_type", "workers")


@dataclass
class Run:
    """Everything one training run holds; built by ``build_run``."""
    cfg: object
    env: DistEnv
    data: TrainData
    model: nn.Module           # the bare model (what is saved and evaluated)
    train_model: nn.Module     # the model wrapped for training (DDP when distributed)
    optimizer: torch.optim.Optimizer
    scheduler: Optional[object]
    scaler: Optional[object]
    ema: Optional[nn.Module]
    criterion: DistillationLoss
    mixup: Optional[object]
    autocast: object
    reporter: Reporter
    stop: StopSignal
    output: Path
    lr: float
    distillation: str
    steps_per_epoch: int
    num_updates: int = 0
    metrics: Optional[MetricsLog] = None
    pending_rng: Optional[dict] = None
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- one epoch
def _next_batch(iterator):
    try:
        return next(iterator)
    except BadImageError as err:
        raise BadImageError.from_worker(err) from None


def train_one_epoch(run: Run, epoch: int, first_step: int = 0) -> dict:
    """Train ``epoch`` from ``first_step``; raises ``StopRequested`` at a step boundary after Ctrl-C."""
    cfg, env = run.cfg, run.env
    run.train_model.train()
    sampler = run.data.sampler
    sampler.set_epoch(epoch)
    sampler.skip = first_step * cfg.batch_size
    # The loader takes a seed from the global RNG when iterated: a resumed epoch boundary restores
    # the RNG before that, a resumed mid-epoch position after it (where it was saved).
    if run.pending_rng is not None and first_step == 0:
        restore_rng(run.pending_rng)
    iterator = iter(run.data.train_loader)
    if run.pending_rng is not None and first_step > 0:
        restore_rng(run.pending_rng)
    run.pending_rng = None
    run.reporter.start_epoch(epoch, cfg.epochs, run.steps_per_epoch, first_step)
    loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
    steps = 0
    lr = run.optimizer.param_groups[0]["lr"]
    for step in range(first_step, run.steps_per_epoch):
        images, targets = _next_batch(iterator)
        images = images.to(env.device, non_blocking=True)
        targets = targets.to(env.device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if run.mixup is not None:
            images, targets = run.mixup(images, targets)
        lr = run.optimizer.param_groups[0]["lr"]
        with run.autocast():
            outputs = run.train_model(images)
            loss = run.criterion(images, outputs, targets)
        finite = bool(torch.isfinite(loss).item())
        if any_rank([not finite], env)[0]:
            what = f"{loss.item()}" if not finite else "non-finite on another process"
            last = run.output / "last.pth"
            raise NonFiniteLossError(
                f"loss is {what} at epoch {epoch + 1} step {step + 1}/{run.steps_per_epoch} (update "
                f"{run.num_updates + 1}, lr {lr:.3e}); stopped before applying it. Lower --lr or raise "
                f"--warmup-epochs/--clip-grad" + (f"; {last} holds the last finished epoch" if last.is_file() else ""))
        run.optimizer.zero_grad(set_to_none=True)
        _backward_and_step(run, loss)
        run.num_updates += 1
        if run.scheduler is not None:
            run.scheduler.step_update(num_updates=run.num_updates)
        if run.ema is not None:
            run.ema.update(run.model, step=run.num_updates)
        loss_sum += loss.detach().double()
        steps += 1
        loss_value = float(loss.item())
        run.reporter.step(step, loss_value, lr, images.shape[0] * env.world_size)
        if run.metrics is not None and (step + 1) % cfg.log_interval == 0:
            run.metrics.add_step(run.num_updates, loss_value, lr, epoch + (step + 1) / run.steps_per_epoch)
        if any_rank([run.stop.requested], env)[0] and step + 1 < run.steps_per_epoch:
            run.reporter.end_epoch()
            raise StopRequested(epoch, step + 1)
    seconds = run.reporter.end_epoch()
    totals = all_reduce(torch.stack([loss_sum, torch.tensor(float(steps), dtype=torch.float64,
                                                             device=env.device)]), env)
    return {"train_loss": float(totals[0] / totals[1]) if totals[1] else float("nan"), "lr": lr,
            "epoch_seconds": round(seconds, 2),
            "train_images_per_s": round(steps * cfg.batch_size * env.world_size / max(seconds, 1e-9), 2)}


def _backward_and_step(run: Run, loss: torch.Tensor) -> None:
    cfg = run.cfg
    clip = cfg.clip_grad if cfg.clip_grad else None
    if run.scaler is not None:  # float16 AMP: unscale, clip, step, all inside timm's NativeScaler
        run.scaler(loss, run.optimizer, clip_grad=clip, clip_mode=cfg.clip_mode, parameters=run.model.parameters())
        return
    loss.backward()
    if clip is not None:
        from timm.utils import dispatch_clip_grad
        dispatch_clip_grad(run.model.parameters(), clip, mode=cfg.clip_mode)
    run.optimizer.step()


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loader, env: DistEnv, autocast=contextlib.nullcontext) -> dict:
    """Loss, top-1 and top-5 (percent) over the loader; with a ``ShardSampler`` per rank the
    sums are combined so every image counts exactly once."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=env.device)  # loss, top-1 hits, top-5 hits, images
    iterator = iter(loader)
    for _ in range(len(loader)):
        images, targets = _next_batch(iterator)
        images, targets = images.to(env.device, non_blocking=True), targets.to(env.device, non_blocking=True)
        with autocast():
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices.eq(targets[:, None])
        totals += torch.stack([F.cross_entropy(logits, targets, reduction="sum").double(),
                               hits[:, 0].sum().double(), hits.any(dim=1).sum().double(),
                               torch.tensor(float(len(targets)), dtype=torch.float64, device=env.device)])
    model.train(was_training)
    all_reduce(totals, env)
    n = max(float(totals[3]), 1.0)
    return {"loss": float(totals[0]) / n, "top1": 100.0 * float(totals[1]) / n, "top5": 100.0 * float(totals[2]) / n,
            "images": int(totals[3])}


# --------------------------------------------------------------------------- building a run
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def resolve_distillation(cfg) -> str:
    """``auto``: hard distillation when teacher weights are given and not fine-tuning, else none."""
    if cfg.distillation_type != "auto":
        return cfg.distillation_type
    has_teacher = bool(cfg.teacher_checkpoint) or (bool(cfg.teacher) and Path(cfg.teacher).is_file())
    return "hard" if has_teacher and not (cfg.finetune or cfg.pretrained) else "none"


def _autocast_factory(cfg, device: torch.device):
    if cfg.amp and device.type == "cuda":
        dtype = torch.bfloat16 if cfg.amp_dtype == "bfloat16" else torch.float16
        return lambda: torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext


def build_run(cfg, env: DistEnv, reporter: Reporter, stop: StopSignal) -> tuple[Run, Optional[dict]]:
    output = Path(cfg.output)
    resume_path = resolve_resume(cfg.resume, output)
    if resume_path is None and not cfg.overwrite and (output / "last.pth").is_file():
        raise ValueError(f"{output} already holds a run (last.pth): continue it with --resume auto, start over "
                         "with --overwrite, or choose another --output")
    resume_state = read_training_state(resume_path) if resume_path else None
    finetune = (read_finetune_source(cfg.finetune) if cfg.finetune else
                read_pretrained_source(cfg.pretrained) if cfg.pretrained else None)
    model_name = (cfg.model or (resume_state or {}).get("variant") or (finetune.meta.get("variant")
                  if finetune else None) or "repvit_m0_9")
    if env.is_main:
        output.mkdir(parents=True, exist_ok=True)
        log_file = output / "train.log"
        if resume_state is None:
            log_file.unlink(missing_ok=True)
        reporter.set_log_file(log_file)
    for note in getattr(cfg, "_notes", []):  # defaults fitted to this run, said once in the log
        reporter.log(note)

    data = build_data(cfg, env, reporter.log)
    num_classes = len(data.class_names)
    distillation = resolve_distillation(cfg)
    seed_everything(cfg.seed)  # the same initial weights on every rank
    model = create_model(model_name, num_classes=num_classes, distillation=distillation != "none",
                         drop_rate=cfg.drop, drop_path_rate=cfg.drop_path)
    model.preprocessing = preprocessing(cfg)
    model.class_names = list(data.class_names)
    if finetune is not None:
        load_finetune_weights(model, finetune, reporter.log)
    model.to(env.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if cfg.sync_bn and env.distributed:
        if env.device.type != "cuda":
            raise ValueError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm runs only on CUDA; drop the flag on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ema = None
    if cfg.model_ema:
        from timm.utils import ModelEmaV3
        ema = ModelEmaV3(model, decay=cfg.model_ema_decay)
    train_model = model
    if env.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None)

    lr = effective_lr(cfg, env.world_size)
    if cfg.sched != "none" and cfg.min_lr > lr:
        raise ValueError(f"--min-lr {cfg.min_lr:g} is above the learning rate {lr:g}, so the schedule would raise "
                         "it: lower --min-lr (or raise --lr)")
    optimizer = build_optimizer(model, cfg, lr)
    steps_per_epoch = len(data.train_loader)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    scaler = None
    if cfg.amp and env.device.type == "cuda" and cfg.amp_dtype == "float16":
        from timm.utils import NativeScaler
        scaler = NativeScaler()
    mixup = build_mixup(cfg, num_classes)
    teacher = None
    if distillation != "none":
        teacher = build_teacher(cfg.teacher, cfg.teacher_checkpoint, num_classes).to(env.device)
    criterion = DistillationLoss(build_base_loss(cfg, mixing=mixup is not None), teacher, distillation,
                                 alpha=cfg.distillation_alpha, tau=cfg.distillation_tau)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    run = Run(cfg=cfg, env=env, data=data, model=model, train_model=train_model, optimizer=optimizer,
              scheduler=scheduler, scaler=scaler, ema=ema, criterion=criterion, mixup=mixup,
              autocast=_autocast_factory(cfg, env.device), reporter=reporter, stop=stop, output=output, lr=lr,
              distillation=distillation, steps_per_epoch=steps_per_epoch,
              info={"model_name": model_name, "teacher": type(teacher).__name__ if teacher is not None else None})
    seed_everything(cfg.seed + env.rank)  # augmentation differs per rank
    return run, resume_state


def restore_run(run: Run, state: dict, path_label: str) -> tuple[int, int, float]:
    """Load a training checkpoint into ``run``; returns ``(start_epoch, first_step, best_top1)``."""
    cfg, env = run.cfg, run.env
    load_state_dict(run.model, state["model"], source=f"--resume {path_label}")
    run.optimizer.load_state_dict(state["optimizer"])
    if run.scheduler is not None and state.get("scheduler"):
        run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None:
        if state.get("model_ema"):
            run.ema.module.load_state_dict(state["model_ema"])
        else:
            run.ema.set(run.model)
            run.reporter.log("the checkpoint has no EMA weights: the EMA starts from the resumed model")
    run.num_updates = int(state.get("num_updates", 0))
    rng, exact = rng_for_rank(state["rng"], env.rank, env.world_size)
    run.pending_rng = rng
    saved = state.get("config") or {}
    changed = [k for k in _RESUME_SENSITIVE if k in saved and saved[k] != getattr(cfg, k)]
    if changed:
        run.reporter.log("note: resuming with settings that differ from the checkpoint's: "
                         + ", ".join(f"{k} {saved[k]!r} -> {getattr(cfg, k)!r}" for k in changed))
    if not exact:
        run.reporter.log(f"note: the checkpoint was written by {len(state['rng'])} processes, this run has "
                         f"{env.world_size}: training continues, but not bitwise as the original would have")
    epoch, next_step = int(state["epoch"]), int(state.get("next_step", 0))
    best = float(state.get("best_top1", -1.0))
    run.reporter.log(f"resumed from {path_label}: {epoch} epochs done"
                     + (f", continuing epoch {epoch + 1} at step {next_step + 1}" if next_step else ""))
    return epoch, next_step, best


def describe(run: Run) -> str:
    cfg, env = run.cfg, run.env
    params = sum(p.numel() for p in run.model.parameters())
    threads = torch.get_num_threads()
    global_batch = cfg.batch_size * env.world_size
    how = "--lr" if cfg.lr is not None else f"{cfg.lr_base:g} x {global_batch}/{cfg.lr_base_size}"
    amp = (f"AMP {cfg.amp_dtype}" if cfg.amp and env.device.type == "cuda"
           else "AMP off" + (" (CPU)" if cfg.amp else ""))
    lines = [
        f"model {run.info['model_name']}: {params / 1e6:.2f}M parameters, {len(run.data.class_names)} classes"
        + (f", distillation {run.distillation} from {cfg.teacher}" if run.distillation != "none" else ""),
        f"data {cfg.data}: {run.data.num_train} train / {run.data.num_val} val images, "
        f"{run.steps_per_epoch} steps per epoch" + (f", {len(run.data.skipped)} unreadable skipped"
                                                     if run.data.skipped else ""),
        f"world size {env.world_size} ({env.device.type}, {threads} thread{'s' if threads != 1 else ''}), "
        f"batch {cfg.batch_size} per process, global batch "
        f"{global_batch}, effective lr {run.lr:.4g} ({how}), {amp}, EMA "
        + (f"{cfg.model_ema_decay}" if run.ema is not None else "off"),
        f"output {run.output}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the whole run
def main(cfg) -> dict:
    """Train with resolved options (see ``repvit.classification.config``); returns a summary dict."""
    threads, why = resolve_threads(cfg.threads)
    with torch_threads(threads):  # --threads for this run only
        env = setup(cfg.device, timeout=cfg.dist_timeout)
        reporter = Reporter(enabled=env.is_main, interval=cfg.log_interval)
        cfg._notes = [*getattr(cfg, "_notes", []), *([f"threads: {why}"] if why else [])]
        try:
            with StopSignal(reporter.log) as stop:
                return _train(cfg, env, reporter, stop)
        finally:
            teardown(env)


def _train(cfg, env: DistEnv, reporter: Reporter, stop: StopSignal) -> dict:
    run, resume_state = build_run(cfg, env, reporter, stop)
    start_epoch, first_step, best = 0, 0, -1.0
    if resume_state is not None:
        start_epoch, first_step, best = restore_run(run, resume_state, str(resolve_resume(cfg.resume, cfg.output)))
    config = config_mod.dump(cfg)
    if env.is_main:
        config_mod.save(cfg, run.output / "config.yaml")
        run.metrics = MetricsLog(run.output, tensorboard=cfg.tensorboard, resume=resume_state is not None)
        reporter.log(describe(run))
    best_epoch = None
    t_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            try:
                train_stats = train_one_epoch(run, epoch, first_step)
            except StopRequested as stopped:
                _save_last(run, epoch=epoch, next_step=stopped.next_step, best=best, config=config)
                reporter.log(f"interrupted: {stopped}; saved {run.output / 'last.pth'}. Continue with the same "
                             f"command plus --resume {run.output / 'last.pth'}")
                return {"interrupted": True, "signal": stop.signum, "epoch": epoch, "next_step": stopped.next_step,
                        "best_top1": best}
            first_step = 0
            val = evaluate(run.model, run.data.val_loader, env, run.autocast)
            row = {"epoch": epoch + 1, **train_stats, "val_loss": val["loss"], "val_top1": val["top1"],
                   "val_top5": val["top5"], "val_images": val["images"]}
            if run.ema is not None:
                row["val_top1_ema"] = evaluate(run.ema.module, run.data.val_loader, env, run.autocast)["top1"]
            is_best = val["top1"] > best
            if is_best:
                best, best_epoch = val["top1"], epoch + 1
            row["best_top1"] = best
            _save_last(run, epoch=epoch + 1, next_step=0, best=best, config=config, metrics=row)
            if env.is_main:
                run.metrics.add(row)
                if is_best:
                    save_weights(run.output / "best.pth", model=run.model, class_names=run.data.class_names,
                                 ema=run.ema, epoch=epoch + 1, config=config, metrics=row)
                reporter.log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, val loss "
                             f"{val['loss']:.4f}, top-1 {val['top1']:.2f}%, top-5 {val['top5']:.2f}%"
                             + (f", EMA top-1 {row['val_top1_ema']:.2f}%" if "val_top1_ema" in row else "")
                             + f" ({val['images']} images), {row['train_images_per_s']:.1f} img/s, "
                             f"{format_seconds(row['epoch_seconds'])}" + (" *best*" if is_best else ""))
            if cfg.stop_after_epoch == epoch + 1:
                os.kill(os.getpid(), signal.SIGKILL)  # test hook: die as a crash would, right after saving
            if any_rank([stop.requested], env)[0] and epoch + 1 < cfg.epochs:
                reporter.log(f"interrupted after epoch {epoch + 1}; continue with --resume {run.output / 'last.pth'}")
                return {"interrupted": True, "signal": stop.signum, "epoch": epoch + 1, "next_step": 0,
                        "best_top1": best}
    finally:
        if run.metrics is not None:
            run.metrics.close()
    total = time.perf_counter() - t_start
    reporter.log(f"done in {format_seconds(total)}: best val top-1 {best:.2f}%"
                 + (f" (epoch {best_epoch})" if best_epoch else "") + f"; checkpoints in {run.output}")
    return {"interrupted": False, "best_top1": best, "best_epoch": best_epoch, "seconds": total,
            "output": str(run.output)}


def _save_last(run: Run, *, epoch: int, next_step: int, best: float, config: dict, metrics=None) -> None:
    rng_states = gather_objects(capture_rng(), run.env)  # every rank's, so each continues its own stream
    if run.env.is_main:
        save_training_state(run.output / "last.pth", model=run.model, class_names=run.data.class_names,
                            optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler, ema=run.ema,
                            epoch=epoch, next_step=next_step, num_updates=run.num_updates, best_top1=best,
                            rng_states=rng_states, config=config, metrics=metrics)
