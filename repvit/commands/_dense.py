"""What ``repvit detect`` and ``repvit segment`` share: the options of eval/predict, real images
for export checks, and the ``train`` action over the shared dense loop."""
from __future__ import annotations

import argparse

from . import _grammar as grammar


def real_images(folder, count: int) -> list:
    """``count`` real images from ``folder`` (the one path of ``--images``, or None for the bundled
    photos) as float 0..1 CHW tensors, at their own sizes."""
    folder = grammar.image_source(folder)
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    from ..export.verify import find_images
    if count < 1:
        raise ValueError(f"--num-real must be 1 or more, got {count}")
    out = []
    for path in find_images(folder, count):
        with Image.open(path) as im:
            out.append(pil_to_tensor(im.convert("RGB")).float() / 255.0)
    return out


def load_for_inference(load, args):
    """``load(args.checkpoint, use_ema=...)``, fused unless ``--unfused`` (the fused copy keeps the
    recorded attributes: class names, category ids, ignore value), and the device to run it on."""
    from ..models.reparam import reparameterize
    from ..engine.distributed import pick_device
    model = load(args.checkpoint, use_ema=args.ema)
    return (model if args.unfused else reparameterize(model)), pick_device(args.device)


def add_common(p, what: str, exported: str = "") -> None:
    grammar.add(p, "--checkpoint", required=True, help=f"a {what} saved by this library (self-describing)"
                + (f", {exported}" if exported else ""))
    grammar.add(p, "--device")
    grammar.add(p, "--threads")
    grammar.add(p, "--unfused")
    grammar.add(p, "--ema")
    grammar.add_report(p, help="also write the results to this JSON file")


def add_skip_bad_images(p) -> None:
    """``--skip-bad`` of the predict actions: image files that do not decode."""
    grammar.add(p, "--skip-bad", help="leave out image files that do not decode, counted on stderr (default: stop "
                                      "before the first image, naming every bad file)")


def add_train(sub, task: str, build_task_module: str) -> None:
    """``repvit <task> train``: options from ``repvit.dense.options``, the task from ``build_task_module``."""
    from ..dense.options import add_options
    tr = sub.add_parser("train", help=f"train (options: `repvit {task} train --help`; -c FILE.yaml sets defaults)")
    add_options(tr, task)
    tr.set_defaults(func=lambda args: run_train(args, task, build_task_module))


def run_train(args: argparse.Namespace, task: str, build_task_module: str) -> int:
    import importlib
    from ..dense import options
    from ..engine.loop import train
    from ._training import run_training
    build_task = importlib.import_module(build_task_module, __package__).build_task
    explicit = {k: v for k, v in vars(args).items() if k not in ("func", "command", f"{task}_command")}
    cfg = options.resolve(explicit, task)
    return run_training(f"repvit {task} train", lambda: train(lambda env, log, resume: build_task(cfg, env, log, resume),
                                                               cfg, config=options.dump(cfg),
                                                               command=f"repvit {task} train"))
