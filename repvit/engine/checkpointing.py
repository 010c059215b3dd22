"""What exact resume needs beyond weights and optimizer: every random generator's state, and
which file ``--resume`` names. ``last.pth`` holds each rank's states (Python, NumPy, torch CPU and
CUDA); a data order is a function of (seed, epoch), so the epoch and step reached complete it.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


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


def rng_for_rank(states: list, rank: int, world_size: int) -> tuple[dict, bool]:
    """This rank's saved RNG state and whether the continuation is exact (same world size)."""
    if len(states) == world_size:
        return states[rank], True
    return states[rank % len(states)], False
