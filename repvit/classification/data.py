"""Image-folder data: layout checks, image loading with errors that name the file, timm's
transforms, samplers (repeated augmentation, resumable, pad-free evaluation shards) and loaders.

Layout: ``DATA/train/<class>/<image>`` and ``DATA/val/<class>/<image>``; class names and their
order come from the train folders. Problems are found in the main process where possible
(layout, empty classes, and with ``--skip-bad`` every image); an image that still fails
to decode inside a worker is reported with its path, not as a worker crash.
"""
from __future__ import annotations

import itertools
import math
import os
import signal
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..models.model import IMAGENET_MEAN, IMAGENET_STD
from .augment import fix_posterize
from ..engine.distributed import DistEnv, gather_objects

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_BAD_IMAGE_MARK = "unreadable image "


class BadImageError(ValueError):
    """An image file that PIL cannot decode; the message names the file and the way out."""

    @classmethod
    def for_file(cls, path, reason: str) -> "BadImageError":
        return cls(f"{_BAD_IMAGE_MARK}{str(path)!r}: {reason}. Fix or delete the file, or pass --skip-bad "
                   "to check all images first and skip the unreadable ones")

    @classmethod
    def from_worker(cls, err: BaseException) -> "BadImageError":
        """The same error without the worker traceback that the DataLoader wraps around it."""
        for line in reversed(str(err).splitlines()):
            if _BAD_IMAGE_MARK in line:
                return cls(line[line.index(_BAD_IMAGE_MARK):])
        return cls(str(err))


# --------------------------------------------------------------------------- layout
def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def scan_class_folders(root, class_names: Optional[Sequence[str]] = None) -> tuple[list, list[str]]:
    """``(samples, class_names)`` of a folder of class folders; ``samples`` is ``[(path, index)]``.

    With ``class_names`` (e.g. from the train split or a checkpoint) the folders are mapped onto
    that list, so a validation folder may hold a subset of the classes but none that is unknown.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data folder {str(root)!r} does not exist or is not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        loose = [p.name for p in root.iterdir() if p.is_file() and is_image_file(p.name)]
        what = f"{len(loose)} images but no class folders" if loose else "no class folders"
        raise ValueError(f"{str(root)!r} holds {what}: expected {root}/<class name>/<image files>, "
                         "one folder per class")
    names = [p.name for p in folders]
    if class_names is None:
        class_names = names
    else:
        unknown = [n for n in names if n not in class_names]
        if unknown:
            raise ValueError(f"{str(root)!r} has class folders the model does not know: {', '.join(unknown[:5])}"
                             f"{' ...' if len(unknown) > 5 else ''}; known classes: {', '.join(list(class_names)[:10])}"
                             f"{' ...' if len(class_names) > 10 else ''}")
    index = {name: i for i, name in enumerate(class_names)}
    samples = []
    for folder in folders:
        files = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                         if is_image_file(f) and not f.startswith("."))
        if not files:
            raise ValueError(f"class folder {str(folder)!r} holds no images (looked for "
                             f"{', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
        samples.extend((path, index[folder.name]) for path in files)
    return samples, list(class_names)


def split_folder(data, split: str) -> Path:
    """``DATA/split``, with an error that shows the expected layout."""
    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"--data {str(root)!r} does not exist or is not a folder")
    folder = root / split
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())[:8]
        raise ValueError(f"--data {str(root)!r} has no {split}/ folder (found: {', '.join(found) or 'nothing'}); "
                         f"expected {root}/train/<class>/<images> and {root}/val/<class>/<images>")
    return folder


def eval_folder(data) -> Path:
    """A folder of class folders, or a dataset root holding ``val/``."""
    root = Path(data)
    return root / "val" if (root / "val").is_dir() else root


# --------------------------------------------------------------------------- images
def load_rgb(path) -> Image.Image:
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError.for_file(path, f"{type(err).__name__}: {err}") from None


def check_image(path: str) -> Optional[str]:
    """Why ``path`` cannot be decoded, or None. JPEGs decode at reduced scale (fast, still complete)."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image.draft("RGB", (64, 64))
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"
    return None


def find_bad_images(samples: Sequence, env: DistEnv, workers: int = 0) -> list[tuple[str, str]]:
    """``[(path, reason)]`` for every unreadable image; ranks split the work and share the result."""
    mine = [path for path, _ in samples[env.rank::env.world_size]]
    if workers > 1 and len(mine) > 256:
        with get_context("spawn").Pool(workers) as pool:
            reasons = pool.map(check_image, mine, chunksize=64)
    else:
        reasons = [check_image(p) for p in mine]
    bad = [(p, r) for p, r in zip(mine, reasons) if r is not None]
    return sorted(itertools.chain.from_iterable(gather_objects(bad, env)))


class ImageDataset(Dataset):
    """``[(path, class index)]`` with a transform; errors name the file."""

    def __init__(self, samples: Sequence, class_names: Sequence[str], transform=None):
        self.samples = list(samples)
        self.class_names = list(class_names)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = load_rgb(path)
        return (self.transform(image) if self.transform else image), target


