"""Train every roadmap step (MobileNetV3-L -> RepViT-M0.9) from scratch with one short budget on
Imagenette-96 and report top-1 per step beside the paper's ImageNet figures.

Each step is trained by ``python -m repvit train`` in its own process, with identical data, seed,
recipe and budget; only the architecture changes. The recipe is the paper's (AdamW, cosine,
AGC clipping, label smoothing) minus what a few-epoch run cannot use: RandAugment, Mixup/CutMix,
random erasing, repeated augmentation and the EMA are off (with decay 0.99996 the EMA would
hardly move in a few hundred updates).

The training subset is a folder of symbolic links to the first N images per class of the
shared data set (nothing is copied). Results go to ``OUT/results.json`` after every step; a
rerun with the same settings skips the steps already done.

    PYTHONPATH=. .venv/bin/python benchmarks/roadmap_imagenette.py --jobs 2   # 3.5 min on 2 idle CPU cores
    PYTHONPATH=. .venv/bin/python -m repvit roadmap --accuracy runs/roadmap_imagenette/results.json --plot roadmap.png
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from repvit.roadmap import ABLATIONS, STEPS  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "imagenette-96"
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".JPEG"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Imagenette root with train/ and val/")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "roadmap_imagenette", help="runs, subset and results")
    p.add_argument("--train-per-class", type=int, default=120, help="training images per class (0: all)")
    p.add_argument("--val-per-class", type=int, default=50, help="validation images per class (0: all)")
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3, help="absolute AdamW learning rate")
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="OMP/torch threads per training process (default: torch's, 1 when --jobs > 1)")
    p.add_argument("--jobs", type=int, default=1,
                   help="training processes at once; on a small shared CPU, 2 jobs x 1 thread wastes less than 1 x 2")
    p.add_argument("--models", nargs="*", default=None, help="train only these roadmap models")
    p.add_argument("--ablations", action="store_true", help="also train the side ablations")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return p.parse_args(argv)


def make_subset(data: Path, dest: Path, per_class: dict[str, int]) -> Path:
    """ImageFolder of symlinks to the first images (sorted by name) of every class."""
    for split, count in per_class.items():
        src_split = data / split
        if not src_split.is_dir():
            raise SystemExit(f"{src_split} not found: pass --data pointing at imagenette-96")
        for class_dir in sorted(p for p in src_split.iterdir() if p.is_dir()):
            out = dest / split / class_dir.name
            out.mkdir(parents=True, exist_ok=True)
            images = sorted(p for p in class_dir.iterdir() if p.suffix in IMAGE_SUFFIXES)
            for image in images[:count] if count else images:
                link = out / image.name
                if not link.exists():
                    link.symlink_to(image.resolve())
    return dest


def train_command(args, name: str, data: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "repvit", "train", "--model", name, "--data", str(data), "--output", str(output),
            "--overwrite", "--img-size", str(args.img_size), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup-epochs", str(args.warmup_epochs),
            "--workers", str(args.workers), "--seed", str(args.seed), "--aa", "none", "--mixup", "0",
            "--cutmix", "0", "--reprob", "0", "--aug-repeats", "1", "--no-model-ema", "--no-tensorboard",
            "--log-interval", "20"]


def read_metrics(output: Path) -> list[dict]:
    path = output / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def paper_figures() -> dict:
    figures = {s.name: {"label": s.label, "change": s.change, "paper_top1": s.paper_top1,
                        "paper_iphone12_ms": s.paper_iphone12_ms, "paper_distilled": False} for s in STEPS}
    figures.update({a.name: {"label": "abl", "change": a.change, "paper_top1": a.paper_top1,
                             "paper_iphone12_ms": a.paper_iphone12_ms, "paper_distilled": a.distilled}
                    for a in ABLATIONS})
    return figures


def rank_agreement(results: list[dict]) -> dict:
    """Spearman correlation of our top-1 with the paper's over the steps the paper scores, and how
    many consecutive-step changes go the same way in both."""
    steps = [r for r in results if r["label"] != "abl" and r.get("top1") is not None]
    scored = [r for r in steps if r["paper_top1"] is not None]

    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):  # average ranks over ties
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    spearman = None
    if len(scored) >= 3:
        a, b = ranks([r["top1"] for r in scored]), ranks([r["paper_top1"] for r in scored])
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
        var = (sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) ** 0.5
        spearman = round(cov / var, 3) if var else None
    same, pairs = 0, []
    for prev, cur in zip(scored, scored[1:]):
        ours, theirs = cur["top1"] - prev["top1"], cur["paper_top1"] - prev["paper_top1"]
        agree = (ours > 0) == (theirs > 0) if ours != 0 and theirs != 0 else None  # a tie agrees with nothing
        pairs.append({"from": prev["label"], "to": cur["label"], "ours": round(ours, 2), "paper": round(theirs, 2),
                      "agree": agree})
        same += bool(agree)
    return {"spearman": spearman, "transitions": pairs, "agreeing": same,
            "comparable": sum(p["agree"] is not None for p in pairs)}


def format_results(results: list[dict], config: dict) -> str:
    lines = [f"| step | model | top-1 here (final) | best epoch top-1 | train min | paper top-1 | paper iPhone 12 ms | change |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        def fmt(v, spec):
            return "-" if v is None else format(v, spec)
        lines.append(f"| {r['label']} | `{r['name']}` | {fmt(r.get('top1'), '.1f')} | {fmt(r.get('best_top1'), '.1f')} | "
                     f"{fmt(r.get('minutes'), '.1f')} | {fmt(r['paper_top1'], '.1f')}{'*' if r['paper_distilled'] else ''} | "
                     f"{fmt(r['paper_iphone12_ms'], '.2f')} | {r['change']} |")
    agreement = rank_agreement(results)
    lines.append("")
    lines.append(f"Budget: {config['epochs']} epochs at {config['img_size']}px, {config['train_images']} training / "
                 f"{config['val_images']} validation images, batch {config['batch_size']}, lr {config['lr']}, seed "
                 f"{config['seed']}. Spearman rank correlation with the paper's top-1 over scored steps: "
                 f"{agreement['spearman']}; step-to-step changes in the same direction: "
                 f"{agreement['agreeing']}/{agreement['comparable']}.")
    return "\n".join(lines)


# The settings that decide a result; threads, jobs, workers and the output folder do not.
RESULT_KEYS = ("data", "train_per_class", "val_per_class", "img_size", "epochs", "batch_size", "lr", "warmup_epochs",
               "seed")


def main(argv=None) -> int:
    args = parse_args(argv)
    every = [s.name for s in STEPS] + [a.name for a in ABLATIONS]
    names = [s.name for s in STEPS] + ([a.name for a in ABLATIONS] if args.ablations else [])
    if args.models:
        unknown = set(args.models) - set(every)
        if unknown:
            raise SystemExit(f"unknown roadmap models: {', '.join(sorted(unknown))}")
        names = [n for n in every if n in args.models]
    args.out.mkdir(parents=True, exist_ok=True)
    subset = make_subset(args.data, args.out / "data", {"train": args.train_per_class, "val": args.val_per_class})
    config = {k: str(getattr(args, k)) if isinstance(getattr(args, k), Path) else getattr(args, k) for k in RESULT_KEYS}
    config["train_images"] = sum(1 for p in (subset / "train").rglob("*") if p.is_symlink())
    config["val_images"] = sum(1 for p in (subset / "val").rglob("*") if p.is_symlink())
    results_path = args.out / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.is_file() else {}
    same = {k: v for k, v in previous.get("config", {}).items() if k in config} == config
    table = {r["name"]: r for r in previous.get("results", [])} if same else {}
    figures = paper_figures()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    threads = args.threads or (1 if args.jobs > 1 else None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    lock, started = threading.Lock(), time.time()

    def save() -> None:
        rows = [table[n] for n in every if n in table]
        results_path.write_text(json.dumps({"config": config, "results": rows, "agreement": rank_agreement(rows)},
                                           indent=2))

    def train(name: str) -> None:
        output = args.out / name
        print(f"{name}: training ({time.time() - started:.0f}s elapsed)", flush=True)
        t0 = time.time()
        with open(args.out / f"{name}.log", "w") as log:
            proc = subprocess.run(train_command(args, name, subset, output), cwd=REPO, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
        metrics = read_metrics(output)
        row = {"name": name, **figures[name], "returncode": proc.returncode,
               "minutes": round((time.time() - t0) / 60, 2),
               "top1": metrics[-1]["val_top1"] if metrics and proc.returncode == 0 else None,
               "best_top1": max(m["val_top1"] for m in metrics) if metrics else None,
               "train_loss": metrics[-1]["train_loss"] if metrics else None}
        if proc.returncode != 0:
            print(f"{name}: training failed (exit {proc.returncode}); see {args.out / (name + '.log')}", flush=True)
        else:
            print(f"{name}: top-1 {row['top1']:.2f}% (best {row['best_top1']:.2f}%), {row['minutes']:.1f} min",
                  flush=True)
        with lock:
            table[name] = row
            save()

    todo = [n for n in names if table.get(n, {}).get("top1") is None]
    for name in names:
        if name not in todo:
            print(f"{name}: done earlier, top-1 {table[name]['top1']:.2f}%", flush=True)
    if args.dry_run:
        for name in todo:
            print(" ".join(train_command(args, name, subset, args.out / name)))
        return 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(train, todo))
    rows = [table[n] for n in every if n in table]
    save()
    table_md = format_results(rows, config)
    (args.out / "results.md").write_text(table_md + "\n")
    print(table_md)
    print(f"this invocation: {(time.time() - started) / 60:.1f} min wall; "
          f"training time over all steps: {sum(r['minutes'] for r in rows):.1f} min; results in {results_path}")
    return 0 if all(r.get("returncode", 0) == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
