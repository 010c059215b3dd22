"""COCO-format annotations, read one way for every task that uses them (detection training and
evaluation, SAM's zero-shot evaluation): finding the files of a COCO folder, loading the JSON
into a pycocotools index, the map between the dataset's category ids (however sparse) and
contiguous labels, checking every image and annotation before a run starts, masks
(ground-truth decoding, RLE encoding of predictions) and scoring results with pycocotools'
COCOeval.

``scan_coco`` checks everything up front and records each problem with its reason (see
``bad_inputs``): a missing, unreadable or truncated image (every image is decoded), an image
whose size differs from its entry, an annotation with an unknown category, a box that is
malformed, of negative or zero width or height, or outside the image, and (when masks are
wanted) a missing or malformed segmentation.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from .bad_inputs import BadInputs, read_image_size

PathLike = Union[str, os.PathLike]
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")   # COCOeval's first six figures
BOX_TOLERANCE = 1.0   # pixels a box may exceed the image by (rounding in annotation tools)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class CocoDataError(ValueError):
    """Bad COCO-format data; the message names the files (and annotations) and what is wrong."""


# --------------------------------------------------------------------------- loading
def coco_from_dict(dataset: dict):
    """A pycocotools ``COCO`` index over an in-memory COCO dict (quietly: COCO prints as it indexes)."""
    try:
        from pycocotools.coco import COCO
    except ImportError as err:  # pragma: no cover - the dense extra brings it
        raise ImportError("reading COCO data needs pycocotools: pip install 'repvit-pytorch[dense]'") from err
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco(annotation_file: PathLike):
    """The COCO index of an instances JSON file, after checking it has the three lists COCO needs."""
    path = Path(annotation_file)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CocoDataError(f"{path}: not a readable COCO JSON file ({err})") from None
    if not isinstance(data, dict):
        raise CocoDataError(f"{path}: a COCO instances file holds a JSON object, found {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise CocoDataError(f"{path}: a COCO instances file needs an '{key}' list")
    return coco_from_dict(data)


def coco_subset(coco, image_ids: Sequence[int], annotation_ids: Optional[set] = None):
    """A COCO index holding only ``image_ids`` and (when given) only ``annotation_ids``."""
    keep = set(image_ids)
    data = coco.dataset
    return coco_from_dict({**data, "images": [i for i in data["images"] if i["id"] in keep],
                           "annotations": [a for a in data["annotations"] if a["image_id"] in keep and
                                           (annotation_ids is None or a["id"] in annotation_ids)]})


@dataclass(frozen=True)
class Categories:
    """A dataset's categories in id order: ``ids[i]`` and ``names[i]`` are label ``i + 1`` (0 is the
    background in torchvision's detectors)."""
    ids: tuple
    names: tuple

    @classmethod
    def of(cls, coco, source: str = "") -> "Categories":
        cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
        if not cats:
            raise CocoDataError(f"{source or 'the annotations'}: no categories")
        return cls(tuple(c["id"] for c in cats), tuple(c["name"] for c in cats))

    @property
    def label_of(self) -> dict:
        return {cid: i + 1 for i, cid in enumerate(self.ids)}


# --------------------------------------------------------------------------- layout
def find_coco_layout(root: Optional[PathLike] = None, *, annotations: Optional[PathLike] = None,
                     images: Optional[PathLike] = None, split: Optional[str] = None) -> tuple[Path, Path]:
    """``(annotation JSON, image folder)`` of a COCO instances folder; explicit paths win.

    Recognised layouts under ``root``:
    ``annotations.json`` + ``images/`` (a single-file export such as the fruit set);
    ``annotations/instances_<split>.json`` + ``images/<split>/`` (COCO128-instances) or
    ``<split>/`` (COCO 2017 as downloaded). With several splits, ``val2017`` (or the one name
    containing ``val``) is taken unless ``split`` names another.
    """
    if annotations is not None and images is not None:
        return _existing_file(annotations), _existing_dir(images)
    if root is None:
        raise ValueError("give the dataset folder (--data PATH) or both --annotations PATH and --images PATH")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {str(root)!r} does not exist")
    if annotations is None:
        annotations, split = _find_annotations(root, split)
    annotations = _existing_file(annotations)
    if images is None:
        candidates = ([root / "images" / split, root / split] if split else []) + [root / "images"]
        found = [c for c in candidates if c.is_dir() and any(_image_files(c))]
        if not found:
            raise FileNotFoundError(f"{root}: no image folder for {annotations.name} (looked for "
                                    f"{', '.join(str(c) for c in candidates)}); pass --images DIR")
        images = found[0]
    return annotations, _existing_dir(images)


