"""Detection and segmentation data and metrics on the shared real data: COCO JSON (polygons, RLE,
iscrowd, sparse category ids), VOC XML, bad input named or skipped, COCOeval and mIoU sanity."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from repvit.data.coco import coco_metrics
from repvit.detection.data import DetectionData, DetectionDataError, coco_from_dict, load_coco, voc_to_coco
from repvit.segmentation.metrics import ConfusionMatrix

from .conftest import shared_data

def need(folder: str) -> Path:
    return shared_data(folder)


def gt_as_detections(coco, masks: bool) -> list[dict]:
    from pycocotools import mask as mask_utils
    dets = []
    for ann in coco.loadAnns(coco.getAnnIds()):
        det = {"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": ann["bbox"], "score": 1.0}
        if masks:
            rle = coco.annToRLE(ann)
            det["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()
                                   if isinstance(rle["counts"], bytes) else rle["counts"]}
        dets.append(det)
    return dets


def test_fruit_polygons_load_and_ground_truth_scores_ap_one():
    data = DetectionData.from_folder(need("fruit"), masks=True)
    assert len(data) == 18 and data.class_names == ["date", "fig", "hazelnut"]
    image, target = data[0]
    assert image.dtype == torch.float32 and 0.0 <= image.min() and image.max() <= 1.0
    n = len(target["boxes"])
    assert n > 0 and target["masks"].shape == (n, *image.shape[-2:]) and target["masks"].sum() > 0
    assert set(target["labels"].tolist()) <= {1, 2, 3}
    assert target["image_id"] == data.items[0][0]["id"]
    metrics = coco_metrics(data.coco, gt_as_detections(data.coco, masks=True), iou_types=("bbox", "segm"))
    assert metrics["bbox"]["AP"] == pytest.approx(1.0) and metrics["segm"]["AP"] == pytest.approx(1.0)
    assert metrics["bbox"]["AP50"] == pytest.approx(1.0) and metrics["bbox"]["APs"] == -1.0   # no small fruit
    # Shifted boxes must score lower: the evaluator is not a constant.
    shifted = [{**d, "bbox": [d["bbox"][0] + d["bbox"][2] * 0.6, *d["bbox"][1:]]}
               for d in gt_as_detections(data.coco, masks=False)]
    assert coco_metrics(data.coco, shifted)["bbox"]["AP"] < 0.2


def test_coco_rle_crowd_and_sparse_category_ids():
    root = need("coco128-instances")
    coco = load_coco(root / "annotations" / "instances_val2017.json")
    data = DetectionData(root / "images" / "val2017", coco, masks=True)
    assert len(data.category_ids) == 80 and data.category_ids[-1] == 90      # COCO's ids have gaps
    assert data.label_of[90] == 80 and data.class_names[0] == "person"
    crowd_image = next(i for i, (_, anns) in enumerate(data.items) if any(a["iscrowd"] for a in anns))
    info, anns = data.items[crowd_image]
    _, target = data[crowd_image]
    assert len(target["boxes"]) == sum(not a["iscrowd"] for a in anns)      # crowd regions are not targets
    assert target["labels"].min() >= 1 and target["labels"].max() <= 80
    assert target["masks"].shape[0] == len(target["boxes"])


def test_coco_result_conversion_scores_ground_truth_ap_one_and_an_id_shift_drops_it():
    """The ground truth as torchvision outputs (labels 1..80, xyxy boxes, mask probabilities) through
    the project's converter: COCO's sparse category ids, x-y-width-height boxes and RLE must come
    out exactly, so AP is 1.0; mapping each label to its neighbour's id must collapse it."""
    from repvit.detection.evaluation import to_coco_results
    root = need("coco128-instances")
    data = DetectionData(root / "images" / "val2017", load_coco(root / "annotations" / "instances_val2017.json"),
                         masks=True)
    assert data.category_ids != list(range(1, 81))                     # the ids are sparse: labels must map
    data = data.subset(range(50))
    assert max(a["category_id"] for _, anns in data.items for a in anns) > 80
    outputs = []
    for index in range(len(data)):
        _, target = data[index]
        n = len(target["boxes"])
        outputs.append(({"boxes": target["boxes"], "labels": target["labels"], "scores": torch.linspace(1.0, 0.5, n),
                         "masks": target["masks"][:, None].float()}, target["image_id"]))
    image_ids = [info["id"] for info, _ in data.items]

    def ap(category_ids):
        dets = [d for output, image_id in outputs for d in to_coco_results(output, image_id, category_ids)]
        metrics = coco_metrics(data.coco, dets, ("bbox", "segm"), image_ids=image_ids)
        return metrics["bbox"]["AP"], metrics["segm"]["AP"]

    assert ap(data.category_ids) == (pytest.approx(1.0), pytest.approx(1.0))
    shifted = data.category_ids[1:] + data.category_ids[:1]
    bbox, segm = ap(shifted)
    assert bbox < 0.05 and segm < 0.05


