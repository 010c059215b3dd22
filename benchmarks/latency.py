"""The CPU latency table of benchmarks/deployment.md: every runtime, ours and timm's, per variant.

Runs ``repvit.runtime.bench.cpu_latency`` (what ``repvit bench`` runs) once per variant, all runtimes
and timm's models interleaved in one measurement, and prints a Markdown table with the
conditions of each figure. The paper's iPhone 12 latency is the last column, labelled.

    PYTHONPATH=. python benchmarks/latency.py --models repvit_m0_9 repvit_m1_1 --threads 2 \
        --json runs/bench/latency.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit.runtime.bench import CPU_RUNTIMES, cpu_latency, format_report, ratios  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402


def markdown(reports) -> str:
    lines = ["| model | source | runtime | fused | dtype | median ms | p10-p90 ms | load avg | paper iPhone 12 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for report in reports:
        for r in report.results:
            paper = f"{r.paper_iphone12_ms} (paper)" if r.paper_iphone12_ms is not None else "-"
            lines.append(f"| {r.model} | {r.source} | {r.runtime} | {'yes' if r.fused else 'no'} | {r.dtype} | "
                         f"{r.median_ms:.2f} | {r.p10_ms:.2f}-{r.p90_ms:.2f} | {report.load_before}-{report.load_after} "
                         f"| {paper} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["repvit_m0_9", "repvit_m1_1"])
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runtimes", nargs="+", default=list(CPU_RUNTIMES))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--calib-images", help="INT8 calibration images (default: random inputs, latency only)")
    parser.add_argument("--no-timm", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    reports = []
    for name in args.models:
        report = cpu_latency([name], img_size=args.img_size, threads=args.threads, runtimes=args.runtimes,
                             compare_timm=not args.no_timm, warmup=args.warmup, rounds=args.rounds, iters=args.iters,
                             calib_images=args.calib_images, log=print)
        print(format_report(report), flush=True)
        reports.append(report)
    print()
    print(markdown(reports))
    if args.json:
        write_report(args.json, [{**r.as_dict(), "ours_vs_timm": ratios(r)} for r in reports])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
