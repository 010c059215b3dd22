"""Combine roadmap_imagenette.py runs that differ only in ``--seed`` into one table with error bars.

A single short run per step is too noisy to rank steps whose accuracies differ by a few points;
the spread over seeds says which step-to-step changes are larger than that noise. The change of
a step is taken per seed (same seed = same data order for both steps) and then averaged, so its
spread is the spread of the change itself.

    for s in 0 1 2 3 4; do PYTHONPATH=. python benchmarks/roadmap_imagenette.py --jobs 2 --seed $s \\
        --out runs/roadmap_seed$s; done
    python benchmarks/roadmap_seeds.py runs/roadmap_seed*/results.json --json runs/roadmap_seeds.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from roadmap_imagenette import rank_agreement  # noqa: E402


def load_runs(paths: list[Path]) -> list[dict]:
    runs = [json.loads(p.read_text()) for p in paths]
    budgets = {json.dumps({k: v for k, v in r["config"].items() if k != "seed"}, sort_keys=True) for r in runs}
    if len(budgets) > 1:
        raise SystemExit("these runs differ in more than the seed; combine only runs of one budget")
    seeds = [r["config"]["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"the same seed appears twice: {seeds}")
    return runs


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def combine(runs: list[dict]) -> dict:
    by_seed = [{r["name"]: r for r in run["results"] if r.get("top1") is not None} for run in runs]
    names = [r["name"] for r in runs[0]["results"] if all(r["name"] in table for table in by_seed)]
    rows, previous = [], None
    for name in names:
        first = by_seed[0][name]
        top1 = [table[name]["top1"] for table in by_seed]
        minutes = [table[name]["minutes"] for table in by_seed]
        mean, sd = mean_sd(top1)
        row = {"name": name, "label": first["label"], "paper_top1": first["paper_top1"], "top1_mean": round(mean, 2),
               "top1_sd": round(sd, 2), "top1_min": min(top1), "top1_max": max(top1), "top1_per_seed": top1,
               "minutes_mean": round(statistics.fmean(minutes), 2)}
        if previous is not None and first["label"] != "abl":
            change = [table[name]["top1"] - table[previous]["top1"] for table in by_seed]
            c_mean, c_sd = mean_sd(change)
            row.update(change_mean=round(c_mean, 2), change_sd=round(c_sd, 2),
                       change_same_sign=sum((c > 0) == (c_mean > 0) for c in change if c != 0))
        if first["label"] != "abl":
            previous = name
        rows.append(row)
    steps = [{"label": r["label"], "top1": r["top1_mean"], "paper_top1": r["paper_top1"]} for r in rows]
    per_seed = [rank_agreement(run["results"])["spearman"] for run in runs]
    return {"seeds": [run["config"]["seed"] for run in runs], "config": {k: v for k, v in runs[0]["config"].items()
                                                                          if k != "seed"},
            "rows": rows, "agreement_of_means": rank_agreement(steps), "spearman_per_seed": per_seed}


def to_markdown(summary: dict) -> str:
    n = len(summary["seeds"])
    lines = [f"| step | model | top-1 mean +- sd over {n} seeds | min-max | change vs previous step (mean +- sd) "
             "| paper top-1 | train min (mean) |", "|---|---|---|---|---|---|---|"]
    for r in summary["rows"]:
        change = (f"{r['change_mean']:+.1f} +- {r['change_sd']:.1f} ({r['change_same_sign']}/{n} same sign)"
                  if "change_mean" in r else "")
        paper = "-" if r["paper_top1"] is None else f"{r['paper_top1']:.1f}"
        lines.append(f"| {r['label']} | `{r['name']}` | {r['top1_mean']:.1f} +- {r['top1_sd']:.1f} | "
                     f"{r['top1_min']:.1f}-{r['top1_max']:.1f} | {change} | {paper} | {r['minutes_mean']:.2f} |")
    agreement = summary["agreement_of_means"]
    lines += ["", f"Spearman rank correlation of the mean top-1 with the paper's: {agreement['spearman']} "
              f"(per seed: {', '.join(str(s) for s in summary['spearman_per_seed'])}); step-to-step changes of the "
              f"means in the paper's direction: {agreement['agreeing']}/{agreement['comparable']}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="results.json of each seed's run")
    p.add_argument("--json", type=Path, default=None, help="also write the combined figures here")
    args = p.parse_args(argv)
    summary = combine(load_runs(args.results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=2))
    print(to_markdown(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
