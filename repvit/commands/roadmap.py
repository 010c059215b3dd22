"""``repvit roadmap``: every step from MobileNetV3-L to RepViT-M0.9, measured here beside the paper."""
from __future__ import annotations

import json

from . import _grammar as grammar


def run(args) -> int:
    import torch

    from ..roadmap.report import format_table, load_accuracy, roadmap_rows

    from ..engine.timing import resolve_threads
    threads = resolve_threads(args.threads)[0]
    if threads is not None:
        torch.set_num_threads(threads)
    accuracy = {}
    for path in args.accuracy or []:  # later files win for models they share
        accuracy.update(load_accuracy(path))
    rows = roadmap_rows(ablations=args.ablations, img_size=args.img_size, latency=not args.no_latency,
                        runs=args.repeats, warmup=args.warmup, accuracy=accuracy)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    if args.plot:
        from ..roadmap.plot import plot_roadmap
        path = plot_roadmap(rows, args.plot)
        if not args.json:
            print(f"plot written to {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "roadmap", help="the paper's roadmap MobileNetV3-L -> RepViT-M0.9: sizes, CPU latency, paper figures",
        description="Build every roadmap step (and with --ablations the paper's side ablations), fuse it, and "
                    "report parameters, MACs and measured batch-1 CPU latency beside the paper's ImageNet top-1 "
                    "and iPhone 12 latency.")
    p.add_argument("--ablations", action="store_true", help="also the side ablations (MobileNetV3 block, SE, re-param)")
    grammar.add(p, "--json", help="print JSON rows instead of a table")
    p.add_argument("--plot", metavar="FILE.png", help="draw a Figure-2-style chart of the steps into FILE.png")
    p.add_argument("--accuracy", metavar="FILE.json", nargs="+",
                   help="merge top-1 measured by benchmarks/roadmap_imagenette.py (one or more results.json) "
                        "into the table and plot")
    grammar.add(p, "--img-size", default=224, help="input resolution for MACs and latency")
    grammar.add(p, "--threads", help="torch CPU threads for the latency runs: a count, or auto (the cores idle when "
                                     "the command starts) [auto]")
    grammar.add(p, "--repeats", default=50, help="timed forward passes per model (median reported)")
    grammar.add_deprecated(p, "--runs", "--repeats", dest="repeats", type=int)
    grammar.add(p, "--warmup", default=10, help="untimed forward passes per model before timing")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.set_defaults(func=run)
