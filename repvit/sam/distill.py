"""``repvit sam distill``: train RepViT-SAM's image encoder to reproduce a SAM ViT's image embeddings.

The recipe of MobileSAM (Zhang et al., 2023) that RepViT-SAM follows: the prompt encoder and mask
decoder are left aside and the student encoder is fitted to the teacher encoder's 256-channel
embedding with a mean squared error; the decoder of the teacher's SAM then works on the student's
embeddings. The official RepViT repository released the result, not the training; this is it, as a
task of the training engine (``repvit.engine``), so it has the engine's exact
resume, SIGTERM saves, torchrun DDP, progress and metrics. Teacher embeddings come from a disk cache
(``repvit.sam.teacher``) filled once before the first step, each rank computing its share; a stop
signal during the fill is honoured after the first training step (a second one stops at once), and
every embedding written by then is kept. The held-out embedding MSE picks ``best.pth`` and is also
measured on the initial weights (epoch 0 in ``metrics.csv``).

``best.pth`` and ``last.pth`` hold the whole SAM (student encoder, prompt encoder, mask decoder under
segment-anything's key names), so ``repvit.sam.build_sam(path)`` reads them. The decoder is copied
from ``--decoder-from`` (normally the teacher's own SAM file) or stays random, which the run says.

Input size: ``--img-size`` (default 1024, SAM's) sets what both networks see, so the embedding grid is
img_size/16 for both. Smaller sizes make CPU runs possible; the teacher is then evaluated at that size
too (a SAM checkpoint's position tables are resampled), which approximates SAM rather than being it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..engine.distributed import DistEnv, each_rank, shard, timeout_minutes
from ..engine.timing import threads_option
from ..engine import option_table as base
from ..engine.grammar import row
from ..engine.option_table import LOOP
from .encoder import RepViTSamEncoder
from .teacher import (TEACHERS, EmbeddingCache, build_teacher, check_img_size, list_images, sam_input,
                      teacher_identity)

if TYPE_CHECKING:   # the engine is imported when a run starts, keeping `repvit --help` light
    from ..engine.task import Task

TASK = "sam-distill"


def _from_loop(flag: str, **defaults) -> tuple:
    """An option of the engine's loop table (a grammar row) with distillation's own defaults."""
    flags, kwargs = next((f, k) for f, k in LOOP if f[0] == flag)
    return flags, {**kwargs, **defaults}


class _NameOrBare(argparse.Action):
    """``--pretrained NAME[:TAG]``; a bare ``--pretrained`` (the old on/off flag) stores True, which
    ``resolve`` turns into --model's release and a deprecation message."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs="?", const=True, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)


OPTIONS: list = [
    row("--data", help="folder of images (searched recursively); split by --val-fraction unless --val is given"),
    row("--val", help="folder of held-out images (instead of splitting --data)"),
    row("--val-fraction", default=0.1, help="share of --data held out for the validation MSE"),
    row("--max-images", help="use at most N images of --data, spread over its sub-folders (e.g. a slice of SA-1B)"),
    row("--img-size", default=1024, help="input size of teacher and student, a multiple of 16; the embedding grid "
                                         "is img_size/16"),
    row("--teacher", default="vit_h", choices=sorted(TEACHERS), help="segment-anything image encoder"),
    row("--teacher-checkpoint", help="SAM weights of --teacher (e.g. sam_vit_h_4b8939.pth)"),
    (("--teacher-random-seed",), dict(type=int, default=None, metavar="N",
                                      help="a randomly initialised teacher from this seed (pipeline checks, CI)")),
    (("--teacher-cache",), dict(default=None, metavar="DIR", help="folder of cached teacher embeddings "
                                                                  "(default: OUTPUT/teacher-cache); share it "
                                                                  "between runs")),
    (("--cache-dtype",), dict(default="float32", choices=["float32", "float16"],
                              help="precision of cached embeddings (float16 halves the disk)")),
    row("--model", default="repvit_m2_3", help="RepViT variant of the student (RepViT-SAM: repvit_m2_3)"),
    (("--student-init",), dict(default=None, metavar="FILE", help="start the student's backbone from this RepViT "
                                                                  "classification checkpoint")),
    row("--pretrained", action=_NameOrBare,
        help="start the student's backbone from these official ImageNet weights (a release of "
             "--model, e.g. repvit_m2_3); a bare --pretrained (deprecated) means --model's"),
    (("--decoder-from",), dict(default=None, metavar="SAMFILE", help="copy the prompt encoder and mask decoder "
                                                                     "from this SAM file (e.g. the teacher's)")),
    _from_loop("--output", default="runs/sam-distill"),
    _from_loop("--overwrite"),
    _from_loop("--resume"),
    _from_loop("--epochs", default=8),
    _from_loop("--batch-size", default=8),
    _from_loop("--lr", default=1e-3),
    _from_loop("--weight-decay", default=0.01),
    _from_loop("--schedule", default="cosine"),
    _from_loop("--milestones", default=[6]),
    _from_loop("--power"),
    _from_loop("--warmup-iters", default=200),
    _from_loop("--clip-grad"),
    _from_loop("--clip-mode"),
    _from_loop("--sync-bn"),
    _from_loop("--workers"),
    _from_loop("--threads"),
    _from_loop("--device"),
    _from_loop("--seed"),
    _from_loop("--dist-timeout"),
    row("--skip-bad", help="skip (and count) unreadable images instead of stopping"),
    _from_loop("--eval-interval"),
    _from_loop("--log-interval"),
    _from_loop("--stop-after-epoch"),
]


