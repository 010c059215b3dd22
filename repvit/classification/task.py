"""Image classification as a task of the training engine (``repvit train``): the paper's recipe
(timm's optimizer and per-iteration schedule, Mixup/CutMix, hard or soft distillation from a teacher,
AGC clipping, AMP, EMA of the weights) on an image folder; ``last.pth``/``best.pth`` in the library's
checkpoint format, which ``create_model(checkpoint=...)``, ``repvit eval`` and ``repvit export`` read."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..engine.distributed import DistEnv
from ..engine.data import release
from ..engine.loop import train
from ..engine.signals import NonFiniteLossError
from ..engine.task import Optimization, Task, TrainBatches
from ..models.checkpoint import CheckpointError, load_state_dict, read_file, save_checkpoint
from ..models.factory import create_model
from . import config as config_mod
from .data import TrainData, build_data, preprocessing
from .distill import DistillationLoss, build_teacher
from .evaluation import evaluate, next_batch
from .finetune import load_finetune_weights, read_finetune_source, read_pretrained_source
from .optim import build_base_loss, build_mixup, build_optimizer, build_scheduler, effective_lr

__all__ = ["NonFiniteLossError", "build_task", "main", "resolve_distillation"]

# Settings that change what "continuing" means; a resume with other values is reported.
RESUME_SENSITIVE = ("model", "data", "batch_size", "epochs", "lr", "lr_base", "img_size", "seed", "schedule",
                    "aug_repeats", "distillation_type", "workers")


def main(cfg) -> dict:
    """Train with resolved options (see ``repvit.classification.config``); returns the loop's summary
    (``best_top1`` is the best validation top-1 in percent)."""
    for_log = list(getattr(cfg, "_notes", []))   # defaults fitted to this run, said once in the log
    summary = train(lambda env, log, resume: build_task(cfg, env, log, resume, notes=for_log), cfg,
                    config=config_mod.dump(cfg), command="repvit train")
    if not summary["interrupted"]:
        summary["best_top1"] = summary["best"]
    return summary


# --------------------------------------------------------------------------- the task
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


def read_training_state(path) -> dict:
    """A ``last.pth`` of ``repvit train`` as the loop's state dict (``best``, ``train_config``)."""
    obj, _ = read_file(path)
    missing = [k for k in ("model", "optimizer", "epoch", "rng") if k not in obj]
    if missing:
        raise CheckpointError(f"{str(path)!r} is not a training checkpoint of `repvit train` (it lacks "
                              f"{', '.join(missing)}); to start from its weights use --finetune instead of --resume")
    return {**obj, "best": float(obj.get("best_top1", -1.0)), "train_config": obj.get("config") or {}}


def _train_batches(data: TrainData, cfg) -> TrainBatches:
    sampler = data.sampler

    def batches(epoch: int, first_step: int):
        sampler.set_epoch(epoch)
        sampler.skip = first_step * cfg.batch_size
        iterator = iter(data.train_loader)   # the loader draws its worker seed here

        def named_errors():
            try:
                while True:
                    yield next_batch(iterator)
            except GeneratorExit:   # the epoch is over: persistent workers stay for the next one
                raise
            except BaseException:   # a failed read ends the loader's workers with the run
                release(iterator)
                raise
        return named_errors()

    return TrainBatches(batches, len(data.train_loader), data.num_train)


