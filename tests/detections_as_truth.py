"""Ground truth made from a detector's own detections, so that a detector's AP is informative; and
pycocotools' COCOeval called directly, the reference the library's COCO figures are compared with.

A random-weight detector finds nothing of the real fruit: its AP is 0 whatever the code computes, and a
test comparing two such APs proves nothing. Labelled with its own detections (each image's top few, every
other one of them) the same detector scores an AP between 0 and 1 that moves as soon as it computes
anything else (other weights, a broken fusion, a wrong box format).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import shutil
from pathlib import Path

import numpy as np
import torch

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@torch.no_grad()
def label_with_own_detections(model, data, root: Path, *, keep: int = 8) -> list[dict]:
    """Write ``root/images`` (``data``'s images) and ``root/annotations.json`` whose objects are ``model``'s
    detections ranked 1, 3, 5, ... of each image's top ``keep`` (with a non-empty mask, for a mask detector).
    Returns every detection of ``model`` (one image at a time) in COCO's results format."""
    from pycocotools import mask as mask_utils
    (root / "images").mkdir(parents=True)
    images, annotations, detections = [], [], []
    model = model.eval()
    for index in range(len(data)):
        info = data.items[index][0]
        shutil.copyfile(data.images_dir / info["file_name"], root / "images" / info["file_name"])
        images.append({k: info[k] for k in ("id", "file_name", "height", "width")})
        out = model([data[index][0]])[0]
        masks = (out["masks"][:, 0] > 0.5).numpy() if "masks" in out else [None] * len(out["boxes"])
        rank = 0
        for box, score, label, mask in zip(out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist(),
                                           masks):
            det = {"image_id": info["id"], "category_id": data.category_ids[label - 1],
                   "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score}
            if mask is not None:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                det["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode()}
            detections.append(det)
            if rank < keep and (mask is None or mask.any()):
                if rank % 2 == 0:
                    area = float(mask.sum()) if mask is not None else det["bbox"][2] * det["bbox"][3]
                    annotations.append({"id": len(annotations) + 1, "image_id": info["id"], "iscrowd": 0,
                                        "area": area, **{k: v for k, v in det.items() if k != "score" and
                                                         k != "image_id"}})
                rank += 1
    categories = [{"id": i, "name": n} for i, n in zip(data.category_ids, data.class_names)]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                       "categories": categories}))
    return detections


def cocoeval(annotations: Path, detections: list[dict], iou_type: str, image_ids=None) -> dict:
    """pycocotools' COCOeval figures of ``detections`` against ``annotations`` (a COCO file), straight."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(annotations))
        evaluator = COCOeval(truth, truth.loadRes(copy.deepcopy(detections)), iou_type)
        if image_ids is not None:
            evaluator.params.imgIds = sorted(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return dict(zip(STAT_NAMES, map(float, evaluator.stats[:6])))
