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

A dataset root (``ROOT/train`` and ``ROOT/val`` in this layout) is split for training and scoring
by one of three forms (``--val-split``), decided from file names alone:

* ``folders``: train/ trains, val/ validates (what the folders say; for CamVid an in-sequence
  split, its val frames being one clip of a recording whose other frames are in train/);
* ``sequence:P[,Q...]``: the frames of train/ and val/ whose names start with P (or Q ...)
  validate, every other frame trains: a by-sequence split when names start with the recording
  (CamVid's ``0006R0_f02220``), so val comes from a street and a light no training frame shows;
* ``none``: every frame of train/ and val/ trains (the final fit, as CamVid papers train on
  train + val; its epoch count comes from a by-sequence run), nothing is held out.
"""
from __future__ import annotations

import copy
import math
import os
from collections import Counter
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
    """``(image float 0..1 [3, H, W], label int64 [H, W])`` pairs; ``transforms(image, label)`` may crop/flip.

    ``root`` is one folder of ``images/`` + ``labels/``; with ``split`` (a ``--val-split`` form, see
    the module docstring) it is a dataset root instead, and the folder holds the frames of that
    split's ``part`` ("train" or "val"), pairs matched and checked in the folder they sit in."""

    def __init__(self, root: Union[str, os.PathLike], *, num_classes: int, ignore_index: int = 255,
                 reduce_zero_label: bool = False, skip_bad: bool = False,
                 transforms: Optional[Callable] = None, train_transform: Optional[Callable] = None,
                 split: Optional[str] = None, part: str = "val"):
        self.root = Path(root)
        self.train_transform = train_transform
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reduce_zero_label, self.transforms = reduce_zero_label, transforms
        self.split = split
        folders, keep = ([self.root], None) if split is None else split_part(self.root, split, part)
        self.pairs, self.bad_inputs = [], BadInputs(str(self.root))
        for folder in folders:
            images, labels = folder / "images", folder / "labels"
            for sub in (images, labels):
                if not sub.is_dir():
                    raise SegmentationDataError(f"{folder}: expected images/ and labels/ folders (missing {sub.name}/)")
            image_files = {p.stem: p for p in sorted(images.iterdir())
                           if p.suffix.lower() in IMAGE_SUFFIXES and (keep is None or keep(p.stem))}
            label_files = {p.stem: p for p in sorted(labels.iterdir())
                           if p.suffix.lower() == ".png" and (keep is None or keep(p.stem))}
            pairs, bad = _scan_pairs(image_files, label_files, source=str(folder))
            self.pairs += pairs
            for entry in bad:
                self.bad_inputs.add(entry.reason, entry.file, entry.detail)
        if not skip_bad:
            self.bad_inputs.raise_if_any(SegmentationDataError, SKIP_BAD_HINT)
        # (file, what is wrong) for each pair left out; bad_inputs has the reasons too
        self.skipped: list[tuple[str, str]] = [(e.file, e.detail) for e in self.bad_inputs]
        if not self.pairs:
            raise SegmentationDataError(f"{self.root}: no usable image/label pairs"
                                        + (f"\n{self.bad_inputs.summary()}" if self.bad_inputs else ""))

    def with_transforms(self, transforms: Optional[Callable]) -> "SemanticFolder":
        """The same checked pairs under other (evaluation) ``transforms`` and no training transform."""
        other = copy.copy(self)
        other.transforms, other.train_transform = transforms, None
        return other

    def sequences(self) -> Counter:
        """Frames per recording (``sequence_of`` each name), in the order the pairs were found."""
        return Counter(sequence_of(image.stem) for image, _ in self.pairs)

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


# --------------------------------------------------------------------------- splits
SPLIT_FORMS = "folders, sequence:PREFIX[,PREFIX...] or none"
_SHOWN_SEQUENCES = 12   # an error lists this many sequences, then counts the rest


def sequence_of(name: str) -> str:
    """The recording a frame belongs to, as its file name starts: the part before the first ``_``
    (CamVid ``0016E5_07959`` -> ``0016E5``); a name without ``_`` is its own sequence."""
    return name.split("_", 1)[0]


def parse_split(spec: str) -> tuple[str, tuple[str, ...]]:
    """``(form, prefixes)`` of a ``--val-split`` value: ("folders", ()), ("none", ()) or
    ("sequence", ("0006R0", ...))."""
    text = str(spec).strip()
    if text in ("folders", "none"):
        return text, ()
    form, _, rest = text.partition(":")
    prefixes = tuple(p.strip() for p in rest.split(",") if p.strip())
    if form != "sequence" or not prefixes:
        raise ValueError(f"--val-split must be {SPLIT_FORMS} (e.g. sequence:0006R0), got {spec!r}")
    return form, prefixes


def split_part(root: Path, spec: str, part: str) -> tuple[list[Path], Optional[Callable[[str], bool]]]:
    """The folders of ``root`` that hold ``part`` ("train" or "val") of split ``spec`` and which file
    stems of them belong to it (None: all). Checks the split on the image names first: a prefix that
    matches no frame, or one that leaves nothing to train on, is an error listing the sequences found."""
    if part not in ("train", "val"):
        raise ValueError(f"part must be 'train' or 'val', got {part!r}")
    form, prefixes = parse_split(spec)
    root = Path(root)
    if form == "folders":
        if not (root / part).is_dir():
            raise SegmentationDataError(f"{root}: no {part}/ folder (--val-split folders reads train/ and val/ "
                                        "under --data; pass the dataset root)")
        return [root / part], None
    folders = [root / name for name in ("train", "val") if (root / name / "images").is_dir()]
    if not folders:
        raise SegmentationDataError(f"{root}: neither train/images nor val/images is there (--val-split {spec} "
                                    "splits the frames of both; pass the dataset root as --data)")
    stems = _frame_names(folders)
    found = Counter(sequence_of(stem) for stem in stems)
    if form == "none":
        if part == "val":
            raise ValueError(f"--val-split none holds no frame out (a final fit on {root}/train and val): there is "
                             "nothing to score; score a by-sequence split (sequence:PREFIX) or a folder instead")
        return folders, None
    held = lambda stem: stem.startswith(prefixes)  # noqa: E731
    unmatched = [p for p in prefixes if not any(stem.startswith(p) for stem in stems)]
    if unmatched:
        raise SegmentationDataError(f"--val-split {spec}: no frame of {_where(folders)} has a name starting with "
                                    f"{', '.join(unmatched)}; sequences there: {_list_sequences(found)} "
                                    "(hold out some of these)")
    if all(held(stem) for stem in stems):
        raise SegmentationDataError(f"--val-split {spec} holds out every frame of {_where(folders)}, leaving nothing "
                                    f"to train on; sequences there: {_list_sequences(found)} (hold out fewer)")
    return folders, (held if part == "val" else lambda stem: not held(stem))


def _frame_names(folders: list[Path]) -> list[str]:
    """Image stems of ``folders`` (sorted); a name in two of them is an error (it would count twice)."""
    seen: dict[str, Path] = {}
    twice = []
    for folder in folders:
        for path in sorted((folder / "images").iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if path.stem in seen and seen[path.stem] != folder:
                twice.append(path.stem)
            seen[path.stem] = folder
    if twice:
        raise SegmentationDataError(f"{_where(folders)} both hold {len(twice)} frame(s) of the same name (e.g. "
                                    f"{', '.join(twice[:3])}): a split by name would count them twice; rename or "
                                    "remove the copies")
    return sorted(seen)


def _where(folders: list[Path]) -> str:
    return " and ".join(str(f) for f in folders)


def _list_sequences(counts: Counter) -> str:
    """``0001TP 62, 0006R0 101, 0016E5 305`` (names in order; the rest counted past the first dozen)."""
    names = sorted(counts)
    shown = ", ".join(f"{name} {counts[name]}" for name in names[:_SHOWN_SEQUENCES])
    more = len(names) - _SHOWN_SEQUENCES
    return shown + (f" and {more} more" if more > 0 else "")


def describe_split(spec: str, train: SemanticFolder, val: Optional[SemanticFolder]) -> str:
    """The split of a run for its log: per part, the frames per sequence, and whether val shares a
    sequence with train (in-sequence) or not (by-sequence). ``val`` None: nothing held out."""
    train_seq = train.sequences()
    line = f"split --val-split {spec}: train {len(train)} frames ({_list_sequences(train_seq)})"
    if val is None:
        return line + ("; nothing held out (a final fit): the val scores below are on these training frames, "
                       "a fit check, not a held-out figure")
    val_seq = val.sequences()
    shared = sorted(set(val_seq) & set(train_seq))
    kind = (f"in-sequence: val shares {', '.join(shared)} with train" if shared
            else "by-sequence: no val sequence has a frame in train")
    return line + f"; val {len(val)} frames ({_list_sequences(val_seq)}); {kind}"


# --------------------------------------------------------------------------- transforms
# The official ADE20K recipe (mmsegmentation 0.30, RepViT's segmentation/configs/_base_/datasets/ade20k.py):
# these are the defaults of the transforms below and of ``repvit segment train`` (repvit/dense/options.py).
IMG_SCALE = (2048, 512)        # (long, short) target of the random resize; None: relative to the image
RATIO_RANGE = (0.5, 2.0)       # random factor on IMG_SCALE (or on the image's own size)
CAT_MAX_RATIO = 0.75           # a crop where one class covers this share of the labelled pixels is redrawn
CROP_TRIES = 10                # redraws before the last drawn crop is kept (mmseg's RandomCrop)
EVAL_SIZE = (512, 2048)        # (short, long) bound of the aligned resize at evaluation; None: raw size
SIZE_DIVISOR = 32              # evaluated sides are rounded up to a multiple of this (AlignResize)
# PhotoMetricDistortion's ranges, on 8-bit values as mmcv states them.
BRIGHTNESS_DELTA = 32
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA = 18                 # OpenCV hue units: 180 per turn

_PAD_COLOUR = (0.485, 0.456, 0.406)   # the ImageNet mean: padding is zero after the model normalizes, as in mmseg


def rescaled_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """``(h, w)`` of an image rescaled, aspect kept, to fit ``scale`` = (long, short) bounds (mmcv's
    ``imrescale``): the factor is the smaller of long/long-side and short/short-side."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def aligned_size(height: int, width: int, size: tuple[int, int] = EVAL_SIZE,
                 divisor: int = SIZE_DIVISOR) -> tuple[int, int]:
    """Evaluation size (official ``AlignResize``): rescaled to fit (short, long) = ``size``, then each
    side rounded up to a multiple of ``divisor``. ADE20K images come out with a short side of 512."""
    h, w = rescaled_size(height, width, (max(size), min(size)))
    return math.ceil(h / divisor) * divisor, math.ceil(w / divisor) * divisor


class TrainTransform:
    """The training augmentation of mmsegmentation's ADE20K recipe, in its order: random resize,
    random crop (redrawn while one class dominates), horizontal flip, photometric distortion, pad.

    * resize: a factor ``r`` drawn uniformly from ``ratio_range``; with ``img_scale=(L, S)`` the
      image is rescaled, aspect kept, to fit ``(L*r, S*r)`` (official: (2048, 512) x 0.5..2.0, so
      ADE20K images get a short side of 256..1024); with ``img_scale=None`` each side is multiplied
      by ``r`` (the CamVid recipe).
    * crop: ``crop`` (H, W) at a random offset; with ``cat_max_ratio < 1`` a crop whose most
      frequent class covers that share or more of its non-ignored pixels (or that holds one class
      only) is redrawn, up to 10 times, and the last draw is kept.
    * flip with probability ``hflip``; ``photometric`` distortion (see ``photometric_distortion``);
    * pad to ``crop`` at the bottom and right: image with the ImageNet mean colour (zero after the
      model's normalization, as mmseg pads after normalizing), label with ``ignore_index``.

    Images are float RGB in 0..1, labels int64. All randomness comes from the ``generator`` passed
    in, so a sample's augmentation is reproducible (exact resume).
    """

    def __init__(self, crop: tuple[int, int], *, img_scale: Optional[tuple[int, int]] = IMG_SCALE,
                 ratio_range: tuple[float, float] = RATIO_RANGE, cat_max_ratio: float = CAT_MAX_RATIO,
                 hflip: float = 0.5, photometric: bool = True, ignore_index: int = 255):
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(f"crop must be (height, width) of at least 1 pixel, got {crop}")
        if not (0 < ratio_range[0] <= ratio_range[1]):
            raise ValueError(f"ratio range must satisfy 0 < min <= max, got {ratio_range}")
        if img_scale is not None and (len(img_scale) != 2 or min(img_scale) < 1):
            raise ValueError(f"img_scale must be (long, short) in pixels or None, got {img_scale}")
        if not 0 < cat_max_ratio <= 1:
            raise ValueError(f"cat_max_ratio must be in (0, 1] (1 turns the check off), got {cat_max_ratio}")
        self.crop, self.ratio_range, self.hflip = tuple(crop), tuple(ratio_range), hflip
        self.img_scale = tuple(img_scale) if img_scale is not None else None
        self.cat_max_ratio, self.photometric, self.ignore_index = cat_max_ratio, photometric, ignore_index

    def scaled_size(self, height: int, width: int, ratio: float) -> tuple[int, int]:
        if self.img_scale is None:
            return max(1, round(height * ratio)), max(1, round(width * ratio))
        long_side, short_side = max(self.img_scale), min(self.img_scale)
        return rescaled_size(height, width, (int(long_side * ratio), int(short_side * ratio)))

    def crop_is_mixed(self, label: torch.Tensor) -> bool:
        """True when no class covers ``cat_max_ratio`` of the crop's labelled pixels (and 2+ classes are there)."""
        values = label[label != self.ignore_index]
        if values.numel() == 0:
            return False
        counts = torch.unique(values, return_counts=True)[1]
        return len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator):
        import torch.nn.functional as F
        u = torch.rand(4, generator=generator).tolist()    # ratio, crop top, crop left, flip
        ratio = self.ratio_range[0] + (self.ratio_range[1] - self.ratio_range[0]) * u[0]
        height, width = self.scaled_size(image.shape[1], image.shape[2], ratio)
        image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=(height, width), mode="nearest")[0, 0].long()
        ch, cw = self.crop
        margin_h, margin_w = max(0, height - ch), max(0, width - cw)
        top, left = int(u[1] * (margin_h + 1)), int(u[2] * (margin_w + 1))
        if self.cat_max_ratio < 1:
            for _ in range(CROP_TRIES):
                if self.crop_is_mixed(label[top:top + ch, left:left + cw]):
                    break
                v = torch.rand(2, generator=generator).tolist()
                top, left = int(v[0] * (margin_h + 1)), int(v[1] * (margin_w + 1))
        image, label = image[:, top:top + ch, left:left + cw], label[top:top + ch, left:left + cw]
        if u[3] < self.hflip:
            image, label = image.flip(-1), label.flip(-1)
        if self.photometric:
            image = photometric_distortion(image, generator)
        pad_h, pad_w = ch - image.shape[1], cw - image.shape[2]
        if pad_h or pad_w:
            colour = torch.tensor(_PAD_COLOUR, dtype=image.dtype).view(3, 1, 1)
            image = F.pad(image - colour, (0, pad_w, 0, pad_h), value=0.0) + colour
            label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return image.contiguous(), label.contiguous()


def photometric_distortion(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """mmseg's ``PhotoMetricDistortion`` on a float RGB image in 0..1; each step applies with
    probability 1/2, in this order: brightness (+-32/255), contrast (x0.5..1.5) here or last (1/2
    each), saturation (x0.5..1.5 on HSV saturation), hue (an integer shift of -18..17 in OpenCV's
    180-per-turn units), contrast if not done first. Values are clipped to 0..1 after each step.
    (mmcv rounds to 8 bits between steps; here the image stays float.)"""
    u = torch.rand(10, generator=generator).tolist()
    if u[0] < 0.5:
        image = (image + (-BRIGHTNESS_DELTA + 2 * BRIGHTNESS_DELTA * u[1]) / 255.0).clamp(0, 1)
    contrast_first = u[2] < 0.5

    def contrast(img):
        if u[3] < 0.5:
            img = (img * (CONTRAST_RANGE[0] + (CONTRAST_RANGE[1] - CONTRAST_RANGE[0]) * u[4])).clamp(0, 1)
        return img

    if contrast_first:
        image = contrast(image)
    if u[5] < 0.5 or u[7] < 0.5:
        hue, sat, value = rgb_to_hsv(image)
        if u[5] < 0.5:
            sat = (sat * (SATURATION_RANGE[0] + (SATURATION_RANGE[1] - SATURATION_RANGE[0]) * u[6])).clamp(0, 1)
        if u[7] < 0.5:
            shift = math.floor(-HUE_DELTA + 2 * HUE_DELTA * u[8])   # an integer in -18..17, as np.random.randint
            hue = (hue + shift / 180.0) % 1.0
        image = hsv_to_rgb(hue, sat, value)
    if not contrast_first:
        image = contrast(image)
    return image


def rgb_to_hsv(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hue (turns, 0..1), saturation, value of an RGB image in 0..1, each ``[H, W]``."""
    r, g, b = image
    value, _ = image.max(dim=0)
    low, _ = image.min(dim=0)
    spread = value - low
    sat = torch.where(value > 0, spread / value.clamp_min(1e-12), torch.zeros_like(value))
    safe = spread.clamp_min(1e-12)
    hue = torch.where(value == r, (g - b) / safe, torch.where(value == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = torch.where(spread > 0, (hue / 6.0) % 1.0, torch.zeros_like(hue))
    return hue, sat, value


def hsv_to_rgb(hue: torch.Tensor, sat: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    sector = hue * 6.0
    i = torch.floor(sector)
    f = sector - i
    p, q, t = value * (1 - sat), value * (1 - sat * f), value * (1 - sat * (1 - f))
    i = i.long() % 6
    choices = [(value, t, p), (q, value, p), (p, value, t), (p, q, value), (t, p, value), (value, p, q)]
    out = torch.zeros(3, *hue.shape, dtype=value.dtype)
    for k, (r, g, b) in enumerate(choices):
        mask = i == k
        out[0][mask], out[1][mask], out[2][mask] = r[mask], g[mask], b[mask]
    return out


class EvalResize:
    """Evaluation input (official ``AlignResize``): the image bilinearly resized to ``aligned_size``
    (short side 512 for ADE20K, long side at most 2048, sides multiples of 32); the label is left at
    its own size, and the evaluator resizes the logits back to it before scoring, as mmseg does.
    ``size=None`` evaluates at the raw size."""

    def __init__(self, size: Optional[tuple[int, int]] = EVAL_SIZE, *, divisor: int = SIZE_DIVISOR):
        if size is not None and (len(size) != 2 or min(size) < 1):
            raise ValueError(f"eval size must be (short, long) in pixels or None, got {size}")
        self.size, self.divisor = (tuple(size) if size is not None else None), divisor

    def __call__(self, image: torch.Tensor, label: torch.Tensor):
        if self.size is None:
            return image, label
        import torch.nn.functional as F
        height, width = aligned_size(image.shape[1], image.shape[2], self.size, self.divisor)
        image = F.interpolate(image[None], size=(height, width), mode="bilinear", align_corners=False)[0]
        return image, label


class ResizeFlip:
    """Training samples at one fixed size (quantization-aware fine-tuning of a fixed-size export): the
    whole frame resized to ``size`` (image bilinear, label nearest), flipped left-right half of the time
    by ``generator``."""

    def __init__(self, size: tuple[int, int]):
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be (height, width) in pixels, got {size}")
        self.size = (int(size[0]), int(size[1]))

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator):
        import torch.nn.functional as F
        if tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image[None], size=self.size, mode="bilinear", align_corners=False)[0]
        if tuple(label.shape[-2:]) != self.size:
            label = F.interpolate(label[None, None].float(), size=self.size, mode="nearest")[0, 0].long()
        if torch.rand((), generator=generator) < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return image, label


class WholeFrame:
    """Training samples as evaluation sees them (the whole-frame phase of ``--whole-frame-epochs``):
    the frame resized as ``EvalResize(size)`` resizes it (at its own size when ``size`` is None), the
    label resized to match (nearest), no random scale and no crop; flipped with probability ``hflip``
    and, with ``photometric``, distorted as ``TrainTransform`` does, all drawn from ``generator``."""

    def __init__(self, size: Optional[tuple[int, int]] = EVAL_SIZE, *, hflip: float = 0.5, photometric: bool = True,
                 divisor: int = SIZE_DIVISOR):
        self.resize = EvalResize(size, divisor=divisor)
        self.hflip, self.photometric = hflip, photometric

    def __call__(self, image: torch.Tensor, label: torch.Tensor, generator: torch.Generator):
        import torch.nn.functional as F
        flip = torch.rand((), generator=generator).item() < self.hflip
        image, _ = self.resize(image, None)
        if tuple(label.shape[-2:]) != tuple(image.shape[-2:]):
            label = F.interpolate(label[None, None].float(), size=image.shape[-2:], mode="nearest")[0, 0].long()
        if flip:
            image, label = image.flip(-1), label.flip(-1)
        if self.photometric:
            image = photometric_distortion(image, generator)
        return image.contiguous(), label.contiguous()


def stack_padded(batch: list, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate ``(image, label)`` samples, padding smaller ones at the bottom and right to the largest
    (image with the ImageNet mean colour, label with ``ignore_index``, as ``TrainTransform`` pads):
    whole frames of a dataset whose images differ in size still make one batch. Equal sizes stack as they are."""
    import torch.nn.functional as F
    height = max(image.shape[1] for image, _ in batch)
    width = max(image.shape[2] for image, _ in batch)
    images, labels = [], []
    for image, label in batch:
        pad_h, pad_w = height - image.shape[1], width - image.shape[2]
        if pad_h or pad_w:
            colour = torch.tensor(_PAD_COLOUR, dtype=image.dtype).view(3, 1, 1)
            image = F.pad(image - colour, (0, pad_w, 0, pad_h), value=0.0) + colour
            label = F.pad(label, (0, pad_w, 0, pad_h), value=ignore_index)
        images.append(image)
        labels.append(label)
    return torch.stack(images), torch.stack(labels)


def transforms_from_options(cfg) -> tuple[TrainTransform, EvalResize]:
    """The training and evaluation transforms of ``repvit segment train`` options (``--crop``,
    ``--img-scale``, ``--ratio-range``, ``--cat-max-ratio``, ``--photometric``, ``--eval-size``,
    ``--ignore-index``; a null size in a config file means relative to / at the image's own size)."""
    train = TrainTransform(tuple(cfg.crop), img_scale=tuple(cfg.img_scale) if cfg.img_scale else None,
                           ratio_range=tuple(cfg.ratio_range), cat_max_ratio=cfg.cat_max_ratio,
                           photometric=cfg.photometric, ignore_index=cfg.ignore_index)
    return train, EvalResize(tuple(cfg.eval_size) if cfg.eval_size else None)


def whole_frame_from_options(cfg) -> WholeFrame:
    """The whole-frame phase's transform of ``repvit segment train`` options: the frames at
    ``--eval-size`` (as validation sees them), flipped, with ``--photometric`` if set."""
    return WholeFrame(tuple(cfg.eval_size) if cfg.eval_size else None, photometric=cfg.photometric)
