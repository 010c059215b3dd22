"""TorchScript export of the fused model, for C++ (libtorch) and PyTorch Mobile-style deployment.

The model is scripted rather than traced, so the batch size stays free and the input check
in ``forward`` survives. Metadata travels as the extra file ``repvit.json`` inside the archive.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

EXTRA_FILE = "repvit.json"


def export_torchscript(fused: nn.Module, path: Union[str, os.PathLike], *, metadata: dict[str, str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream but still the libtorch path
        scripted = torch.jit.script(fused)
        torch.jit.save(scripted, str(path), _extra_files={EXTRA_FILE: json.dumps(metadata, indent=1)})
    return path


def load(path: Union[str, os.PathLike]) -> tuple[torch.jit.ScriptModule, dict[str, str]]:
    extra = {EXTRA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return module.eval(), json.loads(extra[EXTRA_FILE] or "{}")


def read_metadata(path: Union[str, os.PathLike]) -> dict[str, str]:
    return load(path)[1]


def runner(path: Union[str, os.PathLike]) -> Callable[[torch.Tensor], torch.Tensor]:
    module, _ = load(path)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)
    return run


def describe(path: Union[str, os.PathLike]) -> str:
    module, meta = load(path)
    has_bn = any("BatchNorm" in m.original_name for m in module.modules())
    return (f"scripted module, {'BatchNorm present!' if has_bn else 'no BatchNorm'}, "
            f"extra file {EXTRA_FILE} with keys: {', '.join(sorted(meta))}")
