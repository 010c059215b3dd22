"""The ADE20K and COCO recipes are the official ones, and the segmentation transforms do what
the official pipeline does (RepViT's segmentation/configs/_base_/datasets/ade20k.py and
align_resize.py on mmsegmentation 0.30; detection/configs/mask_rcnn_repvit_m1_1_fpn_1x_coco.py on
mmdetection 2.28)."""
from __future__ import annotations

import inspect
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repvit.dense.options import LOOP, SEGMENT, resolve
from repvit.segmentation.data import (EvalResize, SemanticFolder, TrainTransform, aligned_size, hsv_to_rgb,
                                      photometric_distortion, rgb_to_hsv)

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- official values
# Setting -> (official value, where the official repository sets it). Changing a config away from
# these fails here; docs/dense.md shows the same table.
ADE20K_OFFICIAL = {
    "model": ("repvit_m1_1", "sem_fpn/fpn_repvit_m1_1_ade20k_40k.py backbone type"),
    "pretrained": ("repvit_m1_1:dist_300e", "same, init_cfg checkpoint repvit_m1_1_distill_300e.pth"),
    "num_classes": (150, "same, decode_head num_classes"),
    "reduce_zero_label": (True, "_base_/datasets/ade20k.py LoadAnnotations"),
    "ignore_index": (255, "mmseg's default ignore index (Pad seg_pad_val=255)"),
    "img_scale": ([2048, 512], "ade20k.py Resize img_scale"),
    "ratio_range": ([0.5, 2.0], "ade20k.py Resize ratio_range"),
    "crop": ([512, 512], "ade20k.py crop_size"),
    "cat_max_ratio": (0.75, "ade20k.py RandomCrop"),
    "photometric": (True, "ade20k.py PhotoMetricDistortion"),
    "eval_size": ([512, 2048], "ade20k.py test img_scale (2048, 512) with AlignResize"),
    "batch_size": (4, "ade20k.py samples_per_gpu (x 8 GPUs)"),
    "lr": (2e-4, "fpn_repvit_m1_1_ade20k_40k.py AdamW lr 0.0001 x gpu_multiples 2"),
    "weight_decay": (1e-4, "same, weight_decay"),
    "clip_grad": (0.0, "same, optimizer_config empty"),
    "schedule": ("poly", "same, lr_config policy"),
    "power": (0.9, "same, lr_config power"),
    "min_lr": (1e-6, "same, lr_config min_lr"),
    "warmup_iters": (0, "same, no warmup in lr_config"),
    "norm_eval": (True, "segmentation/repvit.py train() puts every BatchNorm in eval mode"),
    "frozen_stages": (-1, "segmentation/repvit.py freezes no stage"),
}
ADE20K_TRAIN_IMAGES, ADE20K_ITERATIONS, GPUS = 20210, 40000, 8

COCO_OFFICIAL = {
    "detector": ("maskrcnn", "mask_rcnn_repvit_m1_1_fpn_1x_coco.py (_base_/models/mask_rcnn_r50_fpn.py)"),
    "model": ("repvit_m1_1", "same, backbone type"),
    "pretrained": ("repvit_m1_1:dist_300e", "same, init_cfg checkpoint repvit_m1_1_distill_300e.pth"),
    "min_size": ([800], "_base_/datasets/coco_instance.py Resize img_scale (1333, 800)"),
    "max_size": (1333, "same"),
    "epochs": (12, "_base_/schedules/schedule_1x.py max_epochs"),
    "schedule": ("step", "schedule_1x.py policy"),
    "milestones": ([8, 11], "schedule_1x.py step"),
    "warmup_iters": (500, "schedule_1x.py warmup_iters"),
    "warmup_ratio": (1e-6, "schedule_1x.py warmup_ratio"),
    "batch_size": (2, "coco_instance.py samples_per_gpu (x 8 GPUs)"),
    "lr": (2e-4, "mask_rcnn_repvit_m1_1_fpn_1x_coco.py AdamW lr"),
    "weight_decay": (0.05, "same, weight_decay"),
    "clip_grad": (0.0, "same, grad_clip None"),
    "norm_eval": (True, "detection/repvit.py train() puts every BatchNorm in eval mode"),
    "frozen_stages": (-1, "the base config's frozen_stages=1 is swallowed by the RepViT constructor's **kwargs"),
}


@pytest.mark.parametrize("config,task,official", [("ade20k-semfpn.yaml", "segment", ADE20K_OFFICIAL),
                                                   ("coco-maskrcnn-1x.yaml", "detect", COCO_OFFICIAL)])
