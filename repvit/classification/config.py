"""Training options: one table of flags whose defaults are the paper's ImageNet recipe.

Resolution order, lowest to highest: the defaults below, a YAML file given with
``-c/--config`` (keys are the flag names, with ``-`` or ``_``), then flags on the command line.
The resolved options are saved as ``OUTPUT/config.yaml``, which ``-c`` accepts back.

The recipe follows the official RepViT training script (AdamW, lr 1e-3 per 512 images,
cosine schedule with 5 warm-up epochs, AGC 0.02, RandAugment, random erasing, repeated
augmentation, Mixup/CutMix, hard distillation from RegNetY-16GF, EMA 0.99996).
"""
from __future__ import annotations

import argparse
from typing import Any, Iterable, Optional, Sequence

from ..engine.distributed import timeout_minutes
from ..engine.grammar import row
from ..engine.option_table import add_options as _add_options, dump, load_config_file, save  # noqa: F401
from ..engine.timing import threads_option

# (flags, argparse keyword arguments). ``default`` is the paper's value unless noted.
OPTIONS: list[tuple[tuple[str, ...], dict]] = [
    # -- what to train, where ------------------------------------------------------------------
    row("--model", help="variant name, e.g. repvit_m0_9 (default: the one recorded in --finetune/--resume, else "
                        "repvit_m0_9)"),
    row("--data", help="dataset root holding train/ and val/ folders of class folders"),
    (("--train-split",), dict(default="train", help="train folder name under --data")),
    row("--val-split", default="val", help="validation folder name under --data"),
    row("--output", default="runs/train", help="folder for checkpoints, logs and curves"),
    row("--overwrite", help="start a new run even if --output already holds last.pth"),
    row("--resume", help="continue from a training checkpoint (PATH, or 'auto' for OUTPUT/last.pth when it exists)"),
    (("--finetune",), dict(default=None, help="start from the weights of any checkpoint the model library "
                                              "loads; the classifier is replaced when the class count differs")),
    row("--pretrained", help="start from official ImageNet weights (e.g. repvit_m1_1 or repvit_m1_1:dist_300e; "
                             "downloaded once and verified), as --finetune does with a file"),
    row("--seed", help="random seed (rank r uses seed + r for augmentation)"),
    row("--device"),
    row("--dist-timeout"),
    row("--workers", default=8),
    row("--threads", help="CPU threads for torch per process: a count, or auto (the cores idle when the run "
                               "starts, shared by this node's processes: all cores on an idle machine, fewer on a "
                               "busy one, where spinning threads would slow every step)"),
    # -- schedule and optimizer ------------------------------------------------------------------
    row("--epochs", default=300, help="number of epochs (the paper: 300, 450 for long runs)"),
    row("--batch-size", default=256, help="images per process and step"),
    (("--eval-batch-size",), dict(type=int, default=None, help="validation batch (default: --batch-size)")),
    row("--lr", help="absolute learning rate; default: --lr-base scaled by global batch / --lr-base-size"),
    (("--lr-base",), dict(type=float, default=1e-3, help="learning rate for a global batch of --lr-base-size")),
    (("--lr-base-size",), dict(type=int, default=512, help="global batch size that --lr-base refers to")),
    (("--opt",), dict(default="adamw", help="optimizer name known to timm (adamw, sgd, lamb, ...)")),
    (("--opt-eps",), dict(type=float, default=1e-8, help="optimizer epsilon")),
    (("--opt-betas",), dict(type=float, nargs=2, default=None, metavar=("B1", "B2"),
                            help="optimizer betas (default: the optimizer's own)")),
    (("--momentum",), dict(type=float, default=0.9, help="SGD momentum")),
    row("--weight-decay", default=0.025),
    row("--schedule", default="cosine", choices=["cosine", "step", "poly", "none"]),
    row("--warmup-epochs", default=5, help="linear warm-up epochs (stepped per iteration); when not set: 5, or a "
                                           "tenth of a run shorter than 50 epochs"),
    (("--warmup-lr",), dict(type=float, default=1e-6, help="learning rate at the start of warm-up")),
    row("--min-lr", default=1e-5),
    (("--decay-epochs",), dict(type=float, default=30, help="epochs between decays for --schedule step")),
    (("--decay-rate",), dict(type=float, default=0.1, help="decay factor for --schedule step")),
    row("--clip-grad", default=0.02),
    row("--clip-mode", default="agc", help="how --clip-grad clips: agc (adaptive, relative to each weight's norm: "
                                           "the paper), norm (the global gradient norm) or value (each entry)"),
    # -- augmentation ------------------------------------------------------------------------------
    row("--img-size", default=224, help="training and evaluation image size"),
    (("--crop-pct",), dict(type=float, default=0.875, help="evaluation: resize to img-size / crop-pct, "
                                                           "then centre-crop img-size")),
    (("--scale",), dict(type=float, nargs=2, default=[0.08, 1.0], metavar=("MIN", "MAX"),
                        help="RandomResizedCrop area range")),
    (("--ratio",), dict(type=float, nargs=2, default=[3 / 4, 4 / 3], metavar=("MIN", "MAX"),
                        help="RandomResizedCrop aspect-ratio range")),
    (("--hflip",), dict(type=float, default=0.5, help="horizontal flip probability")),
    (("--train-interpolation",), dict(default="bicubic", help="interpolation of the training crop")),
    (("--eval-interpolation",), dict(default="bicubic", help="interpolation of the evaluation resize")),
    (("--color-jitter",), dict(type=float, default=0.4, help="colour jitter (timm ignores it when --aa is set)")),
    (("--aa",), dict(default="rand-m9-mstd0.5-inc1", help="RandAugment policy in timm's notation; 'none' "
                                                          "turns it off")),
    (("--reprob",), dict(type=float, default=0.25, help="random-erasing probability")),
    (("--remode",), dict(default="pixel", choices=["pixel", "rand", "const"], help="random-erasing fill")),
    (("--recount",), dict(type=int, default=1, help="random-erasing count")),
    (("--aug-repeats",), dict(type=int, default=3, help="repeated-augmentation sampler repeats; 0 or 1 "
                                                        "turns it off")),
    (("--mixup",), dict(type=float, default=0.8, help="Mixup alpha (0 off)")),
    (("--cutmix",), dict(type=float, default=1.0, help="CutMix alpha (0 off)")),
    (("--mixup-prob",), dict(type=float, default=1.0, help="probability of mixing a batch")),
    (("--mixup-switch-prob",), dict(type=float, default=0.5, help="probability of CutMix instead of Mixup")),
    (("--mixup-mode",), dict(default="batch", choices=["batch", "pair", "elem"], help="how mixing is applied")),
    (("--smoothing",), dict(type=float, default=0.1, help="label smoothing")),
    # -- model -----------------------------------------------------------------------------------------
    (("--drop-path",), dict(type=float, default=0.0, help="stochastic depth rate")),
    (("--drop",), dict(type=float, default=0.0, help="dropout before the classifier")),
    (("--model-ema",), dict(action=argparse.BooleanOptionalAction, default=True, help="keep an EMA of the weights")),
    (("--model-ema-decay",), dict(type=float, default=0.99996, help="EMA decay per step")),
    row("--sync-bn", default=False),
    row("--channels-last"),
    (("--amp",), dict(action=argparse.BooleanOptionalAction, default=True,
                      help="automatic mixed precision (CUDA only; ignored on CPU)")),
    (("--amp-dtype",), dict(default="float16", choices=["float16", "bfloat16"], help="AMP dtype")),
    # -- distillation --------------------------------------------------------------------------------
    (("--distillation-type",), dict(default="auto", choices=["auto", "none", "soft", "hard"],
                                    help="auto: hard when teacher weights are given and not fine-tuning, "
                                         "else none")),
    row("--teacher", default="regnety_160", help="teacher: a timm or torchvision architecture name, one of ours, "
                                                 "or the path of one of our checkpoints"),
    row("--teacher-checkpoint"),
    (("--distillation-alpha",), dict(type=float, default=0.5, help="weight of the distillation loss")),
    (("--distillation-tau",), dict(type=float, default=1.0, help="temperature of soft distillation")),
    # -- data problems, feedback ---------------------------------------------------------------------
    row("--skip-bad", help="check every image before training and skip (and count) unreadable ones (default: stop "
                           "with an error naming the file)"),
    row("--log-interval", default=50),
    (("--tensorboard",), dict(action=argparse.BooleanOptionalAction, default=True,
                              help="write TensorBoard logs when tensorboard is installed")),
    # Test hook: SIGKILL the process right after the checkpoint of this epoch is written.
    row("--stop-after-epoch"),
]

