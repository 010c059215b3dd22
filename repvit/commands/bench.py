"""``repvit bench``: CPU batch-1 latency or GPU throughput, every figure with its conditions; the
classifier (``--task classify``, beside timm), the dense backbone + FPN (``--task dense``, beside
MobileNetV3-Large with the same FPN), RepViT-SAM's image encoder (``--task sam``) or EdgeTAM's streaming
trackers, per frame (``--task track``)."""
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
    from ..engine.timing import resolve_threads
    if args.device == "auto":
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.task == "track":
        return run_track_task(args)
    for flag, default in (("warmup", 10), ("rounds", 10), ("repeats", 20)):
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    if args.task != "classify":
        return run_module_task(args)
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
        report = cpu_latency(models, img_size=args.img_size or 224, threads=resolve_threads(args.threads)[0],
                             runtimes=runtimes,
                             compare_timm=args.compare_timm, warmup=args.warmup, rounds=args.rounds, iters=args.repeats,
                             batch=args.batch_size or 1, checkpoint=args.checkpoint, calib_images=args.calib_images,
                             calib_count=args.calib_count, log=log)
    else:
        from ..runtime.bench import gpu_throughput
        report = gpu_throughput(models, device=args.device, batch=args.batch_size or 256, img_size=args.img_size or 224,
                                dtype=args.dtype or "float16",
                                channels_last=args.channels_last, fused=not args.unfused, compile=args.compile,
                                cuda_graphs=args.cuda_graphs, compare_timm=args.compare_timm,
                                optimized=args.optimized, warmup=args.warmup, rounds=args.rounds, iters=args.repeats,
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


def run_module_task(args) -> int:
    """``--task dense`` or ``--task sam``: random weights through every requested CPU runtime."""
    import sys

    from ..models.variants import VARIANTS
    from ..runtime import module_bench
    from ..engine.timing import resolve_threads
    not_here = [flag for flag, given in (("--checkpoint", args.checkpoint), ("--pretrained", args.pretrained),
                                         ("--compare-timm", args.compare_timm), ("--calib-images", args.calib_images),
                                         ("--optimized", args.optimized)) if given]
    if not_here:
        raise ValueError(f"{', '.join(not_here)}: the classifier's options (--task classify); --task {args.task} "
                         "times random weights, which latency does not depend on, and calibrates INT8 on random "
                         "inputs")
    if args.device != "cpu":
        raise ValueError(f"--task {args.task} is measured on the CPU (--device cpu); GPU throughput is measured for "
                         "the classifier (--task classify)")
    if args.compile or args.cuda_graphs or args.dtype not in (None, "float32") or args.channels_last:
        raise ValueError("--compile/--cuda-graphs/--dtype/--channels-last are GPU throughput options; on CPU choose "
                         "runtimes with --runtimes (compile, eager-fused-cl)")
    img_size = args.img_size or module_bench.TASK_IMG_SIZE[args.task]
    if args.task == "sam":
        if args.model and args.model != [module_bench.SAM_VARIANT]:
            raise ValueError(f"--task sam times RepViT-SAM's encoder ({module_bench.SAM_VARIANT}): drop --model")
        subjects = module_bench.sam_subjects(img_size)
    else:
        models = args.model or ["repvit_m0_9"]
        unknown = [m for m in models if m not in VARIANTS]
        if unknown:
            raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
        subjects = module_bench.dense_subjects(models)
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()] if args.runtimes else installed_runtimes()
    out = sys.stderr if args.json else sys.stdout
    log = (lambda line: print(line, file=out)) if not args.quiet else (lambda _: None)
    report = module_bench.module_latency(subjects, task=args.task, img_size=img_size,
                                         threads=resolve_threads(args.threads)[0], runtimes=runtimes,
                                         warmup=args.warmup, rounds=args.rounds, iters=args.repeats,
                                         batch=args.batch_size or 1, log=log)
    print(format_report(report), file=out)
    goals = module_bench.goal_ratios(report)
    for row in goals:
        vs = [f"{row['vs_own_fused_eager']:.2f}x its fused eager time"] if "vs_own_fused_eager" in row else []
        if "vs_mobilenet_v3_large_same_runtime" in row:
            vs.append(f"{row['vs_mobilenet_v3_large_same_runtime']:.2f}x MobileNetV3-Large + FPN's")
        print(f"{row['model']} {row['runtime']} ({row['dtype']}): {row['median_ms']:.1f} ms, " + ", ".join(vs),
              file=out)
    payload = {**report.as_dict(), "ratios": goals}
    if args.json:
        print(json.dumps(payload, indent=2))
    if args.report:
        grammar.write_report(args.report, payload)
    return 0


