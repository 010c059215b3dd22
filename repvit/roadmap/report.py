"""Measure every roadmap model: sizes, MACs and CPU latency of the fused network.

The paper's accuracy and iPhone 12 latency are carried beside each row for comparison;
small-scale accuracies measured by ``benchmarks/roadmap_imagenette.py`` can be merged in.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Iterable, Optional, Union

import torch

from ..models.factory import create_model
from ..models.profile import count_macs, count_params
from ..models.reparam import reparameterize
from . import ABLATIONS, PAPER_REFERENCES, STEPS


@torch.inference_mode()
def measure_latencies(models: dict, img_size: int = 224, *, runs: int = 50, warmup: int = 10) -> dict:
    """Batch-1 CPU forward time of each model (eval), in ms: ``{name: {"median_ms", "min_ms"}}``.

    The models are timed in turn, one forward each per round, so load from other processes on
    a shared machine spreads over all of them instead of skewing whichever ran at the time.
    The minimum is the better estimate of the unloaded latency, the median of the typical one.
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"need runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    x = torch.randn(1, 3, img_size, img_size)
    for model in models.values():
        model.eval()
        for _ in range(warmup):
            model(x)
    times = {name: [] for name in models}
    for _ in range(runs):
        for name, model in models.items():
            start = time.perf_counter()
            model(x)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"median_ms": statistics.median(t), "min_ms": min(t)} for name, t in times.items()}


def _entries(ablations: bool):
    for s in STEPS:
        yield {"name": s.name, "label": s.label, "short": s.short, "change": s.change, "group": "roadmap",
               "paper_top1": s.paper_top1, "paper_iphone12_ms": s.paper_iphone12_ms, "paper_distilled": False}
    if ablations:
        seen = set()
        for a in ABLATIONS:
            if a.baseline in PAPER_REFERENCES and a.baseline not in seen:
                seen.add(a.baseline)
                top1, ms = PAPER_REFERENCES[a.baseline]
                yield {"name": a.baseline, "label": "ref", "change": "reference (cross-block SE, re-param)",
                       "group": "ablation", "paper_top1": top1, "paper_iphone12_ms": ms, "paper_distilled": True}
            yield {"name": a.name, "label": "abl", "change": a.change, "group": "ablation",
                   "paper_top1": a.paper_top1, "paper_iphone12_ms": a.paper_iphone12_ms,
                   "paper_distilled": a.distilled}


def roadmap_rows(*, ablations: bool = False, img_size: int = 224, latency: bool = True, runs: int = 50,
                 warmup: int = 10, names: Optional[Iterable[str]] = None,
                 accuracy: Optional[dict] = None) -> list[dict]:
    """One row per model: params (train / fused), GMACs and CPU latency of the fused model, paper figures."""
    wanted = set(names) if names is not None else None
    rows, fused_models = [], {}
    for entry in _entries(ablations):
        if wanted is not None and entry["name"] not in wanted:
            continue
        model = create_model(entry["name"]).eval()
        fused = fused_models[entry["name"]] = reparameterize(model)
        row = {**entry, "params_train": count_params(model), "params_fused": count_params(fused),
               "gmacs_fused": round(count_macs(fused, img_size) / 1e9, 4), "img_size": img_size,
               "threads": torch.get_num_threads()}
        if accuracy and entry["name"] in accuracy:
            row["measured_top1"] = accuracy[entry["name"]]
        rows.append(row)
    if latency:
        timings = measure_latencies(fused_models, img_size, runs=runs, warmup=warmup)
        for row in rows:
            row["cpu_ms"] = round(timings[row["name"]]["median_ms"], 3)
            row["cpu_ms_min"] = round(timings[row["name"]]["min_ms"], 3)
    return rows


def load_accuracy(path: Union[str, os.PathLike]) -> dict:
    """``{model name: top-1}`` from the benchmark's JSON (``{"results": [{"name", "top1"}, ...]}``), from
    ``benchmarks/roadmap_seeds.py --json`` (the mean over seeds), or a plain ``{name: top1}`` dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"accuracy file {str(path)!r} not found; write one with benchmarks/roadmap_imagenette.py")
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "results" in data:
        return {r["name"]: r["top1"] for r in data["results"] if r.get("top1") is not None}
    if isinstance(data, dict) and "rows" in data and "seeds" in data:
        return {r["name"]: r["top1_mean"] for r in data["rows"]}
    if isinstance(data, dict) and all(isinstance(v, (int, float)) for v in data.values()):
        return dict(data)
    raise ValueError(f"{str(path)!r} is not the JSON of benchmarks/roadmap_imagenette.py or roadmap_seeds.py, "
                     "nor a {{name: top1}} mapping")


def format_table(rows: list[dict]) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    measured = any("measured_top1" in r for r in rows)
    header = (f"{'step':<4} {'model':<28} {'params train':>12} {'params fused':>12} {'GMACs':>7} {'CPU ms':>7} {'(min)':>7} "
              + (f"{'ours top-1':>10} " if measured else "") + f"{'paper top-1':>11} {'iPhone ms':>9}  change")
    lines = [header, "-" * len(header)]
    group = rows[0]["group"] if rows else None
    for r in rows:
        if r["group"] != group:
            group = r["group"]
            lines.append(f"side ablations (paper figures trained with distillation) {'-' * 40}")
        paper_top1 = fmt(r["paper_top1"], ".2f" if r["paper_distilled"] else ".1f")
        lines.append(f"{r['label']:<4} {r['name']:<28} {r['params_train']:>12,} {r['params_fused']:>12,} "
                     f"{r['gmacs_fused']:>7.4f} {fmt(r.get('cpu_ms'), '.2f'):>7} {fmt(r.get('cpu_ms_min'), '.2f'):>7} "
                     + (f"{fmt(r.get('measured_top1'), '.1f'):>10} " if measured else "")
                     + f"{paper_top1:>11} {fmt(r['paper_iphone12_ms'], '.2f'):>9}  {r['change']}")
    if rows:
        r0 = rows[0]
        lines.append(f"Measured here: params, GMACs (fused, {r0['img_size']}px) and, if timed, the fused model's batch-1 "
                     f"CPU latency (median and min of interleaved runs, {r0['threads']} thread(s)). Paper: ImageNet-1k top-1 (300 epochs) and "
                     "iPhone 12 latency.")
    return "\n".join(lines)