def add_options(parser: argparse.ArgumentParser) -> None:
    base.add_options(parser, options=OPTIONS)


def resolve(explicit: dict) -> argparse.Namespace:
    """Defaults < the ``config`` YAML file < flags; then checked."""
    explicit = dict(explicit)
    config_file = explicit.pop("config", None)
    values = {flags[0].lstrip("-").replace("-", "_"): kw.get("default") for flags, kw in OPTIONS}
    from_file = base.load_config_file(config_file, options=OPTIONS) if config_file else {}
    # A teacher (or student start) named by flags replaces the file's, whichever of the two ways it uses:
    # `-c configs/sam-distill-cpu.yaml --teacher-checkpoint sam_vit_b.pth` drops the file's random seed.
    for pair in (("teacher_checkpoint", "teacher_random_seed"), ("student_init", "pretrained")):
        if set(pair) & set(explicit):
            for name in pair:
                from_file.pop(name, None)
    values.update(from_file)
    values.update(explicit)
    values["config"] = str(config_file) if config_file else None
    cfg = argparse.Namespace(**values)
    if cfg.pretrained is True or str(cfg.pretrained).lower() in ("true", "false"):  # the old on/off form
        on = str(cfg.pretrained).lower() == "true"
        print(f"--pretrained without a name (pretrained: {str(on).lower()}) is deprecated: use --pretrained "
              f"{cfg.model}" + ("" if on else " or leave it out"), file=sys.stderr)
        cfg.pretrained = cfg.model if on else None
    validate(cfg)
    return cfg


def validate(cfg: argparse.Namespace) -> None:
    if not cfg.data:
        raise ValueError("--data is required: a folder of images (searched recursively)")
    for name in ("epochs", "batch_size", "lr", "log_interval", "eval_interval", "max_images"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be more than zero, got {value}")
    check_img_size(cfg.img_size)
    if not cfg.val and not 0.0 < cfg.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be between 0 and 1, got {cfg.val_fraction}")
    if (cfg.teacher_checkpoint is None) == (cfg.teacher_random_seed is None):
        raise ValueError("name the teacher: --teacher-checkpoint FILE (segment-anything weights of --teacher) or "
                         "--teacher-random-seed N (a fixed random teacher, for pipeline checks), exactly one")
    if cfg.teacher_checkpoint and not Path(cfg.teacher_checkpoint).is_file():
        teacher_identity(cfg.teacher, checkpoint=cfg.teacher_checkpoint)   # raises, naming the file to fetch
    if cfg.student_init and cfg.pretrained:
        raise ValueError("--student-init FILE and --pretrained both initialise the student: pass only one")
    if cfg.pretrained:
        from ..models.releases import parse_spec
        if parse_spec(cfg.pretrained)[0] != cfg.model:
            raise ValueError(f"--pretrained {cfg.pretrained} does not fit the student --model {cfg.model}: name a "
                             f"release of {cfg.model} (e.g. --pretrained {cfg.model}) or change --model")
    for name in ("student_init", "decoder_from"):
        path = getattr(cfg, name)
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"--{name.replace('_', '-')} {path!r} does not exist")
    if cfg.resume and cfg.overwrite:
        raise ValueError("--resume and --overwrite contradict each other: pass only one")
    if cfg.threads is not None:
        cfg.threads = threads_option(cfg.threads)
    cfg.dist_timeout = timeout_minutes(cfg.dist_timeout)


def dump(cfg: argparse.Namespace) -> dict:
    return base.dump(cfg)