def build_task(cfg, env: DistEnv, log, resume: Optional[Path], notes: tuple = ()) -> Task:
    state = read_training_state(resume) if resume is not None else None
    finetune = (read_finetune_source(cfg.finetune) if cfg.finetune else
                read_pretrained_source(cfg.pretrained) if cfg.pretrained else None)
    model_name = (cfg.model or (state or {}).get("variant") or (finetune.meta.get("variant") if finetune else None)
                  or "repvit_m0_9")
    for note in notes:
        log(note)
    if cfg.sync_bn and env.distributed and env.device.type != "cuda":
        raise ValueError("--sync-bn needs GPUs: PyTorch's SyncBatchNorm runs only on CUDA; drop the flag on CPU")

    data = build_data(cfg, env, log)
    num_classes = len(data.class_names)
    distillation = resolve_distillation(cfg)
    model = create_model(model_name, num_classes=num_classes, distillation=distillation != "none",
                         drop_rate=cfg.drop, drop_path_rate=cfg.drop_path)
    model.preprocessing = preprocessing(cfg)
    model.class_names = list(data.class_names)
    if finetune is not None:
        load_finetune_weights(model, finetune, log)
    model.to(env.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if env.device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    lr = effective_lr(cfg, env.world_size)
    if cfg.schedule != "none" and cfg.min_lr > lr:
        raise ValueError(f"--min-lr {cfg.min_lr:g} is above the learning rate {lr:g}, so the schedule would raise "
                         "it: lower --min-lr (or raise --lr)")
    steps_per_epoch = len(data.train_loader)
    mixup = build_mixup(cfg, num_classes)
    teacher = None
    if distillation != "none":
        teacher = build_teacher(cfg.teacher, cfg.teacher_checkpoint, num_classes).to(env.device)
    criterion = DistillationLoss(build_base_loss(cfg, mixing=mixup is not None), teacher, distillation,
                                 alpha=cfg.distillation_alpha, tau=cfg.distillation_tau)
    autocast = _autocast_factory(cfg, env.device)

    def optimization(model: nn.Module) -> Optimization:
        optimizer = build_optimizer(model, cfg, lr)
        scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
        scaler = None
        if cfg.amp and env.device.type == "cuda" and cfg.amp_dtype == "float16":
            from timm.utils import NativeScaler
            scaler = NativeScaler()
        return Optimization(optimizer, scheduler,
                            advance=(lambda n: scheduler.step_update(num_updates=n)) if scheduler is not None else None,
                            scaler=scaler, clip_grad=cfg.clip_grad or 0.0, clip_mode=cfg.clip_mode,
                            ema_decay=cfg.model_ema_decay if cfg.model_ema else None)

    def loss(model: nn.Module, batch, device: torch.device) -> torch.Tensor:
        images, targets = batch
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if mixup is not None:
            images, targets = mixup(images, targets)
        with autocast():
            return criterion(images, model(images), targets)

    def save(model: nn.Module, path: Path, extra: dict) -> Path:
        extra = dict(extra)
        config = extra.pop("train_config")
        metrics = extra.pop("metrics", {})
        meta = {k: extra.pop(k) for k in ("epoch", "next_step", "num_updates") if k in extra}
        if "best" in extra:
            meta["best_top1"] = extra.pop("best")
        return save_checkpoint(model, path, class_names=data.class_names, extra_state=extra or None,
                               img_size=config.get("img_size"), config=config, metrics=metrics, **meta)

    def report(row: dict) -> str:
        return (f"val loss {row['val_loss']:.4f}, top-1 {row['val_top1']:.2f}%, top-5 {row['val_top5']:.2f}%"
                + (f", EMA top-1 {row['val_top1_ema']:.2f}%" if "val_top1_ema" in row else "")
                + f" ({row['val_images']} images)")

    params = sum(p.numel() for p in model.parameters())
    threads = torch.get_num_threads()
    global_batch = cfg.batch_size * env.world_size
    how = "--lr" if cfg.lr is not None else f"{cfg.lr_base:g} x {global_batch}/{cfg.lr_base_size}"
    amp = (f"AMP {cfg.amp_dtype}" if cfg.amp and env.device.type == "cuda"
           else "AMP off" + (" (CPU)" if cfg.amp else ""))
    describe = "\n".join([
        f"model {model_name}: {params / 1e6:.2f}M parameters, {num_classes} classes"
        + (f", distillation {distillation} from {cfg.teacher}" if distillation != "none" else ""),
        f"data {cfg.data}: {data.num_train} train / {data.num_val} val images, {steps_per_epoch} steps per epoch"
        + (f", {len(data.skipped)} unreadable skipped" if data.skipped else ""),
        f"world size {env.world_size} ({env.device.type}, {threads} thread{'s' if threads != 1 else ''}), "
        f"batch {cfg.batch_size} per process, global batch {global_batch}, effective lr {lr:.4g} ({how}), {amp}, "
        "EMA " + (f"{cfg.model_ema_decay}" if cfg.model_ema else "off"),
        f"output {cfg.output}",
    ])
    return Task(
        "classification", model, _train_batches(data, cfg), loss, optimization,
        evaluate=lambda model, env: evaluate(model, data.val_loader, env, autocast),
        primary="top1", save=save, read_state=lambda path: state if path == resume else read_training_state(path),
        load_weights=lambda model, weights, source: load_state_dict(model, weights, source=source),
        describe=describe, primary_label="top-1", score_format="{:.2f}%", report=report,
        nonfinite_hint="Lower --lr or raise --warmup-epochs/--clip-grad", resume_sensitive=RESUME_SENSITIVE)
