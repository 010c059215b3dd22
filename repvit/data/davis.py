"""DAVIS, the video object segmentation benchmark: its folder layout and its mask PNGs.

A DAVIS folder holds the frames and the hand-made masks of each sequence::

    ROOT/JPEGImages/480p/<sequence>/00000.jpg ...
    ROOT/Annotations/480p/<sequence>/00000.png ...
    ROOT/ImageSets/...               (lists of sequences per split; optional here)

Folders without the resolution level (``ROOT/JPEGImages/<sequence>``) are read too. Frame names
are the file names without their suffix, sorted as strings (DAVIS pads them with zeros, and the
official evaluator sorts them the same way, so its first and last frame are ours).

Two mask formats exist, and a prediction is written in the format of the annotation it answers:

- DAVIS 2016 (``"binary"``): 8-bit grey PNGs, 0 for the background and 255 for the one object;
  read as 0/1.
- DAVIS 2017 (``"indexed"``): palette PNGs whose pixel value is the object's index (1, 2, ...),
  0 the background and 255 (``VOID``) the pixels nobody could label. ``read_annotation`` keeps
  255 as it is; the semi-supervised evaluation counts it as background, as the official one does.

The data of DAVIS is licensed CC BY-NC 4.0 (davischallenge.org): read it where it is, never copy it
into this repository. This module is a bottom layer: it imports nothing from ``repvit``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

PathLike = Union[str, os.PathLike]
VOID = 255
RESOLUTION = "480p"
FRAMES_DIR, ANNOTATIONS_DIR = "JPEGImages", "Annotations"
DOWNLOAD = "https://davischallenge.org/davis2017/code.html"
LAYOUT = (f"a DAVIS folder holds {FRAMES_DIR}/{RESOLUTION}/<sequence>/<frame>.jpg and "
          f"{ANNOTATIONS_DIR}/{RESOLUTION}/<sequence>/<frame>.png (the {RESOLUTION} level may be left out)")


@dataclass(frozen=True)
class MaskFormat:
    """How a mask PNG stores objects: ``kind`` is ``"binary"`` (DAVIS 2016: grey 0/255, one object) or
    ``"indexed"`` (DAVIS 2017: pixel value = object index); ``palette`` is the PNG's palette (a flat
    list of RGB values) for an indexed palette PNG, ``None`` for a grey one."""

    kind: str
    palette: Optional[tuple] = None

    def __post_init__(self):
        if self.kind not in ("binary", "indexed"):
            raise ValueError(f"mask format kind must be 'binary' or 'indexed', got {self.kind!r}")


def davis_palette() -> np.ndarray:
    """The 256 colours DAVIS 2017 draws object indices with (the PASCAL VOC colour map: the bits of
    the index spread over the high bits of red, green and blue), as a ``256 x 3`` uint8 array."""
    colours = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, rgb = index, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << bit
            value >>= 3
        colours[index] = rgb
    return colours


DAVIS_2017_FORMAT = MaskFormat("indexed", tuple(int(v) for v in davis_palette().reshape(-1)))
DAVIS_2016_FORMAT = MaskFormat("binary")


# --------------------------------------------------------------------------- the folder
def _level(root: Path, name: str) -> Optional[Path]:
    """``root/name/480p`` when it exists, else ``root/name`` when it exists, else ``None``."""
    for folder in (root / name / RESOLUTION, root / name):
        if folder.is_dir():
            return folder
    return None


def _check_root(root: PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"DAVIS folder {str(root)!r} does not exist; {LAYOUT}. Download DAVIS from {DOWNLOAD}")
    return root


def annotations_folder(root: PathLike) -> Path:
    """The folder of per-sequence annotation folders (``ROOT/Annotations/480p`` or ``ROOT/Annotations``)."""
    root = _check_root(root)
    folder = _level(root, ANNOTATIONS_DIR)
    if folder is None:
        found = ", ".join(sorted(p.name for p in root.iterdir())[:8]) or "nothing"
        raise FileNotFoundError(f"{root} is not a DAVIS folder: it has no {ANNOTATIONS_DIR}/ (it holds {found}); "
                                f"{LAYOUT}")
    return folder


def frames_folder(root: PathLike) -> Path:
    """The folder of per-sequence frame folders (``ROOT/JPEGImages/480p`` or ``ROOT/JPEGImages``)."""
    root = _check_root(root)
    folder = _level(root, FRAMES_DIR)
    if folder is None:
        raise FileNotFoundError(f"{root} has no {FRAMES_DIR}/ folder of frames; {LAYOUT}")
    return folder


def list_sequences(root: PathLike) -> list[str]:
    """The sequences of a DAVIS folder, sorted: the frame folders of ``JPEGImages``, or the annotation
    folders of ``Annotations`` when the folder holds annotations only (all a score needs)."""
    root = _check_root(root)
    folder = _level(root, FRAMES_DIR) or annotations_folder(root)
    names = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not names:
        raise FileNotFoundError(f"{folder} holds no sequence folders; {LAYOUT}")
    return names


def _sequence_folder(folder: Path, sequence: str, what: str, root: Path) -> Path:
    path = folder / sequence
    if not path.is_dir():
        known = sorted(p.name for p in folder.iterdir() if p.is_dir())
        shown = ", ".join(known[:10]) + (f" and {len(known) - 10} more" if len(known) > 10 else "")
        raise FileNotFoundError(f"sequence {sequence!r} has no {what} in {root}: {path} does not exist "
                                f"(sequences there: {shown or 'none'})")
    return path


def list_frames(root: PathLike, sequence: str) -> list[str]:
    """Names (without ``.jpg``) of the frames of ``sequence``, sorted."""
    root = _check_root(root)
    folder = _sequence_folder(frames_folder(root), sequence, "frames", root)
    names = sorted(p.stem for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not names:
        raise FileNotFoundError(f"{folder}: no .jpg frames in this folder")
    return names


def list_annotated_frames(root: PathLike, sequence: str) -> list[str]:
    """Names (without ``.png``) of the annotated frames of ``sequence``, sorted."""
    root = _check_root(root)
    folder = _sequence_folder(annotations_folder(root), sequence, "annotations", root)
    names = sorted(p.stem for p in folder.iterdir() if p.suffix == ".png")
    if not names:
        raise FileNotFoundError(f"sequence {sequence!r} has no annotation: {folder} holds no .png masks")
    return names


def annotation_path(root: PathLike, sequence: str, frame: str) -> Path:
    """``Annotations/[480p/]<sequence>/<frame>.png`` of ``root`` (it may not exist)."""
    return annotations_folder(root) / sequence / f"{frame}.png"


def read_image_set(root: PathLike, subset: str) -> list[str]:
    """The sequences of split ``subset`` (``train``, ``val``...), from ``ImageSets/2017/<subset>.txt``,
    ``ImageSets/<subset>.txt`` or DAVIS 2016's ``ImageSets/480p/<subset>.txt`` (whose lines name a frame
    and its mask: the sequence is taken from the frame's folder), in the file's order, each once."""
    root = _check_root(root)
    candidates = [root / "ImageSets" / level / f"{subset}.txt" for level in ("2017", "", RESOLUTION)]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{root}: no list of the {subset!r} sequences (looked for "
                                f"{', '.join(str(p.relative_to(root)) for p in candidates)})")
    names: list[str] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        first = line.split()[0]
        name = Path(first).parent.name if "/" in first else first
        if name not in names:
            names.append(name)
    return names


# --------------------------------------------------------------------------- mask PNGs
def _open_mask(path: PathLike):
    from PIL import Image, UnidentifiedImageError
    try:
        image = Image.open(path)
        image.load()
    except FileNotFoundError:
        raise FileNotFoundError(f"mask {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{str(path)!r} is not a readable PNG mask: {err}") from None
    if image.mode not in ("P", "L", "1"):
        raise ValueError(f"{str(path)!r} is a {image.mode} image, not a DAVIS mask: DAVIS masks are 8-bit grey PNGs "
                         "(2016: 0 and 255) or palette PNGs whose value is the object index (2017)")
    return image


def _is_binary(image, values: np.ndarray) -> bool:
    """A DAVIS 2016 mask: a 1-bit PNG, or a grey one holding no value but 0 and 255."""
    return image.mode == "1" or (image.mode == "L" and not np.any((values != 0) & (values != 255)))


def mask_format(path: PathLike) -> MaskFormat:
    """The format of the mask PNG at ``path``: a grey PNG holding only 0 and 255 is DAVIS 2016's binary
    format, any other grey or palette PNG an indexed one (with its palette, if it has one)."""
    with _open_mask(path) as image:
        if _is_binary(image, np.asarray(image)):
            return DAVIS_2016_FORMAT
        palette = image.getpalette() if image.mode == "P" else None
        return MaskFormat("indexed", tuple(palette) if palette is not None else None)


def read_annotation(path: PathLike) -> np.ndarray:
    """The mask PNG at ``path`` as an ``H x W`` uint8 array of object indices: 0 background, 1, 2...
    the objects. A DAVIS 2016 mask (grey 0/255) gives 0/1; an indexed mask gives its values as they
    are, ``VOID`` (255) included."""
    with _open_mask(path) as image:
        values = np.asarray(image)
        if _is_binary(image, values):
            return (values > 0).astype(np.uint8)
        return values.astype(np.uint8, copy=True)


def write_annotation(path: PathLike, mask: np.ndarray, like: Union[MaskFormat, PathLike] = DAVIS_2017_FORMAT) -> Path:
    """Write ``mask`` (an ``H x W`` array of object indices) at ``path`` in the format ``like`` (a
    ``MaskFormat``, or the path of an annotation whose format and palette to copy). Binary: objects
    must be 0/1 and are written 0/255 grey; indexed: indices 0..255 in a palette PNG with the
    format's palette (a grey PNG if it has none). Missing parent folders are made. Returns ``path``."""
    from PIL import Image
    fmt = like if isinstance(like, MaskFormat) else mask_format(like)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask is one H x W array of object indices, got shape {mask.shape}")
    if mask.dtype == bool:
        mask = mask.astype(np.uint8)
    if mask.size and (mask.min() < 0 or mask.max() > 255 or not np.array_equal(mask, np.round(mask))):
        raise ValueError("object indices must be whole numbers from 0 to 255")
    mask = mask.astype(np.uint8)
    if fmt.kind == "binary":
        if mask.max(initial=0) > 1:
            raise ValueError(f"the binary (DAVIS 2016) format holds one object, but the mask has index "
                             f"{int(mask.max())}: write it in the indexed format (DAVIS_2017_FORMAT)")
        image = Image.fromarray(mask * np.uint8(255))   # a 2-D uint8 array is a grey (L) image
    else:
        image = Image.fromarray(mask)
        if fmt.palette is not None:
            image.putpalette(list(fmt.palette))        # makes the grey image a palette (P) image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
