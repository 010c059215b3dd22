"""Options of ``repvit segment train`` and ``repvit detect train``: one table per task over a shared
table of loop options, layered as ``repvit train`` layers them (defaults < ``-c`` YAML < flags).
Loop defaults are CPU-sized and the paper's recipes are the YAML files in ``configs/``; the
segmentation data options default to the official ADE20K pipeline (the defaults of
``repvit.segmentation.data``), ``--norm-eval`` to the official frozen BatchNorm statistics."""
from __future__ import annotations

import argparse

from ..engine import option_table as base
from ..engine.distributed import timeout_minutes
from ..engine.grammar import add_deprecated, row
from ..engine.option_table import LOOP  # noqa: F401  (the engine's loop options, re-exported for the tests)

SEGMENT: list = [
    row("--data", help="root with train/ and val/, each images/ + labels/ (index PNGs)"),
    row("--num-classes", help="classes (default: the length of --class-names)"),
    (("--class-names",), dict(default=None, help="comma-separated class names, in label order")),
    row("--ignore-index", default=255, help="label value to ignore (CamVid: 11)"),
    (("--reduce-zero-label",), dict(action="store_true", default=False,
                                    help="label 0 means 'other' (ADE20K): ignore it and shift the rest down by one")),
    # The defaults below are the official ADE20K recipe's and those of the transforms in
    # repvit/segmentation/data.py (tests/test_dense_recipes.py checks that they agree).
    (("--crop",), dict(type=int, nargs=2, default=[512, 512], metavar=("H", "W"), help="training crop")),
    (("--img-scale",), dict(type=int, nargs=2, default=[2048, 512], metavar=("LONG", "SHORT"),
                            help="random resize target: the image is rescaled to fit LONG x SHORT times a "
                                 "factor from --ratio-range (config null: the factor scales the image itself)")),
    (("--ratio-range",), dict(type=float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"),
                                        help="range of the random resize factor")),
    (("--cat-max-ratio",), dict(type=float, default=0.75, help="redraw a crop (up to 10 times) where one class "
                                                               "covers this share of the labelled pixels (1: off)")),
    (("--photometric",), dict(action=argparse.BooleanOptionalAction, default=True,
                              help="random brightness, contrast, saturation and hue (mmseg's PhotoMetricDistortion)")),
    (("--eval-size",), dict(type=int, nargs=2, default=[512, 2048], metavar=("SHORT", "LONG"),
                            help="validate on images rescaled to fit SHORT x LONG, sides rounded up to multiples "
                                 "of 32, scored at the label's size (config null: the raw size)")),
    row("--val-split", default="folders", help="folders: train/ trains, val/ validates; sequence:P[,Q]: frames "
                                               "of train/ and val/ named P* validate, the rest train; none: train on "
                                               "all (final fit)"),
    (("--whole-frame-epochs",), dict(type=int, default=0, metavar="N", help="train the last N epochs on whole "
                                     "frames at --eval-size (no random scale or crop)")),
]

DETECT: list = [
    (("--detector",), dict(default="fasterrcnn", choices=["maskrcnn", "fasterrcnn", "retinanet", "fcos"],
                           help="torchvision detector")),
    row("--data", help="annotated folder (images/ + annotations.json or annotations/*.xml), split into train and "
                       "val by --val-fraction"),
    (("--train",), dict(default=None, help="annotated training folder (instead of --data)")),
    row("--val", help="annotated validation folder (with --train)"),
    row("--val-fraction", default=0.2),
    (("--min-size",), dict(type=int, nargs="+", default=[800], help="shorter image side (several: multi-scale)")),
    (("--max-size",), dict(type=int, default=1333, help="longest image side")),
]

TABLES = {"segment": LOOP + SEGMENT, "detect": LOOP + DETECT}


def add_options(parser: argparse.ArgumentParser, task: str) -> None:
    base.add_options(parser, options=TABLES[task])
    if task == "segment":   # the old alias; --scale is the crop area in `repvit train`
        add_deprecated(parser, "--scale", "--ratio-range", dest="ratio_range", nargs=2, type=float)


def resolve(explicit: dict, task: str) -> argparse.Namespace:
    """Defaults < the ``config`` YAML file < flags; then checked."""
    options = TABLES[task]
    explicit = dict(explicit)
    config_file = explicit.pop("config", None)
    values = {flags[0].lstrip("-").replace("-", "_"): kw.get("default") for flags, kw in options}
    values.update(base.load_config_file(config_file, options=options) if config_file else {})
    values.update(explicit)
    values["config"] = str(config_file) if config_file else None
    cfg = argparse.Namespace(**values)
    validate(cfg, task)
    return cfg


def validate(cfg: argparse.Namespace, task: str) -> None:
    for name in ("epochs", "batch_size", "lr", "log_interval", "eval_interval"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be more than zero, got {getattr(cfg, name)}")
    if cfg.backbone and cfg.pretrained:
        raise ValueError("--backbone PATH and --pretrained NAME both initialise the backbone: pass only one")
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: pass only one")
    cfg.dist_timeout = timeout_minutes(cfg.dist_timeout)
    if cfg.min_lr < 0 or cfg.min_lr > cfg.lr:
        raise ValueError(f"--min-lr must be between 0 and --lr ({cfg.lr:g}), got {cfg.min_lr:g}")
    if not 0 < cfg.warmup_ratio <= 1:
        raise ValueError(f"--warmup-ratio must be in (0, 1], got {cfg.warmup_ratio:g}")
    if task == "segment":
        if not 0 < cfg.ratio_range[0] <= cfg.ratio_range[1]:
            raise ValueError(f"--ratio-range MIN MAX needs 0 < MIN <= MAX, got {cfg.ratio_range}")
        if not 0 < cfg.cat_max_ratio <= 1:
            raise ValueError(f"--cat-max-ratio must be in (0, 1] (1 turns the check off), got {cfg.cat_max_ratio}")
        for name in ("img_scale", "eval_size"):
            value = getattr(cfg, name)
            if value is not None and min(value) < 1:
                raise ValueError(f"--{name.replace('_', '-')} needs two positive sizes, got {value}")
        if not cfg.data:
            raise ValueError("--data is required: a root holding train/ and val/, each with images/ and labels/")
        names = [n.strip() for n in cfg.class_names.split(",")] if cfg.class_names else None
        if cfg.num_classes is None and names is None:
            raise ValueError("pass --class-names a,b,c (or --num-classes N): label values 0..N-1 are the classes")
        if names is not None and cfg.num_classes is not None and len(names) != cfg.num_classes:
            raise ValueError(f"--class-names lists {len(names)} names but --num-classes is {cfg.num_classes}")
    else:
        if not cfg.data and not (cfg.train and cfg.val):
            raise ValueError("pass --data DIR (split by --val-fraction) or --train DIR and --val DIR")
        if cfg.data and not 0.0 < cfg.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be between 0 and 1, got {cfg.val_fraction}")


def dump(cfg: argparse.Namespace) -> dict:
    return base.dump(cfg)
