"""Training-step throughput of our RepViT against timm's RepViT of the same variant, interleaved.

One step = forward, cross-entropy, backward, AdamW update, on the same random batch for both
models (1000 classes, no distillation head, training mode). The two are timed step by step in
alternating rounds so that background load hits both alike; the load average is recorded.
Images/s = batch / median step time. A ratio ``ours / timm`` above 1.0 means ours is faster.

    PYTHONPATH=. python benchmarks/train_speed.py --batch-size 32 --img-size 224 --threads 2

``--device cuda --amp bfloat16 --channels-last --batch-size 256`` is the GPU form (not measured
in this repository's CPU-only sessions). ``--pipeline DATA`` also measures how many images/s
the real training input pipeline (JPEG decode, RandAugment, random erasing, Mixup/CutMix)
delivers with ``--workers`` processes, to compare with the model's step rate.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit.engine.timing import environment, load_average, summarize, time_interleaved, torch_threads  # noqa: E402
from repvit.models.factory import create_model  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402


def build_pair(name: str, device: torch.device, channels_last: bool):
    import timm
    ours = create_model(name, num_classes=1000, distillation=False)
    theirs = timm.create_model(name, pretrained=False, num_classes=1000, distillation=False)
    n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    if n_ours != n_theirs:
        raise SystemExit(f"{name}: parameter counts differ (ours {n_ours}, timm {n_theirs}); not the same network")
    models = {}
    for label, model in (("ours", ours), ("timm", theirs)):
        model = model.to(device).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        models[label] = model
    return models, n_ours


def make_step(model, x, y, autocast):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.025)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    return step


def measure_models(args, device: torch.device) -> list[dict]:
    rows = []
    if device.type == "cuda" and args.amp != "none":
        dtype = torch.bfloat16 if args.amp == "bfloat16" else torch.float16
        autocast = lambda: torch.autocast("cuda", dtype=dtype)  # noqa: E731
    else:
        autocast = contextlib.nullcontext
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for name in args.models:
        torch.manual_seed(0)
        models, params = build_pair(name, device, args.channels_last)
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (args.batch_size,), device=device)
        steps = {label: make_step(model, x, y, autocast) for label, model in models.items()}
        load_before = load_average()
        samples = time_interleaved(steps, warmup=args.warmup, rounds=args.rounds, iters=args.iters,
                                   per_call=device.type != "cuda", sync=sync)
        stats = {label: summarize(s) for label, s in samples.items()}
        row = {"model": name, "params": params, "batch": args.batch_size, "img_size": args.img_size,
               "load_before": load_before, "load_after": load_average()}
        for label, s in stats.items():
            row[f"{label}_step_ms_median"] = round(s["median_ms"], 2)
            row[f"{label}_step_ms_p10"] = round(s["p10_ms"], 2)
            row[f"{label}_step_ms_p90"] = round(s["p90_ms"], 2)
            row[f"{label}_img_per_s"] = round(args.batch_size / s["median_ms"] * 1e3, 1)
        row["ours_over_timm"] = round(row["ours_img_per_s"] / row["timm_img_per_s"], 3)
        rows.append(row)
        print(f"{name} batch {args.batch_size} @ {args.img_size}px: ours {row['ours_img_per_s']} img/s "
              f"(step {row['ours_step_ms_median']:.1f} ms), timm {row['timm_img_per_s']} img/s "
              f"(step {row['timm_step_ms_median']:.1f} ms), ours/timm {row['ours_over_timm']:.3f}; "
              f"load {load_before} -> {row['load_after']}", flush=True)
    return rows


def measure_pipeline(args) -> dict:
    """Images/s the real training input pipeline delivers (paper recipe augmentation)."""
    from repvit.classification.config import parse_args
    from repvit.classification.data import build_data
    from repvit.engine.distributed import DistEnv
    from repvit.classification.optim import build_mixup
    cfg = parse_args(["--data", args.pipeline, "--img-size", str(args.img_size), "--batch-size",
                      str(args.batch_size), "--workers", str(args.workers), "--aug-repeats", "0"])
    data = build_data(cfg, DistEnv(), log=lambda *_: None)
    mixup = build_mixup(cfg, len(data.class_names))
    iterator = iter(data.train_loader)
    next(iterator)  # workers started
    count, start = 0, time.perf_counter()
    for _ in range(min(args.pipeline_batches, len(data.train_loader) - 1)):
        images, targets = next(iterator)
        images, targets = mixup(images, targets)
        count += images.shape[0]
    seconds = time.perf_counter() - start
    row = {"pipeline_data": args.pipeline, "workers": args.workers, "batch": args.batch_size,
           "img_size": args.img_size, "images": count, "img_per_s": round(count / seconds, 1),
           "load": load_average()}
    print(f"input pipeline ({args.workers} workers, RandAugment + random erasing + Mixup/CutMix at "
          f"{args.img_size}px): {row['img_per_s']} img/s", flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["repvit_m0_9"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="none", choices=["none", "bfloat16", "float16"], help="CUDA autocast dtype")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--iters", type=int, default=1, help="steps per model per round")
    parser.add_argument("--pipeline", default=None, metavar="DATA", help="also time the input pipeline on DATA/train")
    parser.add_argument("--workers", type=int, default=2, help="loader workers for --pipeline")
    parser.add_argument("--pipeline-batches", type=int, default=20)
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    with torch_threads(args.threads):
        report = {"environment": environment(args.device), "results": measure_models(args, device)}
        if args.pipeline:
            report["pipeline"] = measure_pipeline(args)
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
