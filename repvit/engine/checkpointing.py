"""Training checkpoints that lose nothing: weights plus everything needed to continue bitwise.

``last.pth`` holds model, optimizer, scheduler, scaler, EMA, the epoch/step reached, the best
top-1 so far and every rank's RNG states (Python, NumPy, torch CPU and CUDA); the sampler
needs only the epoch and the step, because its order is a function of (seed, epoch). Files
are written by ``repvit.save_checkpoint`` (atomic rename) in the library's self-describing
format, so ``create_model(checkpoint=...)``, ``repvit eval`` and ``repvit export`` read them.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..models.checkpoint import CheckpointError, read_file, save_checkpoint


def capture_rng() -> dict:
    """This process's RNG states as plain data (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path, *, model, class_names, optimizer, scheduler, scaler, ema, epoch: int,
                        next_step: int, num_updates: int, best_top1: float, rng_states: list, config: dict,
                        metrics: Optional[dict] = None) -> Path:
    """Write ``path`` atomically. ``epoch`` counts completed epochs; ``next_step`` > 0 marks a
    checkpoint taken part-way through epoch ``epoch`` (Ctrl-C)."""
    extra = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_states,
    }
    if ema is not None:
        extra["model_ema"] = {k: v.detach().cpu() for k, v in ema.module.state_dict().items()}
    return save_checkpoint(model, path, class_names=class_names, extra_state=extra, epoch=epoch,
                           next_step=next_step, num_updates=num_updates, best_top1=best_top1,
                           img_size=config.get("img_size"), config=config, metrics=metrics or {})


def save_weights(path, *, model, class_names, ema, epoch: int, config: dict, metrics: dict) -> Path:
    """``best.pth``: the weights (and EMA weights) of one epoch, without optimizer state."""
    extra = {"model_ema": {k: v.detach().cpu() for k, v in ema.module.state_dict().items()}} if ema else None
    return save_checkpoint(model, path, class_names=class_names, extra_state=extra, epoch=epoch,
                           img_size=config.get("img_size"), config=config, metrics=metrics)


def resolve_resume(resume: Optional[str], output) -> Optional[Path]:
    """``--resume`` as a path (``auto``: OUTPUT/last.pth when present), or None."""
    if not resume:
        return None
    if resume == "auto":
        candidate = Path(output) / "last.pth"
        return candidate if candidate.is_file() else None
    path = Path(resume)
    if path.is_dir():
        path = path / "last.pth"
    if not path.is_file():
        raise ValueError(f"--resume {resume!r}: no such checkpoint (pass OUTPUT/last.pth of an earlier run)")
    return path


def read_training_state(path) -> dict:
    """The raw dict of a training checkpoint, checked to hold what resuming needs."""
    obj, _ = read_file(path)
    needed = ("model", "optimizer", "epoch", "rng")
    missing = [k for k in needed if k not in obj]
    if missing:
        raise CheckpointError(f"{str(path)!r} is not a training checkpoint of `repvit train` (it lacks "
                              f"{', '.join(missing)}); to start from its weights use --finetune instead of --resume")
    return obj


def rng_for_rank(states: list, rank: int, world_size: int) -> tuple[dict, bool]:
    """This rank's saved RNG state and whether the continuation is exact (same world size)."""
    if len(states) == world_size:
        return states[rank], True
    return states[rank % len(states)], False