def _find_annotations(root: Path, split: Optional[str]) -> tuple[Path, Optional[str]]:
    if split is None and (root / "annotations.json").is_file():
        return root / "annotations.json", None
    folder = root / "annotations"
    splits = {p.stem[len("instances_"):]: p for p in sorted(folder.glob("instances_*.json"))} if folder.is_dir() else {}
    if not splits:
        raise FileNotFoundError(f"{root}: no annotations.json and no annotations/instances_<split>.json; "
                                "pass --annotations FILE --images DIR")
    if split is not None:
        if split not in splits:
            raise ValueError(f"{root}: no split {split!r} (found: {', '.join(splits)})")
        return splits[split], split
    if len(splits) == 1:
        return next(iter(splits.items()))[::-1]
    vals = [s for s in splits if s == "val2017"] or [s for s in splits if "val" in s]
    if len(vals) != 1:
        raise ValueError(f"{root}: several splits ({', '.join(splits)}); choose one with --split")
    return splits[vals[0]], vals[0]


def _image_files(folder: Path):
    return (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _existing_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file {str(path)!r} does not exist")
    return path


def _existing_dir(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"image folder {str(path)!r} does not exist")
    return path


# --------------------------------------------------------------------------- checking
def check_box(ann: dict, width: int, height: int) -> tuple[str, str]:
    """``(reason, detail)`` for a bad COCO box (x, y, width, height), ``("", "")`` for a good one."""
    box = ann.get("bbox")
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and
            all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in box)):
        return "malformed box", f"bbox {box!r} is not four finite numbers (x, y, width, height)"
    x, y, w, h = box
    for size, name in ((w, "width"), (h, "height")):
        if size < 0:
            return f"negative {name}", f"box {box} (x, y, width, height) has negative {name} {size:g}"
        if size == 0:
            return f"zero {name}", f"box {box} (x, y, width, height) has zero {name}"
    if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > width + BOX_TOLERANCE or y + h > height + BOX_TOLERANCE:
        return "box outside the image", f"box {box} (x, y, w, h) lies outside the {width}x{height} image"
    return "", ""


def check_segmentation(ann: dict, width: int, height: int) -> tuple[str, str]:
    """``(reason, detail)`` for a missing or malformed mask (polygons or RLE), ``("", "")`` for a good one."""
    seg = ann.get("segmentation")
    if not seg:
        return "no segmentation", "no segmentation (a COCO instances file needs a polygon or RLE mask per annotation)"
    if isinstance(seg, dict):
        if "counts" not in seg:
            return "malformed segmentation", "RLE segmentation without 'counts'"
        if list(seg.get("size", [])) != [height, width]:
            return "mask size mismatch", f"RLE size {seg.get('size')} differs from the image's {height}x{width}"
        return "", ""
    if not isinstance(seg, list) or not all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0 for p in seg):
        return "malformed segmentation", ("segmentation is neither RLE nor a list of polygons of at least 3 "
                                          "(x, y) points")
    return "", ""


