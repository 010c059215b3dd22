"""The RepViT-SAM demo page, driven as a user's client meets it, and its cached embeddings.

The page is served on 127.0.0.1 in this process and driven through its public API endpoints with
``gradio_client`` (uploading the file each call, as a client does). Random weights (seed 0) give
meaningless but deterministic masks; the checks compare the page's answers with the predictor's
own and with the uploaded pixels.
"""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")
gradio_client = pytest.importorskip("gradio_client")
pytest.importorskip("gradio")

from PIL import Image  # noqa: E402

from repvit.sam import build_sam  # noqa: E402
from repvit.sam.demo import SamDemo, add_corner, add_point  # noqa: E402
from repvit.demo.page import build_app, launch  # noqa: E402
from repvit.data.images import load_rgb  # noqa: E402
from repvit.data.prompts import parse_box, parse_points  # noqa: E402

from .conftest import SHARED_DATA, shared_data  # noqa: E402

FRUIT = SHARED_DATA / "fruit"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    model = build_sam(fused=True)
    model.encoder_calls = 0

    def count(*_):
        model.encoder_calls += 1
    model.image_encoder.register_forward_hook(count)
    return model


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A real photo, 320x240 PNG (lossless, so uploaded and returned pixels compare exactly)."""
    shared_data("fruit/images", pattern="*.jpg")
    images = sorted(FRUIT.glob("images/*.jpg"))
    path = tmp_path_factory.mktemp("photo") / "fruit.png"
    Image.fromarray(load_rgb(images[0])).resize((320, 240), Image.BILINEAR).save(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(sam, photo, tmp_path_factory):
    demo = SamDemo(sam, weights="random (seed 0)", output_dir=tmp_path_factory.mktemp("masks"))
    app = build_app(demo, examples=[photo])
    port = free_port()
    launch(app, port=port, block=False, allowed_paths=[photo.parent])
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False,
                                      download_files=str(tmp_path_factory.mktemp("downloads")))
        yield demo, client
    finally:
        app.close()


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def assert_drawn(upload: np.ndarray, drawn: np.ndarray, mask: np.ndarray, untouched: np.ndarray) -> None:
    """``drawn`` is ``upload`` tinted on ``mask`` and unchanged on ``untouched`` (outside it)."""
    assert drawn.shape == upload.shape and drawn.dtype == np.uint8
    assert mask.any() and untouched.any()
    changed = (drawn != upload).any(axis=2)
    assert changed[mask].mean() > 0.99
    assert not changed[untouched & ~mask].any()


def away_from(shape, centres, radius) -> np.ndarray:
    ys, xs = np.mgrid[:shape[0], :shape[1]]
    far = np.ones(shape, dtype=bool)
    for x, y in centres:
        far &= (xs - x) ** 2 + (ys - y) ** 2 > radius ** 2
    return far


def rows(table: dict) -> list:
    assert table["headers"] == ["mask", "predicted IoU", "area (px)", "shown"]
    return table["data"]


def test_point_box_and_everything_through_the_page(page, photo):
    demo, client = page
    upload = read(photo)
    h, w = upload.shape[:2]
    calls = demo.sam.encoder_calls
    status = client.predict(gradio_client.handle_file(photo), api_name="/embed")
    assert "encoder" in status and "reuse" in status

    # point: one positive and one negative click -> one mask (the points are drawn on the overlay)
    drawn, table, mask_png, status = client.predict(gradio_client.handle_file(photo), "160,120,1\n40,30,0",
                                                    api_name="/segment_points")
    drawn, mask = read(drawn), read(mask_png) > 0
    assert mask.shape == (h, w) and set(np.unique(read(mask_png))) <= {0, 255}
    demo.predictor.set_image(upload)
    masks, scores, _ = demo.predictor.predict(point_coords=np.array([[160.0, 120], [40, 30]]),
                                              point_labels=np.array([1, 0]), multimask_output=False)
    np.testing.assert_array_equal(mask, masks[0])
    (row,) = rows(table)
    assert row[1] == pytest.approx(float(scores[0]), abs=1e-4) and -1 < row[1] < 2 and row[2] == mask.sum()
    assert_drawn(upload, drawn, mask, away_from((h, w), [(160, 120), (40, 30)], radius=8))
    assert "Mask decoder" in status

    # one point alone: three candidates, the best one shown and saved
    _, table, mask_png, _ = client.predict(gradio_client.handle_file(photo), "100,80", api_name="/segment_points")
    table = rows(table)
    assert len(table) == 3 and [r[3] for r in table].count("yes") == 1
    best = max(table, key=lambda r: r[1])
    assert best[3] == "yes" and read(mask_png).astype(bool).sum() == best[2]

    # box: typed with its corners in either order
    drawn, table, mask_png, _ = client.predict(gradio_client.handle_file(photo), "250, 200, 60, 40",
                                               api_name="/segment_box")
    drawn, mask = read(drawn), read(mask_png) > 0
    masks, scores, _ = demo.predictor.predict(box=np.array([60.0, 40, 250, 200]), multimask_output=False)
    np.testing.assert_array_equal(mask, masks[0])
    (row,) = rows(table)
    assert row[1] == pytest.approx(float(scores[0]), abs=1e-4)
    outline = np.zeros((h, w), dtype=bool)
    outline[36:205, 56:255] = True  # the box's outline is drawn a few pixels wide
    outline[45:195, 65:245] = False
    assert_drawn(upload, drawn, mask, ~outline)

    # everything: a 4x4 grid; random weights need the thresholds off to keep any mask
    drawn, table, label_png, status = client.predict(gradio_client.handle_file(photo), 4, 0.0, 0.0,
                                                     api_name="/everything")
    drawn, labels, table = read(drawn), read(label_png), rows(table)
    assert "4x4 grid" in status
    # The generator itself on the same grid and thresholds (reading the page's cached embedding), its
    # records largest first: the table lists them value by value, the label image draws each as its row.
    from repvit.sam.everything import FastMaskGenerator
    generator = FastMaskGenerator(demo.sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                  output_mode="binary_mask")
    generator.predictor = demo.predictor
    want = sorted(generator.generate(upload), key=lambda r: -r["area"])
    assert len(want) >= 1 and len(table) == len(want)
    expected = np.zeros((h, w), dtype=np.uint8)
    for k, (row, record) in enumerate(zip(table, want), start=1):
        assert row[0] == k and row[2] == record["area"] == record["segmentation"].sum() and row[3] == "yes"
        assert row[1] == pytest.approx(record["predicted_iou"], abs=1e-4)   # the table rounds to 4 places
        expected[record["segmentation"]] = k
    assert 0 < (expected > 0).sum() < h * w   # the masks cover some of the photo, not all of it
    np.testing.assert_array_equal(labels, expected)
    assert_drawn(upload, drawn, labels > 0, labels == 0)

    # five calls, each uploading the file again: the encoder ran once
    assert demo.sam.encoder_calls == calls + 1, "the encoder ran again for an image it had seen"


def test_errors_reach_the_page(page, photo):
    _, client = page
    with pytest.raises(Exception, match="outside the 320x240 image"):
        client.predict(gradio_client.handle_file(photo), "400,10", api_name="/segment_points")
    with pytest.raises(Exception, match="X0,Y0,X1,Y1"):
        client.predict(gradio_client.handle_file(photo), "1,2,3", api_name="/segment_box")
    with pytest.raises(Exception, match="upload an image first"):
        client.predict(None, 4, 0.0, 0.0, api_name="/everything")


def test_embedding_is_computed_once_per_image(sam):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    demo = SamDemo(sam, cache_size=2)
    calls = sam.encoder_calls
    assert "encoder" in demo.embed(image) and not demo.predictor.last_hit
    first = demo.segment_points(image, [(64, 48, 1)])
    again = demo.segment_points(image.copy(), [(64, 48, 1)])  # same pixels, another array
    demo.segment_box(image, (10, 10, 90, 70))
    demo.everything(image, points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0)
    assert sam.encoder_calls == calls + 1, "the encoder ran again for an image it had seen"
    assert demo.predictor.last_hit and "reused" in again.status
    assert first.scores == again.scores
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    demo.segment_points(changed, [(64, 48, 1)])
    assert sam.encoder_calls == calls + 2 and not demo.predictor.last_hit


def test_many_answers_keep_a_bounded_number_of_mask_files(sam, tmp_path):
    """A long-running page writes one mask PNG per answer: only the latest ``keep_files`` stay on disk."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    given = tmp_path / "masks"
    demo = SamDemo(sam, output_dir=given, keep_files=3)
    sizes, paths = [], []
    for i in range(12):
        result = demo.segment_box(image, (5 + i, 5, 90 + i, 70))
        paths.append(Path(result.mask_png))
        sizes.append(paths[-1].stat().st_size)
        on_disk = sorted(given.iterdir())
        assert len(on_disk) == min(i + 1, 3) and sorted(paths[-3:]) == on_disk
    result = demo.everything(image, points_per_side=2, pred_iou_thresh=0, stability_score_thresh=0)
    assert Path(result.mask_png) in given.iterdir() and len(list(given.iterdir())) == 3
    assert sum(p.stat().st_size for p in given.iterdir()) <= 3 * max(sizes + [Path(result.mask_png).stat().st_size])
    assert not any(p.exists() for p in paths[:-2])
    demo.close()
    assert given.is_dir() and not any(given.iterdir())  # a folder it was given stays, emptied of its files

    temporary = SamDemo(sam, keep_files=2)
    temporary.segment_points(image, [(64, 48, 1)])
    folder = temporary.output_dir
    assert len(list(folder.iterdir())) == 1
    temporary.close()
    assert not folder.exists()  # a temporary folder goes with the demo
    with pytest.raises(ValueError, match="at least 1"):
        SamDemo(sam, keep_files=0)


