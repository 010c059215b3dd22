"""``repvit bench``: CPU batch-1 latency or GPU throughput, every figure with its conditions."""
from __future__ import annotations

import json

from ..runtime.bench import CPU_RUNTIMES, format_report, installed_runtimes, ratios
from . import _grammar as grammar
from ._weights import add_weights_options


def run(args) -> int:
    import sys

    from ..models.checkpoint import read_checkpoint
    from ..models.pretrained import fetch
    from ..models.releases import find_release, parse_spec
    from ..models.variants import VARIANTS
    from ..runtime.timing import resolve_threads
    if args.device == "auto":
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.pretrained:
        name, tag = parse_spec(args.pretrained)
        if args.model and args.model != [name]:
            raise ValueError(f"--pretrained {args.pretrained} is {name}: drop --model or make it {name}")
        args.model, args.checkpoint = [name], str(fetch(find_release(name, tag)))
    if args.checkpoint and not args.model:
        recorded = read_checkpoint(args.checkpoint)[1].get("variant")
        if not recorded:
            raise ValueError(f"{args.checkpoint} does not record its variant: pass --model NAME")
        args.model = [recorded]
    models = args.model or ["repvit_m0_9"]
    unknown = [m for m in models if m not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.checkpoint and len(models) > 1:
        raise ValueError("--checkpoint measures one model: pass a single --model (or none)")
    out = sys.stderr if args.json else sys.stdout  # keep stdout pure JSON with --json
    log = (lambda line: print(line, file=out)) if not args.quiet else (lambda _: None)
    if args.device == "cpu":
        if args.compile or args.cuda_graphs or args.dtype not in (None, "float32") or args.channels_last:
            raise ValueError("--compile/--cuda-graphs/--dtype/--channels-last are GPU throughput options; "
                             "on CPU choose runtimes with --runtimes (use optimize_for_inference for compile)")
        from ..runtime.bench import cpu_latency
        runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()] if args.runtimes else installed_runtimes()
        report = cpu_latency(models, img_size=args.img_size, threads=resolve_threads(args.threads)[0],
                             runtimes=runtimes,
                             compare_timm=args.compare_timm, warmup=args.warmup, rounds=args.rounds, iters=args.iters,
                             batch=args.batch_size or 1, checkpoint=args.checkpoint, calib_images=args.calib_images,
                             calib_count=args.calib_count, log=log)
    else:
        from ..runtime.bench import gpu_throughput
        report = gpu_throughput(models, device=args.device, batch=args.batch_size or 256, img_size=args.img_size,
                                dtype=args.dtype or "float16",
                                channels_last=args.channels_last, fused=not args.unfused, compile=args.compile,
                                cuda_graphs=args.cuda_graphs, compare_timm=args.compare_timm,
                                optimized=args.optimized, warmup=args.warmup, rounds=args.rounds, iters=args.iters,
                                checkpoint=args.checkpoint, log=log)
    print(format_report(report), file=out)
    compared = ratios(report)
    for row in compared:
        print(f"ours / timm, {row['model']} {row['runtime']} {'fused' if row['fused'] else 'unfused'}: "
              f"{row['ratio']:.3f} ({row['ours_ms']:.3f} ms vs {row['timm_ms']:.3f} ms)", file=out)
    payload = {**report.as_dict(), "ours_vs_timm": compared}
    if args.json:
        print(json.dumps(payload, indent=2))
    if args.report:
        with open(args.report, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="latency (CPU, batch 1) or throughput (GPU) with the conditions stated")
    grammar.add(p, "--model", action="append", help="variant (repeat for several; default repvit_m0_9)")
    add_weights_options(p, required=False, checkpoint_help="measure this checkpoint's model instead of random "
                                                           "weights")
    grammar.add(p, "--device", help="cpu: batch-1 latency; cuda or cuda:N: throughput; auto: cuda when a GPU is "
                                    "visible, else cpu [auto]")
    grammar.add(p, "--img-size", default=224)
    grammar.add(p, "--batch-size", help="default 1 on CPU, 256 on GPU")
    grammar.add(p, "--threads", help="CPU threads for PyTorch, ONNX Runtime and OpenVINO: a count, or auto (the "
                                     "cores idle when the command starts) [auto]")
    p.add_argument("--runtimes", help=f"CPU: comma-separated subset of {','.join(CPU_RUNTIMES)} (default: every "
                                      "installed one; int8 is ONNX Runtime's)")
    p.add_argument("--calib-images", help="CPU INT8: calibrate on these images (default random inputs, "
                                          "latency only)")
    p.add_argument("--calib-count", type=int, default=300)
    gpu = p.add_argument_group("GPU throughput")
    gpu.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                     help="GPU compute dtype (default float16); the CPU benchmark is float32 (and INT8)")
    gpu.add_argument("--channels-last", action="store_true")
    grammar.add(gpu, "--unfused", help="measure the training-form (unfused) model")
    gpu.add_argument("--compile", action="store_true", help="torch.compile")
    gpu.add_argument("--cuda-graphs", action="store_true")
    gpu.add_argument("--optimized", action="store_true", help="also measure optimize_for_inference's path")
    p.add_argument("--compare-timm", action="store_true", help="run timm's RepViT through the same harness, "
                                                               "interleaved")
    timing = p.add_argument_group("timing")
    timing.add_argument("--warmup", type=int, default=10)
    timing.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    timing.add_argument("--iters", type=int, default=20, help="calls per candidate per round")
    grammar.add(p, "--json", action=grammar.FlagOrDeprecatedFile, file_dest="report",
                help="print the results as JSON on stdout (the table goes to stderr)")
    grammar.add(p, "--report", help="write the results as JSON to this file")
    grammar.add(p, "--quiet", help="print only the table")
    p.set_defaults(func=run)
