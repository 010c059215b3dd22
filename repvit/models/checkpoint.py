"""Reading and writing RepViT weights in every layout users have.

Accepted: official releases (``{'model': state_dict}``, also full training checkpoints with
optimizer/EMA entries), timm state dicts (unfused, fused, features-only), our own
self-describing checkpoints, fused checkpoints, and ``.safetensors`` files. Everything is
normalised to the official key layout and matched by name with counts and shapes checked.

Pickled files are read with ``torch.load(weights_only=True)``: a file that needs arbitrary
code to unpickle is refused, never executed.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from torch import nn

from .skeleton import build_skeleton
from .state_dict import CheckpointError, load_strict
from .variants import VARIANTS

FORMAT_NAME = "repvit-checkpoint"
FORMAT_VERSION = 1
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Globals that plain-data training checkpoints contain and that carry no code.
_SAFE_GLOBALS = [argparse.Namespace]


# --------------------------------------------------------------------------- reading files
# Files of the exporters (``repvit export``, ``segment export``, ``sam export``): models for a runtime, not weights.
EXPORTED_SUFFIXES = {".onnx": "an ONNX model", ".xml": "an OpenVINO model", ".tflite": "a LiteRT (TFLite) model",
                     ".pte": "an ExecuTorch program", ".mlpackage": "a Core ML package",
                     ".mlmodel": "a Core ML model", ".mlmodelc": "a compiled Core ML model"}
EXPORTED_FILES_HINT = (
    "This command builds the model from weights (.pth, .pt, .safetensors): pass the checkpoint the file was "
    "exported from. Exported files are run by `repvit segment eval --checkpoint FILE` (segmenters: .onnx, .xml, "
    ".tflite, .pte) and `repvit sam eval --encoder FILE` (RepViT-SAM encoders); `repvit export` and `repvit detect "
    "export` check a classifier's and a detector's against their checkpoint as they write them, and `repvit bench "
    "--checkpoint WEIGHTS --runtimes onnxruntime,openvino,litert,torchscript` times a classifier in those runtimes")


def exported_kind(path: Path) -> Optional[str]:
    """What an exported model file is ("an ONNX model", "a TorchScript program", ...), or None for any other file."""
    if path.suffix.lower() in EXPORTED_SUFFIXES:
        return EXPORTED_SUFFIXES[path.suffix.lower()]
    if path.is_file() and zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:   # torch.jit.save writes code/; torch.save never does
                if any("/code/" in name for name in archive.namelist()):
                    return "a TorchScript program"
        except (zipfile.BadZipFile, OSError):
            return None
    return None


def read_file(path: Union[str, os.PathLike]) -> tuple[dict, dict]:
    """Return ``(raw_object, safetensors_metadata)`` from a .pth/.pt/.bin or .safetensors file."""
    path = Path(path)
    kind = exported_kind(path) if path.exists() else None
    if kind:
        raise CheckpointError(f"{str(path)!r} is {kind}, an exported file, not a checkpoint. {EXPORTED_FILES_HINT}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {str(path)!r}: unpickling it would run code or build objects that are not plain "
            f"tensors and containers ({_first_line(err)}). It was not executed. If you trust the file, re-save "
            "only its state dict: torch.save({'model': sd}, 'clean.pth')") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{str(path)!r} is not a readable PyTorch checkpoint (corrupt or truncated?): "
                              f"{_first_line(err)}") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict or checkpoint dict")
    return dict(obj), {}


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{str(path)!r} is not a readable safetensors file: {_first_line(err)}") from None
    meta = json.loads(metadata["repvit"]) if "repvit" in metadata else {}
    return tensors, meta


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# --------------------------------------------------------------------------- normalising
def extract_state_dict(obj: Mapping[str, Any], *, use_ema: bool = False) -> tuple[dict, dict]:
    """Split a loaded object into ``(state_dict in official layout, metadata)``."""
    meta = {k: v for k, v in obj.items() if _is_plain_data(v)} if obj.get("format") == FORMAT_NAME else {}
    keys = ("model_ema", "state_dict_ema", "ema") if use_ema else ("model", "state_dict")
    state = next((obj[k] for k in keys if isinstance(obj.get(k), Mapping)), None)
    if state is None:
        if use_ema:
            raise CheckpointError(f"use_ema=True but the checkpoint has no EMA weights (keys: {_short(obj)})")
        if not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise CheckpointError(f"no state dict found: expected a 'model' or 'state_dict' entry or a flat dict of "
                                  f"tensors, found keys {_short(obj)}")
        state = obj
    if isinstance(state, Mapping) and "module" in state and isinstance(state["module"], Mapping):
        state = state["module"]  # EMA wrappers that keep the averaged model as .module
    state = {_strip_wrappers(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    return to_official_layout(state), meta


def _is_plain_data(value) -> bool:
    """True for JSON-like values (metadata), False for anything holding tensors (weights, optimizer state)."""
    if isinstance(value, Mapping):
        return all(_is_plain_data(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_is_plain_data(v) for v in value)
    return value is None or isinstance(value, (str, int, float, bool))


def _strip_wrappers(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


_TIMM_STAGE = re.compile(r"^stages[._](\d+)\.(downsample\.(pre_block|spatial_downsample|channel_downsample|ffn)"
                         r"|blocks\.(\d+))\.")
# Inside a block, timm's submodule name -> the official one.
_TIMM_BLOCK_PARTS = [("token_mixer.", "token_mixer.0."), ("se.", "token_mixer.1."),
                     ("channel_mixer.conv1.", "channel_mixer.m.0."), ("channel_mixer.conv2.", "channel_mixer.m.2.")]
_TIMM_FIXED = [("stem.conv1.", "features.0.0."), ("stem.conv2.", "features.0.2."),
               ("head.head_dist.", "classifier.classifier_dist."), ("head.head.", "classifier.classifier."),
               ("head.", "classifier.")]


def to_official_layout(state: dict) -> dict:
    """Rename timm-layout keys (``stem``/``stages``/``head``) to the official ``features``/``classifier``."""
    if not any(k.startswith(("stem.", "stages.", "stages_")) for k in state):
        return dict(state)
    # Flat block index: stem is 0, then per stage the downsample's pre-block, the D block, the blocks.
    slots: set[tuple[int, int, int]] = set()
    for key in state:
        m = _TIMM_STAGE.match(key)
        if m:
            stage = int(m.group(1))
            if m.group(4) is not None:
                slots.add((stage, 2, int(m.group(4))))
            else:
                slots.add((stage, 0 if m.group(3) == "pre_block" else 1, 0))
    flat = {slot: i + 1 for i, slot in enumerate(sorted(slots))}
    out = {}
    for key, value in state.items():
        out[_timm_key_to_official(key, flat)] = value
    return out


def _timm_key_to_official(key: str, flat: dict) -> str:
    m = _TIMM_STAGE.match(key)
    if m is None:
        for src, dst in _TIMM_FIXED:
            if key.startswith(src):
                return dst + key[len(src):]
        return key
    stage, rest = int(m.group(1)), key[m.end():]
    if m.group(4) is not None:
        return f"features.{flat[(stage, 2, int(m.group(4)))]}." + _rename_block_part(rest)
    part = m.group(3)
    if part == "pre_block":
        return f"features.{flat[(stage, 0, 0)]}." + _rename_block_part(rest)
    index = flat[(stage, 1, 0)]
    prefix = {"spatial_downsample": "token_mixer.0.", "channel_downsample": "token_mixer.2."}.get(part)
    if prefix:
        return f"features.{index}.{prefix}{rest}"
    return f"features.{index}." + _rename_block_part("channel_mixer." + rest)  # the ffn


def _rename_block_part(rest: str) -> str:
    for src, dst in _TIMM_BLOCK_PARTS:
        if rest.startswith(src):
            return dst + rest[len(src):]
    return rest


# --------------------------------------------------------------------------- describing
def describe_state_dict(state: Mapping[str, torch.Tensor]) -> dict:
    """Infer ``fused``, ``distillation``, ``num_classes`` and ``legacy`` from official-layout keys."""
    fused = "features.0.0.weight" in state
    if "classifier.classifier.l.weight" in state:
        num_classes = state["classifier.classifier.l.weight"].shape[0]
    elif "classifier.weight" in state:
        num_classes = state["classifier.weight"].shape[0]
    else:
        num_classes = 0
    return {
        "fused": fused,
        "distillation": any(k.startswith("classifier.classifier_dist.") for k in state),
        "num_classes": int(num_classes),
        "legacy": any(re.match(r"features\.\d+\.token_mixer\.0\.conv1\.c\.weight", k) for k in state),
    }


def _short(keys, limit: int = 6) -> str:
    keys = list(keys)
    shown = ", ".join(map(str, keys[:limit]))
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)} in all)"


# --------------------------------------------------------------------------- loading into a model
def load_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *, ignore_classifier: bool = False,
                    source: str = "checkpoint") -> None:
    """Copy ``state`` (official layout) into ``model``, strictly, with an actionable error on mismatch.

    Features-only backbones take the blocks they have and ignore the rest. With
    ``ignore_classifier`` the head is left as it is (fine-tuning onto new classes).
    """
    state = dict(state)
    backbone_only = not hasattr(model, "classifier")
    if backbone_only:
        state = {k: v for k, v in state.items() if _feature_index(k) is None or _feature_index(k) < len(model.features)}
    load_strict(model, state, source=source, what=_model_label(model),
                ignore="classifier." if backbone_only or ignore_classifier else None,
                fix=lambda m: suggest_fix(model, state, m.missing_keys, m.unexpected_keys, m.wrong_shape))


def _feature_index(key: str) -> Optional[int]:
    m = re.match(r"features\.(\d+)\.", key)
    return int(m.group(1)) if m else None


def _model_label(model: nn.Module) -> str:
    variant = getattr(getattr(model, "variant", None), "name", type(model).__name__)
    flags = [f"num_classes={getattr(model, 'num_classes', '?')}", f"distillation={getattr(model, 'distillation', '?')}",
             f"fused={getattr(model, 'fused', '?')}"]
    return f"{variant} ({', '.join(flags)})"


def suggest_fix(model, state, missing, unexpected, wrong_shape) -> list[str]:
    info = describe_state_dict(state)
    hints = []
    if info["fused"] != bool(getattr(model, "fused", False)):
        hints.append(f"the checkpoint is {'fused' if info['fused'] else 'not fused'}: build the model with "
                     f"fused={info['fused']}")
    elif any(k.startswith("classifier.classifier_dist.") for k in unexpected):
        hints.append("the checkpoint has a distillation head: pass distillation=True")
    elif any(k.startswith("classifier.classifier_dist.") for k in missing):
        hints.append("the checkpoint has no distillation head: pass distillation=False")
    if info["num_classes"] and info["num_classes"] != getattr(model, "num_classes", info["num_classes"]):
        hints.append(f"the checkpoint has {info['num_classes']} classes: pass num_classes={info['num_classes']}, "
                     "or load it with load_checkpoint(model, path, ignore_classifier=True) to fine-tune a new head")
    backbone_trouble = [k for k in list(missing) + list(unexpected) + [w[0] for w in wrong_shape]
                        if k.startswith("features.")]
    if backbone_trouble:
        matches = matching_variants(state)
        current = getattr(getattr(model, "variant", None), "name", None)
        if matches and current not in matches:
            hints.append(f"the weights match {' / '.join(matches)}, not {current}: use that variant name")
        elif not matches:
            hints.append("the backbone matches no registered variant; was it saved from another architecture?")
    return hints


def matching_variants(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of registered variants whose backbone keys and shapes equal the checkpoint's."""
    info = describe_state_dict(state)
    ours = {k: tuple(v.shape) for k, v in state.items() if k.startswith("features.")}
    names = []
    for name in VARIANTS:
        skeleton = build_skeleton(name, num_classes=0, fused=info["fused"])
        theirs = {k: tuple(v.shape) for k, v in skeleton.state_dict().items() if k.startswith("features.")}
        if theirs == {k: s for k, s in ours.items() if not k.endswith("num_batches_tracked") or k in theirs}:
            names.append(name)
    return names


