"""``repvit detect eval|predict`` and ``repvit segment eval|predict`` on the shared real data, from
self-describing files saved by the library (fused by default; the unfused model scores the same)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from repvit.cli import main
from repvit.detection.data import DetectionData
from repvit.detection.detectors import build_detector, load_detector, save_detector
from repvit.models.checkpoint import CheckpointError
from repvit.segmentation.semantic_fpn import SemanticFPN, load_segmenter, save_segmenter
from repvit.testing import randomize_batchnorm

from .detections_as_truth import cocoeval, label_with_own_detections
from .test_dense_data import need

CAMVID = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
          "Bicyclist"]


@pytest.fixture(scope="module")
def fruit_subset(tmp_path_factory):
    src = need("fruit")
    coco = json.loads((src / "annotations.json").read_text())
    root = tmp_path_factory.mktemp("fruit3")
    (root / "images").mkdir()
    coco["images"] = coco["images"][:3]
    ids = {im["id"] for im in coco["images"]}
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
    for im in coco["images"]:
        shutil.copyfile(src / "images" / im["file_name"], root / "images" / im["file_name"])
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


@pytest.fixture(scope="module")
def camvid_subset(tmp_path_factory):
    src = need("camvid") / "val"
    root = tmp_path_factory.mktemp("camvid3")
    for sub in ("images", "labels"):
        (root / sub).mkdir()
    for path in sorted((src / "images").iterdir())[:3]:
        shutil.copyfile(path, root / "images" / path.name)
        shutil.copyfile(src / "labels" / f"{path.stem}.png", root / "labels" / f"{path.stem}.png")
    return root


def test_detector_files_round_trip_and_refuse_other_files(fruit_subset, tmp_path):
    data = DetectionData.from_folder(fruit_subset)
    model = randomize_batchnorm(build_detector("maskrcnn", "repvit_m0_6", num_classes=4, min_size=256, max_size=320))
    path = save_detector(model, tmp_path / "det.pth", class_names=data.class_names, category_ids=data.category_ids)
    loaded = load_detector(path)
    assert loaded.class_names == ["date", "fig", "hazelnut"] and loaded.transform.min_size == (256,)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    with pytest.raises(ValueError, match="4 class names and 4 category ids for a detector with 4 outputs"):
        save_detector(model, tmp_path / "x.pth", class_names=data.class_names[:2] + ["a", "b"], category_ids=[1, 2, 3, 4])
    torch.save({"model": model.state_dict()}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not a RepViT detection checkpoint"):
        load_detector(tmp_path / "plain.pth")
    seg = SemanticFPN("repvit_m0_6", num_classes=11)
    save_segmenter(seg, tmp_path / "seg.pth", class_names=CAMVID, ignore_index=11)
    with pytest.raises(CheckpointError, match="holds a segmentation model"):
        load_detector(tmp_path / "seg.pth")


def test_detector_files_keep_every_option_tuples_included(fruit_subset, tmp_path):
    """A multi-scale training size is a tuple: the rebuilt detector must train and infer at the same sizes."""
    data = DetectionData.from_folder(fruit_subset)
    torch.manual_seed(0)
    options = dict(min_size=(96, 112, 128), max_size=160, image_mean=[0.5, 0.4, 0.3], box_detections_per_img=7,
                   rpn_anchor_generator=None, box_score_thresh=0.01)
    model = randomize_batchnorm(build_detector("maskrcnn", "repvit_m0_6", num_classes=4, norm_eval=False,
                                               frozen_stages=1, **options))
    path = save_detector(model, tmp_path / "det.pth", class_names=data.class_names, category_ids=data.category_ids)
    loaded = load_detector(path)
    assert loaded.transform.min_size == (96, 112, 128) and type(loaded.transform.min_size) is tuple
    assert loaded.transform.max_size == 160 and loaded.transform.image_mean == [0.5, 0.4, 0.3]
    assert loaded.roi_heads.detections_per_img == 7 and loaded.roi_heads.score_thresh == 0.01
    assert loaded.repvit_config == model.repvit_config
    assert type(loaded.repvit_config["min_size"]) is tuple and type(loaded.repvit_config["image_mean"]) is list
    body = loaded.backbone.body
    assert body.norm_eval is False and body.frozen_stages == 1
    assert [p.requires_grad for p in body.parameters()] == [p.requires_grad for p in model.backbone.body.parameters()]
    image = data[0][0]
    with torch.no_grad():
        want, got = model.eval()([image])[0], loaded([image])[0]
    assert len(want["boxes"]) > 0
    for key in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(want[key], got[key]), key
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    custom = build_detector("fasterrcnn", "repvit_m0_6", num_classes=4,
                            rpn_anchor_generator=AnchorGenerator(((32,), (64,), (128,), (256,), (512,)),
                                                                 ((0.5, 1.0, 2.0),) * 5))
    with pytest.raises(ValueError, match="cannot record rpn_anchor_generator=AnchorGenerator"):
        save_detector(custom, tmp_path / "custom.pth", class_names=data.class_names, category_ids=data.category_ids)


def test_records_give_back_tuples_lists_and_none_as_saved(tmp_path):
    from repvit.models.record import read_record, save_record
    config = {"sizes": (1, 2), "nested": [(3, (4, 5)), [6]], "deep": {"t": ((7,), [8])}, "none": None, "s": "x"}
    save_record(torch.nn.Linear(1, 1), tmp_path / "r.pth", task="detection", config=config)
    record = read_record(tmp_path / "r.pth", "detection")
    assert record["config"] == config
    assert type(record["config"]["sizes"]) is tuple and type(record["config"]["nested"]) is list
    assert type(record["config"]["nested"][0][1]) is tuple and type(record["config"]["deep"]["t"][1]) is list
    raw = torch.load(tmp_path / "r.pth", weights_only=True)["config"]     # on disk: plain lists, JSON-ready
    assert raw["sizes"] == [1, 2] and raw["deep"]["t"] == [[7], [8]]


def test_segmenter_files_keep_every_option(tmp_path):
    model = SemanticFPN("repvit_m0_6", num_classes=11, head_channels=64, dropout=0.2, norm_eval=True,
                        frozen_stages=2, drop_path_rate=0.05)
    loaded = load_segmenter(save_segmenter(model, tmp_path / "seg.pth", class_names=CAMVID, ignore_index=11))
    assert loaded.repvit_config == model.repvit_config
    body = loaded.backbone.body
    assert body.norm_eval is True and body.frozen_stages == 2 and loaded.dropout.p == 0.2
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in model.parameters()]


def test_cli_detect_eval_and_predict(fruit_subset, tmp_path, capsys):
    data = DetectionData.from_folder(fruit_subset)
    torch.manual_seed(0)   # 20 detections an image: the mask head's work on 100 would dominate the test's time
    model = randomize_batchnorm(build_detector("maskrcnn", "repvit_m0_6", num_classes=4, min_size=256, max_size=320,
                                               box_detections_per_img=20))
    path = save_detector(model, tmp_path / "det.pth", class_names=data.class_names, category_ids=data.category_ids)
    # The ground truth and the reference AP come from the unfused model, scored by COCOeval directly;
    # the command loads the file, fuses, reads the folder (masks included) and scores on its own.
    labelled = tmp_path / "labelled"
    detections = label_with_own_detections(model, data, labelled)
    report = tmp_path / "eval.json"
    assert main(["detect", "eval", "--checkpoint", str(path), "--data", str(labelled), "--report", str(report),
                 "--device", "cpu"]) == 0
    result = json.loads(report.read_text())
    assert result["images"] == 3 and result["fused"] is True
    for iou_type in ("bbox", "segm"):
        assert set(result[iou_type]) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
        want = cocoeval(labelled / "annotations.json", detections, iou_type)
        assert 0.2 < want["AP"] < 0.9, (iou_type, want)   # informative: another detector would move it
        assert result[iou_type] == pytest.approx(want, abs=1e-3), iou_type   # fused vs unfused: float noise
    assert result["detections"] == len(detections) == 60
    out = tmp_path / "drawn"
    image = sorted((fruit_subset / "images").iterdir())[0]
    assert main(["detect", "predict", "--checkpoint", str(path), str(image), "--output", str(out),
                 "--score-threshold", "0", "--device", "cpu", "--report", str(tmp_path / "p.json")]) == 0
    drawn = out / f"{image.stem}.png"
    assert drawn.is_file() and Image.open(drawn).size == Image.open(image).size
    predictions = json.loads((tmp_path / "p.json").read_text())[0]["detections"]
    assert predictions and {d["class"] for d in predictions} <= {"date", "fig", "hazelnut"}
    assert main(["detect", "predict", "--checkpoint", str(path), str(image), "--score-threshold", "2"]) == 2
    assert "--score-threshold" in capsys.readouterr().err


def test_cli_segment_eval_fused_equals_unfused_and_predict_draws(camvid_subset, tmp_path):
    torch.manual_seed(0)
    model = randomize_batchnorm(SemanticFPN("repvit_m0_6", num_classes=11)).eval()
    path = save_segmenter(model, tmp_path / "seg.pth", class_names=CAMVID, ignore_index=11)
    assert load_segmenter(path).ignore_index == 11
    results = {}
    for flag in ([], ["--unfused"]):
        report = tmp_path / f"eval{len(flag)}.json"
        assert main(["segment", "eval", "--checkpoint", str(path), "--data", str(camvid_subset), "--report",
                     str(report), "--device", "cpu", *flag]) == 0
        results[bool(flag)] = json.loads(report.read_text())
    fused, unfused = results[False], results[True]
    assert fused["fused"] and not unfused["fused"] and fused["images"] == 3 and list(fused["IoU"]) == CAMVID
    assert 0.0 <= fused["mIoU"] <= 1.0 and fused["mIoU"] == pytest.approx(unfused["mIoU"], abs=1e-3)
    out = tmp_path / "maps"
    assert main(["segment", "predict", "--checkpoint", str(path), str(camvid_subset / "images"), "--output",
                 str(out), "--device", "cpu"]) == 0
    stems = sorted(p.stem for p in (camvid_subset / "images").iterdir())
    for stem in stems:
        overlay, classes = Image.open(out / f"{stem}.png"), Image.open(out / f"{stem}_classes.png")
        assert overlay.size == classes.size == (480, 360) and overlay.mode == "RGB" and classes.mode == "L"
        assert __import__("numpy").asarray(classes).max() < 11


def test_segment_predict_runs_at_the_size_evaluation_scores(camvid_subset, tmp_path):
    """A prediction is what eval measured: the photo resized as EvalResize does, logits back at its size."""
    import numpy as np
    import torch.nn.functional as F
    from repvit.segmentation.data import EvalResize
    from repvit.segmentation.evaluation import predict_images

    class Recorder(torch.nn.Module):   # logits that depend on position, so a wrong size shows
        def __init__(self):
            super().__init__()
            self.seen = []

        def forward(self, x):
            self.seen.append(tuple(x.shape[-2:]))
            ys = torch.linspace(0, 1, x.shape[-2])[:, None].expand(x.shape[-2:])
            return torch.stack([x[:, 0], x[:, 1] * 0 + ys, x[:, 2]], dim=1)

    image = sorted((camvid_subset / "images").iterdir())[0]
    model = Recorder()
    out = predict_images(model, [image], tmp_path, class_names=["a", "b", "c"], eval_size=(160, 640))
    pixels = torch.from_numpy(np.asarray(Image.open(image).convert("RGB"))).permute(2, 0, 1).float() / 255
    resized, _ = EvalResize((160, 640))(pixels, None)
    assert model.seen == [tuple(resized.shape[-2:])] and resized.shape[-2:] != pixels.shape[-2:]
    expected = F.interpolate(Recorder()(resized[None]), size=pixels.shape[-2:], mode="bilinear",
                             align_corners=False).argmax(1)[0].numpy()
    classes = np.asarray(Image.open(out[0]["classes_png"]))
    assert classes.shape == pixels.shape[-2:] and (classes == expected).all()
    predict_images(model, [image], tmp_path, class_names=["a", "b", "c"])   # None: the photo's own size
    assert model.seen[-1] == tuple(pixels.shape[-2:])
