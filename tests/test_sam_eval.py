"""``repvit sam eval``: zero-shot COCO mIoU and mask AP with ground-truth prompts.

The metric code is checked with stand-in predictors that see only what ``SamPredictor`` sees (the
image and the transformed prompts) and answer from the ground truth: exactly, with empty masks,
or with the filled box, whose IoU the test computes on its own. One end-to-end CLI run uses the
real model with random weights on one fruit photo.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")
pytest.importorskip("pycocotools")

from segment_anything.utils.transforms import ResizeLongestSide  # noqa: E402

from repvit.cli import main  # noqa: E402
from repvit.data.coco import CocoDataError, load_coco  # noqa: E402
from repvit.sam.evaluation import SIZES, evaluate_coco, find_coco_layout, format_report  # noqa: E402
from repvit.data.images import load_rgb  # noqa: E402

from .conftest import shared_data  # noqa: E402
from .detections_as_truth import cocoeval  # noqa: E402

def need(folder: str) -> Path:
    return shared_data(folder)


def xyxy(ann: dict) -> list[float]:
    x, y, w, h = ann["bbox"]
    return [x, y, x + w, y + h]


def filled_box(ann: dict, height: int, width: int) -> np.ndarray:
    x0, y0, x1, y1 = xyxy(ann)
    out = np.zeros((height, width), dtype=bool)
    out[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True
    return out


def box_detection(ann: dict, info: dict, score: float = 0.9) -> dict:
    """``ann``'s filled box as a COCO result with ``score`` (what the ``box`` stand-in answers, and the
    score it gives a single mask)."""
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(filled_box(ann, info["height"], info["width"]).astype(np.uint8)))
    return {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": score,
            "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode()}}


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
    first = sorted(coco.getImgIds())[:5]   # pycocotools' COCOeval on the filled boxes, scored 0.9 as the stand-in does
    want = cocoeval(annotations, [box_detection(ann, coco.loadImgs(ann["image_id"])[0])
                                  for ann in coco.loadAnns(coco.getAnnIds(imgIds=first))], "segm", image_ids=first)
    assert 0.0 < want["AP"] < 1.0 and rec["segm"] == pytest.approx(want, abs=1e-9)


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
    with pytest.raises(CocoDataError, match="(?s)missing.jpg: image file not found.*--skip-bad") as err:
        evaluate_coco(fake, bad, images)
    # one error names every problem found before the first image is encoded
    assert f"annotation {no_seg}: no segmentation" in str(err.value)
    assert "2 bad inputs (1 no segmentation, 1 missing image)" in str(err.value)
    data["images"].pop()
    data["annotations"].pop()
    only_seg = tmp_path / "no-seg.json"
    only_seg.write_text(json.dumps(data))
    with pytest.raises(CocoDataError, match=f"annotation {no_seg}: no segmentation"):
        evaluate_coco(fake, only_seg, images)

    report = evaluate_coco(fake, bad, images, skip_bad=True)
    total = len(data["annotations"])
    assert (report["skipped_images"], report["skipped_annotations"]) == (1, 1)
    assert (report["images"], report["instances"]) == (2, total - 1)
    # the skipped annotation is left out of the ground truth too: exact masks still score 1.0
    for rec in report["prompts"].values():
        assert rec["mIoU"] == pytest.approx(1.0) and rec["segm"]["AP"] == pytest.approx(1.0)
    assert {s.get("annotation") for s in report["skipped"]} == {None, no_seg}
    assert report["skipped_by_reason"] == {"no segmentation": 1, "missing image": 1}
    printed = format_report(report)
    assert "  no segmentation: 1 (" in printed and "  missing image: 1 (" in printed and "missing.jpg" in printed


MAX_MASK_FLIPS = 1e-4   # share of pixels whose side of the threshold may differ between two runs of the model


def assert_same_figures(got, want, where: str = "") -> None:
    """``got`` equals ``want`` key by key, floats to the last bits another thread count changes."""
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for key in want:
            assert_same_figures(got[key], want[key], f"{where}/{key}")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7), where
    else:
        assert got == want, where


def assert_same_masks(got: list, want: list) -> None:
    """Two COCO results lists hold the same objects, scores and masks (up to ``MAX_MASK_FLIPS``)."""
    from pycocotools import mask as mask_utils
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        masks = [mask_utils.decode(d["segmentation"]).astype(bool) for d in (a, b)]
        assert masks[1].any() and (masks[0] != masks[1]).mean() <= MAX_MASK_FLIPS


class EncodeOnce:
    """A ``SamPredictor`` that encodes an image only when it differs from the last one (the two
    in-process references below share one encoder pass)."""

    def __init__(self, sam):
        from segment_anything import SamPredictor
        self.inner, self.digest = SamPredictor(sam), None

    def set_image(self, image: np.ndarray) -> None:
        digest = hashlib.sha1(image.tobytes()).hexdigest()
        if digest != self.digest:
            self.inner.set_image(image)
            self.digest = digest

    def __getattr__(self, name):   # transform, device, predict_torch: the predictor's own
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def random_weight_reference(fruit, tmp_path_factory) -> dict:
    """What ``--random-weights`` names (seed 0, fused), scored in this process by ``evaluate_coco`` on the
    first image: both protocols with the box-centre point, and the point protocol at the farthest point."""
    from repvit.sam import build_sam
    annotations, images = fruit
    torch.manual_seed(0)
    predictor = EncodeOnce(build_sam(fused=True))
    out = tmp_path_factory.mktemp("sam-reference")
    return {point: evaluate_coco(predictor, annotations, images, limit=1, point=point, results=out / f"{point}.json",
                                 prompt="both" if point == "center" else "point")
            for point in ("center", "farthest")}


def test_cli_random_weights_end_to_end(fruit, random_weight_reference, tmp_path, capsys):
    annotations, images = fruit
    out_json, results = tmp_path / "report.json", tmp_path / "masks.json"
    assert main(["sam", "eval", "--data", str(annotations.parent), "--random-weights", "--max-images", "1",
                 "--report", str(out_json), "--results", str(results), "--quiet"]) == 0
    report = json.loads(out_json.read_text())
    coco = load_coco(annotations)
    first = sorted(coco.getImgIds())[0]
    count = len(coco.getAnnIds(imgIds=[first]))
    assert (report["images"], report["instances"], report["crowd_excluded"]) == (1, count, 0)
    assert report["fused"] is True and report["weights"] == "random (seed 0)" and report["wall_seconds"] > 0
    reference = random_weight_reference["center"]
    assert set(report["prompts"]) == {"box", "point"}
    for name, rec in report["prompts"].items():
        assert_same_figures(rec, reference["prompts"][name], name)   # every figure, as computed in process
        assert rec["mIoU"] > 0.0   # random weights, yet masks that overlap the fruit: the figures mean something
        assert rec["oracle_mIoU"] >= rec["mIoU"] if name == "point" else rec["multimask"] is False
        dets = json.loads(Path(report["results_files"][name]).read_text())
        assert_same_masks(dets, json.loads(Path(reference["results_files"][name]).read_text()))   # mask by mask
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


# --------------------------------------------------------------------------- the point farthest from the boundary
def brute_squared_distance(mask: np.ndarray) -> np.ndarray:
    """Squared distance of every pixel to the nearest outside pixel, by trying them all (border = outside)."""
    padded = np.pad(mask, 1)
    outside = np.argwhere(~padded)
    out = np.zeros(mask.shape, dtype=np.int64)
    for y, x in np.argwhere(mask):
        out[y, x] = ((outside - (y + 1, x + 1)) ** 2).sum(1).min()
    return out


def disc(shape, cx, cy, radius) -> np.ndarray:
    ys, xs = np.mgrid[:shape[0], :shape[1]]
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius ** 2


def ring(shape, cx, cy, outer, inner) -> np.ndarray:
    return disc(shape, cx, cy, outer) & ~disc(shape, cx, cy, inner)


def l_shape(shape) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[5:55, 60:66] = True     # a bar down ...
    mask[49:55, 60:110] = True   # ... and one across: the box centre (85, 30) is outside
    return mask


def test_distance_to_outside_is_exact():
    from repvit.sam.prompts import squared_distance_to_outside
    rng = np.random.default_rng(0)
    for _ in range(25):
        h, w = rng.integers(1, 24, 2)
        mask = rng.random((h, w)) < rng.uniform(0.3, 0.95)
        got = squared_distance_to_outside(torch.from_numpy(mask))
        np.testing.assert_array_equal(got.numpy(), brute_squared_distance(mask))
    shape = (64, 120)
    for mask in (ring(shape, 30, 30, 22, 10), l_shape(shape)):
        np.testing.assert_array_equal(squared_distance_to_outside(torch.from_numpy(mask)).numpy(),
                                      brute_squared_distance(mask))
    with pytest.raises(ValueError, match="2-D"):
        squared_distance_to_outside(torch.ones(2, 2, 2, dtype=torch.bool))


def test_farthest_point_is_the_known_farthest_pixel_and_inside_the_mask():
    from repvit.sam.prompts import farthest_from_boundary
    shape = (64, 120)
    square_and_bar = np.zeros(shape, dtype=bool)
    square_and_bar[10:31, 10:31] = True   # 21 x 21: its centre (20, 20) is the one farthest pixel
    square_and_bar[29:32, 10:100] = True  # a long thin bar moves the box centre, not the farthest point
    corner = np.zeros(shape, dtype=bool)
    corner[:11, :11] = True               # touches the image border, which counts as outside: centre (5, 5)
    line = np.zeros(shape, dtype=bool)
    line[7, 5:31] = True                  # one pixel thick: every pixel is 1 away; the first one is taken
    cases = {"disc": (disc(shape, 71, 22, 10), (71, 22)), "square and bar": (square_and_bar, (20, 20)),
             "border corner": (corner, (5, 5)), "thin line": (line, (5, 7))}
    for name, (mask, expected) in cases.items():
        assert farthest_from_boundary(torch.from_numpy(mask)) == expected, name
    for mask in (ring(shape, 30, 30, 22, 10), l_shape(shape)):
        x, y = farthest_from_boundary(torch.from_numpy(mask))
        brute = brute_squared_distance(mask)
        assert mask[y, x] and brute[y, x] == brute.max()
        assert (y, x) == tuple(np.argwhere(brute == brute.max())[0])  # the first in row-major order
    assert not ring(shape, 30, 30, 22, 10)[30, 30]  # the box centre of the ring misses it
    with pytest.raises(ValueError, match="no pixel"):
        farthest_from_boundary(torch.zeros(4, 4, dtype=torch.bool))


class ClickRecorder:
    """A ``SamPredictor`` stand-in that answers a click with the ground-truth mask under it (else nothing)."""

    def __init__(self, masks):
        self.masks = masks
        self.transform = ResizeLongestSide(1024)
        self.device = torch.device("cpu")
        self.clicks = []

    def set_image(self, image):
        self.original_size = image.shape[:2]

    def predict_torch(self, point_coords, point_labels, boxes=None, multimask_output=True, **_):
        assert boxes is None and point_coords.shape[1] == 1
        height, width = self.original_size
        new_h, new_w = ResizeLongestSide.get_preprocess_shape(height, width, 1024)
        xy = (point_coords[:, 0] * torch.tensor([width / new_w, height / new_h])).round().long().tolist()
        self.clicks += [tuple(p) for p in xy]
        answers = [next((m for m in self.masks if m[y, x]), np.zeros_like(self.masks[0])) for x, y in xy]
        masks = torch.from_numpy(np.stack(answers))[:, None].repeat(1, 3, 1, 1)
        return masks, torch.tensor([[0.5, 0.9, 0.5]]).repeat(len(answers), 1), None


def test_the_farthest_point_protocol_clicks_on_the_object(tmp_path):
    """A ring and an L shape: their box centres miss them (mIoU 0), their farthest points hit (mIoU 1)."""
    from PIL import Image
    from pycocotools import mask as mask_utils
    shape = (64, 120)
    masks = [ring(shape, 30, 30, 22, 10), l_shape(shape)]
    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((*shape, 3), 128, np.uint8)).save(tmp_path / "images" / "shapes.png")
    anns = []
    for i, mask in enumerate(masks, start=1):
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        anns.append({"id": i, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": float(mask.sum()),
                     "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                     "segmentation": {"size": list(shape), "counts": rle["counts"].decode()}})
    data = {"images": [{"id": 1, "file_name": "shapes.png", "height": shape[0], "width": shape[1]}],
            "annotations": anns, "categories": [{"id": 1, "name": "shape"}]}
    (tmp_path / "annotations.json").write_text(json.dumps(data))
    reports = {}
    for point in ("center", "farthest"):
        recorder = ClickRecorder(masks)
        reports[point] = evaluate_coco(recorder, tmp_path / "annotations.json", tmp_path / "images", prompt="point",
                                       point=point)["prompts"]["point"]
        reports[point]["clicks"] = recorder.clicks
    centres = reports["center"]["clicks"]
    assert [abs(x - cx) + abs(y - 30) <= 1 for (x, y), cx in zip(centres, (30.5, 85))] == [True, True]
    assert not any(m[y, x] for m, (x, y) in zip(masks, centres)) and reports["center"]["mIoU"] == 0.0
    expected = [tuple(np.argwhere((b := brute_squared_distance(m)) == b.max())[0][::-1]) for m in masks]
    assert reports["farthest"]["clicks"] == expected and reports["farthest"]["mIoU"] == pytest.approx(1.0)
    assert reports["farthest"]["point"] == "farthest" and "farthest from the mask boundary" in \
        reports["farthest"]["prompt"]
    with pytest.raises(ValueError, match="'center' or 'farthest'"):
        evaluate_coco(ClickRecorder(masks), tmp_path / "annotations.json", tmp_path / "images", point="middle")


def test_cli_farthest_point(fruit, random_weight_reference, tmp_path, capsys):
    annotations, _ = fruit
    out_json = tmp_path / "report.json"
    assert main(["sam", "eval", "--data", str(annotations.parent), "--random-weights", "--max-images", "1",
                 "--prompt", "point", "--point-at", "farthest", "--report", str(out_json), "--quiet"]) == 0
    rec = json.loads(out_json.read_text())["prompts"]["point"]
    assert rec["point"] == "farthest" and rec["prompt"] == "one positive point farthest from the mask boundary"
    assert_same_figures(rec, random_weight_reference["farthest"]["prompts"]["point"])
    # other clicks, other masks: the farthest points are not the box centres
    centre = random_weight_reference["center"]["prompts"]["point"]["mIoU"]
    assert rec["mIoU"] > 0.0 and rec["mIoU"] != pytest.approx(centre, rel=1e-5, abs=1e-7)
    assert "farthest point" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["sam", "eval", "--data", str(annotations.parent), "--random-weights", "--point-at", "middle"])
    assert "invalid choice: 'middle'" in capsys.readouterr().err