def read_checkpoint(path: Union[str, os.PathLike], *, use_ema: bool = False) -> tuple[dict, dict]:
    """``(state_dict in official layout, metadata)`` of any accepted checkpoint file."""
    obj, st_meta = read_file(path)
    state, meta = extract_state_dict(obj, use_ema=use_ema)
    meta = {**st_meta, **meta}
    if not state:
        raise CheckpointError(f"{str(path)!r} holds no tensors")
    return state, meta


def load_checkpoint(model: nn.Module, path: Union[str, os.PathLike], *, use_ema: bool = False,
                    ignore_classifier: bool = False) -> dict:
    """Load any accepted checkpoint file into ``model``; returns the checkpoint's metadata."""
    state, meta = read_checkpoint(path, use_ema=use_ema)
    load_state_dict(model, state, ignore_classifier=ignore_classifier, source=f"checkpoint {str(path)!r}")
    return meta


# --------------------------------------------------------------------------- saving
def checkpoint_metadata(model: nn.Module, *, class_names=None, **extra) -> dict:
    variant = getattr(model, "variant", None)
    meta = {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
        "variant": getattr(variant, "name", getattr(model, "model_name", type(model).__name__)),
        "num_classes": int(getattr(model, "num_classes", 0)),
        "distillation": bool(getattr(model, "distillation", False)),
        "fused": bool(getattr(model, "fused", False)),
        "class_names": list(class_names) if class_names is not None else None,
        "preprocessing": _jsonable(getattr(model, "preprocessing", {})),
    }
    if meta["class_names"] is not None and meta["num_classes"] and len(meta["class_names"]) != meta["num_classes"]:
        raise ValueError(f"{len(meta['class_names'])} class names for a model with {meta['num_classes']} classes")
    meta.update(extra)
    return meta


def _jsonable(value):
    return json.loads(json.dumps(value))


def save_checkpoint(model: nn.Module, path: Union[str, os.PathLike], *, class_names=None,
                    extra_state: Optional[dict] = None, **metadata) -> Path:
    """Write a self-describing checkpoint atomically (``.safetensors`` or a ``torch.save`` file).

    ``extra_state`` (optimizer, scheduler, ...) goes only into ``torch.save`` files.
    """
    path = Path(path)
    meta = checkpoint_metadata(model, class_names=class_names, **metadata)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file
        if extra_state:
            raise ValueError("safetensors files hold weights only; save training state to a .pth file")
        return atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"repvit": json.dumps(meta)}))
    payload = {**meta, "model": state, **(extra_state or {})}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def atomic_write(path: Path, write) -> Path:
    """Write to a temporary file beside ``path`` and rename it into place: a crash leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
