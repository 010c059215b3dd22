"""Self-describing files for dense models: the weights plus everything needed to rebuild the model
(task, model kind, variant, classes, options), so ``eval``, ``predict`` and ``export`` need only
the path. Written atomically; read with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .checkpoint import CheckpointError, _is_plain_data, atomic_write, read_file
from .state_dict import load_strict

FORMAT_NAME = "repvit-dense-checkpoint"
FORMAT_VERSION = 1


def save_record(model: nn.Module, path: Union[str, os.PathLike], *, task: str, config: dict,
                class_names: Optional[Sequence[str]] = None, extra: Optional[dict] = None) -> Path:
    """Write ``model``'s weights with the ``config`` that rebuilds it (plain data only)."""
    if not _is_plain_data(config):
        raise ValueError("the model config must be plain data (str, numbers, lists, dicts)")
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "task": task, "config": dict(config),
               "class_names": list(class_names) if class_names is not None else None,
               "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, **(extra or {})}
    return atomic_write(Path(path), lambda tmp: torch.save(payload, tmp))


def read_record(path: Union[str, os.PathLike], task: str) -> dict:
    """The record's dict (``config``, ``class_names``, ``model`` state dict, ...) after checking its task."""
    obj, _ = read_file(path)
    if obj.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{str(path)!r} is not a RepViT {task} checkpoint (no '{FORMAT_NAME}' record); "
                              f"classification checkpoints initialise a backbone with --backbone instead")
    if obj.get("task") != task:
        raise CheckpointError(f"{str(path)!r} holds a {obj.get('task')} model, not a {task} model")
    return obj


def load_recorded_weights(model: nn.Module, record: dict, *, path, what: str, use_ema: bool = False) -> None:
    """Copy the record's weights (or its EMA weights) into ``model``, strictly, naming what does not fit."""
    if use_ema and not isinstance(record.get("model_ema"), dict):
        raise CheckpointError(f"--ema / use_ema=True but {str(path)!r} holds no EMA weights")
    state = record["model_ema"] if use_ema else record["model"]
    load_strict(model, state, source=f"{'the EMA weights of ' if use_ema else ''}{str(path)!r}",
                what=f"the {what} its config rebuilds",
                fix=f"the weights and the recorded config disagree, so the file was edited or written by an "
                    f"incompatible version: pass a file saved by this version's {record.get('task', what)} training, "
                    "or re-train")
