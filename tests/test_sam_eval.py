"""``repvit sam eval``: zero-shot COCO mIoU and mask AP with ground-truth prompts.

The metric code is checked with stand-in predictors that see only what ``SamPredictor`` sees (the
image and the transformed prompts) and answer from the ground truth: exactly, with empty masks,
or with the filled box, whose IoU the test computes on its own. One end-to-end CLI run uses the
real model with random weights on one fruit photo.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")
pytest.importorskip("pycocotools")

from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

from repvit.cli import main  # noqa: E402
from repvit.detection.data import DetectionDataError, load_coco  # noqa: E402
from repvit.sam.evaluation import SIZES, evaluate_coco, find_coco_layout  # noqa: E402
from repvit.sam.images import load_rgb  # noqa: E402

DATA = Path(os.environ.get("REPVIT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def need(folder: str) -> Path:
    path = DATA / folder
    if not path.is_dir():
        pytest.skip(f"shared data not found at {path}: these tests read ../shared/data beside the checkout "
                    "(or set REPVIT_SHARED_DATA)")
    return path


def xyxy(ann: dict) -> list[float]:
    x, y, w, h = ann["bbox"]
    return [x, y, x + w, y + h]


def filled_box(ann: dict, height: int, width: int) -> np.ndarray:
    x0, y0, x1, y1 = xyxy(ann)
    out = np.zeros((height, width), dtype=bool)
    out[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
    return out


class GroundTruthPredictor:
    """A ``SamPredictor`` stand-in that answers from the ground truth.

    It recognises the image by its pixels, maps the transformed prompts back to image pixels and
    picks the non-crowd object whose box (or box centre) is nearest. ``answer``: ``truth`` (its
    mask), ``empty`` (no pixel) or ``box`` (its box filled). Multimask calls return the answer
    in slot 1 between two all-image decoys; ``decoy_first`` scores a decoy highest.
    """

    def __init__(self, coco, image_dir: Path, *, answer: str = "truth", decoy_first: bool = False):
        self.coco, self.answer, self.decoy_first = coco, answer, decoy_first
        self.transform = ResizeLongestSide(1024)
        self.device = torch.device("cpu")
        self.ids = {}
        for info in coco.loadImgs(coco.getImgIds()):
            if (image_dir / info["file_name"]).is_file():
                self.ids[self._digest(load_rgb(image_dir / info["file_name"]))] = info["id"]
        self.set_image_calls = self.decoder_calls = 0

    @staticmethod
    def _digest(image: np.ndarray) -> str:
        return hashlib.sha1(image.tobytes()).hexdigest()

    def set_image(self, image: np.ndarray) -> None:
        self.image_id = self.ids[self._digest(image)]
        self.original_size = image.shape[:2]
        self.set_image_calls += 1

    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True,
                      return_logits=False):
        self.decoder_calls += 1
        height, width = self.original_size
        new_h, new_w = ResizeLongestSide.get_preprocess_shape(height, width, 1024)
        back = torch.tensor([width / new_w, height / new_h])
        anns = [a for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[self.image_id])) if not a["iscrowd"]]
        if boxes is not None:
            queries = (boxes.reshape(-1, 2, 2) * back).reshape(-1, 4)
            targets = torch.tensor([xyxy(a) for a in anns])
        else:
            assert point_coords.shape[1] == 1 and bool((point_labels == 1).all())
            queries = point_coords[:, 0] * back
            targets = torch.tensor([[(a[0] + a[2]) / 2, (a[1] + a[3]) / 2] for a in map(xyxy, anns)])
        nearest = torch.cdist(queries.double(), targets.double()).argmin(dim=1).tolist()
        answers = []
        for i in nearest:
            if self.answer == "truth":
                answers.append(self.coco.annToMask(anns[i]).astype(bool))
            elif self.answer == "box":
                answers.append(filled_box(anns[i], height, width))
            else:
                answers.append(np.zeros((height, width), dtype=bool))
        masks = torch.from_numpy(np.stack(answers))[:, None]
        if not multimask_output:
            return masks, torch.full((len(answers), 1), 0.9), None
        decoy = torch.ones_like(masks)
        scores = torch.tensor([0.95, 0.9, 0.3] if self.decoy_first else [0.2, 0.9, 0.3]).repeat(len(answers), 1)
        return torch.cat([decoy, masks, decoy], dim=1), scores, None


@pytest.fixture(scope="module")
def fruit():
    root = need("fruit")
    return root / "annotations.json", root / "images"


def test_layouts_are_found():
    fruit_root, coco_root = need("fruit"), need("coco128-instances")
    assert find_coco_layout(fruit_root) == (fruit_root / "annotations.json", fruit_root / "images")
    assert find_coco_layout(coco_root) == (coco_root / "annotations" / "instances_val2017.json",
                                           coco_root / "images" / "val2017")
    assert find_coco_layout(coco_root, split="train2017") == (coco_root / "annotations" / "instances_train2017.json",
                                                              coco_root / "images" / "train2017")
    assert find_coco_layout(annotations=fruit_root / "annotations.json", images=fruit_root / "images") == \
        (fruit_root / "annotations.json", fruit_root / "images")
    with pytest.raises(ValueError, match="no split 'test2017'"):
        find_coco_layout(coco_root, split="test2017")
    with pytest.raises(FileNotFoundError, match="instances_<split>.json"):
        find_coco_layout(fruit_root / "images")


def test_exact_masks_score_one_with_one_embedding_per_image(fruit):
    annotations, images = fruit
    coco = load_coco(annotations)
    fake = GroundTruthPredictor(coco, images)
    report = evaluate_coco(fake, annotations, images)
    assert (report["images"], report["instances"], report["crowd_excluded"]) == (18, 165, 0)
    assert fake.set_image_calls == 18 and fake.decoder_calls == 2 * 18   # one encoding, one call per protocol
    for name in ("box", "point"):
        rec = report["prompts"][name]
        assert rec["mIoU"] == pytest.approx(1.0)
        assert rec["segm"]["AP"] == pytest.approx(1.0) and rec["segm"]["AP50"] == pytest.approx(1.0)
        assert rec["segm"]["APs"] == -1.0   # no small fruit
        assert rec["mIoU_by_size"]["small"] is None and sum(rec["instances_by_size"].values()) == 165
    assert report["prompts"]["point"]["oracle_mIoU"] == pytest.approx(1.0)


def test_empty_masks_score_zero_and_decoys_are_rejected_by_predicted_iou(fruit):
    annotations, images = fruit
    coco = load_coco(annotations)
    empty = evaluate_coco(GroundTruthPredictor(coco, images, answer="empty"), annotations, images, limit=4)
    for rec in empty["prompts"].values():
        assert rec["mIoU"] == 0.0 and rec["segm"]["AP"] == 0.0
    # The highest predicted IoU picks the mask: a decoy scored highest costs the point protocol,
    # while the oracle (best by true IoU) still finds the exact mask.
    fooled = evaluate_coco(GroundTruthPredictor(coco, images, decoy_first=True), annotations, images, limit=4,
                           prompt="point")
    assert set(fooled["prompts"]) == {"point"}
    assert fooled["prompts"]["point"]["mIoU"] < 0.3 and fooled["prompts"]["point"]["oracle_mIoU"] == pytest.approx(1.0)


def test_miou_and_size_split_match_an_independent_computation(fruit):
    annotations, images = fruit
    coco = load_coco(annotations)
    report = evaluate_coco(GroundTruthPredictor(coco, images, answer="box"), annotations, images, limit=5,
                           prompt="box", batch_size=3)
    ious, sizes = [], []
    for image_id in sorted(coco.getImgIds())[:5]:
        info = coco.loadImgs(image_id)[0]
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            truth = coco.annToMask(ann).astype(bool)
            box = filled_box(ann, info["height"], info["width"])
            ious.append((truth & box).sum() / (truth | box).sum())
            sizes.append(next(name for name, low, high in SIZES if low <= ann["area"] < high))
    rec = report["prompts"]["box"]
    assert report["instances"] == len(ious) and 0.5 < rec["mIoU"] < 0.95   # a box is not the fruit
    assert rec["mIoU"] == pytest.approx(np.mean(ious), abs=1e-9)
    for name in ("medium", "large"):
        assert rec["mIoU_by_size"][name] == pytest.approx(np.mean([i for i, s in zip(ious, sizes) if s == name]))
        assert rec["instances_by_size"][name] == sizes.count(name)
    assert 0.0 < rec["segm"]["AP"] < 1.0


def test_crowd_regions_are_not_prompted_and_do_not_cost_ap():
    root = need("coco128-instances")
    annotations, images = find_coco_layout(root)
    coco = load_coco(annotations)
    first = sorted(coco.getImgIds())[:3]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=first))
    crowd = sum(a["iscrowd"] for a in anns)
    assert crowd >= 1   # image 632 holds one; the check below must mean something
    report = evaluate_coco(GroundTruthPredictor(coco, images), annotations, images, limit=3, prompt="box")
    assert (report["images"], report["instances"], report["crowd_excluded"]) == (3, len(anns) - crowd, crowd)
    assert report["prompts"]["box"]["mIoU"] == pytest.approx(1.0)
    assert report["prompts"]["box"]["segm"]["AP"] == pytest.approx(1.0)


def _two_image_copy(annotations: Path) -> dict:
    data = json.loads(annotations.read_text())
    keep = {i["id"] for i in sorted(data["images"], key=lambda i: i["id"])[:2]}
    return {**data, "images": [i for i in data["images"] if i["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}


def test_bad_input_is_named_or_counted_and_skipped(fruit, tmp_path):
    annotations, images = fruit
    coco = load_coco(annotations)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        evaluate_coco(GroundTruthPredictor(coco, images), tmp_path / "nope.json", images)

    data = _two_image_copy(annotations)
    data["images"].append({**data["images"][0], "id": 99, "file_name": "missing.jpg"})
    data["annotations"].append({**data["annotations"][0], "id": 999, "image_id": 99})
    no_seg = data["annotations"][1]["id"]
    del data["annotations"][1]["segmentation"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    fake = GroundTruthPredictor(coco, images)
    with pytest.raises(DetectionDataError, match="missing.jpg.*not found.*--skip-bad"):
        evaluate_coco(fake, bad, images)
    data["images"].pop()
    data["annotations"].pop()
    only_seg = tmp_path / "no-seg.json"
    only_seg.write_text(json.dumps(data))
    with pytest.raises(DetectionDataError, match=f"annotation {no_seg}: no segmentation"):
        evaluate_coco(fake, only_seg, images)

    report = evaluate_coco(fake, bad, images, skip_bad=True)
    total = len(data["annotations"])
    assert (report["skipped_images"], report["skipped_annotations"]) == (1, 1)
    assert (report["images"], report["instances"]) == (2, total - 1)
    # the skipped annotation is left out of the ground truth too: exact masks still score 1.0
    for rec in report["prompts"].values():
        assert rec["mIoU"] == pytest.approx(1.0) and rec["segm"]["AP"] == pytest.approx(1.0)
    assert {s.get("annotation") for s in report["skipped"]} == {None, no_seg}


def test_cli_random_weights_end_to_end(fruit, tmp_path, capsys):
    annotations, images = fruit
    out_json, results = tmp_path / "report.json", tmp_path / "masks.json"
    assert main(["sam", "eval", "--data", str(annotations.parent), "--random-weights", "--limit", "1",
                 "--report", str(out_json), "--results", str(results), "--quiet"]) == 0
    report = json.loads(out_json.read_text())
    coco = load_coco(annotations)
    first = sorted(coco.getImgIds())[0]
    count = len(coco.getAnnIds(imgIds=[first]))
    assert (report["images"], report["instances"], report["crowd_excluded"]) == (1, count, 0)
    assert report["fused"] is True and report["weights"] == "random (seed 0)" and report["wall_seconds"] > 0
    assert set(report["prompts"]) == {"box", "point"}
    for name, rec in report["prompts"].items():
        assert 0.0 <= rec["mIoU"] <= 1.0 and set(rec["segm"]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        assert all(-1.0 <= v <= 1.0 for v in rec["segm"].values())
        assert rec["oracle_mIoU"] >= rec["mIoU"] if name == "point" else rec["multimask"] is False
        dets = json.loads(Path(report["results_files"][name]).read_text())
        assert len(dets) == count and {d["image_id"] for d in dets} == {first}
        loaded = coco.loadRes(dets)   # a valid COCO results file with RLE masks
        assert all(isinstance(a["segmentation"]["counts"], str) for a in loaded.loadAnns(loaded.getAnnIds()))
    assert Path(report["results_files"]["box"]).name == "masks_box.json"
    printed = capsys.readouterr().out
    assert "mIoU" in printed and "AP50" in printed


def test_cli_names_a_folder_without_annotations(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    assert main(["sam", "eval", "--data", str(tmp_path), "--random-weights"]) != 0
    assert "annotations" in capsys.readouterr().err