def test_voc_xml_reads_like_the_coco_json_of_the_same_boxes():
    root = need("raccoon")
    voc = DetectionData(root / "images", coco_from_dict(voc_to_coco(root / "annotations", root / "images")))
    coco = DetectionData(root / "images", load_coco(root / "annotations.json"))
    assert len(voc) == len(coco) == 160 and voc.class_names == ["raccoon"]
    by_name = {info["file_name"]: sorted(a["bbox"] for a in anns) for info, anns in coco.items}
    assert all(sorted(a["bbox"] for a in anns) == by_name[info["file_name"]] for info, anns in voc.items)
    assert sum(len(anns) for _, anns in voc.items) == 173


@pytest.fixture
def tiny_coco(tmp_path):
    """Three fruit photos with a COCO file the tests break in different ways."""
    src = need("fruit")
    coco = json.loads((src / "annotations.json").read_text())
    keep = [im for im in coco["images"]][:3]
    ids = {im["id"] for im in keep}
    (tmp_path / "images").mkdir()
    for im in keep:
        shutil.copyfile(src / "images" / im["file_name"], tmp_path / "images" / im["file_name"])
    coco["images"] = keep
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]

    def write(data):
        (tmp_path / "annotations.json").write_text(json.dumps(data))
        return tmp_path
    return coco, write


@pytest.mark.parametrize("problem, message", [
    ("outside", "lies outside the 800x600 image"),
    ("zero", "has zero width"),
    ("negative", "has negative height -20"),
    ("category", "unknown category 99"),
    ("missing", "image file not found"),
    ("corrupt", "unreadable image"),
    ("size", "the annotations say 640x480, the image is 800x600"),
])
def test_bad_input_is_named_or_skipped_and_counted(tiny_coco, problem, message):
    coco, write = tiny_coco
    ann, image = coco["annotations"][0], coco["images"][0]
    if problem == "outside":
        ann["bbox"] = [790.0, 10.0, 50.0, 20.0]
    elif problem == "zero":
        ann["bbox"] = [10.0, 10.0, 0.0, 20.0]
    elif problem == "negative":
        ann["bbox"] = [10.0, 30.0, 20.0, -20.0]
    elif problem == "category":
        ann["category_id"] = 99
    elif problem == "size":
        image["width"], image["height"] = 640, 480
    root = write(coco)
    if problem == "missing":
        (root / "images" / image["file_name"]).unlink()
    elif problem == "corrupt":
        (root / "images" / image["file_name"]).write_bytes(b"not a jpeg")
    with pytest.raises(DetectionDataError) as err:
        DetectionData.from_folder(root)
    text = str(err.value)
    assert message in text and (image["file_name"] in text or str(root) in text)
    if problem in ("outside", "zero", "negative", "category"):
        assert f"annotation {ann['id']}" in text
    data = DetectionData.from_folder(root, skip_bad=True)
    per_annotation = problem in ("outside", "zero", "negative", "category")
    skipped = data.skipped.annotations if per_annotation else data.skipped.images
    assert len(skipped) == 1 and message in skipped[0][-1]
    assert len(data) == (3 if per_annotation else 2)
    for i in range(len(data)):                               # every kept item loads
        assert data[i][1]["boxes"].shape[1] == 4


def test_truncated_image_is_caught_before_training(tiny_coco):
    coco, write = tiny_coco
    root = write(coco)
    path = root / "images" / coco["images"][1]["file_name"]
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])
    with pytest.raises(DetectionDataError, match="truncated image"):
        DetectionData.from_folder(root)
    data = DetectionData.from_folder(root, skip_bad=True)
    assert len(data) == 2 and "image file is truncated" in data.skipped.images[0][1]


