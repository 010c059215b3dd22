"""``repvit demo``: fuse a model with randomized BatchNorm statistics and show both compute the same.

The timings are of warm models: the first forward of a model pays one-time start-up (allocator,
kernel selection, lazy initialisation) that can be ten times a steady call, so each model is run
``--warmup`` times untimed, then the two are timed alternately ``--repeats`` times and the median
is reported, with the thread count it ran on.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

from ..models.factory import create_model
from ..models.profile import count_params
from ..models.reparam import is_fused, reparameterize
from ..testing import randomize_batchnorm
from . import _grammar as grammar


def warm_timings(models: dict, x: torch.Tensor, *, warmup: int, repeats: int,
                 clock: Callable[[], float] = time.perf_counter) -> dict:
    """``{label: (median seconds of a warm forward, output)}``: every model is called ``warmup``
    times untimed, then all are timed in turn ``repeats`` times (interleaved, so a slow spell of the
    machine touches each alike)."""
    if warmup < 1 or repeats < 1:
        raise ValueError(f"--warmup and --repeats must be 1 or more, got {warmup} and {repeats}")
    outputs, samples = {}, {label: [] for label in models}
    with torch.inference_mode():
        for label, model in models.items():
            for _ in range(warmup):
                outputs[label] = model(x)
        for _ in range(repeats):
            for label, model in models.items():
                start = clock()
                outputs[label] = model(x)
                samples[label].append(clock() - start)
    return {label: (statistics.median(samples[label]), outputs[label]) for label in models}


def run(args) -> int:
    from ..engine.timing import resolve_threads, torch_threads
    torch.manual_seed(args.seed)
    model = create_model(args.model, distillation=True)
    randomize_batchnorm(model, seed=args.seed)
    model.eval()
    fused = reparameterize(model)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    with torch_threads(resolve_threads(args.threads)[0]) as threads:
        timings = warm_timings({"unfused": model, "fused": fused}, x, warmup=args.warmup, repeats=args.repeats)
    diff = (timings["unfused"][1] - timings["fused"][1]).abs().max().item()
    print(f"{args.model}: {count_params(model):,} params -> {count_params(fused):,} after fusion "
          f"(BatchNorm left: {not is_fused(fused)})")
    print(f"  forward of {args.batch_size}x3x{args.img_size}x{args.img_size} on {threads} CPU thread(s), median of "
          f"{args.repeats} after {args.warmup} warm-up call(s) each:")
    for label, (seconds, _) in timings.items():
        print(f"  {label:<8} {seconds * 1e3:7.1f} ms")
    print(f"  fused / unfused time: {timings['fused'][0] / timings['unfused'][0]:.2f}")
    print(f"  max |unfused - fused| over {timings['fused'][1].numel()} logits: {diff:.2e} "
          f"({'OK' if diff <= args.tol else 'FAILED'}, tolerance {args.tol:g})")
    return 0 if diff <= args.tol else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="fuse a model and check the fused one computes the same logits")
    grammar.add(p, "--model", default="repvit_m0_9")
    grammar.add(p, "--batch-size", default=4)
    grammar.add(p, "--img-size", default=224)
    grammar.add(p, "--seed")
    grammar.add(p, "--threads")
    grammar.add(p, "--warmup", default=2, help="untimed forward passes per model before timing")
    grammar.add(p, "--repeats", default=5, help="timed forward passes per model (median reported)")
    grammar.add(p, "--tol", default=1e-4, help="largest allowed |unfused - fused| logit")
    p.set_defaults(func=run)
