"""A Figure-2-style chart of the roadmap: latency and accuracy per step, ours beside the paper's."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union


def plot_roadmap(rows: list[dict], path: Union[str, os.PathLike]) -> Path:
    """Draw the roadmap steps of ``rows`` (from ``report.roadmap_rows``) into a PNG at ``path``.

    Top: measured CPU latency of the fused model (bars) and the paper's iPhone 12 latency
    (line, right axis). Bottom: the paper's ImageNet top-1 (line) and, when the rows carry
    it, the small-scale top-1 measured here (line, right axis). The two latencies and the two
    accuracies live on separate axes: only their trends along the roadmap are comparable.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in rows if r["group"] == "roadmap"]
    if not steps:
        raise ValueError("no roadmap steps to plot")
    x = list(range(len(steps)))
    labels = [f"{r['label']}\n{r.get('short', '')}" for r in steps]
    fig, (ax_lat, ax_acc) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True, constrained_layout=True)

    if all(r.get("cpu_ms") is not None for r in steps):
        bars = ax_lat.bar(x, [r["cpu_ms"] for r in steps], color="#8fb3d9", label=f"fused, CPU batch 1 "
                          f"({steps[0]['threads']} thread(s), {steps[0]['img_size']}px), measured here")
        ax_lat.bar_label(bars, fmt="%.1f", fontsize=8, label_type="center", color="#1f3f66")
        ax_lat.set_ylabel("CPU latency here (ms)")
    else:
        ax_lat.text(0.5, 0.5, "latency not measured (--no-latency)", transform=ax_lat.transAxes, ha="center")
    paper_lat = ax_lat.twinx()
    _series(paper_lat, x, [r["paper_iphone12_ms"] for r in steps], "o-", "#c0392b", "iPhone 12 latency, paper", ".2f")
    paper_lat.set_ylabel("iPhone 12 latency, paper (ms)", color="#c0392b")
    _legend(ax_lat, paper_lat)
    fig.suptitle("RepViT roadmap: MobileNetV3-L (step 0) to RepViT-M0.9 (step 8)")

    _series(ax_acc, x, [r["paper_top1"] for r in steps], "s-", "#c0392b", "ImageNet top-1, paper (300 ep)", ".1f")
    ax_acc.set_ylabel("ImageNet top-1, paper (%)", color="#c0392b")
    measured = [r.get("measured_top1") for r in steps]
    if any(v is not None for v in measured):
        ours = ax_acc.twinx()
        _series(ours, x, measured, "D--", "#1f5f99", "small-scale top-1, measured here", ".1f")
        ours.set_ylabel("top-1 measured here (%)", color="#1f5f99")
        _legend(ax_acc, ours)
    else:
        _legend(ax_acc)
    ax_acc.set_xticks(x, labels, fontsize=8)
    ax_acc.grid(axis="y", alpha=0.3)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _series(ax, x, values, style, color, label, spec):
    """A line over the steps that have a value (the paper gives no top-1 for step 2a)."""
    points = [(i, v) for i, v in zip(x, values) if v is not None]
    if not points:
        return
    xs, ys = zip(*points)
    ax.plot(xs, ys, style, color=color, label=label)
    for i, v in points:
        ax.annotate(format(v, spec), (i, v), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7,
                    color=color)
    low, high = min(ys), max(ys)
    pad = max((high - low) * 0.15, 0.05 * abs(high) or 0.1)
    ax.set_ylim(low - pad, high + pad)


def _legend(*axes):
    handles, labels = [], []
    for ax in axes:
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    axes[0].legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(labels), fontsize=8,
                   frameon=False)
