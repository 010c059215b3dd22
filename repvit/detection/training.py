"""``repvit detect train``: a torchvision detector as a task of the training engine (``repvit.engine``)."""
from __future__ import annotations

import torch

from ..engine.data import seeded_batches
from ..engine.optim import adamw_with_warmup, describe_schedule
from ..engine.task import Task, describe_data, fused_copy
from .data import DetectionData, collate
from .detectors import build_detector, save_detector
from .evaluation import evaluate_detector


def split(data: DetectionData, val_fraction: float, seed: int) -> tuple[DetectionData, DetectionData]:
    """A fixed, seeded split of one annotated folder (the same for every rank and every resume)."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(len(data) * val_fraction))
    return data.subset(sorted(order[n_val:])), data.subset(sorted(order[:n_val]))


def build_task(cfg, env, log=print, resume=None) -> Task:
    masks = cfg.detector == "maskrcnn"
    if cfg.data:
        whole = DetectionData.from_folder(cfg.data, masks=masks, skip_bad=cfg.skip_bad)
        reports = [(cfg.data, whole.skip_report())]
        train, val = split(whole, cfg.val_fraction, cfg.seed)
    else:
        train = DetectionData.from_folder(cfg.train, masks=masks, skip_bad=cfg.skip_bad)
        val = DetectionData.from_folder(cfg.val, masks=masks, skip_bad=cfg.skip_bad)
        reports = [(cfg.train, train.skip_report()), (cfg.val, val.skip_report())]
        if val.category_ids != train.category_ids:
            raise ValueError(f"--val has categories {val.category_ids}, --train {train.category_ids}: they must match")
    for folder, report in reports:   # --skip-bad: what was left out and why, in the log
        if report:
            log(f"{folder}: {report}")
    model = build_detector(cfg.detector, cfg.model, num_classes=len(train.class_names) + 1,
                           norm_eval=cfg.norm_eval, frozen_stages=cfg.frozen_stages, checkpoint=cfg.backbone,
                           pretrained=cfg.pretrained, min_size=tuple(cfg.min_size), max_size=cfg.max_size)
    batches = seeded_batches(train, collate, seed=cfg.seed, batch_size=cfg.batch_size, workers=cfg.workers, env=env)

    def loss(model, batch, device):
        images, targets = batch
        images = [im.to(device) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        return sum(model(images, targets).values())

    def evaluate(model, env):   # every rank detects on its share; COCOeval scores the gathered detections once
        fused = fused_copy(model)
        fused.category_ids = train.category_ids
        result = evaluate_detector(fused, val, device=env.device, env=env)
        return {f"{kind}_{name}": value for kind in ("bbox", "segm") if kind in result
                for name, value in result[kind].items()}

    def save(model, path, extra):
        return save_detector(model, path, class_names=train.class_names, category_ids=train.category_ids, extra=extra)

    return Task("detection", model, batches, loss, lambda m: adamw_with_warmup(m, cfg, batches.steps_per_epoch),
                evaluate, "bbox_AP", save,
                describe=f"{cfg.detector} on {cfg.model}, {len(train.class_names)} classes, {len(train)} train / "
                         f"{len(val)} val images; {describe_data(batches, env, cfg.batch_size)}, "
                         f"{describe_schedule(cfg, batches.steps_per_epoch)}",
                nonfinite_hint="Lower --lr, raise --warmup-iters or set --clip-grad, or check the boxes",
                # a detector may leave a head unused in a step (no positive proposal for the mask head)
                find_unused_parameters=True)