def scan_coco(coco, images_dir: PathLike, *, categories: Categories, masks: bool = False, source: str = "",
              workers: Optional[int] = None) -> tuple[list[tuple[dict, list[dict]]], BadInputs]:
    """Check every image and annotation of ``coco``; ``(usable items, bad inputs)``.

    An item is ``(image entry, its good annotations)``; an image with a problem is left out
    whole, an annotation with a problem alone. Images decode on ``workers`` threads (PIL
    releases the GIL while decoding). The caller decides whether the bad inputs are an error.
    """
    images_dir = Path(images_dir)
    bad = BadInputs(source or str(images_dir))
    infos = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.imgs[image_id]
        if isinstance(info.get("file_name"), str) and info["file_name"]:
            infos.append(info)
        else:
            bad.add("image entry without file_name", source or "annotations", f"image id {image_id} names no file")
    paths = [images_dir / info["file_name"] for info in infos]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        sizes = list(pool.map(read_image_size, paths))
    label_of = categories.label_of
    items = []
    for info, path, (size, reason, detail) in zip(infos, paths, sizes):
        shown = info.get("source") or info["file_name"]   # VOC entries name their XML file
        if size is None:
            bad.add(reason, path, detail)
            continue
        width, height = info.get("width") or size[0], info.get("height") or size[1]
        if (width, height) != size:
            bad.add("size mismatch", path, f"the annotations say {width}x{height}, the image is {size[0]}x{size[1]}")
            continue
        kept = []
        for ann in coco.imgToAnns.get(info["id"], []):
            if ann.get("category_id") not in label_of:
                name = ann.get("category_name") or ann.get("category_id")   # VOC entries carry the name
                reason, detail = "unknown category", f"unknown category {name!r} (known: {', '.join(categories.names)})"
            else:
                reason, detail = check_box(ann, width, height)
                if not reason and masks:
                    reason, detail = check_segmentation(ann, width, height)
            if reason:
                bad.add(reason, shown, detail, ann.get("id"))
            else:
                kept.append(ann)
        items.append((info, kept))
    for ann in coco.dataset.get("annotations", []):
        if ann.get("image_id") not in coco.imgs:
            bad.add("annotation of no image", source or "annotations",
                    f"image_id {ann.get('image_id')!r} is not in the file's images", ann.get("id"))
    return items, bad


# --------------------------------------------------------------------------- masks
def annotation_mask(coco, ann: dict, height: int, width: int) -> tuple[Optional[np.ndarray], str, str]:
    """``ann``'s mask as ``H x W`` bool, or ``(None, reason, detail)`` when it cannot serve as ground truth."""
    reason, detail = check_segmentation(ann, width, height)
    if reason:
        return None, reason, detail
    try:
        mask = coco.annToMask(ann).astype(bool)
    except Exception as err:  # pycocotools raises several types on malformed masks
        return None, "unreadable segmentation", f"unreadable segmentation ({type(err).__name__}: {err})"
    if not mask.any():
        return None, "empty mask", "the segmentation covers no pixel"
    return mask, "", ""


def masks_to_rle(masks: np.ndarray) -> list[dict]:
    """``N x H x W`` binary masks as COCO results RLEs (``counts`` as str, so the list is JSON-ready)."""
    from pycocotools import mask as mask_utils
    if not len(masks):
        return []
    rles = mask_utils.encode(np.asfortranarray(np.asarray(masks).transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode()} for r in rles]


# --------------------------------------------------------------------------- scoring
def coco_metrics(coco_gt, detections: Sequence[dict], iou_types: Iterable[str] = ("bbox",),
                 image_ids: Optional[Sequence[int]] = None) -> dict:
    """COCOeval's AP (0.50:0.95), AP50, AP75, APs, APm, APl per IoU type, as fractions (-1 where
    the data has no object of a size), over ``image_ids`` (default: every image of ``coco_gt``).

    ``detections`` are in COCO's results format: ``image_id``, ``category_id`` (the dataset's own
    ids), ``bbox`` as x, y, width, height, ``score`` and, for 'segm', an RLE ``segmentation``.
    """
    try:
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:  # pragma: no cover - the dense extra brings it
        raise ImportError("COCO metrics need pycocotools: pip install 'repvit-pytorch[dense]'") from err
    results = {}
    image_ids = sorted(coco_gt.getImgIds() if image_ids is None else image_ids)
    for iou_type in iou_types:
        if iou_type not in ("bbox", "segm"):
            raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
        dets = [d for d in detections if iou_type == "bbox" or "segmentation" in d]
        if not dets:
            results[iou_type] = {name: 0.0 for name in STAT_NAMES}
            continue
        with contextlib.redirect_stdout(io.StringIO()):   # COCOeval prints its tables
            coco_dt = coco_gt.loadRes(copy.deepcopy(list(dets)))
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            evaluator.params.imgIds = image_ids
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        results[iou_type] = {name: float(value) for name, value in zip(STAT_NAMES, evaluator.stats[:6])}
    return results