# --------------------------------------------------------------------------- model and data
class DistillStudent(nn.Module):
    """The SAM being distilled: segment-anything's ``Sam`` key layout (``image_encoder.*``,
    ``prompt_encoder.*``, ``mask_decoder.*``), so its state dict is a whole-SAM file, while ``forward``
    runs only the image encoder, the part that trains (the other two are frozen passengers)."""

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.image_encoder = sam.image_encoder
        self.prompt_encoder = sam.prompt_encoder.requires_grad_(False)
        self.mask_decoder = sam.mask_decoder.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(images)


def build_student(cfg) -> tuple[DistillStudent, str, str]:
    """The student and two phrases for the log: where its encoder and its decoder come from."""
    from .builder import read_sam_state, sam_with_encoder
    encoder = RepViTSamEncoder(cfg.model, img_size=cfg.img_size)
    if cfg.student_init:
        encoder.load_backbone(cfg.student_init)
        init = f"backbone from {cfg.student_init}"
    elif cfg.pretrained:
        from ..models.pretrained import fetch
        from ..models.releases import find_release, parse_spec
        release = find_release(*parse_spec(cfg.pretrained))
        encoder.load_backbone(fetch(release))
        init = f"backbone from the official {release.spec} ImageNet weights"
    else:
        init = "random initialisation"
    student = DistillStudent(sam_with_encoder(encoder, img_size=cfg.img_size, stride=encoder.stride))
    if not cfg.decoder_from:
        return student, init, ("prompt encoder and mask decoder are RANDOM (pass --decoder-from SAMFILE, e.g. the "
                               "teacher's SAM file, to pair the student with a trained decoder)")
    from ..models.state_dict import load_strict
    state = read_sam_state(cfg.decoder_from)
    # only the prompt encoder and mask decoder come from the file; the student's image encoder keeps its start
    load_strict(student, {k: v for k, v in state.items() if not k.startswith("image_encoder.")},
                source=f"--decoder-from {cfg.decoder_from!r}", what="SAM's prompt encoder and mask decoder",
                ignore="image_encoder.",
                fix="pass a whole-SAM file with segment-anything's prompt encoder and mask decoder (the teacher's "
                    "own SAM file, e.g. sam_vit_h_4b8939.pth, or repvit_sam.pt)")
    return student, init, f"prompt encoder and mask decoder from {cfg.decoder_from}"


class DistillImages(torch.utils.data.Dataset):
    """``(SAM input, teacher embedding)`` pairs; no augmentation, since each target belongs to one exact input."""

    def __init__(self, paths: list[Path], cache: EmbeddingCache, img_size: int):
        self.paths, self.cache, self.img_size = list(paths), cache, img_size

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int, generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
        from ..data.images import load_rgb
        path = self.paths[index]
        return sam_input(load_rgb(path), self.img_size), self.cache.load(path)

    def __getitem__(self, index: int):
        return self.get(index)


def split(paths: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """A fixed, seeded split (the same on every rank and every resume)."""
    if len(paths) < 2:
        raise ValueError(f"--data holds {len(paths)} image; hold-out validation needs at least 2 (or pass --val DIR)")
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(paths) - 1, max(1, round(len(paths) * val_fraction)))
    return [paths[i] for i in sorted(order[n_val:])], [paths[i] for i in sorted(order[:n_val])]


def embedding_mse(model: nn.Module, data: DistillImages, device: torch.device, batch_size: int,
                  env: Optional[DistEnv] = None) -> float:
    """Mean squared error between the model's and the cached teacher embeddings over ``data``.
    Batches are gathered by hand (no DataLoader) so scoring draws nothing from the global random stream.
    Under torchrun (``env`` of a distributed run, called on every rank) each rank scores its share of
    the batches and the sums of squared errors and their counts are added up: every rank returns the
    MSE over all of ``data``."""
    def score_share() -> tuple[float, int]:
        total, count = 0.0, 0
        mine = shard(range(len(data)), env, block=batch_size)
        with torch.inference_mode():
            for first in range(0, len(mine), batch_size):
                images, targets = zip(*(data.get(i) for i in mine[first:first + batch_size]))
                diff = model(torch.stack(images).to(device)).float() - torch.stack(targets).to(device)
                total += diff.double().pow(2).sum().item()
                count += diff.numel()
        return total, count

    shares = each_rank(score_share, env)
    return sum(t for t, _ in shares) / sum(c for _, c in shares)


