"""The teacher side of RepViT-SAM distillation: a segment-anything ViT image encoder and a disk
cache of its embeddings.

Distillation (the MobileSAM / RepViT-SAM recipe) needs the teacher's 256-channel embedding of every
training image, which never changes while the student learns; computing it once and reading it back
makes each epoch cost only the student. One file per image, named by a digest of the image (resolved
path, size, modification time), the teacher's identity (architecture plus the SHA-256 of its weights,
or the seed of a random one) and the input size, so a changed image, teacher or size is simply a
different file, and a re-run reads what an earlier run wrote. Files are written atomically: an
interrupted fill leaves complete files only.

Both networks see SAM's input: the longest side resized to ``img_size``, normalised with SAM's pixel
mean and std, zero-padded at the bottom and right to ``img_size`` x ``img_size``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoint import CheckpointError, atomic_write
from ..models.state_dict import load_strict
from .builder import read_tensors
from ..data.images import load_rgb

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
PATCH = 16
TRAINED_SIZE = 1024   # the input size SAM's ViTs were trained at (a 64x64 position grid)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CHECKPOINT_URLS = {   # Meta's release files, for the error that names what to fetch
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
}


@dataclass(frozen=True)
class ViTSpec:
    embed_dim: int
    depth: int
    num_heads: int
    global_blocks: tuple[int, ...]   # blocks with attention over the whole grid; the rest use 14x14 windows


# SAM's three image encoders (Kirillov et al., 2023): patch 16, MLP ratio 4, relative positions, window 14.
TEACHERS = {
    "vit_b": ViTSpec(embed_dim=768, depth=12, num_heads=12, global_blocks=(2, 5, 8, 11)),
    "vit_l": ViTSpec(embed_dim=1024, depth=24, num_heads=16, global_blocks=(5, 11, 17, 23)),
    "vit_h": ViTSpec(embed_dim=1280, depth=32, num_heads=16, global_blocks=(7, 15, 23, 31)),
}


# --------------------------------------------------------------------------- input
def sam_input(rgb: np.ndarray, img_size: int) -> torch.Tensor:
    """``3 x img_size x img_size`` float tensor: what SAM's predictor feeds its image encoder."""
    from segment_anything.utils.transforms import ResizeLongestSide
    resized = ResizeLongestSide(img_size).apply_image(rgb)
    x = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1).float()
    x = (x - torch.tensor(PIXEL_MEAN)[:, None, None]) / torch.tensor(PIXEL_STD)[:, None, None]
    return F.pad(x, (0, img_size - x.shape[2], 0, img_size - x.shape[1]))