def test_recipe_configs_hold_the_official_values(config, task, official):
    cfg = vars(resolve({"config": str(REPO / "configs" / config)}, task))
    wrong = {name: (cfg[name], value) for name, (value, _) in official.items() if cfg[name] != value}
    assert not wrong, f"{config} differs from the official recipe (ours, official): {wrong}"
    docs = (REPO / "docs" / "dense.md").read_text()
    assert all(f"`{name}`" in docs for name in official), "docs/dense.md's recipe table misses a setting"


def test_ade20k_recipe_runs_the_official_number_of_iterations():
    cfg = resolve({"config": str(REPO / "configs" / "ade20k-semfpn.yaml")}, "segment")
    steps = math.ceil(ADE20K_TRAIN_IMAGES / (cfg.batch_size * GPUS)) * cfg.epochs
    assert abs(steps - ADE20K_ITERATIONS) / ADE20K_ITERATIONS < 0.02


def test_camvid_recipe_keeps_its_recorded_settings():
    cfg = resolve({"config": str(REPO / "configs" / "camvid-cpu.yaml")}, "segment")
    assert (cfg.img_scale, cfg.ratio_range, cfg.cat_max_ratio, cfg.photometric, cfg.eval_size, cfg.min_lr,
            cfg.norm_eval) == (None, [0.5, 2.0], 1.0, False, None, 0.0, False)


def _default(table, flag):
    return next(kw["default"] for flags, kw in table if flag in flags)


def test_one_default_per_option_in_the_api_and_the_cli():
    from repvit.dense.backbone import RepViTBackbone
    from repvit.detection.detectors import build_detector
    from repvit.segmentation.semantic_fpn import SemanticFPN
    cli = _default(LOOP, "--norm-eval")
    api = {f.__name__: inspect.signature(f).parameters["norm_eval"].default
           for f in (SemanticFPN, build_detector, RepViTBackbone)}
    assert cli is True and set(api.values()) == {cli}, api
    transform = inspect.signature(TrainTransform).parameters
    assert list(transform["img_scale"].default) == _default(SEGMENT, "--img-scale")
    assert list(transform["ratio_range"].default) == _default(SEGMENT, "--ratio-range")
    assert transform["cat_max_ratio"].default == _default(SEGMENT, "--cat-max-ratio")
    assert transform["photometric"].default == _default(SEGMENT, "--photometric")
    assert list(inspect.signature(EvalResize).parameters["size"].default) == _default(SEGMENT, "--eval-size")


def test_poly_schedule_falls_to_the_min_lr_floor():
    from repvit.engine.optim import lr_factor
    f = lambda step: lr_factor(step, total=100, warmup=0, schedule="poly", power=0.9, milestones=[],  # noqa: E731
                               steps_per_epoch=10, floor=1e-6 / 2e-4)
    assert f(0) == pytest.approx(1.0)
    assert f(100) == pytest.approx(0.005)                   # min_lr / lr, not zero
    assert f(50) == pytest.approx(0.005 + 0.995 * 0.5 ** 0.9)
    start = lr_factor(0, total=100, warmup=10, schedule="step", power=0.9, milestones=[8], steps_per_epoch=10,
                      warmup_ratio=1e-6)
    assert start == pytest.approx(1e-6)


# --------------------------------------------------------------------------- training transforms
def _transform(**kw):
    return TrainTransform(kw.pop("crop", (2200, 2200)), **{"cat_max_ratio": 1.0, "photometric": False, **kw})


def _extent(label: torch.Tensor, ignore: int = 255) -> tuple[int, int]:
    rows, cols = (label != ignore).any(dim=1), (label != ignore).any(dim=0)
    return int(rows.sum()), int(cols.sum())