# --------------------------------------------------------------------------- the task
def build_task(cfg, env, log=None, resume=None) -> Task:
    from ..engine.data import seeded_batches, stack_pairs
    from ..engine.distributed import each_rank
    from ..engine.optim import adamw_with_warmup, describe_schedule
    from ..engine.progress import format_seconds
    from ..engine.task import Task, describe_data, fused_copy
    from ..models.record import save_record

    def progress(message: str) -> None:   # the cache fill's progress: the terminal only, not train.log
        if env.is_main:
            print(message, file=sys.stderr, flush=True)

    paths = list_images(cfg.data, cfg.max_images)
    train_paths, val_paths = (paths, list_images(cfg.val)) if cfg.val else split(paths, cfg.val_fraction, cfg.seed)
    identity = teacher_identity(cfg.teacher, checkpoint=cfg.teacher_checkpoint, seed=cfg.teacher_random_seed)
    cache = EmbeddingCache(cfg.teacher_cache or Path(cfg.output) / "teacher-cache", identity, cfg.img_size,
                           cfg.cache_dtype)
    student, init, decoder = build_student(cfg)

    everything = train_paths + val_paths
    shares = each_rank(lambda: cache.fill(everything, lambda: build_teacher(cfg.teacher, img_size=cfg.img_size,
                                                                            checkpoint=cfg.teacher_checkpoint,
                                                                            seed=cfg.teacher_random_seed),
                                          device=env.device, batch_size=cfg.batch_size, rank=env.rank,
                                          world_size=env.world_size, skip_bad=cfg.skip_bad, log=progress), env)
    # (each_rank waits for every rank, up to --dist-timeout: all shares of the cache are on disk now, or
    # every rank stops with the error of the one whose share failed)
    absent = {p for p in everything if not cache.has(p)}   # unreadable images, skipped with --skip-bad
    train_paths = [p for p in train_paths if p not in absent]
    val_paths = [p for p in val_paths if p not in absent]
    if not train_paths or not val_paths:
        raise ValueError(f"{len(train_paths)} training and {len(val_paths)} validation images are left after "
                         f"skipping {len(absent)} unreadable ones: both need at least one")
    train_set = DistillImages(train_paths, cache, cfg.img_size)
    val_set = DistillImages(val_paths, cache, cfg.img_size)

    random_teacher = cfg.teacher_random_seed is not None
    teacher = (f"{cfg.teacher} teacher with RANDOM weights (seed {cfg.teacher_random_seed}; checks the pipeline, "
               "it is not SAM)" if random_teacher else f"{cfg.teacher} teacher from {cfg.teacher_checkpoint}")
    grid = cfg.img_size // 16
    computed = sum(s["missing"] for s in shares) - len(absent)
    reused, seconds = sum(s["reused"] for s in shares), max(s["seconds"] for s in shares)
    describe = (f"RepViT-SAM distillation: {cfg.model} student ({init}), {teacher}, {cfg.img_size} px inputs "
                f"({grid}x{grid} embeddings), {len(val_paths)} held-out images; teacher "
                f"embeddings: {computed} computed in {format_seconds(seconds)}, {reused} reused "
                f"(cache {cache.folder})" + (f", {len(absent)} unreadable images skipped" if absent else "")
                + f"; {decoder}; best.pth and last.pth load with repvit.sam.build_sam(path"
                + (f", variant='{cfg.model}')" if cfg.model != "repvit_m2_3" else ")"))
    provenance = {"teacher": identity, "teacher_random": random_teacher, "student_init": init,
                  "decoder": cfg.decoder_from or "random"}

    batches = seeded_batches(train_set, stack_pairs, seed=cfg.seed, batch_size=cfg.batch_size, workers=cfg.workers,
                             env=env)

    def loss(model, batch, device):
        images, targets = batch
        return F.mse_loss(model(images.to(device)), targets.to(device))

    def evaluate(model, env):   # every rank scores its share; the sums of squared errors are added
        return {"mse": embedding_mse(fused_copy(model), val_set, env.device, cfg.batch_size, env=env)}

    def save(model, path, extra):
        return save_record(model, path, task=TASK, config={"variant": cfg.model, "img_size": cfg.img_size},
                           extra={**provenance, **extra})

    return Task(TASK, student, batches, loss, lambda m: adamw_with_warmup(m, cfg, batches.steps_per_epoch),
                evaluate, "mse", save,
                describe=f"{describe}; {describe_data(batches, env, cfg.batch_size)}, "
                         f"{describe_schedule(cfg, batches.steps_per_epoch)}",
                lower_is_better=True, evaluate_at_start=True,
                nonfinite_hint="Lower --lr, raise --warmup-iters or set --clip-grad")


def distill(cfg: argparse.Namespace) -> dict:
    """Run ``repvit sam distill`` with resolved options (see ``resolve``); returns the loop's summary."""
    from ..engine.loop import train
    return train(lambda env, log, resume: build_task(cfg, env, log, resume), cfg, config=dump(cfg),
                 command="repvit sam distill")
