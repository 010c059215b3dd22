"""Batch-1 CPU latency of our fused RepViT against timm's fused RepViT, interleaved in one run.

Both models are built from the same variant table entry (1000 classes, distillation head,
as the paper benchmarks them), fused (ours with ``repvit.reparameterize``, timm's with its
``.fuse()``), and timed call by call in interleaved rounds so that background load hits
both alike. Each variant is measured ``--repeats`` times; the load average is recorded with
every repeat. A ratio ``ours / timm`` above 1.0 means ours is slower.

    PYTHONPATH=. python benchmarks/cpu_latency_vs_timm.py --threads 2 --json runs/bench/vs_timm.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit.runtime.bench import build_ours, build_timm, fuse_timm  # noqa: E402
from repvit.engine.timing import environment, load_average, summarize, time_interleaved, torch_threads  # noqa: E402
from repvit.models.reparam import reparameterize  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402

DEFAULT_MODELS = ["repvit_m0_9", "repvit_m1_0", "repvit_m1_1", "repvit_m1_5", "repvit_m2_3"]


def measure(name: str, *, img_size: int, rounds: int, iters: int, warmup: int, unfused: bool) -> dict:
    ours = reparameterize(build_ours(name))
    timm_model = build_timm(name)
    if timm_model is None:
        raise SystemExit(f"timm has no {name}")
    theirs = fuse_timm(timm_model)
    x = torch.randn(1, 3, img_size, img_size)
    candidates = {"ours_fused": lambda: ours(x), "timm_fused": lambda: theirs(x)}
    if unfused:
        ours_unfused = build_ours(name)
        candidates.update({"ours_unfused": lambda: ours_unfused(x), "timm_unfused": lambda: timm_model(x)})
    with torch.inference_mode():
        load_before = load_average()
        samples = time_interleaved(candidates, warmup=warmup, rounds=rounds, iters=iters)
        load_after = load_average()
    stats = {k: summarize(v) for k, v in samples.items()}
    row = {"model": name, "img_size": img_size, "load_before": load_before, "load_after": load_after,
           **{f"{k}_median_ms": s["median_ms"] for k, s in stats.items()},
           **{f"{k}_p10_ms": s["p10_ms"] for k, s in stats.items()},
           **{f"{k}_p90_ms": s["p90_ms"] for k, s in stats.items()},
           "ratio_fused": stats["ours_fused"]["median_ms"] / stats["timm_fused"]["median_ms"]}
    if unfused:
        row["ratio_unfused"] = stats["ours_unfused"]["median_ms"] / stats["timm_unfused"]["median_ms"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="whole measurements per variant (medians reported)")
    parser.add_argument("--unfused", action="store_true", help="also compare the unfused (training-form) models")
    parser.add_argument("--json", help="write all repeats and the summary here")
    args = parser.parse_args()
    rows, summary = [], []
    with torch_threads(args.threads) as threads:
        env = environment("cpu")
        print(f"cpu: {env['cpu']}, {threads} threads, torch {torch.__version__}, timm {env['versions'].get('timm')}")
        for name in args.models:
            repeats = [measure(name, img_size=args.img_size, rounds=args.rounds, iters=args.iters,
                               warmup=args.warmup, unfused=args.unfused) for _ in range(args.repeats)]
            rows += repeats
            agg = {"model": name,
                   "ours_fused_ms": statistics.median(r["ours_fused_median_ms"] for r in repeats),
                   "timm_fused_ms": statistics.median(r["timm_fused_median_ms"] for r in repeats),
                   "ratio_fused": statistics.median(r["ratio_fused"] for r in repeats),
                   "ratios": [round(r["ratio_fused"], 3) for r in repeats],
                   "load": [r["load_before"] for r in repeats]}
            if args.unfused:
                agg["ratio_unfused"] = statistics.median(r["ratio_unfused"] for r in repeats)
            summary.append(agg)
            print(f"{name}: ours {agg['ours_fused_ms']:.2f} ms, timm {agg['timm_fused_ms']:.2f} ms, ratio "
                  f"{agg['ratio_fused']:.3f} (repeats {agg['ratios']}, load {agg['load']})"
                  + (f", unfused ratio {agg['ratio_unfused']:.3f}" if args.unfused else ""), flush=True)
    print("\n| model | ours fused (ms) | timm fused (ms) | ours / timm | per repeat | load avg |")
    print("|---|---|---|---|---|---|")
    for a in summary:
        print(f"| {a['model']} | {a['ours_fused_ms']:.2f} | {a['timm_fused_ms']:.2f} | {a['ratio_fused']:.3f} | "
              f"{', '.join(map(str, a['ratios']))} | {', '.join(map(str, a['load']))} |")
    if args.json:
        write_report(args.json, {"environment": env, "threads": threads, "settings": vars(args),
                                               "summary": summary, "repeats": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