def test_resize_is_relative_to_the_2048x512_scale_not_to_the_image():
    transform = _transform()
    image, label = torch.rand(3, 60, 80), torch.zeros(60, 80, dtype=torch.long)
    shorts = []
    for seed in range(12):
        ratio = 0.5 + 1.5 * torch.rand(4, generator=torch.Generator().manual_seed(seed))[0].item()
        h, w = _extent(transform(image, label, torch.Generator().manual_seed(seed))[1])
        assert h == int(60 * int(512 * ratio) / 60 + 0.5) and w == int(80 * int(512 * ratio) / 60 + 0.5)
        shorts.append(h)
    assert 256 <= min(shorts) < 400 and 800 < max(shorts) <= 1024      # 512 x 0.5..2.0, whatever the raw size
    # a long panorama is bounded by the long side instead: 2048 x ratio
    assert transform.scaled_size(100, 1000, 1.0) == (205, 2048) and transform.scaled_size(100, 1000, 0.5) == (102, 1024)
    # img_scale=None scales the image itself (the CamVid recipe)
    assert _transform(img_scale=None).scaled_size(360, 480, 0.5) == (180, 240)


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
    check = _transform(crop=(64, 64), cat_max_ratio=0.75)
    assert not check.crop_is_mixed(torch.tensor([0] * 80 + [1] * 20))          # 80% one class
    assert check.crop_is_mixed(torch.tensor([0] * 60 + [1] * 40))
    assert not check.crop_is_mixed(torch.tensor([2] * 50 + [255] * 50))        # one class (ignore not counted)
    assert check.crop_is_mixed(torch.tensor([0] * 60 + [1] * 30 + [255] * 900))
    image, label = torch.rand(3, 64, 256), torch.zeros(64, 256, dtype=torch.long)
    label[:, 200:] = 1       # only crops starting right of column 152 hold less than 75% of class 0

    def mixed_share(transform):
        crops = [transform(image, label, torch.Generator().manual_seed(s))[1] for s in range(60)]
        return sum(transform_check.crop_is_mixed(c) for c in crops) / len(crops)
    transform_check = check
    common = dict(crop=(64, 64), img_scale=None, ratio_range=(1.0, 1.0), hflip=0.0)
    assert mixed_share(_transform(cat_max_ratio=0.75, **common)) > 0.8
    assert mixed_share(_transform(cat_max_ratio=1.0, **common)) < 0.4


def test_photometric_distortion_changes_pixels_not_labels():
    image = torch.rand(3, 40, 50)
    label = torch.randint(0, 5, (40, 50))
    plain, distorted = _transform(crop=(32, 32), img_scale=None), _transform(crop=(32, 32), img_scale=None,
                                                                             photometric=True)
    changed = 0
    for seed in range(16):
        a_img, a_lab = plain(image, label, torch.Generator().manual_seed(seed))
        b_img, b_lab = distorted(image, label, torch.Generator().manual_seed(seed))
        assert torch.equal(a_lab, b_lab)                            # the same geometry, labels untouched
        assert b_img.min() >= 0 and b_img.max() <= 1
        changed += not torch.allclose(a_img, b_img, atol=1e-4)
    assert changed >= 12                                            # all four steps skipped has p = 1/16
    rgb = torch.rand(3, 16, 16)
    assert torch.allclose(hsv_to_rgb(*rgb_to_hsv(rgb)), rgb, atol=1e-5)
    grey = torch.full((3, 8, 8), 0.4)
    for seed in range(8):   # grey has no hue nor saturation: only brightness and contrast can move it
        out = photometric_distortion(grey, torch.Generator().manual_seed(seed))
        assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])


# --------------------------------------------------------------------------- evaluation
def test_eval_resize_aligns_to_multiples_of_32_with_a_512_short_side():
    for h, w in [(375, 500), (512, 683), (683, 512), (256, 341), (1200, 1600)]:
        ah, aw = aligned_size(h, w)
        assert ah % 32 == 0 and aw % 32 == 0 and min(ah, aw) == 512, (h, w, ah, aw)
        assert abs(max(ah, aw) / 512 - max(h, w) / min(h, w)) < 32 / 512 + 1e-9
    assert aligned_size(100, 1000) == (224, 2048)                   # the long side is capped at 2048
    image, label = EvalResize()(torch.rand(3, 375, 500), torch.zeros(375, 500, dtype=torch.long))
    assert image.shape == (3, 512, 704) and label.shape == (375, 500)
    image, label = EvalResize(None)(torch.rand(3, 37, 50), torch.zeros(37, 50, dtype=torch.long))
    assert image.shape == (3, 37, 50)


class _LeftRight(torch.nn.Module):
    """Class 0 on the left half of any input, class 1 on the right: a model whose answer we know."""

    def forward(self, x):
        w = x.shape[-1]
        right = (torch.arange(w) >= w / 2).float().view(1, 1, 1, w).expand(x.shape[0], 1, x.shape[2], w)
        return torch.cat([1 - right, right], dim=1) * 10


def test_evaluation_scores_at_the_label_size(tmp_path):
    from repvit.segmentation.evaluation import evaluate_segmenter
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    h, w = 75, 101
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    label = np.zeros((h, w), np.uint8)
    label[:, (w + 1) // 2:] = 1
    Image.fromarray(label, mode="L").save(tmp_path / "labels" / "a.png")
    data = SemanticFolder(tmp_path, num_classes=2, transforms=EvalResize())
    assert data[0][0].shape[-2:] == (512, 704) and data[0][1].shape == (h, w)
    result = evaluate_segmenter(_LeftRight(), data, class_names=["left", "right"])
    assert result["pixels"] == h * w and result["mIoU"] > 0.97
