"""Detection data: COCO-format JSON (polygons, RLE, iscrowd, any category ids) and Pascal VOC XML
folders, read into one dataset that yields what torchvision's detectors take.

Both formats become one COCO index (VOC is converted in memory), so evaluation runs
pycocotools' COCOeval on either. Category ids, however sparse, map to contiguous labels
1..K in id order (0 is torchvision's background); ``DetectionData.category_ids`` maps back.
Reading and checking COCO data is ``repvit.data.coco``'s, shared with SAM's evaluation.

Everything is checked when the dataset is built, so a run never dies mid-epoch on bad input
(see ``repvit.data.coco.scan_coco`` for the list). Every problem found is reported at once: one
error listing them all, grouped by reason, or, with ``skip_bad=True``, a skip of that annotation
(or image) that ``skip_report()`` counts by reason and names, for the run's log.
"""
from __future__ import annotations

import copy
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Optional, Union

import torch
from PIL import Image

from ..data.bad_inputs import SKIP_BAD_HINT, BadInputs
from ..data.coco import Categories, CocoDataError, coco_from_dict, load_coco, scan_coco

# One error class for bad COCO-format data, whichever layer finds it.
DetectionDataError = CocoDataError


def voc_to_coco(annotations_dir: Union[str, os.PathLike], images_dir: Union[str, os.PathLike],
                class_names: Optional[list[str]] = None) -> dict:
    """A COCO-format dict from a folder of Pascal VOC XML files (classes in sorted order unless given)."""
    annotations_dir, images_dir = Path(annotations_dir), Path(images_dir)
    files = sorted(annotations_dir.glob("*.xml"))
    if not files:
        raise DetectionDataError(f"{annotations_dir}: no VOC .xml files")
    parsed = []
    for xml_file in files:
        try:
            root = ET.parse(xml_file).getroot()
        except ET.ParseError as err:
            raise DetectionDataError(f"{xml_file}: not valid XML ({err})") from None
        name = root.findtext("filename") or xml_file.with_suffix(".jpg").name
        size = root.find("size")
        width = int(float(size.findtext("width"))) if size is not None else 0
        height = int(float(size.findtext("height"))) if size is not None else 0
        objects = []
        for obj in root.findall("object"):
            box = obj.find("bndbox")
            if box is None:
                raise DetectionDataError(f"{xml_file}: an <object> without <bndbox>")
            try:
                x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError):
                raise DetectionDataError(f"{xml_file}: a <bndbox> without numeric xmin/ymin/xmax/ymax") from None
            objects.append((obj.findtext("name", "").strip(), x0, y0, x1, y1, int(obj.findtext("difficult", "0") or 0)))
        parsed.append((xml_file, Path(name).name, width, height, objects))
    names = class_names or sorted({o[0] for _, _, _, _, objs in parsed for o in objs})
    category = {n: i + 1 for i, n in enumerate(names)}
    images, annotations = [], []
    for image_id, (xml_file, file_name, width, height, objects) in enumerate(parsed):
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height,
                       "source": str(xml_file)})
        for name, x0, y0, x1, y1, difficult in objects:
            # Corners as written (labelImg, today's usual VOC writer, stores pixel corners); the VOC
            # devkit's 1-based inclusive reading differs by at most one pixel.
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category.get(name, -1), "category_name": name,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                                "iscrowd": difficult})
    return {"images": images, "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(names)]}


class Skipped:
    """The bad inputs a ``skip_bad`` dataset left out, as ``(file, reason)`` image and
    ``(file, annotation id, reason)`` annotation lists (``bad`` holds the full record)."""

    def __init__(self, bad: BadInputs):
        self.bad = bad

    @property
    def images(self) -> list:
        return [(e.file, e.detail) for e in self.bad if e.annotation is None]

    @property
    def annotations(self) -> list:
        return [(e.file, e.annotation, e.detail) for e in self.bad if e.annotation is not None]

    def __len__(self) -> int:
        return len(self.bad)


class DetectionData(torch.utils.data.Dataset):
    """``(image, target)`` pairs for torchvision detectors: a float image in 0..1 and ``boxes``
    (x0, y0, x1, y1), ``labels`` (1..K), ``image_id`` and, with ``masks=True``, ``masks``."""

    def __init__(self, images_dir: Union[str, os.PathLike], coco, *, masks: bool = False, skip_bad: bool = False,
                 transforms=None, source: str = ""):
        self.images_dir, self.coco, self.masks, self.transforms = Path(images_dir), coco, masks, transforms
        self.hflip_prob = 0.5
        self.source = source or str(images_dir)
        categories = Categories.of(coco, self.source)
        self.category_ids, self.class_names = list(categories.ids), list(categories.names)
        self.label_of = categories.label_of
        items, bad = scan_coco(coco, self.images_dir, categories=categories, masks=masks, source=self.source)
        if not skip_bad:
            bad.raise_if_any(DetectionDataError, SKIP_BAD_HINT)
        self.skipped = Skipped(bad)
        if not items:
            raise DetectionDataError(f"{self.source}: no usable images" + (f"\n{bad.summary()}" if bad else ""))
        self.items = items

    @classmethod
    def from_folder(cls, root: Union[str, os.PathLike], **kwargs) -> "DetectionData":
        """``root/images`` with ``root/annotations.json`` (COCO) or ``root/annotations/*.xml`` (VOC)."""
        root = Path(root)
        images = root / "images"
        if not images.is_dir():
            raise DetectionDataError(f"{root}: expected an images/ folder beside annotations.json (COCO) or "
                                     "annotations/ (VOC XML)")
        if (root / "annotations.json").is_file():
            return cls(images, load_coco(root / "annotations.json"), source=str(root / "annotations.json"), **kwargs)
        if (root / "annotations").is_dir() and any((root / "annotations").glob("*.xml")):
            return cls(images, coco_from_dict(voc_to_coco(root / "annotations", images)),
                       source=str(root / "annotations"), **kwargs)
        raise DetectionDataError(f"{root}: no annotations.json (COCO) or annotations/*.xml (VOC) found")

    def skip_report(self, files: int = 3) -> str:
        """What ``skip_bad`` left out, counted by reason with the first ``files`` names of each ("" if nothing)."""
        return self.skipped.bad.summary(files) if self.skipped.bad else ""

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: int, generator: torch.Generator):
        """A training sample, flipped left to right with probability ``hflip_prob`` (drawn from ``generator``)."""
        image, target = self[index]
        if torch.rand(1, generator=generator).item() < self.hflip_prob:
            image, target = hflip(image, target)
        return image, target

    def subset(self, indices) -> "DetectionData":
        """The same data restricted to ``indices`` (a train/val split of one annotated folder)."""
        part = copy.copy(self)
        part.items = [self.items[i] for i in indices]
        return part

    def __getitem__(self, index: int):
        from torchvision.transforms.functional import pil_to_tensor
        info, anns = self.items[index]
        path = self.images_dir / info["file_name"]
        with Image.open(path) as im:
            image = pil_to_tensor(im.convert("RGB")).float() / 255.0
        train_anns = [a for a in anns if not a.get("iscrowd", 0)]   # crowd regions count only in evaluation
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in train_anns], dtype=torch.float32).reshape(-1, 4)
        height, width = image.shape[-2:]
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        target = {"boxes": boxes, "labels": torch.tensor([self.label_of[a["category_id"]] for a in train_anns],
                                                         dtype=torch.int64),
                  "image_id": int(info["id"])}
        if self.masks:
            masks = [torch.from_numpy(self.coco.annToMask(a)) for a in train_anns]
            target["masks"] = (torch.stack(masks) if masks else torch.zeros(0, height, width)).to(torch.uint8)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def hflip(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Mirror an image and its boxes (and masks) left to right."""
    width = image.shape[-1]
    target = dict(target)
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    target["boxes"] = boxes
    if "masks" in target:
        target["masks"] = target["masks"].flip(-1)
    return image.flip(-1), target


def collate(batch):
    """Detection batches are lists: images differ in size and targets in length."""
    return tuple(zip(*batch))
