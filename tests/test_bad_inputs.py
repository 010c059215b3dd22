"""Bad input is reported whole before the first step: without --skip-bad one error lists every
problem grouped by reason; with it, what was skipped is counted by reason and named. Folders are
built in tmp_path from the shared real photos (fruit, CamVid) and broken on purpose."""
from __future__ import annotations

import json
import re
import shutil

import pytest
from PIL import Image

from repvit.data.coco import CocoDataError
from repvit.detection.data import DetectionData, DetectionDataError
from repvit.segmentation.data import SegmentationDataError, SemanticFolder

from .test_dense_data import need


@pytest.fixture
def broken_coco(tmp_path):
    """Six fruit photos, four of them broken in one way each (the issue's case)."""
    src = need("fruit")
    coco = json.loads((src / "annotations.json").read_text())
    coco["images"] = sorted(coco["images"], key=lambda i: i["id"])[:6]
    ids = {im["id"] for im in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    (tmp_path / "images").mkdir()
    for im in coco["images"]:
        shutil.copyfile(src / "images" / im["file_name"], tmp_path / "images" / im["file_name"])
    first_of = {}
    for ann in coco["annotations"]:
        first_of.setdefault(ann["image_id"], ann)
    images = coco["images"]
    negative = first_of[images[0]["id"]]
    negative["bbox"] = [negative["bbox"][0] + 40, negative["bbox"][1], -40.0, negative["bbox"][3]]
    unknown = first_of[images[1]["id"]]
    unknown["category_id"] = 77
    (tmp_path / "images" / images[2]["file_name"]).unlink()
    truncated = tmp_path / "images" / images[3]["file_name"]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    return tmp_path, {"negative width": f"{images[0]['file_name']}, annotation {negative['id']}",
                      "unknown category": f"{images[1]['file_name']}, annotation {unknown['id']}",
                      "missing image": images[2]["file_name"], "truncated image": images[3]["file_name"]}


def test_one_error_lists_every_bad_coco_input_grouped_by_reason(broken_coco):
    root, expected = broken_coco
    with pytest.raises(DetectionDataError) as err:
        DetectionData.from_folder(root, masks=True)
    text = str(err.value)
    assert "4 bad inputs (1 negative width, 1 unknown category, 1 missing image, 1 truncated image)" in text
    for reason, where in expected.items():
        group = text.split(f"  {reason} (1):\n", 1)[1].split("\n", 1)[0]
        assert where in group, (reason, text)
    assert "negative width -40" in text and "unknown category 77" in text and "image file is truncated" in text
    assert "zero area" not in text and "--skip-bad" in text
    assert len(err.value.bad_inputs) == 4 and isinstance(err.value, CocoDataError)


def test_skip_bad_counts_and_names_what_it_skipped(broken_coco):
    root, expected = broken_coco
    data = DetectionData.from_folder(root, masks=True, skip_bad=True)
    assert len(data) == 4                                   # 6 images less the missing and the truncated one
    report = data.skip_report()
    assert report.startswith(f"skipped 4 bad inputs in {root / 'annotations.json'}:")
    for reason, where in expected.items():
        line = next(line for line in report.splitlines() if line.strip().startswith(reason + ":"))
        assert re.search(rf"{reason}: 1 \(.*{re.escape(where)}", line), line
    assert {a for _, a, _ in data.skipped.annotations} == {int(expected["negative width"].split()[-1]),
                                                           int(expected["unknown category"].split()[-1])}
    assert len(data.skipped.images) == 2
    for i in range(len(data)):                              # every kept image loads, its bad boxes gone
        _, target = data[i]
        assert (target["boxes"][:, 2] > target["boxes"][:, 0]).all()
    clean = DetectionData.from_folder(need("fruit"))
    assert clean.skip_report() == ""


def test_a_segmentation_folder_reports_every_bad_pair(tmp_path):
    src = need("camvid") / "val"
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    names = sorted(p.stem for p in (src / "images").iterdir())[:6]
    for n in names:
        shutil.copyfile(src / "images" / f"{n}.jpg", tmp_path / "images" / f"{n}.jpg")
        shutil.copyfile(src / "labels" / f"{n}.png", tmp_path / "labels" / f"{n}.png")
    (tmp_path / "labels" / f"{names[0]}.png").unlink()                                   # image without label
    Image.open(tmp_path / "labels" / f"{names[1]}.png").resize((240, 180)).save(tmp_path / "labels" / f"{names[1]}.png")
    jpeg = tmp_path / "images" / f"{names[2]}.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])                      # truncated image
    Image.open(tmp_path / "labels" / f"{names[3]}.png").convert("RGB").save(tmp_path / "labels" / f"{names[3]}.png")
    with pytest.raises(SegmentationDataError) as err:
        SemanticFolder(tmp_path, num_classes=11, ignore_index=11)
    text = str(err.value)
    assert ("4 bad inputs (1 image without label, 1 size mismatch, 1 truncated image, 1 label not one channel)"
            in text)
    for name in names[:4]:
        assert name in text
    data = SemanticFolder(tmp_path, num_classes=11, ignore_index=11, skip_bad=True)
    assert len(data) == 2 and len(data.skipped) == 4
    report = data.skip_report()
    assert report.startswith(f"skipped 4 bad inputs in {tmp_path}:")
    for reason, name in zip(("image without label", "size mismatch", "truncated image", "label not one channel"),
                            names):
        assert re.search(rf"{reason}: 1 \(.*{name}", report), report