def list_images(root: Union[str, os.PathLike], max_images: Optional[int] = None) -> list[Path]:
    """Image files under ``root`` (recursive, following links), sorted. With ``max_images``, that many,
    taken in turn from each folder so every sub-folder (class, source) is represented."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
    groups: dict[str, list[Path]] = {}
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        found = sorted(Path(folder) / f for f in files if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."))
        if found:
            groups[folder] = found
    if not groups:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {str(root)!r}: point --data at a folder "
                         "of photos (searched recursively)")
    if max_images is None:
        return sorted(p for g in groups.values() for p in g)
    picked, depth = [], 0
    while len(picked) < max_images and any(depth < len(g) for g in groups.values()):
        picked += [g[depth] for g in groups.values() if depth < len(g)]
        depth += 1
    return sorted(picked[:max_images])


# --------------------------------------------------------------------------- the teacher
def check_img_size(img_size: int) -> None:
    if img_size < PATCH or img_size % PATCH:
        raise ValueError(f"--img-size must be a multiple of {PATCH} (the embedding grid is img_size/{PATCH}), "
                         f"got {img_size}; SAM's own size is 1024")


def teacher_identity(arch: str, *, checkpoint: Union[str, os.PathLike, None] = None,
                     seed: Optional[int] = None) -> str:
    """What the cache keys on: the architecture and the SHA-256 of the weights file, or the seed of a
    random teacher (with the torch version, whose initialisers draw the numbers)."""
    if arch not in TEACHERS:
        raise ValueError(f"unknown teacher {arch!r}; choose from {', '.join(TEACHERS)}")
    if (checkpoint is None) == (seed is None):
        raise ValueError("give the teacher as --teacher-checkpoint PATH (segment-anything weights) or "
                         "--teacher-random-seed N (a fixed random teacher, for pipeline checks), exactly one")
    if seed is not None:
        return f"{arch}:random-seed-{seed}:torch-{torch.__version__}"
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"teacher checkpoint {str(path)!r} does not exist; SAM's {arch} weights are "
                                f"{CHECKPOINT_URLS[arch]} (or pass --teacher-random-seed N for a random teacher)")
    from ..models.pretrained import sha256_of
    return f"{arch}:sha256-{sha256_of(path)}"


def build_teacher(arch: str, *, img_size: int, checkpoint: Union[str, os.PathLike, None] = None,
                  seed: Optional[int] = None) -> nn.Module:
    """A segment-anything ``ImageEncoderViT`` for ``img_size`` inputs, in eval mode.

    SAM's ViTs hold absolute position embeddings for a 64x64 grid and, in the global-attention
    blocks, relative position tables of 2*64-1 rows, so they accept only 1024-pixel inputs as built.
    For another size the encoder is built for that grid, and a checkpoint's tables are resampled to
    it (bicubic for the 2-D grid, linear for the 1-D tables, as segment-anything itself resamples
    relative tables at run time). The windowed blocks' tables (2*14-1 rows) fit any size. A random
    teacher is drawn from its own seed without touching the global random stream.
    """
    from segment_anything.modeling import ImageEncoderViT
    check_img_size(img_size)
    spec = TEACHERS[arch]
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        encoder = ImageEncoderViT(img_size=img_size, patch_size=PATCH, embed_dim=spec.embed_dim, depth=spec.depth,
                                  num_heads=spec.num_heads, mlp_ratio=4.0, out_chans=256, qkv_bias=True,
                                  norm_layer=partial(nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=14,
                                  global_attn_indexes=spec.global_blocks)
    if checkpoint is not None:
        state = fit_to_size(read_teacher_state(checkpoint, arch), img_size, spec)
        other = [a for a, s in TEACHERS.items() if s.embed_dim == _embed_dim_of(state) and a != arch]
        load_strict(encoder, state, source=repr(str(checkpoint)), what=f"SAM's {arch} image encoder",
                    fix=(f"it looks like a {other[0]} checkpoint: pass --teacher {other[0]}" if other else
                         f"pass segment-anything's {arch} weights ({CHECKPOINT_URLS.get(arch, 'the official file')}) "
                         "or the --teacher that the file was saved from"))
    return encoder.eval().requires_grad_(False)


def read_teacher_state(path: Union[str, os.PathLike], arch: str) -> dict:
    """The image encoder's tensors from a whole-SAM file (``image_encoder.*``) or an encoder-only one,
    read with ``weights_only=True``."""
    tensors = read_tensors(path)
    if any(k.startswith("image_encoder.") for k in tensors):
        return {k[len("image_encoder."):]: v for k, v in tensors.items() if k.startswith("image_encoder.")}
    if "patch_embed.proj.weight" in tensors:
        return tensors
    raise CheckpointError(f"{str(path)!r} holds no SAM ViT image encoder (no image_encoder.* or patch_embed.* "
                          f"tensors); expected segment-anything's {arch} weights, e.g. {CHECKPOINT_URLS[arch]}")


def _embed_dim_of(state: dict) -> Optional[int]:
    weight = state.get("patch_embed.proj.weight")
    return int(weight.shape[0]) if weight is not None else None


def fit_to_size(state: dict, img_size: int, spec: ViTSpec) -> dict:
    """``state`` with its position tables resampled for ``img_size`` inputs (unchanged at the trained size)."""
    grid = img_size // PATCH
    state = dict(state)
    pos = state.get("pos_embed")
    if pos is not None and pos.shape[1:3] != (grid, grid):
        shrinking = grid < pos.shape[1]
        resized = F.interpolate(pos.float().permute(0, 3, 1, 2), size=(grid, grid), mode="bicubic",
                                align_corners=False, antialias=shrinking)
        state["pos_embed"] = resized.permute(0, 2, 3, 1).to(pos.dtype)
    for block in spec.global_blocks:
        for axis in ("h", "w"):
            key = f"blocks.{block}.attn.rel_pos_{axis}"
            table = state.get(key)
            if table is not None and table.shape[0] != 2 * grid - 1:
                resized = F.interpolate(table.float().t()[None], size=2 * grid - 1, mode="linear", align_corners=False)
                state[key] = resized[0].t().to(table.dtype)
    return state


# --------------------------------------------------------------------------- the cache
class EmbeddingCache:
    """One file per (image, teacher, input size); see the module docstring."""

    def __init__(self, folder: Union[str, os.PathLike], teacher: str, img_size: int, dtype: str = "float32"):
        if dtype not in ("float32", "float16"):
            raise ValueError(f"the cache stores float32 or float16 embeddings, not {dtype!r}")
        self.folder, self.teacher, self.img_size, self.dtype = Path(folder), teacher, img_size, dtype

    def path(self, image: Union[str, os.PathLike]) -> Path:
        real = os.path.realpath(image)
        stat = os.stat(real)
        key = json.dumps([real, stat.st_size, stat.st_mtime_ns, self.teacher, self.img_size, self.dtype])
        digest = hashlib.sha256(key.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.pt"

    def has(self, image) -> bool:
        return self.path(image).is_file()

    def store(self, image, embedding: torch.Tensor) -> None:
        record = {"embedding": embedding.detach().to("cpu", getattr(torch, self.dtype)).contiguous().clone(),
                  "image": os.path.realpath(image), "teacher": self.teacher, "img_size": self.img_size}
        atomic_write(self.path(image), lambda tmp: torch.save(record, tmp))

    def load(self, image) -> torch.Tensor:
        path = self.path(image)
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"no cached teacher embedding for {str(image)!r} (expected {path}); the cache "
                                    "is filled at the start of a run") from None
        if (record.get("image"), record.get("teacher"), record.get("img_size")) != \
                (os.path.realpath(image), self.teacher, self.img_size):
            raise ValueError(f"{path} was written for another image, teacher or size; delete it and run again")
        return record["embedding"].float()

    def fill(self, images: Sequence[Path], make_teacher: Callable[[], nn.Module], *, device: torch.device,
             batch_size: int, rank: int = 0, world_size: int = 1, skip_bad: bool = False,
             log: Callable[[str], None] = print) -> dict:
        """Compute the embeddings the cache lacks among this rank's share of ``images`` (every
        ``world_size``-th, so the shares never depend on what another rank has written yet; the caller
        waits for the other ranks). The teacher is built only when something is missing. Returns this
        share's counts (missing, reused) and seconds; unreadable images (with ``skip_bad``) stay without
        a file."""
        share = list(images)[rank::world_size]
        mine = [p for p in share if not self.has(p)]
        start, done = time.perf_counter(), 0
        if mine:
            teacher = make_teacher().to(device)
            last_report = start
            for first in range(0, len(mine), batch_size):
                batch, inputs = [], []
                for path in mine[first:first + batch_size]:
                    try:
                        inputs.append(sam_input(load_rgb(path), self.img_size))
                        batch.append(path)
                    except ValueError:
                        if not skip_bad:
                            raise
                if not batch:
                    continue
                with torch.inference_mode():
                    out = teacher(torch.stack(inputs).to(device))
                for path, embedding in zip(batch, out):
                    self.store(path, embedding)
                done += len(batch)
                if time.perf_counter() - last_report > 30:
                    last_report = time.perf_counter()
                    log(f"teacher embeddings: {done}/{len(mine)} computed"
                        + (f" by rank {rank}" if world_size > 1 else ""))
            del teacher
        return {"missing": len(mine), "reused": len(share) - len(mine), "seconds": time.perf_counter() - start}