DEFAULTS: dict[str, Any] = {}
for _flags, _kw in OPTIONS:
    DEFAULTS[_flags[0].lstrip("-").replace("-", "_")] = _kw.get("default")


def add_options(parser: argparse.ArgumentParser, *, suppress_defaults: bool = True) -> None:
    """Add every classification training flag (see ``repvit.engine.option_table.add_options``)."""
    _add_options(parser, options=OPTIONS, suppress_defaults=suppress_defaults)


def build_parser(prog: str = "repvit train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Train RepViT (defaults: the paper's ImageNet recipe)")
    add_options(parser)
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse a training command line into fully resolved, validated options."""
    explicit = vars(build_parser().parse_args(argv))
    return resolve(explicit)


def resolve(explicit: dict) -> argparse.Namespace:
    """Layer defaults, the ``config`` YAML file (if named in ``explicit``) and ``explicit`` flags."""
    explicit = dict(explicit)
    config_file = explicit.pop("config", None)
    values = dict(DEFAULTS)
    from_file = load_config_file(config_file, OPTIONS) if config_file else {}
    values.update(from_file)
    values.update(explicit)
    values["config"] = str(config_file) if config_file else None
    notes = adapt_defaults(values, set_by_user=set(from_file) | set(explicit))
    cfg = argparse.Namespace(**values)
    validate(cfg)
    cfg._notes = notes  # what adapt_defaults changed, for the run's log (not saved: dump() skips it)
    return cfg


def adapt_defaults(values: dict, *, set_by_user: set) -> list[str]:
    """Fit defaults the user did not set to the run (an explicit value is never changed).

    The paper's 5 warm-up epochs belong to a 300-epoch run; a short run gets a tenth of its
    length instead, so ``--epochs 3`` works without learning another flag."""
    notes = []
    epochs, default = values.get("epochs"), DEFAULTS["warmup_epochs"]
    if ("warmup_epochs" not in set_by_user and values.get("schedule") != "none" and isinstance(epochs, (int, float))
            and epochs > 0 and epochs / 10 < default):
        values["warmup_epochs"] = round(epochs / 10, 4)
        notes.append(f"warm-up {values['warmup_epochs']:g} epochs: the default {default:g} adapted to a "
                     f"{epochs}-epoch run (a tenth of it); set --warmup-epochs to choose")
    return notes


def _positive(cfg, names: Iterable[str], *, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is None:
            continue
        if value < 0 or (value == 0 and not allow_zero):
            bound = "zero or more" if allow_zero else "more than zero"
            raise ValueError(f"--{name.replace('_', '-')} must be {bound}, got {value}")


def validate(cfg: argparse.Namespace) -> None:
    """Reject impossible combinations with messages that say what to change."""
    if not cfg.data:
        raise ValueError("--data is required: a folder holding train/ and val/ folders of class folders "
                         "(or set `data:` in the -c config file)")
    _positive(cfg, ["epochs", "batch_size", "eval_batch_size", "lr", "lr_base", "lr_base_size", "img_size",
                    "log_interval"])
    if cfg.threads is not None:
        cfg.threads = threads_option(cfg.threads)
    cfg.dist_timeout = timeout_minutes(cfg.dist_timeout)
    _positive(cfg, ["workers", "weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "clip_grad", "mixup",
                    "cutmix", "reprob", "smoothing", "drop_path", "drop", "aug_repeats", "distillation_alpha"],
              allow_zero=True)
    for name in ("mixup_prob", "mixup_switch_prob", "hflip", "reprob", "drop", "drop_path", "distillation_alpha"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"--{name.replace('_', '-')} is a probability/fraction in [0, 1], "
                             f"got {getattr(cfg, name)}")
    if not 0.0 < cfg.crop_pct <= 1.0:
        raise ValueError(f"--crop-pct must be in (0, 1], got {cfg.crop_pct}")
    if not 0.0 < cfg.scale[0] <= cfg.scale[1] <= 1.0:
        raise ValueError(f"--scale MIN MAX needs 0 < MIN <= MAX <= 1, got {cfg.scale}")
    if not 0.0 < cfg.ratio[0] <= cfg.ratio[1]:
        raise ValueError(f"--ratio MIN MAX needs 0 < MIN <= MAX, got {cfg.ratio}")
    if cfg.warmup_epochs >= cfg.epochs and cfg.schedule != "none":
        raise ValueError(f"--warmup-epochs ({cfg.warmup_epochs:g}) must be fewer than --epochs ({cfg.epochs}); "
                         "leave it unset to get a tenth of the run")
    if cfg.distillation_tau <= 0:
        raise ValueError(f"--distillation-tau must be more than zero, got {cfg.distillation_tau}")
    if (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mixup_prob > 0 and cfg.batch_size % 2:
        raise ValueError(f"Mixup/CutMix pair images within a batch, so --batch-size must be even (got "
                         f"{cfg.batch_size}); or turn mixing off with --mixup 0 --cutmix 0")
    if cfg.resume and (cfg.finetune or cfg.pretrained):
        raise ValueError("--resume continues a run and --finetune/--pretrained start a new one from weights: "
                         "pass only one")
    if cfg.finetune and cfg.pretrained:
        raise ValueError("--finetune PATH and --pretrained NAME both name the starting weights: pass only one")
    if cfg.pretrained:
        from ..models.releases import find_release, parse_spec
        name, tag = parse_spec(cfg.pretrained)
        find_release(name, tag)  # an unknown name or tag fails here, before any data is read
        if cfg.model and cfg.model != name:
            raise ValueError(f"--pretrained {cfg.pretrained} holds {name} weights but --model is {cfg.model}: "
                             f"drop --model or make it {name}")
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: pass only one")
    if cfg.stop_after_epoch is not None and cfg.stop_after_epoch < 1:
        raise ValueError("--stop-after-epoch counts completed epochs and must be 1 or more")


