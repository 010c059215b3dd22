"""FastMaskGenerator returns segment-anything's automatic masks, record by record."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

pytest.importorskip("segment_anything")

from segment_anything import SamAutomaticMaskGenerator  # noqa: E402

from repvit.sam import build_sam  # noqa: E402
from repvit.sam.everything import FastMaskGenerator  # noqa: E402
from repvit.data.images import load_rgb  # noqa: E402

from .conftest import SHARED_DATA, shared_data  # noqa: E402

FRUIT = SHARED_DATA / "fruit"


class OnceEachInput(torch.nn.Module):
    """The image encoder, run once per distinct input. These tests compare what comes after the
    encoder (decoder batches, filters, NMS, crops); the stock generator and ours encode the same
    image and crops, so the second encoding of each is looked up instead of recomputed."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder, self.img_size, self.outputs = encoder, encoder.img_size, {}

    def forward(self, x):
        key = (tuple(x.shape), hashlib.sha256(x.detach().cpu().contiguous().numpy().tobytes()).hexdigest())
        if key not in self.outputs:
            self.outputs[key] = self.encoder(x)
        return self.outputs[key].clone()


@pytest.fixture(scope="module")
def sam():
    torch.manual_seed(0)
    model = build_sam(fused=True)
    model.image_encoder = OnceEachInput(model.image_encoder)
    return model


@pytest.fixture(scope="module")
def photo():
    shared_data("fruit", pattern="*.jpg")
    images = sorted(p for p in FRUIT.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    image = load_rgb(images[0])
    # a quarter-size copy keeps the RLE work small; the encoder runs at 1024 either way
    from PIL import Image
    return np.asarray(Image.fromarray(image).resize((image.shape[1] // 4, image.shape[0] // 4)))


def records(generator, image):
    out = generator.generate(image)
    return sorted(out, key=lambda r: (r["point_coords"], r["predicted_iou"]))


def assert_same_records(ours, stock):
    assert len(ours) == len(stock)
    for a, b in zip(ours, stock):
        assert a["segmentation"] == b["segmentation"]  # COCO RLE dicts: counts and size
        for key in ("bbox", "point_coords", "crop_box", "area"):
            assert a[key] == b[key], key
        assert a["predicted_iou"] == b["predicted_iou"] and a["stability_score"] == b["stability_score"]


def test_every_candidate_is_the_stock_one(sam, photo):
    # no thresholds, no NMS: every one of the 3 x 16 candidate masks is compared
    options = dict(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0,
                   output_mode="coco_rle")
    stock = records(SamAutomaticMaskGenerator(sam, points_per_batch=8, **options), photo)
    assert len(stock) == 48
    # same decoder batches as the stock generator: bit for bit the same records
    exact = FastMaskGenerator(sam, points_per_batch=8, shared_image=False, **options)
    assert_same_records(records(exact, photo), stock)
    # the defaults (image shared across a batch, other batch sizes) may round the decoder's matrix
    # products differently in the last bits: scores agree closely and masks nearly everywhere
    ours = records(FastMaskGenerator(sam, points_per_batch=3, **options), photo)
    assert len(ours) == len(stock)
    from pycocotools import mask as mask_utils
    for a, b in zip(ours, stock):
        assert a["point_coords"] == b["point_coords"]
        assert a["predicted_iou"] == pytest.approx(b["predicted_iou"], abs=1e-4)
        same = mask_utils.iou([a["segmentation"]], [b["segmentation"]], [0])[0, 0]
        assert same > 0.99 or a["area"] == b["area"] == 0


def test_filters_nms_and_crops_agree(sam, photo):
    # random weights give small logits: a small stability offset spreads the scores
    probe = SamAutomaticMaskGenerator(sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                                      stability_score_offset=0.02, box_nms_thresh=1.0,
                                      output_mode="coco_rle").generate(photo)
    ious = sorted(r["predicted_iou"] for r in probe)
    stability = sorted(r["stability_score"] for r in probe)
    assert stability[0] < stability[-1]
    options = dict(points_per_side=4, pred_iou_thresh=ious[len(ious) // 3], stability_score_offset=0.02,
                   stability_score_thresh=stability[len(stability) // 3], box_nms_thresh=0.7, crop_n_layers=1,
                   output_mode="coco_rle")
    stock = records(SamAutomaticMaskGenerator(sam, points_per_batch=4, **options), photo)
    seen = []
    ours = records(FastMaskGenerator(sam, points_per_batch=4, shared_image=False, on_batch=lambda done, total: seen.append((done, total)), **options), photo)
    assert len(stock) > 0
    assert_same_records(ours, stock)
    # progress covers every batch of every crop (1 full image + 4 crops, 16 points each, 4 per batch)
    assert seen[-1] == (20, 20) and len(seen) == 20


def test_shared_image_decoding_matches_the_decoder(sam):
    from repvit.sam.decoding import decode_shared_image
    torch.manual_seed(1)
    embedding = torch.randn(1, 256, 64, 64)
    pe = sam.prompt_encoder.get_dense_pe()
    coords, labels = torch.rand(5, 2, 2) * 1024, torch.tensor([[1, 0]] * 5)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        for multimask in (True, False):
            want = sam.mask_decoder(image_embeddings=embedding, image_pe=pe, sparse_prompt_embeddings=sparse,
                                    dense_prompt_embeddings=dense, multimask_output=multimask)
            got = decode_shared_image(sam.mask_decoder, embedding, pe, sparse, dense, multimask)
            for a, b in zip(got, want):
                assert a.shape == b.shape
                assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
        masks = torch.randn(5, 1, 256, 256)
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=masks)
        with pytest.raises(ValueError, match="same dense prompt embedding"):
            decode_shared_image(sam.mask_decoder, embedding, pe, sparse, dense, True)


def test_nothing_left_in_any_crop_is_an_empty_answer(sam, photo):
    # the stock generator raises on this (its empty crop-box tensor has the wrong shape)
    generator = FastMaskGenerator(sam, points_per_side=2, pred_iou_thresh=0.99, crop_n_layers=1)
    assert generator.generate(photo) == []


def test_bad_input_is_refused(sam):
    with pytest.raises(ValueError, match="uint8 RGB"):
        FastMaskGenerator(sam, points_per_side=2).generate(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="points_per_batch"):
        FastMaskGenerator(sam, points_per_batch=0)