def test_confusion_matrix_metrics():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    perfect = ConfusionMatrix(3)
    perfect.update(label.clamp(max=2), label)
    result = perfect.compute(["a", "b", "c"])
    assert result["mIoU"] == 1.0 and result["aAcc"] == 1.0 and result["pixels"] == 7
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([[0, 1, 1, 1], [2, 0, 0, 1]]), label)
    out = cm.compute()
    # class 0: tp 1, union 3; class 1: tp 3, union 4; class 2: tp 1, union 2; class 3 absent
    assert out["IoU"]["0"] == pytest.approx(1 / 3) and out["IoU"]["1"] == pytest.approx(0.75)
    assert out["IoU"]["2"] == pytest.approx(0.5) and out["IoU"]["3"] is None
    assert out["mIoU"] == pytest.approx((1 / 3 + 0.75 + 0.5) / 3) and out["aAcc"] == pytest.approx(5 / 7)
    logits = torch.nn.functional.one_hot(label.clamp(max=2), 4).permute(2, 0, 1)[None].float()
    cm2 = ConfusionMatrix(4)
    cm2.update(logits, label[None])
    assert cm2.compute()["mIoU"] == 1.0
    with pytest.raises(ValueError, match="outside 0..3"):
        ConfusionMatrix(4).update(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[7, 1]]))


# --------------------------------------------------------------------------- semantic folders
def test_camvid_pairs_load_with_void_ignored():
    from repvit.segmentation.data import SemanticFolder
    data = SemanticFolder(need("camvid") / "val", num_classes=11, ignore_index=11)
    assert len(data) == 101
    image, label = data[0]
    assert image.shape == (3, 360, 480) and label.shape == (360, 480) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= set(range(12))
    cm = ConfusionMatrix(11, ignore_index=11)
    cm.update(label.clamp(max=10)[None], label[None])          # the label as its own prediction
    assert cm.compute()["mIoU"] == 1.0


@pytest.mark.parametrize("problem, message", [
    ("size", "label is 240x180 but its image"),
    ("orphan", "no matching labels/"),
    ("rgb", "expected one channel"),
    ("corrupt", "unreadable label PNG"),
])
def test_bad_segmentation_pairs_are_named_or_skipped(tmp_path, problem, message):
    from PIL import Image
    from repvit.segmentation.data import SegmentationDataError, SemanticFolder
    src = need("camvid") / "val"
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    names = sorted(p.stem for p in (src / "images").iterdir())[:3]
    for n in names:
        shutil.copyfile(src / "images" / f"{n}.jpg", tmp_path / "images" / f"{n}.jpg")
        shutil.copyfile(src / "labels" / f"{n}.png", tmp_path / "labels" / f"{n}.png")
    bad = tmp_path / "labels" / f"{names[0]}.png"
    if problem == "size":
        Image.open(bad).resize((240, 180)).save(bad)
    elif problem == "orphan":
        bad.unlink()
    elif problem == "rgb":
        Image.open(bad).convert("RGB").save(bad)
    elif problem == "corrupt":
        bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(SegmentationDataError) as err:
        SemanticFolder(tmp_path, num_classes=11, ignore_index=11)
    assert message in str(err.value) and names[0] in str(err.value)
    data = SemanticFolder(tmp_path, num_classes=11, ignore_index=11, skip_bad=True)
    assert len(data) == 2 and len(data.skipped) == 1 and message in data.skipped[0][1]


def test_reduce_zero_label_ignores_other_and_shifts(tmp_path):
    import numpy as np
    from PIL import Image
    from repvit.segmentation.data import SemanticFolder
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    Image.new("RGB", (4, 2)).save(tmp_path / "images" / "a.png")
    Image.fromarray(np.array([[0, 1, 2, 3], [3, 2, 1, 0]], dtype=np.uint8), mode="L").save(tmp_path / "labels" / "a.png")
    label = SemanticFolder(tmp_path, num_classes=3, reduce_zero_label=True)[0][1]
    assert label.tolist() == [[255, 0, 1, 2], [2, 1, 0, 255]]
