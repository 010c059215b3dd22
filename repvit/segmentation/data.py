"""Semantic segmentation data: a folder of images with a folder of index-PNG labels.

Layout (CamVid as shared, and what ``repvit segment`` reads)::

    DIR/images/<name>.<jpg|png|...>
    DIR/labels/<name>.png      one channel (mode L or P), pixel value = class index, ``ignore_index`` = void

Other datasets in this layout after renaming folders: ADE20K (``images/training`` ->
``images``, ``annotations/training`` -> ``labels``; its label 0 is "other", so subtract 1 and
ignore 255, or pass ``reduce_zero_label=True``) and Cityscapes (``leftImg8bit`` and the
``*_labelTrainIds.png`` files of ``gtFine`` made by cityscapesScripts; ignore 255).

Pairs are matched by file stem and checked when the dataset is built: an image without a label
(or the reverse), a label whose size differs from its image, an unreadable file. Each is an
error naming the file, or with ``skip_bad=True`` a counted skip.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class SegmentationDataError(ValueError):
    """Bad segmentation data; the message names the file."""


class SemanticFolder(torch.utils.data.Dataset):
    """``(image float 0..1 [3, H, W], label int64 [H, W])`` pairs; ``transforms(image, label)`` may crop/flip."""

    def __init__(self, root: Union[str, os.PathLike], *, num_classes: int, ignore_index: int = 255,
                 reduce_zero_label: bool = False, skip_bad: bool = False,
                 transforms: Optional[Callable] = None, train_transform: Optional[Callable] = None):
        self.root = Path(root)
        self.train_transform = train_transform
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reduce_zero_label, self.transforms = reduce_zero_label, transforms
        images, labels = self.root / "images", self.root / "labels"
        for folder in (images, labels):
            if not folder.is_dir():
                raise SegmentationDataError(f"{self.root}: expected images/ and labels/ folders (missing {folder.name}/)")
        image_files = {p.stem: p for p in sorted(images.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        label_files = {p.stem: p for p in sorted(labels.iterdir()) if p.suffix.lower() == ".png"}
        self.skipped: list[tuple[str, str]] = []
        self.pairs: list[tuple[Path, Path]] = []
        for stem in sorted(set(image_files) | set(label_files)):
            image, label = image_files.get(stem), label_files.get(stem)
            if image is None or label is None:
                missing = f"labels/{stem}.png" if image is not None else f"an image named {stem}.*"
                self._reject(skip_bad, str(image or label), f"no matching {missing}")
                continue
            problem = _check_pair(image, label, full=skip_bad)
            if problem:
                self._reject(skip_bad, *problem)
                continue
            self.pairs.append((image, label))
        if not self.pairs:
            raise SegmentationDataError(f"{self.root}: no usable image/label pairs")

    def _reject(self, skip_bad: bool, where: str, reason: str) -> None:
        if not skip_bad:
            raise SegmentationDataError(f"{where}: {reason} (pass skip_bad / --skip-bad to skip and count such cases)")
        self.skipped.append((where, reason))

    def __len__(self) -> int:
        return len(self.pairs)

    def read_label(self, path: Path) -> torch.Tensor:
        with Image.open(path) as im:
            label = np.asarray(im if im.mode in ("L", "P", "I;16", "I") else im.convert("L")).astype(np.int64)
        if self.reduce_zero_label:
            label = np.where(label == 0, self.ignore_index, label - 1)
        return torch.from_numpy(label)

    def get(self, index: int, generator: torch.Generator):
        """A training sample: ``train_transform(image, label, generator)`` applied (see ``TrainTransform``)."""
        image, label = self[index]
        return self.train_transform(image, label, generator) if self.train_transform else (image, label)

    def __getitem__(self, index: int):
        from torchvision.transforms.functional import pil_to_tensor
        image_path, label_path = self.pairs[index]
        with Image.open(image_path) as im:
            image = pil_to_tensor(im.convert("RGB")).float() / 255.0
        label = self.read_label(label_path)
        if self.transforms is not None:
            image, label = self.transforms(image, label)
        return image, label


def _check_pair(image: Path, label: Path, *, full: bool) -> Optional[tuple[str, str]]:
    try:
        with Image.open(image) as im:
            image_size = im.size
            if full:
                im.convert("RGB")
    except OSError as err:
        return str(image), f"unreadable image ({err})"
    try:
        with Image.open(label) as lab:
            label_size, mode = lab.size, lab.mode
            if full:
                lab.load()
    except OSError as err:
        return str(label), f"unreadable label PNG ({err})"
    if mode not in ("L", "P", "I;16", "I"):
        return str(label), f"label PNG of mode {mode}: expected one channel of class indices (mode L or P)"
    if label_size != image_size:
        return str(label), (f"label is {label_size[0]}x{label_size[1]} but its image {image.name} is "
                            f"{image_size[0]}x{image_size[1]}")
    return None


class TrainTransform:
    """Random scale (``scale`` x the image), random crop of ``crop`` (padded with 0 / the ignore
    value where the scaled image is smaller), horizontal flip: the mmsegmentation recipe's geometry.
    All randomness comes from the ``generator`` passed in, so a sample's augmentation is reproducible."""

    def __init__(self, crop: tuple[int, int], *, scale: tuple[float, float] = (0.5, 2.0), hflip: float = 0.5,
                 ignore_index: int = 255):
        if not (0 < scale[0] <= scale[1]):
            raise ValueError(f"scale range must satisfy 0 < min <= max, got {scale}")
        self.crop, self.scale, self.hflip, self.ignore_index = tuple(crop), scale, hflip, ignore_index

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator):
        import torch.nn.functional as F
        u = torch.rand(4, generator=generator).tolist()
        factor = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
        height, width = max(1, round(image.shape[1] * factor)), max(1, round(image.shape[2] * factor))
        image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
        ch, cw = self.crop
        pad_h, pad_w = max(0, ch - height), max(0, cw - width)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top = int(u[1] * (image.shape[1] - ch + 1))
        left = int(u[2] * (image.shape[2] - cw + 1))
        image, label = image[:, top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]
        if u[3] < self.hflip:
            image, label = image.flip(-1), label.flip(-1)
        return image.contiguous(), label.contiguous()

