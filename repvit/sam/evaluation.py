"""Zero-shot instance segmentation on a COCO instances file: prompt SAM with each object's
ground truth and score the mask it returns.

Two prompt protocols, each over every non-crowd instance:

- ``box``: the ground-truth box (x0, y0, x1, y1). A box says which object is meant, so the
  decoder returns one mask (``multimask_output=False``).
- ``point``: one positive point, placed by one of two rules (``point=``):
  ``center``, the centre of the ground-truth box, which can fall outside the object (rings,
  L shapes, occluded objects) and is kept there: the prompt carries no more than the box does;
  ``farthest``, the mask pixel farthest from the mask's boundary (``prompts.farthest_from_boundary``:
  the maximum of the exact Euclidean distance transform), the simulated click of the SAM paper's
  point evaluation (after RITM) that published comparisons reuse; always on the object.
  A single click is ambiguous (part, object, group), so the decoder returns its three candidates
  and the one with the highest predicted IoU is kept: the choice a user without the ground truth
  would make. The best candidate by true IoU is reported beside it as ``oracle_mIoU`` (an upper
  bound, the other figure SAM comparisons quote).

Figures per protocol: mask mIoU (the mean over instances of the IoU between the predicted and the
ground-truth mask), split by COCO's object sizes (area below 32^2, 32^2 to 96^2, above 96^2
pixels, read from the annotation's ``area`` as COCOeval does), and COCO mask AP from
pycocotools' COCOeval ('segm') with each mask scored by SAM's predicted IoU and given its
ground truth's category. Crowd regions are never prompted but stay in the ground truth, where
COCOeval lets them absorb predictions without penalty.

Each image is encoded once; all its prompts of one protocol go through the decoder together.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

# find_coco_layout is re-exported: `repvit sam eval` finds its files through this module.
from ..data.bad_inputs import SKIP_BAD_HINT
from ..data.coco import (STAT_NAMES, Categories, CocoDataError, annotation_mask, coco_metrics, coco_subset,
                         find_coco_layout, load_coco, masks_to_rle, scan_coco)
from .prompts import farthest_from_boundary

PROMPTS = ("box", "point")
POINTS = {"center": "one positive point at the box centre",
          "farthest": "one positive point farthest from the mask boundary"}
# COCO's object sizes by area in pixels, as COCOeval's areaRng draws them.
SIZES = (("small", 0.0, 32.0 ** 2), ("medium", 32.0 ** 2, 96.0 ** 2), ("large", 96.0 ** 2, math.inf))

PathLike = Union[str, os.PathLike]


def _predictor(model):
    """``model`` itself when it already acts as a predictor, else a ``SamPredictor`` around it."""
    if all(hasattr(model, name) for name in ("set_image", "predict_torch", "transform")):
        return model
    if not hasattr(model, "image_encoder"):
        raise TypeError(f"expected a segment_anything Sam model or a SamPredictor, got {type(model).__name__}")
    from segment_anything import SamPredictor
    return SamPredictor(model)


def _size_name(area: float) -> str:
    for name, low, high in SIZES:
        if low <= area < high:
            return name
    return SIZES[-1][0]


def _points(boxes: torch.Tensor, truth: torch.Tensor, point: str) -> torch.Tensor:
    """One (x, y) per instance (N x 2, image pixels) by the ``point`` rule (``POINTS``)."""
    if point == "center":
        return (boxes[:, :2] + boxes[:, 2:]) / 2
    return torch.tensor([farthest_from_boundary(mask) for mask in truth], dtype=torch.float32, device=boxes.device)


@torch.no_grad()
def _decode(predictor, anns: Sequence[dict], prompt: str, size: tuple[int, int], batch_size: int,
            truth: torch.Tensor, point: str = "center"):
    """Masks (N x C x H x W bool) and predicted IoUs (N x C) for ``anns`` under ``prompt``; ``truth``
    (N x H x W bool) places the ``farthest`` point."""
    device = predictor.device
    boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=torch.float32, device=device)
    points = _points(boxes, truth, point) if prompt == "point" else None
    masks, scores = [], []
    for start in range(0, len(anns), batch_size):
        chunk = boxes[start:start + batch_size]
        if prompt == "box":
            out = predictor.predict_torch(None, None, predictor.transform.apply_boxes_torch(chunk, size),
                                          multimask_output=False)
        else:
            clicks = points[start:start + batch_size, None, :]
            coords = predictor.transform.apply_coords_torch(clicks, size)
            labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=device)
            out = predictor.predict_torch(coords, labels, None, multimask_output=True)
        masks.append(out[0].bool())
        scores.append(out[1].float())
    return torch.cat(masks), torch.cat(scores)


def evaluate_coco(model, coco_json: PathLike, image_dir: PathLike, *, prompt: str = "both", point: str = "center",
                  limit: Optional[int] = None, skip_bad: bool = False, batch_size: int = 64,
                  results: Optional[PathLike] = None,
                  progress: Optional[Callable[[int, int, dict], None]] = None) -> dict:
    """Zero-shot COCO instance segmentation of ``model`` prompted with the ground truth.

    ``model``: a segment-anything ``Sam`` (such as ``repvit.sam.build_sam(...)``) or anything
    that acts as a ``SamPredictor`` (``set_image``, ``transform``, ``predict_torch``, ``device``).
    ``prompt``: ``"box"``, ``"point"`` or ``"both"``. ``point``: where the point prompt goes,
    ``"center"`` (of the ground-truth box) or ``"farthest"`` (from the mask boundary). ``limit``: only the first N images by id.
    ``skip_bad``: count and skip a missing or unreadable image and an annotation without a usable
    mask or box instead of raising ``CocoDataError`` (which lists every problem found before the
    first image is encoded; an empty mask shows only when decoded). ``batch_size``: prompts per decoder
    call (64 holds every image of COCO128 in one call). ``results``: also write the predictions
    as a COCO results file (RLE masks); with both protocols, ``<stem>_box<suffix>`` and
    ``<stem>_point<suffix>``. ``progress(done, total, info)`` is called after each image.

    Returns a JSON-ready dict: counts (``images``, ``instances``, ``crowd_excluded``,
    ``skipped_*``) and per protocol ``mIoU``, ``mIoU_by_size``, ``instances_by_size``, ``segm``
    (AP, AP50, AP75, APs, APm, APl as fractions; -1 where there is no object of a size) and timings.
    """
    if prompt != "both" and prompt not in PROMPTS:
        raise ValueError(f"prompt must be 'box', 'point' or 'both', got {prompt!r}")
    protocols = PROMPTS if prompt == "both" else (prompt,)
    if point not in POINTS:
        raise ValueError(f"point must be {' or '.join(map(repr, POINTS))}, got {point!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    coco_json = Path(coco_json)
    if not coco_json.is_file():
        raise FileNotFoundError(f"annotation file {str(coco_json)!r} does not exist")
    coco = load_coco(coco_json)
    if limit is not None:   # only the images the run uses are checked
        coco = coco_subset(coco, sorted(coco.getImgIds())[:limit])
    items, bad = scan_coco(coco, image_dir, categories=Categories.of(coco, str(coco_json)), masks=True,
                           source=str(coco_json))
    if not skip_bad:
        bad.raise_if_any(CocoDataError, SKIP_BAD_HINT)
    predictor = _predictor(model)

    from ..data.images import load_rgb

    def reject(reason: str, where: str, detail: str, annotation=None) -> None:
        """A problem only decoding shows (an empty mask, an EXIF rotation): an error, or one more skip."""
        bad.add(reason, where, detail, annotation)
        if not skip_bad:
            bad.raise_if_any(CocoDataError, SKIP_BAD_HINT)

    kept_ids: set = set()
    evaluated_images: list[int] = []
    crowd = 0
    per: dict = {p: {"iou": [], "oracle": [], "size": [], "dets": []} for p in protocols}
    seconds = {"load": 0.0, "encoder": 0.0, "decoder": 0.0, "metrics": 0.0}
    run_start = time.perf_counter()
    for done, (info, anns) in enumerate(items, start=1):
        path = Path(image_dir) / info["file_name"]
        tick = time.perf_counter()
        try:
            image = load_rgb(path)
        except (FileNotFoundError, ValueError) as err:   # changed since the check
            reject("unreadable image", str(path), str(err))
            continue
        height, width = image.shape[:2]
        if (info.get("height", height), info.get("width", width)) != (height, width):
            reject("size mismatch", str(path), f"upright (EXIF-rotated) image is {width}x{height} but the "
                                               f"annotations say {info['width']}x{info['height']}")
            continue
        prompted, truths = [], []
        for ann in anns:
            mask, reason, detail = annotation_mask(coco, ann, height, width)
            if mask is None:
                reject(reason, info.get("source") or info["file_name"], detail, ann["id"])
                continue
            kept_ids.add(ann["id"])
            if ann.get("iscrowd", 0):
                crowd += 1
            else:
                prompted.append(ann)
                truths.append(mask)
        evaluated_images.append(info["id"])
        seconds["load"] += time.perf_counter() - tick
        if prompted:
            tick = time.perf_counter()
            predictor.set_image(image)   # the one encoder pass of this image
            seconds["encoder"] += time.perf_counter() - tick
            gt = torch.from_numpy(np.stack(truths)).to(predictor.device)
        for name in protocols if prompted else ():
            tick = time.perf_counter()
            masks, scores = _decode(predictor, prompted, name, (height, width), batch_size, gt, point)
            seconds["decoder"] += time.perf_counter() - tick
            tick = time.perf_counter()
            _score(per[name], masks, scores, gt, prompted, info["id"])
            per[name]["size"] += [_size_name(a["area"] if "area" in a else float(m.sum()))
                                  for a, m in zip(prompted, truths)]
            seconds["metrics"] += time.perf_counter() - tick
        if progress is not None:
            progress(done, len(items), {"image": info["file_name"], "instances": len(prompted)})
    if not evaluated_images:
        raise CocoDataError(f"{coco_json}: no image could be evaluated" + (f"\n{bad.summary()}" if bad else ""))

    tick = time.perf_counter()
    truth = coco_subset(coco, evaluated_images, kept_ids)   # what was checked: skipped annotations are not misses
    report: dict = {
        "annotations": str(coco_json), "images_dir": str(image_dir), "images": len(evaluated_images),
        "instances": len(per[protocols[0]]["iou"]), "crowd_excluded": crowd,
        "skipped_images": sum(e.annotation is None for e in bad),
        "skipped_annotations": sum(e.annotation is not None for e in bad),
        "skipped": [{"file": e.file, "reason": e.detail} if e.annotation is None else
                    {"file": e.file, "annotation": e.annotation, "reason": e.detail} for e in bad],
        "skipped_by_reason": bad.counts(), "skip_report": bad.summary() if bad else "",
        "prompts": {},
    }
    for name in protocols:
        rec = per[name]
        by_size = {s: [i for i, z in zip(rec["iou"], rec["size"]) if z == s] for s, _, _ in SIZES}
        metrics = coco_metrics(truth, rec["dets"], ("segm",), image_ids=evaluated_images)["segm"] \
            if rec["dets"] else {k: 0.0 for k in STAT_NAMES}
        report["prompts"][name] = {
            "prompt": "ground-truth box" if name == "box" else POINTS[point],
            "multimask": name == "point",
            "selection": "the only mask" if name == "box" else "highest predicted IoU of 3",
            "mIoU": _mean(rec["iou"]),
            "mIoU_by_size": {s: _mean(v) for s, v in by_size.items()},
            "instances_by_size": {s: len(v) for s, v in by_size.items()},
            "segm": metrics,
        }
        if name == "point":
            report["prompts"][name]["oracle_mIoU"] = _mean(rec["oracle"])
            report["prompts"][name]["point"] = point
    seconds["metrics"] += time.perf_counter() - tick
    report["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    report["seconds"]["total"] = round(time.perf_counter() - run_start, 3)
    if results is not None:
        report["results_files"] = write_results(results, {n: per[n]["dets"] for n in protocols})
    return report


def _score(record: dict, masks: torch.Tensor, scores: torch.Tensor, truth: torch.Tensor, anns: Sequence[dict],
           image_id: int) -> None:
    """Append one image's IoUs and COCO results to ``record``.

    ``masks`` N x C x H x W candidates with predicted IoUs ``scores`` (N x C) against ``truth``
    (N x H x W); the candidate with the highest predicted IoU is the prediction.
    """
    from pycocotools import mask as mask_utils
    inter = (masks & truth[:, None]).flatten(2).sum(-1).double()
    union = (masks | truth[:, None]).flatten(2).sum(-1).double()
    ious = inter / union   # union > 0: every ground-truth mask covers a pixel
    best = scores.argmax(dim=1)
    rows = torch.arange(len(anns), device=best.device)
    record["iou"] += ious[rows, best].tolist()
    record["oracle"] += ious.max(dim=1).values.tolist()
    for ann, rle, score in zip(anns, masks_to_rle(masks[rows, best].cpu().numpy()), scores[rows, best].tolist()):
        box = mask_utils.toBbox({**rle, "counts": rle["counts"].encode()})
        record["dets"].append({"image_id": image_id, "category_id": ann["category_id"], "segmentation": rle,
                               "score": float(score), "bbox": [float(v) for v in box]})


def _mean(values: Sequence[float]) -> Optional[float]:
    return float(np.mean(values)) if len(values) else None


def write_results(path: PathLike, detections: dict) -> dict:
    """COCO results file(s): one protocol goes to ``path``; several to ``<stem>_<protocol><suffix>``."""
    path = Path(path)
    written = {}
    for name, dets in detections.items():
        target = path if len(detections) == 1 else path.with_name(f"{path.stem}_{name}{path.suffix or '.json'}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(dets) + "\n")
        written[name] = str(target)
    return written


def format_report(report: dict) -> str:
    """The figures a terminal reader wants, one protocol per line."""
    def pct(v):
        return "   -" if v is None or v < 0 else f"{100 * v:5.1f}"
    lines = [f"{report['images']} images, {report['instances']} instances prompted, {report['crowd_excluded']} crowd "
             f"regions not prompted, skipped {report['skipped_images']} images and "
             f"{report['skipped_annotations']} annotations",
             *([report["skip_report"]] if report.get("skip_report") else []),
             "prompt  mIoU  small medium large |   AP  AP50  AP75   APs   APm   APl"]
    for name, rec in report["prompts"].items():
        sizes = " ".join(pct(rec["mIoU_by_size"][s]) for s, _, _ in SIZES)
        aps = " ".join(pct(rec["segm"][k]) for k in STAT_NAMES)
        extra = (f"  ({rec.get('point', 'center')} point; oracle mIoU {pct(rec['oracle_mIoU']).strip()})"
                 if "oracle_mIoU" in rec else "")
        lines.append(f"{name:6} {pct(rec['mIoU'])} {sizes}  | {aps}{extra}")
    return "\n".join(lines)
