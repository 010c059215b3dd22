"""``repvit info``: every variant's size, computed from the models, beside the paper's figures."""
from __future__ import annotations

import json

from ..models.skeleton import build_skeleton
from . import _grammar as grammar
from ..models.profile import count_macs, count_params
from ..models.reparam import reparameterize
from ..models.variants import VARIANTS


def variant_table(img_size: int = 224) -> list[dict]:
    rows = []
    for name, variant in VARIANTS.items():
        distilled = build_skeleton(name, distillation=True).eval()
        params_dist, params_plain = count_params(distilled), count_params(build_skeleton(name, distillation=False))
        fused = reparameterize(distilled, inplace=True)
        rows.append({
            "name": name, "widths": list(variant.widths), "stages": list(variant.stages), "legacy": variant.legacy,
            "params_train": params_plain, "params_train_dist": params_dist,
            "params_fused": count_params(fused), "gmacs_fused": round(count_macs(fused, img_size) / 1e9, 4),
            "img_size": img_size, "paper_top1_300e": variant.top1_300e, "paper_top1_450e": variant.top1_450e,
            "paper_iphone12_ms": variant.iphone12_ms, "note": variant.note,
        })
    return rows


def format_table(rows: list[dict]) -> str:
    def fmt(value, spec="", missing="-"):
        return missing if value is None else format(value, spec)

    header = (f"{'model':<13} {'params train':>13} {'+dist head':>11} {'params fused':>13} {'GMACs':>7} "
              f"{'top-1 300e':>10} {'top-1 450e':>10} {'iPhone12 ms':>11}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['name']:<13} {r['params_train']:>13,} {r['params_train_dist']:>11,} {r['params_fused']:>13,} "
                     f"{r['gmacs_fused']:>7.4f} {fmt(r['paper_top1_300e'], '.1f'):>10} "
                     f"{fmt(r['paper_top1_450e'], '.1f'):>10} {fmt(r['paper_iphone12_ms'], '.1f'):>11}"
                     + (f"  ({r['note']})" if r["note"] else ""))
    lines.append(f"Sizes measured from the models (MACs: conv+linear multiply-adds of the fused model at "
                 f"{rows[0]['img_size']}px). Top-1 (ImageNet-1k, distilled) and iPhone 12 latency are the paper's figures.")
    return "\n".join(lines)


def run(args) -> int:
    rows = variant_table(args.img_size)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="table of all variants: params, MACs, paper accuracy and latency")
    grammar.add(p, "--json", help="print JSON instead of a table")
    grammar.add(p, "--img-size", default=224, help="input resolution for the MAC count")
    p.set_defaults(func=run)
