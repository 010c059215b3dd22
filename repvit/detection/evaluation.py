"""Scoring a detector on a labelled folder with COCOeval, and drawing what it finds on images."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..engine.distributed import DistEnv, each_rank, shard
from ..data.coco import coco_metrics, masks_to_rle
from .data import DetectionData, collate

MASK_THRESHOLD = 0.5


def to_coco_results(output: dict, image_id: int, category_ids: Sequence[int]) -> list[dict]:
    """One image's torchvision detections in COCO's results format (dataset category ids, RLE masks)."""
    boxes = output["boxes"].detach().cpu()
    results = []
    rles = masks_to_rle((output["masks"].detach().cpu()[:, 0] > MASK_THRESHOLD).numpy()) if "masks" in output else None
    for i, (box, score, label) in enumerate(zip(boxes.tolist(), output["scores"].tolist(), output["labels"].tolist())):
        det = {"image_id": int(image_id), "category_id": int(category_ids[label - 1]), "score": float(score),
               "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]]}
        if rles is not None:
            det["segmentation"] = rles[i]
        results.append(det)
    return results


@torch.no_grad()
def evaluate_detector(model: nn.Module, data: DetectionData, *, batch_size: int = 2, workers: int = 0,
                      device: torch.device = torch.device("cpu"), env: Optional[DistEnv] = None,
                      progress: Optional[Callable[[int, int], None]] = None) -> dict:
    """COCO box (and, for Mask R-CNN, mask) AP of ``model`` on ``data``, as fractions; ``progress(done,
    total)`` is called after each batch with this process's images done and its share's size.

    Under torchrun (``env`` of a distributed run, called on every rank) each rank detects on its
    share of the images, in the same batches a single process would form, the detections are
    gathered in image order, rank 0 scores them with COCOeval once and every rank returns its
    result: the same numbers as one process."""
    if list(getattr(model, "category_ids", data.category_ids)) != list(data.category_ids):
        raise ValueError(f"the detector was trained on categories {model.category_ids} but the data has "
                         f"{data.category_ids}; evaluate on data with the same category ids")
    model = model.eval().to(device)

    def detect_share() -> list[tuple[int, list[dict]]]:
        mine = shard(range(len(data)), env, block=batch_size)
        loader = torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=mine, num_workers=workers,
                                             collate_fn=collate)
        found, position = [], iter(mine)
        for images, targets in loader:
            outputs = model([im.to(device) for im in images])
            for output, target in zip(outputs, targets):
                found.append((next(position), to_coco_results(output, target["image_id"], data.category_ids)))
            if progress is not None:
                progress(len(found), len(mine))
        return found

    per_image = sorted((pair for share in each_rank(detect_share, env) for pair in share), key=lambda p: p[0])
    detections = [det for _, dets in per_image for det in dets]
    iou_types = ("bbox", "segm") if getattr(model, "roi_heads", None) is not None and \
        getattr(model.roi_heads, "has_mask", lambda: False)() else ("bbox",)
    image_ids = [info["id"] for info, _ in data.items]
    metrics = each_rank(lambda: coco_metrics(data.coco, detections, iou_types, image_ids=image_ids)
                        if env is None or env.is_main else None, env)[0]   # rank 0's, on every rank
    return {**metrics, "images": len(data), "detections": len(detections),
            "skipped_images": len(data.skipped.images), "skipped_annotations": len(data.skipped.annotations)}


# A fixed palette: the same class gets the same colour in every picture.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
           (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
           (0, 0, 128), (128, 128, 128)]


@torch.no_grad()
def predict_images(model: nn.Module, paths: Sequence[Path], output_dir: Path, *, class_names: Sequence[str],
                   score_threshold: float = 0.5, device: torch.device = torch.device("cpu")) -> list[dict]:
    """Detect on each image; write ``<stem>.png`` with boxes, labels, scores (and masks) drawn over it."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor, to_pil_image
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks
    output_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval().to(device)
    results = []
    for path in paths:
        with Image.open(path) as im:
            canvas = pil_to_tensor(im.convert("RGB"))
        output = model([(canvas.float() / 255.0).to(device)])[0]
        keep = output["scores"].cpu() >= score_threshold
        boxes, labels, scores = output["boxes"].cpu()[keep], output["labels"].cpu()[keep], output["scores"].cpu()[keep]
        colours = [PALETTE[(int(l) - 1) % len(PALETTE)] for l in labels]
        if "masks" in output and keep.any():
            masks = output["masks"].cpu()[keep][:, 0] > MASK_THRESHOLD
            canvas = draw_segmentation_masks(canvas, masks, alpha=0.45, colors=colours)
        captions = [f"{class_names[int(l) - 1]} {s:.2f}" for l, s in zip(labels, scores)]
        if len(boxes):
            canvas = draw_bounding_boxes(canvas, boxes, labels=captions, colors=colours, width=3)
        target = output_dir / f"{Path(path).stem}.png"
        to_pil_image(canvas).save(target)
        results.append({"image": str(path), "drawn": str(target), "detections": [
            {"class": class_names[int(l) - 1], "score": float(s), "box": [round(v, 1) for v in b.tolist()]}
            for b, l, s in zip(boxes, labels, scores)]})
    return results