def test_the_page_deletes_its_cached_outputs(sam, photo, tmp_path):
    """Gradio copies every overlay and mask PNG into its cache; the page asks it to delete old ones."""
    demo = SamDemo(sam, output_dir=tmp_path / "masks", keep_files=2)
    app = build_app(demo, cache_seconds=1)
    port = free_port()
    launch(app, port=port, block=False)
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False,
                                      download_files=str(tmp_path / "downloads"))
        for box in ("60,40,250,200", "50,30,200,150", "10,10,100,100"):
            client.predict(gradio_client.handle_file(photo), box, api_name="/segment_box")
        cached = set().union(*app.temp_file_sets)
        assert len(cached) >= 3 and all(Path(f).exists() for f in cached)
        deadline = time.monotonic() + 20
        while any(Path(f).exists() for f in cached) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not [f for f in cached if Path(f).exists()], "Gradio kept the page's outputs past cache_seconds"
        assert len(list((tmp_path / "masks").iterdir())) == 2
    finally:
        app.close()
        demo.close()
    with pytest.raises(ValueError, match="cache_seconds"):
        build_app(demo, cache_seconds=0)


def test_prompt_text_and_clicks():
    assert parse_points("10,20\n30.5, 40, 0; 1,2,1") == [(10, 20, 1), (30.5, 40, 0), (1, 2, 1)]
    assert parse_box(" 1, 2,3 ,4 ") == (1, 2, 3, 4)
    for bad in ("10", "1,2,5", "a,b"):
        with pytest.raises(ValueError, match="X,Y"):
            parse_points(bad)
    # clicks on the point view add lines; on the box view, the second click closes the box
    text = add_point(add_point("", 10, 20, 1), 30, 40, 0)
    assert parse_points(text) == [(10, 20, 1), (30, 40, 0)]
    text, whole = add_corner("", 50, 60)
    assert (text, whole) == ("50,60", False)
    text, whole = add_corner(text, 5, 6)
    assert whole and parse_box(text) == (50, 60, 5, 6)
    assert add_corner(text, 7, 8) == ("7,8", False)  # a third click starts a new box


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_gradio_is_imported_only_for_the_page():
    code = """
import contextlib, io, json, sys
import repvit, repvit.sam, repvit.sam.demo, repvit.demo.page
from repvit.cli import main
for argv in (["sam", "--help"], ["sam", "demo", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("gradio", "gradio_client"))))
"""
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_missing_gradio_names_the_extra():
    code = """
import sys
sys.modules["gradio"] = None  # as if it were not installed
from repvit.cli import main
sys.exit(main(["sam", "demo", "--random-weights"]))
"""
    done = run_python(code)
    assert done.returncode == 2
    assert "pip install 'repvit-pytorch[sam-demo]'" in done.stderr
