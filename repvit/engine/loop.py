"""The one training loop (``repvit train``, ``repvit detect|segment train``, ``repvit sam distill``).
A ``Task`` (``repvit.engine.task``) brings data, model, loss, metric and file format; the loop keeps
the promises every trainer makes:

* atomic ``last.pth`` every epoch and ``best.pth`` on a new best validation score, in the task's
  self-describing format;
* exact resume (``--resume auto``) after SIGKILL or a stop signal, at an epoch boundary or in the
  middle of one: optimizer, schedule, loss scaler, EMA, the step reached and every rank's random
  state are saved, so the resumed run computes what the uninterrupted one would have;
* Ctrl-C / SIGTERM save at the end of the current step and exit 130 / 143; a non-finite loss stops
  the run before the update, naming the step;
* torchrun DDP (every rank trains on its shard and evaluates its share of the validation data; rank
  0 writes and logs; SyncBatchNorm on GPUs with ``--sync-bn``), an EMA of the weights when the task
  asks for one;
* a progress bar on a terminal (plain lines otherwise), ``config.yaml``, ``metrics.csv``/``.jsonl``,
  ``steps.csv`` and ``curves.png``, CPU threads chosen by ``--threads``.
"""
from __future__ import annotations

import math
import os
import signal
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import yaml
from torch import nn

from ..models.state_dict import load_strict
from ..engine.timing import resolve_threads, torch_threads
from .checkpointing import capture_rng, resolve_resume, restore_rng, rng_for_rank, seed_everything
from .distributed import DistEnv, all_reduce, any_rank, barrier, gather_objects, setup, teardown
from .metrics_log import MetricsLog
from .progress import Reporter, format_seconds
from .signals import NonFiniteLossError, StopSignal
from .data import release
from .task import Optimization, Task

RESUME_FIX = ("resume with the model options the run was started with (its config.yaml holds them), or start a "
              "new run with --overwrite")

TaskBuilder = Callable[[DistEnv, Callable[[str], None], Optional[Path]], Task]


def train(build: TaskBuilder, cfg, *, config: dict, command: str) -> dict:
    """Run training. ``cfg`` holds the loop options (``output``, ``resume``, ``overwrite``, ``epochs``,
    ``batch_size``, ``seed``, ``device``, ``threads``, ``log_interval``, ``sync_bn``,
    ``stop_after_epoch``; optionally ``eval_interval`` and ``tensorboard``); ``config`` is the resolved
    option dict, saved as ``config.yaml`` (``command -c config.yaml`` repeats the run) and in every
    checkpoint. Returns a summary: ``interrupted`` (and ``signal``) or ``best``, ``best_epoch``."""
    threads, why = resolve_threads(cfg.threads)
    with torch_threads(threads):   # --threads for this run only
        env = setup(cfg.device, timeout=getattr(cfg, "dist_timeout", None))
        reporter = Reporter(enabled=env.is_main, interval=cfg.log_interval)
        try:
            with StopSignal(reporter.log) as stop:
                return _Run(cfg, env, reporter, stop, config).fit(build, command, why)
        finally:
            teardown(env)


