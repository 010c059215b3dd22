"""``repvit sam predict`` and ``repvit sam everything`` on an official-format repvit_sam.pt."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("segment_anything")

from PIL import Image  # noqa: E402
from segment_anything import SamPredictor  # noqa: E402

from repvit.cli import main  # noqa: E402
from repvit.sam import build_sam  # noqa: E402
from repvit.data.images import load_rgb  # noqa: E402
from repvit.sam.prompts import Prompt, parse_box, parse_point, predict_prompts  # noqa: E402

from .conftest import SHARED_DATA, shared_data  # noqa: E402
from .test_sam import official_format_file  # noqa: E402

FRUIT = SHARED_DATA / "fruit"
MAX_MASK_FLIPS = 1e-4   # share of pixels whose side of the threshold may differ between two runs of the model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("sam-cli")
    official_format_file(root / "repvit_sam.pt", seed=1)
    shared_data("fruit", pattern="*.jpg")
    photos = sorted(FRUIT.rglob("*.jpg"))
    small = root / "photo.jpg"
    with Image.open(photos[0]) as im:
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(small, quality=95)
    return root / "repvit_sam.pt", small


@pytest.fixture(scope="module")
def predictor(files):
    weights, photo = files
    p = SamPredictor(build_sam(weights, fused=True))
    p.set_image(load_rgb(photo))
    return p


def test_cli_predict_matches_sam_predictor(files, predictor, tmp_path, capsys):
    weights, photo = files
    assert main(["sam", "predict", str(photo), "--point", "120,90", "--point", "30,40,0", "--box", "20,20,300,200",
                 "--checkpoint", str(weights), "-o", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "photo_scores.json").read_text())
    mask = np.asarray(Image.open(tmp_path / "photo_mask.png")) > 0
    want, scores, _ = predictor.predict(point_coords=np.array([[120, 90], [30, 40]]), point_labels=np.array([1, 0]),
                                        box=np.array([20, 20, 300, 200]), multimask_output=False)
    assert np.array_equal(mask, want[0])
    assert record["objects"][0]["score"] == pytest.approx(float(scores[0]), abs=1e-5)
    assert record["objects"][0]["points"] == [[120.0, 90.0, 1], [30.0, 40.0, 0]]
    overlay = np.asarray(Image.open(tmp_path / "photo_overlay.png"))
    assert overlay.shape == load_rgb(photo).shape and not np.array_equal(overlay, load_rgb(photo))
    assert "encoder" in capsys.readouterr().out


def test_many_prompts_share_one_embedding_and_match_one_by_one(predictor):
    prompts = [Prompt([(50, 60, 1)]), Prompt(box=(10, 10, 200, 150)), Prompt([(200, 100, 1)]),
               Prompt([(40, 40, 1), (150, 120, 0)], box=(5, 5, 250, 190)), Prompt(box=(100, 50, 300, 220))]
    calls = []
    handle = predictor.model.image_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        together = predict_prompts(predictor, prompts)
    finally:
        handle.remove()
    assert calls == []  # the image embedding was reused
    for prompt, got in zip(prompts, together):
        one = predict_prompts(predictor, [prompt])[0]
        assert np.array_equal(one["mask"], got["mask"])
        assert one["score"] == pytest.approx(got["score"], abs=1e-5)
        # a lone point is ambiguous: three candidates; anything else: one
        assert len(got["scores"]) == (3 if len(prompt.points) == 1 and prompt.box is None else 1)


def test_cli_many_boxes_and_a_prompt_file(files, tmp_path):
    weights, photo = files
    (tmp_path / "p.json").write_text(json.dumps([{"points": [[60, 60, 1]]}, {"box": [5, 5, 100, 90]}]))
    assert main(["sam", "predict", str(photo), "--prompts", str(tmp_path / "p.json"), "--box", "10,10,50,50",
                 "--box", "60,60,200,150", "--checkpoint", str(weights), "-o", str(tmp_path / "o")]) == 0
    record = json.loads((tmp_path / "o" / "photo_scores.json").read_text())
    assert len(record["objects"]) == 4 and all((tmp_path / "o" / o["mask"]).is_file() for o in record["objects"])


@pytest.mark.parametrize("argv, message", [
    (["--point", "1,2,5"], "label 5"),
    (["--point", "abc"], "X,Y or X,Y,LABEL"),
    (["--box", "50,50,10,10"], "X1 > X0"),
    (["--point", "99999,1"], "outside"),
    ([], "give a prompt"),
    (["--box", "1,1,5,5", "--box", "2,2,6,6", "--point", "3,3"], "ambiguous"),
])
def test_bad_prompts_are_explained(files, tmp_path, capsys, argv, message):
    weights, photo = files
    assert main(["sam", "predict", str(photo), *argv, "--checkpoint", str(weights), "-o", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "photo_scores.json").exists()


def test_weights_must_be_named(files, tmp_path, capsys):
    _, photo = files
    assert main(["sam", "predict", str(photo), "--point", "1,1", "-o", str(tmp_path)]) == 2
    assert "--random-weights" in capsys.readouterr().err


def test_cli_everything_writes_rle_json_and_overlay(files, predictor, tmp_path):
    from pycocotools import mask as mask_utils
    from repvit.sam.everything import FastMaskGenerator
    weights, photo = files
    # Random weights give masks whose boxes all span the image: with the box NMS off (threshold 1) every
    # one of the 3 x 3 x 3 candidates stays, instead of the one the default keeps.
    assert main(["sam", "everything", str(photo), "--points-per-side", "3", "--pred-iou-thresh", "0",
                 "--stability-score-thresh", "0", "--box-nms-thresh", "1", "--checkpoint", str(weights), "-o",
                 str(tmp_path), "--quiet"]) == 0
    record = json.loads((tmp_path / "photo_masks.json").read_text())
    # The generator itself, in this process, on the same weights (fused, as the command loads them) and grid,
    # reading the embedding the predictor fixture made of the same photo instead of encoding it again.
    generator = FastMaskGenerator(predictor.model, points_per_side=3, pred_iou_thresh=0, stability_score_thresh=0,
                                  box_nms_thresh=1.0, output_mode="binary_mask")
    shared = generator.predictor
    for name in ("features", "original_size", "input_size", "is_image_set"):
        setattr(shared, name, getattr(predictor, name))
    shared.set_image = shared.reset_image = lambda *_: None
    want = generator.generate(load_rgb(photo))
    assert len(record["masks"]) == len(want) == 27
    # The command may run on another number of threads (--threads auto): the decoder's last bits may
    # differ, so a pixel whose logit is within rounding of the threshold may too (MAX_MASK_FLIPS of them).
    for got, mine in zip(record["masks"], want):
        mask = mask_utils.decode(got["segmentation"]).astype(bool)   # the RLE is the generator's mask
        assert got["area"] == mask.sum() and 0 < got["area"] < mask.size
        assert (mask != mine["segmentation"]).mean() <= MAX_MASK_FLIPS
        assert abs(got["area"] - mine["area"]) <= MAX_MASK_FLIPS * mask.size
        assert got["bbox"] == pytest.approx(mine["bbox"], abs=1)
        assert got["predicted_iou"] == pytest.approx(mine["predicted_iou"], abs=1e-5)
    assert len({m["area"] for m in want}) > 1   # different masks, not one repeated
    assert Image.open(tmp_path / "photo_everything.png").size == Image.open(photo).size


def test_parsers():
    assert parse_point("3,4") == (3.0, 4.0, 1) and parse_point("3, 4, 0") == (3.0, 4.0, 0)
    assert parse_box("1,2,3,4") == (1.0, 2.0, 3.0, 4.0)
    with pytest.raises(ValueError):
        parse_box("1,2,3")
