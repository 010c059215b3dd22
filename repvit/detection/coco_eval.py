"""COCO detection metrics with pycocotools' COCOeval, in the field's standard form.

``coco_metrics`` takes a ground-truth ``COCO`` object and detections in COCO's results format
(``image_id``, ``category_id`` with the dataset's own ids, ``bbox`` as x, y, width, height,
``score`` and, for masks, an RLE ``segmentation``) and returns, per IoU type, AP (0.50:0.95),
AP50, AP75 and AP for small, medium and large objects as fractions, as COCOeval reports them
(-1 where the data has no object of a size).
"""
from __future__ import annotations

import contextlib
import copy
import io
from typing import Iterable, Optional, Sequence

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def coco_metrics(coco_gt, detections: Sequence[dict], iou_types: Iterable[str] = ("bbox",),
                 image_ids: Optional[Sequence[int]] = None) -> dict:
    """Metrics over ``image_ids`` (default: every image of ``coco_gt``)."""
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