class _Run:
    def __init__(self, cfg, env: DistEnv, reporter: Reporter, stop: StopSignal, config: dict):
        self.cfg, self.env, self.reporter, self.stop, self.config = cfg, env, reporter, stop, config
        self.output = Path(cfg.output)
        self.num_updates = 0
        self.ema = None
        self.metrics: Optional[MetricsLog] = None

    # ------------------------------------------------------------------------------- set-up
    def fit(self, build: TaskBuilder, command: str, threads_note: str) -> dict:
        cfg, env, output, log = self.cfg, self.env, self.output, self.reporter.log
        resume = resolve_resume(cfg.resume, output)
        if resume is None and not cfg.overwrite and (output / "last.pth").is_file():
            raise ValueError(f"{output} already holds a run (last.pth): continue it with --resume auto, start over "
                             "with --overwrite, or choose another --output")
        if env.is_main:
            output.mkdir(parents=True, exist_ok=True)
            if resume is None:
                (output / "train.log").unlink(missing_ok=True)
            self.reporter.set_log_file(output / "train.log")
        if threads_note:
            log(f"threads: {threads_note}")
        seed_everything(cfg.seed)   # the same initial weights on every rank
        self.task = task = build(env, log, resume)
        model = task.model.to(env.device)
        if env.distributed and getattr(cfg, "sync_bn", False):
            if env.device.type == "cuda":
                model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
                log("BatchNorm statistics synchronised across ranks (SyncBatchNorm)")
            else:
                log("note: SyncBatchNorm runs on GPUs only; on CPU each rank keeps its own BatchNorm statistics")
        self.model = model
        self.opt: Optimization = task.optimization(model)
        if self.opt.ema_decay:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(model, decay=self.opt.ema_decay)
        seed_everything(cfg.seed + env.rank)   # augmentation and dropout differ per rank
        self.best = math.inf if task.lower_is_better else -math.inf
        self.best_epoch = None
        start_epoch, first_step, pending_rng = 0, 0, None
        if resume is not None:
            start_epoch, first_step, pending_rng = self._restore(resume)
        self.train_model = (nn.parallel.DistributedDataParallel(
            model, device_ids=[env.device.index] if env.device.type == "cuda" else None,
            find_unused_parameters=task.find_unused_parameters) if env.distributed else model)
        if env.is_main:
            write_config(self.config, output / "config.yaml", command)
            self.metrics = MetricsLog(output, tensorboard=getattr(cfg, "tensorboard", False), resume=resume is not None,
                                      metric=(f"val {task.label}", (f"val_{task.primary}", f"val_{task.primary}_ema")))
        if task.describe:
            log(task.describe)
        t_start = time.perf_counter()
        try:
            if resume is None and task.evaluate_at_start:
                self._evaluate_at_start()
            for epoch in range(start_epoch, cfg.epochs):
                stopped = self._epoch(epoch, first_step, pending_rng)
                first_step, pending_rng = 0, None
                if stopped is not None:
                    return stopped
        finally:
            if self.metrics is not None:
                self.metrics.close()
        seconds = time.perf_counter() - t_start
        log(f"done in {format_seconds(seconds)}: best val {task.label} {self._fmt(self.best)}"
            + (f" (epoch {self.best_epoch})" if self.best_epoch else "") + f"; checkpoints in {output}")
        return {"interrupted": False, "best": self.best, "best_epoch": self.best_epoch, "seconds": seconds,
                "output": str(output)}

    def _restore(self, path: Path) -> tuple[int, int, dict]:
        task, env, opt = self.task, self.env, self.opt
        if task.read_state is not None:
            state = task.read_state(path)
        else:
            from ..models.record import read_record
            state = read_record(path, task.name)
        if task.load_weights is not None:
            task.load_weights(self.model, state["model"], f"--resume {path}")
        else:
            load_strict(self.model, state["model"], source=f"--resume {path}", fix=RESUME_FIX)
        opt.optimizer.load_state_dict(state["optimizer"])
        if opt.scheduler is not None and state.get("scheduler"):
            opt.scheduler.load_state_dict(state["scheduler"])
        if opt.scaler is not None and state.get("scaler"):
            opt.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            if state.get("model_ema"):
                load_strict(self.ema.module, state["model_ema"], source=f"--resume {path} (EMA weights)",
                            fix=RESUME_FIX)
            else:
                self.ema.set(self.model)
                self.reporter.log("the checkpoint has no EMA weights: the EMA starts from the resumed model")
        epoch, next_step = int(state["epoch"]), int(state.get("next_step", 0))
        self.num_updates = int(state.get("num_updates", epoch * task.train.steps_per_epoch + next_step))
        self.best = float(state.get("best", self.best))
        rng, exact = rng_for_rank(state["rng"], env.rank, env.world_size)
        saved = state.get("train_config") or {}
        changed = [k for k in task.resume_sensitive if k in saved and k in self.config and saved[k] != self.config[k]]
        if changed:
            self.reporter.log("note: resuming with settings that differ from the checkpoint's: "
                              + ", ".join(f"{k} {saved[k]!r} -> {self.config[k]!r}" for k in changed))
        if not exact:
            self.reporter.log(f"note: the checkpoint was written by {len(state['rng'])} processes, this run has "
                              f"{env.world_size}: training continues, but not bitwise as the original would have")
        self.reporter.log(f"resumed from {path}: {epoch} epochs done"
                          + (f", continuing epoch {epoch + 1} at step {next_step + 1}" if next_step else ""))
        return epoch, next_step, rng

    # ------------------------------------------------------------------------------- one epoch
    def _epoch(self, epoch: int, first_step: int, pending_rng: Optional[dict]) -> Optional[dict]:
        """Train and validate ``epoch``; a summary dict when the run stops here, else None."""
        cfg, env, task, opt, reporter = self.cfg, self.env, self.task, self.opt, self.reporter
        steps_per_epoch = task.train.steps_per_epoch
        # A loader may draw its worker seed from the global generator when its iterator is made: a
        # resumed epoch boundary restores the random state before that draw, a mid-epoch position after
        # it (where the state was saved).
        if pending_rng is not None and first_step == 0:
            restore_rng(pending_rng)
        batches = task.train.batches(epoch, first_step)
        if pending_rng is not None and first_step > 0:
            restore_rng(pending_rng)
        self.train_model.train()
        reporter.start_epoch(epoch, cfg.epochs, steps_per_epoch, first_step)
        loss_sum = torch.zeros((), dtype=torch.float64, device=env.device)
        steps = 0
        lr = opt.optimizer.param_groups[0]["lr"]
        try:
            for step in range(first_step, steps_per_epoch):
                batch = next(batches)
                lr = opt.optimizer.param_groups[0]["lr"]
                loss = task.loss(self.train_model, batch, env.device)
                finite = bool(torch.isfinite(loss).item())
                if any_rank([not finite], env)[0]:
                    what = f"{loss.item()}" if not finite else "non-finite on another process"
                    last = self.output / "last.pth"
                    raise NonFiniteLossError(
                        f"loss is {what} at epoch {epoch + 1} step {step + 1}/{steps_per_epoch} (update "
                        f"{self.num_updates + 1}, lr {lr:.3e}); stopped before applying it. {task.nonfinite_hint}"
                        + (f"; {last} holds the last finished epoch" if last.is_file() else ""))
                opt.optimizer.zero_grad(set_to_none=True)
                self._backward_and_step(loss)
                self.num_updates += 1
                if opt.advance is not None:
                    opt.advance(self.num_updates)
                if self.ema is not None:
                    self.ema.update(self.model, step=self.num_updates)
                loss_sum += loss.detach().double()
                steps += 1
                loss_value = float(loss.item())
                reporter.step(step, loss_value, lr, cfg.batch_size * env.world_size)
                if self.metrics is not None and (step + 1) % cfg.log_interval == 0:
                    self.metrics.add_step(self.num_updates, loss_value, lr, epoch + (step + 1) / steps_per_epoch)
                if any_rank([self.stop.requested], env)[0] and step + 1 < steps_per_epoch:
                    reporter.end_epoch()
                    self._save_last(epoch=epoch, next_step=step + 1)
                    reporter.log(f"interrupted: stopped in epoch {epoch + 1} before step {step + 2}; saved "
                                 f"{self.output / 'last.pth'}. Continue with the same command plus --resume auto")
                    return {"interrupted": True, "signal": self.stop.signum, "epoch": epoch, "next_step": step + 1}
        except BaseException:   # a step that raises ends the loader's worker processes with it
            release(batches)
            raise
        seconds = reporter.end_epoch()
        totals = all_reduce(torch.stack([loss_sum, torch.tensor(float(steps), dtype=torch.float64,
                                                                 device=env.device)]), env)
        row = {"epoch": epoch + 1, "train_loss": float(totals[0] / totals[1]) if totals[1] else float("nan"),
               "lr": lr, "epoch_seconds": round(seconds, 2),
               "train_images_per_s": round(steps * cfg.batch_size * env.world_size / max(seconds, 1e-9), 2)}
        is_best = False
        if (epoch + 1) % getattr(cfg, "eval_interval", 1) == 0 or epoch + 1 == cfg.epochs:
            row.update({f"val_{k}": v for k, v in task.evaluate(self.model, env).items()})
            if self.ema is not None:
                row[f"val_{task.primary}_ema"] = task.evaluate(self.ema.module, env)[task.primary]
            score = row[f"val_{task.primary}"]
            is_best = task.improves(score, self.best)
            if is_best:
                self.best, self.best_epoch = score, epoch + 1
        if math.isfinite(self.best):
            row[f"best_{task.primary}"] = self.best
        self._save_last(epoch=epoch + 1, next_step=0, metrics=row)
        if env.is_main:
            self.metrics.add({k: v for k, v in row.items() if isinstance(v, (int, float))})
            if is_best:
                task.save(self.model, self.output / "best.pth", {
                    "epoch": epoch + 1, "metrics": row, "train_config": self.config, **self._ema_state()})
            scores = (task.report(row) if task.report else f"val {task.label} {self._fmt(row[f'val_{task.primary}'])}"
                      ) if f"val_{task.primary}" in row else ""
            reporter.log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f}, "
                         + (f"{scores}, " if scores else "") + f"{row['train_images_per_s']:.1f} img/s, "
                         f"{format_seconds(seconds)}" + (" *best*" if is_best else ""))
        barrier(env)
        if cfg.stop_after_epoch == epoch + 1:
            os.kill(os.getpid(), signal.SIGKILL)   # test hook: die as a crash would, right after saving
        if any_rank([self.stop.requested], env)[0] and epoch + 1 < cfg.epochs:
            reporter.log(f"interrupted after epoch {epoch + 1}; continue with --resume auto")
            return {"interrupted": True, "signal": self.stop.signum, "epoch": epoch + 1, "next_step": 0}
        return None

    def _backward_and_step(self, loss: torch.Tensor) -> None:
        opt = self.opt
        clip = opt.clip_grad or None
        if opt.scaler is not None:   # float16 AMP: unscale, clip and step inside the scaler
            opt.scaler(loss, opt.optimizer, clip_grad=clip, clip_mode=opt.clip_mode,
                       parameters=self.model.parameters())
            return
        loss.backward()
        if clip is not None:
            clip_gradients(self.model.parameters(), clip, opt.clip_mode)
        opt.optimizer.step()

    def _evaluate_at_start(self) -> None:
        scores = self.task.evaluate(self.model, self.env)
        if self.env.is_main:
            self.metrics.add({"epoch": 0, **{f"val_{k}": v for k, v in scores.items()}})
            self.reporter.log(f"before training: val {self.task.label} {self._fmt(scores[self.task.primary])}")

    # ------------------------------------------------------------------------------- files
    def _ema_state(self) -> dict:
        if self.ema is None:
            return {}
        return {"model_ema": {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()}}

    def _save_last(self, *, epoch: int, next_step: int, metrics: Optional[dict] = None) -> None:
        rng = gather_objects(capture_rng(), self.env)   # every rank's, so each continues its own stream
        if self.env.is_main:
            opt = self.opt
            self.task.save(self.model, self.output / "last.pth", {
                "optimizer": opt.optimizer.state_dict(),
                "scheduler": opt.scheduler.state_dict() if opt.scheduler is not None else None,
                "scaler": opt.scaler.state_dict() if opt.scaler is not None else None,
                **self._ema_state(), "epoch": epoch, "next_step": next_step, "num_updates": self.num_updates,
                "best": self.best, "rng": rng, "train_config": self.config, "metrics": metrics or {}})

    def _fmt(self, score: float) -> str:
        return self.task.score_format.format(score)


def clip_gradients(parameters, value: float, mode: str = "norm") -> None:
    """Clip gradients in place: by global ``norm``, element ``value``, or ``agc`` (adaptive gradient
    clipping, Brock et al. 2021: each unit's gradient norm at most ``value`` times its weight norm)."""
    parameters = [p for p in parameters if p.grad is not None]
    if mode == "norm":
        nn.utils.clip_grad_norm_(parameters, value)
    elif mode == "value":
        nn.utils.clip_grad_value_(parameters, value)
    elif mode == "agc":
        from timm.utils.agc import adaptive_clip_grad
        adaptive_clip_grad(parameters, value)
    else:
        raise ValueError(f"unknown clip mode {mode!r}: use norm, value or agc")


def write_config(config: dict, path: Path, command: str) -> None:
    """``config.yaml``: the resolved options, which ``command -c config.yaml`` repeats."""
    path.write_text(f"# Resolved options of this run; `{command} -c config.yaml` repeats it.\n"
                    + yaml.safe_dump(config, sort_keys=True))
