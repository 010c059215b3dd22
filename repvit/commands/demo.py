"""``repvit demo``: fuse a model with randomized BatchNorm statistics and show both compute the same."""
from __future__ import annotations

import time

import torch

from ..models.factory import create_model
from ..models.profile import count_params
from ..models.reparam import is_fused, reparameterize
from ..testing import randomize_batchnorm


def run(args) -> int:
    torch.manual_seed(args.seed)
    model = create_model(args.model, distillation=True)
    randomize_batchnorm(model, seed=args.seed)
    model.eval()
    fused = reparameterize(model)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    with torch.inference_mode():
        timings = {}
        for label, m in (("unfused", model), ("fused", fused)):
            m(x)
            start = time.perf_counter()
            out = m(x)
            timings[label] = (time.perf_counter() - start, out)
    diff = (timings["unfused"][1] - timings["fused"][1]).abs().max().item()
    print(f"{args.model}: {count_params(model):,} params -> {count_params(fused):,} after fusion "
          f"(BatchNorm left: {not is_fused(fused)})")
    for label, (seconds, _) in timings.items():
        print(f"  {label:<8} forward of {args.batch_size}x3x{args.img_size}x{args.img_size}: {seconds * 1e3:7.1f} ms")
    print(f"  max |unfused - fused| over {timings['fused'][1].numel()} logits: {diff:.2e} "
          f"({'OK' if diff <= args.tol else 'FAILED'}, tolerance {args.tol:g})")
    return 0 if diff <= args.tol else 1


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="fuse a model and check the fused one computes the same logits")
    p.add_argument("--model", default="repvit_m0_9")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-4)
    p.set_defaults(func=run)
