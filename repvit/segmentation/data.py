"""Semantic segmentation data: a folder of images with a folder of index-PNG labels.

Layout (CamVid as shared, and what ``repvit segment`` reads)::

    DIR/images/<name>.<jpg|png|...>
    DIR/labels/<name>.png      one channel (mode L or P), pixel value = class index, ``ignore_index`` = void

Other datasets in this layout after renaming folders: ADE20K (``images/training`` ->
``images``, ``annotations/training`` -> ``labels``; its label 0 is "other", so subtract 1 and
ignore 255, or pass ``reduce_zero_label=True``) and Cityscapes (``leftImg8bit`` and the
``*_labelTrainIds.png`` files of ``gtFine`` made by cityscapesScripts; ignore 255).

Pairs are matched by file stem and checked when the dataset is built (both files decoded in
full): an image without a label (or the reverse), a label whose size differs from its image, an
unreadable or truncated file. All of them are reported at once, in one error grouped by reason,
or with ``skip_bad=True`` skipped and summarized by ``skip_report()`` for the run's log.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from PIL import Image

from ..data.bad_inputs import SKIP_BAD_HINT, BadInputs, read_image_size

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
        self.pairs, self.bad_inputs = _scan_pairs(image_files, label_files, source=str(self.root))
        if not skip_bad:
            self.bad_inputs.raise_if_any(SegmentationDataError, SKIP_BAD_HINT)
        # (file, what is wrong) for each pair left out; bad_inputs has the reasons too
        self.skipped: list[tuple[str, str]] = [(e.file, e.detail) for e in self.bad_inputs]
        if not self.pairs:
            raise SegmentationDataError(f"{self.root}: no usable image/label pairs"
                                        + (f"\n{self.bad_inputs.summary()}" if self.bad_inputs else ""))

    def skip_report(self, files: int = 3) -> str:
        """What ``skip_bad`` left out, counted by reason with the first ``files`` names of each ("" if nothing)."""
        return self.bad_inputs.summary(files) if self.bad_inputs else ""

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


def _scan_pairs(image_files: dict, label_files: dict, *, source: str) -> tuple[list[tuple[Path, Path]], BadInputs]:
    """Pairs matched by stem whose files decode whole and agree in size; every other file is a bad input."""
    bad = BadInputs(source)
    matched = []
    for stem in sorted(set(image_files) | set(label_files)):
        image, label = image_files.get(stem), label_files.get(stem)
        if label is None:
            bad.add("image without label", image, f"no matching labels/{stem}.png")
        elif image is None:
            bad.add("label without image", label, f"no matching image named {stem}.* in images/")
        else:
            matched.append((image, label))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:   # PIL decodes without the GIL
        problems = list(pool.map(lambda pair: _check_pair(*pair), matched))
    pairs = []
    for pair, problem in zip(matched, problems):
        if problem:
            bad.add(*problem)
        else:
            pairs.append(pair)
    return pairs, bad


def _check_pair(image: Path, label: Path) -> Optional[tuple[str, str, str]]:
    """``(reason, file, detail)`` when the pair cannot be used: both files are decoded in full."""
    size, reason, detail = read_image_size(image)
    if size is None:
        return reason, str(image), detail
    try:
        with Image.open(label) as lab:
            label_size, mode = lab.size, lab.mode
            lab.load()
    except (OSError, SyntaxError, ValueError) as err:
        return "unreadable label", str(label), f"unreadable label PNG ({err})"
    if mode not in ("L", "P", "I;16", "I"):
        return "label not one channel", str(label), (f"label PNG of mode {mode}: expected one channel of class "
                                                     "indices (mode L or P)")
    if label_size != size:
        return "size mismatch", str(label), (f"label is {label_size[0]}x{label_size[1]} but its image {image.name} "
                                             f"is {size[0]}x{size[1]}")
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