def run_track_task(args) -> int:
    """``--task track``: EdgeTAM's streaming trackers, one call a frame (``repvit.edgetam.bench``)."""
    import sys

    from ..engine.timing import resolve_threads
    not_here = [flag for flag, given in (("--checkpoint", args.checkpoint), ("--pretrained", args.pretrained),
                                         ("--model", args.model), ("--compare-timm", args.compare_timm),
                                         ("--calib-images", args.calib_images), ("--optimized", args.optimized),
                                         ("--batch-size", args.batch_size)) if given]
    if not_here:
        raise ValueError(f"{', '.join(not_here)}: not options of --task track, which times EdgeTAM's streaming "
                         "trackers with seeded random weights (latency does not depend on them) on a generated clip; "
                         "--objects sets how many objects each frame tracks")
    if args.device != "cpu" or args.compile or args.cuda_graphs or args.dtype not in (None, "float32") \
            or args.channels_last:
        raise ValueError("--task track is measured on the CPU (--device cpu), in float32 and INT8 (--runtimes)")
    try:
        from ..runtime.track_bench import TRACK_RUNTIMES, track_latency
    except ImportError as err:
        raise ImportError(f"--task track needs Meta's sam2 package: pip install 'repvit-pytorch[edgetam]' ({err})") \
            from None
    if args.runtimes:
        runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    else:
        runtimes = [r for r in ("eager-fused", "onnxruntime", "openvino") if r in installed_runtimes()]
    out = sys.stderr if args.json else sys.stdout
    log = (lambda line: print(line, file=out)) if not args.quiet else (lambda _: None)
    report, details = track_latency(img_size=args.img_size or 1024, objects=args.objects,
                                    threads=resolve_threads(args.threads)[0], runtimes=runtimes,
                                    warmup=3 if args.warmup is None else args.warmup, rounds=args.rounds or 4,
                                    iters=args.repeats or 5, log=log)
    print(format_report(report), file=out)
    limit = details["limit"]
    print(f"the multiply-add limit: {limit['gmacs_per_frame']} GMAC a frame at {limit['sgemm_gmacs_per_s']} GMAC/s "
          f"(the best sgemm of these threads) = {limit['ms_per_frame_at_sgemm_peak']} ms a frame", file=out)
    for runtime, graphs in details["graphs_ms_per_frame"].items():
        print(f"{runtime} per frame: " + ", ".join(f"{g} {ms:.1f} ms" for g, ms in graphs.items()), file=out)
    payload = {**report.as_dict(), **details, "track_runtimes": list(TRACK_RUNTIMES)}
    if args.json:
        print(json.dumps(payload, indent=2))
    if args.report:
        grammar.write_report(args.report, payload)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="latency (CPU, batch 1) or throughput (GPU) with the conditions stated")
    grammar.add(p, "--model", action="append", help="variant (repeat for several; default repvit_m0_9)")
    add_weights_options(p, required=False, checkpoint_help="measure this checkpoint's model instead of random "
                                                           "weights")
    grammar.add(p, "--device", help="cpu: batch-1 latency; cuda or cuda:N: throughput; auto: cuda when a GPU is "
                                    "visible, else cpu [auto]")
    p.add_argument("--task", default="classify", choices=["classify", "dense", "sam", "track"],
                   help="classify: the classifier (beside timm with --compare-timm); dense: backbone + FPN (P2-P6, "
                        "256 channels) beside MobileNetV3-Large with the same FPN; sam: RepViT-SAM's image encoder; "
                        "track: EdgeTAM's streaming trackers, one call a frame (runtimes eager-fused, onnxruntime, "
                        "int8, openvino, openvino-int8; INT8: the image encoder). dense, sam and track time random "
                        "weights on the CPU [classify]")
    p.add_argument("--objects", type=int, default=1, metavar="N",
                   help="--task track: objects tracked in every frame (1 to 4) [1]")
    grammar.add(p, "--img-size", help="input resolution (square side, pixels) [224 classify, 512 dense, 1024 sam]")
    grammar.add(p, "--batch-size", help="default 1 on CPU, 256 on GPU")
    grammar.add(p, "--threads", help="CPU threads for PyTorch, ONNX Runtime and OpenVINO: a count, or auto (the "
                                     "cores idle when the command starts) [auto]")
    p.add_argument("--runtimes", help=f"CPU: comma-separated subset of {','.join(CPU_RUNTIMES)} (default: every "
                                      "installed one; int8 is ONNX Runtime's)")
    grammar.add(p, "--calib-images", help="CPU INT8: calibrate on these images (default random inputs, "
                                          "latency only)")
    grammar.add(p, "--calib-count", default=300)
    gpu = p.add_argument_group("GPU throughput")
    gpu.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                     help="GPU compute dtype (default float16); the CPU benchmark is float32 (and INT8)")
    grammar.add(gpu, "--channels-last")
    grammar.add(gpu, "--unfused", help="measure the training-form (unfused) model")
    gpu.add_argument("--compile", action="store_true", help="torch.compile")
    gpu.add_argument("--cuda-graphs", action="store_true")
    gpu.add_argument("--optimized", action="store_true", help="also measure optimize_for_inference's path")
    p.add_argument("--compare-timm", action="store_true", help="run timm's RepViT through the same harness, "
                                                               "interleaved")
    timing = p.add_argument_group("timing")
    grammar.add(timing, "--warmup", help="untimed calls per candidate before timing [10; track 3]")
    timing.add_argument("--rounds", type=int, default=None, metavar="N",
                        help="interleaved rounds: each runs every candidate --repeats times in turn [10; track 4]")
    grammar.add(timing, "--repeats", help="timed calls per candidate per round [20; track 5]")
    grammar.add_deprecated(timing, "--iters", "--repeats", dest="repeats", type=int)
    grammar.add(p, "--json", action=grammar.FlagOrDeprecatedFile, file_dest="report",
                help="print the results as JSON on stdout (the table goes to stderr)")
    grammar.add(p, "--report", help="write the results as JSON to this file")
    grammar.add(p, "--quiet", help="no progress lines: print only the table")
    p.set_defaults(func=run)