# --------------------------------------------------------------------------- transforms
def preprocessing(cfg) -> dict:
    """Evaluation preprocessing of this run, recorded in checkpoints so eval/export need no flags."""
    return {"input_size": (3, cfg.img_size, cfg.img_size), "interpolation": cfg.eval_interpolation,
            "crop_pct": cfg.crop_pct, "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def train_transform(cfg):
    from timm.data import create_transform
    aa = None if str(cfg.aa).lower() in ("", "none", "null") else cfg.aa
    transform = create_transform(cfg.img_size, is_training=True, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
                                 hflip=cfg.hflip, color_jitter=cfg.color_jitter, auto_augment=aa,
                                 interpolation=cfg.train_interpolation, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                 re_prob=cfg.reprob, re_mode=cfg.remode, re_count=cfg.recount)
    return fix_posterize(transform)


def eval_transform(prep: dict):
    """Resize to size / crop_pct, centre crop, normalise, from a ``preprocessing`` record."""
    from timm.data import create_transform
    return create_transform(tuple(prep["input_size"]), is_training=False, interpolation=prep["interpolation"],
                            crop_pct=prep["crop_pct"], mean=tuple(prep["mean"]), std=tuple(prep["std"]))


# --------------------------------------------------------------------------- samplers
class ResumableSampler(Sampler):
    """Wraps an epoch-seeded sampler; ``skip`` leading indices are dropped from the next pass
    only, so a run stopped mid-epoch continues with exactly the batches it had not seen."""

    def __init__(self, inner: Sampler):
        self.inner = inner
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = self.skip, 0
        return itertools.islice(iter(self.inner), skip, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip


class ShardSampler(Sampler):
    """Rank r takes indices r, r+W, r+2W, ...: every image exactly once across ranks, no padding."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return max(0, math.ceil((self.length - self.rank) / self.world_size))


def train_sampler(dataset: Dataset, cfg, env: DistEnv) -> ResumableSampler:
    if cfg.aug_repeats > 1:
        from timm.data.distributed_sampler import RepeatAugSampler
        inner = RepeatAugSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                 num_repeats=cfg.aug_repeats)
    else:
        inner = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=cfg.seed)
    return ResumableSampler(inner)


def _leave_stop_signals_to_main(worker_id: int) -> None:
    # Ctrl-C, and SIGTERM from `timeout`, `docker stop` or a cluster's preemption, reach the whole
    # process group; a worker killed by one would crash the main process before it could save.
    # The main process decides how to stop, then shuts its workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset: Dataset, *, batch_size: int, sampler: Sampler, workers: int, device: torch.device,
                drop_last: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=device.type == "cuda", drop_last=drop_last, persistent_workers=workers > 0,
                      worker_init_fn=_leave_stop_signals_to_main if workers > 0 else None)


# --------------------------------------------------------------------------- everything for a run
@dataclass
class TrainData:
    train_loader: DataLoader
    val_loader: DataLoader
    sampler: ResumableSampler
    class_names: list
    num_train: int
    num_val: int
    skipped: list  # [(path, reason)] of images left out with --skip-bad


def build_data(cfg, env: DistEnv, log=print) -> TrainData:
    train_samples, class_names = scan_class_folders(split_folder(cfg.data, cfg.train_split))
    val_samples, _ = scan_class_folders(split_folder(cfg.data, cfg.val_split), class_names)
    skipped = []
    if cfg.skip_bad:
        skipped = find_bad_images(train_samples + val_samples, env, workers=cfg.workers)
        if skipped:
            bad = {p for p, _ in skipped}
            train_samples = [s for s in train_samples if s[0] not in bad]
            val_samples = [s for s in val_samples if s[0] not in bad]
            log(f"skipped {len(skipped)} unreadable images, e.g. {skipped[0][0]} ({skipped[0][1]})")
        if not train_samples or not val_samples:
            raise ValueError(f"no readable images left in {'train' if not train_samples else 'val'} "
                             f"after skipping {len(skipped)}")
    global_batch = cfg.batch_size * env.world_size
    if len(train_samples) < global_batch:
        raise ValueError(f"the train split has {len(train_samples)} images, fewer than one global batch of "
                         f"{global_batch} ({cfg.batch_size} x {env.world_size} processes): lower --batch-size")
    train_set = ImageDataset(train_samples, class_names, train_transform(cfg))
    val_set = ImageDataset(val_samples, class_names, eval_transform(preprocessing(cfg)))
    sampler = train_sampler(train_set, cfg, env)
    if len(sampler) < cfg.batch_size:
        raise ValueError(f"each process gets {len(sampler)} train images per epoch, fewer than --batch-size "
                         f"{cfg.batch_size}: lower --batch-size or --aug-repeats")
    train_loader = make_loader(train_set, batch_size=cfg.batch_size, sampler=sampler, workers=cfg.workers,
                               device=env.device, drop_last=True)
    val_loader = make_loader(val_set, batch_size=cfg.eval_batch_size or cfg.batch_size,
                             sampler=ShardSampler(len(val_set), env.rank, env.world_size), workers=cfg.workers,
                             device=env.device, drop_last=False)
    return TrainData(train_loader, val_loader, sampler, class_names, len(train_set), len(val_set), skipped)
