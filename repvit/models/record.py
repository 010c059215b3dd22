"""Self-describing files for dense models: the weights plus everything needed to rebuild the model
(task, model kind, variant, classes, options), so ``eval``, ``predict`` and ``export`` need only
the path. Written atomically; read with ``torch.load(weights_only=True)``.

The config is stored as plain data (str, numbers, None, lists, dicts), readable by any JSON
tool. Tuples become lists there, and ``config_tuples`` lists where each one stood (a path of
keys and indices), so ``read_record`` gives back the exact values the model was built with:
torchvision tells ``min_size=(352, 384, 416)`` (random choice in training) from a list only by
what it was given, and a rebuilt model must equal the saved one.
"""
from __future__ import annotations

import copy
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
    """Write ``model``'s weights with the ``config`` that rebuilds it (plain data, tuples included)."""
    not_plain = [key for key, value in config.items() if not _is_plain_data(value)]
    if not_plain:
        raise ValueError(f"cannot record {', '.join(f'{k}={type(config[k]).__name__}' for k in not_plain)}: a saved "
                         "model's config must be plain data (str, numbers, None, lists, tuples, dicts) so that "
                         "loading can rebuild it; build the model from plain options to save it")
    tuples: list = []
    plain = _untuple(dict(config), [], tuples)
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "task": task, "config": plain,
               "config_tuples": tuples,
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
    config = copy.deepcopy(obj.get("config") or {})
    for where in sorted(obj.get("config_tuples") or [], key=len, reverse=True):   # innermost first
        config = _retuple(config, list(where))
    return {**obj, "config": config}


def _untuple(value, where: list, tuples: list):
    """``value`` with every tuple as a list; the path of each tuple is appended to ``tuples``."""
    if isinstance(value, dict):
        return {k: _untuple(v, where + [k], tuples) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if isinstance(value, tuple):
            tuples.append(list(where))
        return [_untuple(v, where + [i], tuples) for i, v in enumerate(value)]
    return value


def _retuple(value, where: list):
    """``value`` with the list at path ``where`` turned back into a tuple."""
    if not where:
        return tuple(value)
    key, rest = where[0], where[1:]
    if isinstance(value, dict):
        return {**value, key: _retuple(value[key], rest)}
    return [_retuple(v, rest) if i == key else v for i, v in enumerate(value)] if isinstance(value, list) else \
        tuple(_retuple(v, rest) if i == key else v for i, v in enumerate(value))


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
