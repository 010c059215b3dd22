"""Per-epoch metrics in ``metrics.csv`` and ``metrics.jsonl``, per-step loss and lr (every
``--log-interval`` steps) in ``steps.csv``, TensorBoard scalars when tensorboard is installed,
and ``curves.png`` (loss, val top-1, lr) redrawn after each epoch."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional


class MetricsLog:
    def __init__(self, output: Path, *, tensorboard: bool = True, resume: bool = False,
                 metric: tuple = ("val top-1 (%)", ("val_top1", "val_top1_ema"))):
        self.output = Path(output)
        self.metric = metric
        self.csv_path = self.output / "metrics.csv"
        self.jsonl_path = self.output / "metrics.jsonl"
        self.png_path = self.output / "curves.png"
        self.steps_path = self.output / "steps.csv"
        if not resume:
            for path in (self.csv_path, self.jsonl_path, self.steps_path):
                path.unlink(missing_ok=True)
        self.history = self._read_history()
        self.steps = self._read_steps()
        if self.steps_path.is_file():  # rewrite what parsed, so appends never continue a cut-off line
            self._write_steps(self.steps, mode="w")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(log_dir=str(self.output / "tensorboard"))

    def _read_history(self) -> list[dict]:
        if not self.jsonl_path.is_file():
            return []
        return [json.loads(line) for line in self.jsonl_path.read_text().splitlines() if line.strip()]

    def _read_steps(self) -> list[dict]:
        if not self.steps_path.is_file():
            return []
        rows = []
        with open(self.steps_path, newline="") as f:
            for r in csv.DictReader(f):
                try:
                    rows.append({"update": int(r["update"]), "epoch": float(r["epoch"]),
                                 "train_loss": float(r["train_loss"]), "lr": float(r["lr"])})
                except (TypeError, ValueError):  # a line cut short by a kill during the write
                    continue
        return rows

    def add(self, row: dict) -> None:
        # A resumed run repeats no epoch: drop rows of epochs at or after this one (a crash between
        # the log and the checkpoint leaves one behind).
        self.history = [r for r in self.history if r["epoch"] < row["epoch"]] + [row]
        with open(self.jsonl_path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in self.history)
        fields = list(dict.fromkeys(k for r in self.history for k in r))
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.history)
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, row["epoch"])
            self.writer.flush()
        plot_curves(self.history, self.png_path, self.steps, self.metric)

    def add_step(self, step: int, loss: float, lr: float, epoch: float) -> None:
        """``step``: optimizer updates so far; ``epoch``: fractional epochs done (for plotting)."""
        row = {"update": step, "epoch": round(epoch, 4), "train_loss": loss, "lr": lr}
        if self.steps and self.steps[-1]["update"] >= step:
            # Resumed from a checkpoint older than the last logged steps: those steps are redone.
            self.steps = [r for r in self.steps if r["update"] < step]
            self._write_steps(self.steps, mode="w")
        self.steps.append(row)
        self._write_steps([row], mode="a")
        if self.writer is not None:
            self.writer.add_scalar("step/train_loss", loss, step)
            self.writer.add_scalar("step/lr", lr, step)

    def _write_steps(self, rows: list[dict], mode: str) -> None:
        new_file = mode == "w" or not self.steps_path.is_file()
        with open(self.steps_path, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["update", "epoch", "train_loss", "lr"])
            if new_file:
                writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def plot_curves(history: list[dict], path: Path, steps: Optional[list[dict]] = None,
                metric: tuple = ("val top-1 (%)", ("val_top1", "val_top1_ema"))) -> None:
    """Three panels against epochs: loss (per logged step and per epoch), the validation metric
    (``(title, keys)``: val top-1 and EMA for classifiers), learning rate (per logged step, so the
    warm-up shows, else per epoch)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = steps or []
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(12, 3.6), tight_layout=True)
    FigureCanvasAgg(fig)
    panels = [("loss", ["train_loss", "val_loss"]), (metric[0], list(metric[1])), ("lr", ["lr"])]
    for i, (title, keys) in enumerate(panels):
        ax = fig.add_subplot(1, 3, i + 1)
        if title != metric[0] and steps:
            key = "lr" if title == "lr" else "train_loss"
            ax.plot([r["epoch"] for r in steps], [r[key] for r in steps], linewidth=0.8,
                    alpha=0.5 if key == "train_loss" else 1.0, label=f"{key} (logged steps)")
        for key in ([] if title == "lr" and steps else keys):  # per-step lr supersedes per-epoch lr
            points = [(e, r[key]) for e, r in zip(epochs, history) if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=f"{key} (epoch)" if steps else key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if title == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        elif ax.get_legend_handles_labels()[0]:   # an epoch without validation has no metric to label
            ax.legend(fontsize=8)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
