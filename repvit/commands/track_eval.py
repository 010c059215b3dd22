"""``repvit track eval``: the DAVIS semi-supervised protocol with the streaming tracker, scored with J, F
and J&F as the official DAVIS evaluator scores them (``repvit.edgetam.evaluation``).

The command line routes ``repvit track eval ...`` here (``repvit/cli.py``: ``ACTIONS``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import _grammar as grammar
from ._weights import EDGETAM_RELEASE as RELEASE, add_edgetam_weights_options

RUNTIMES = ("torch", "onnxruntime", "openvino")


def _sequences(args) -> list:
    from ..data.davis import list_sequences
    every = list_sequences(args.data)
    if not args.sequences:
        return every
    asked = [s.strip() for s in args.sequences.split(",") if s.strip()]
    unknown = [s for s in asked if s not in every]
    if unknown:
        raise ValueError(f"--sequences: {', '.join(unknown)} not in {args.data} (it has {', '.join(every)})")
    return asked


def run_track_eval(args: argparse.Namespace) -> int:
    from ..edgetam.evaluation import evaluate_predictions
    from ..engine import distributed
    sequences = _sequences(args)            # a bad folder or name fails before any model loads
    record: dict = {"data": str(args.data), "sequences": sequences}
    env = distributed.setup("cpu" if args.device in (None, "auto") else args.device)
    try:
        if args.predictions:
            predictions = Path(args.predictions)
            record["method"] = f"predictions read from {predictions}"
        else:
            # under torchrun each rank tracks its share of the sequences, one line per sequence; rank 0 scores
            predictions = Path(args.output)
            mine = [sequences[i] for i in distributed.shard(range(len(sequences)), env)]
            parts = distributed.each_rank(lambda: _track(args, mine, predictions, env), env)
            record.update(parts[0], world_size=env.world_size,
                          timings={k: v for part in parts for k, v in part["timings"].items()},
                          skipped_complete=sorted(s for part in parts for s in part["skipped_complete"]))
        if not env.is_main:
            return 0
        report = evaluate_predictions(args.data, predictions, sequences)
    finally:
        distributed.teardown(env)
    report["run"] = record
    path = grammar.write_report(args.report or predictions / "davis.json", report)
    if not args.quiet:
        width = max(len(s) for s in sequences)
        for name in sequences:
            row = report["sequences"][name]
            print(f"  {name:<{width}}  J&F {row['J&F']['mean']:.4f}  J {row['J']['mean']:.4f}  "
                  f"F {row['F']['mean']:.4f}", file=sys.stderr)
    print(f"{args.data}: {len(sequences)} sequence(s), J&F {report['J&F']['mean']:.4f} (J {report['J']['mean']:.4f}, "
          f"F {report['F']['mean']:.4f}) -> {path}")
    return 0


def _track(args, sequences: list, output: Path, env) -> dict:
    rank = env.rank
    from ..data.davis import list_frames
    from ..edgetam.vos import is_done, track_sequence
    from ..engine.timing import resolve_threads, torch_threads
    from ..progress_bar import Progress
    from ._tracking import make_tracker_on_ranks
    threads = resolve_threads(args.threads)[0]
    done, timings = [], {}
    with torch_threads(threads):
        tracker, described = make_tracker_on_ranks(args, threads, env)
        for name in sequences:
            frames = list_frames(args.data, name)
            if is_done(output, name, frames) and not args.overwrite:
                done.append(name)
                print(f"[rank {rank}] {name}: predictions complete in {output / name}, skipped (--overwrite redoes "
                      "it)", file=sys.stderr)
                continue
            bar = Progress(len(frames), desc=name, unit="frame", enabled=not args.quiet)
            try:
                run = track_sequence(tracker, args.data, name, output, on_frame=lambda i, s: bar.update(1))
            finally:
                bar.close()
            times = sorted(run["seconds"][1:]) or [0.0]
            timings[name] = {"frames": run["frames"], "objects": len(run["objects"]),
                             "median_ms": round(1e3 * times[len(times) // 2], 2), "rank": rank}
            print(f"[rank {rank}] {name}: {run['frames']} frames, {len(run['objects'])} object(s), median "
                  f"{timings[name]['median_ms']:.0f} ms a frame -> {output / name}", file=sys.stderr)
    return {"method": f"streaming tracker ({type(tracker).__name__})", **described, "threads": threads,
            "weights": args.checkpoint or (RELEASE if args.pretrained else "random (seed 0)"),
            "predictions": str(output), "skipped_complete": done, "timings": timings}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "track-eval", prog="repvit track eval", help=argparse.SUPPRESS,
        description="The DAVIS semi-supervised protocol: each object of a sequence's first annotation is prompted "
                    "with its mask on the first frame and tracked frame by frame; the predictions are written "
                    "as DIR/<sequence>/<frame>.png in the annotations' format and scored with J, F and J&F "
                    "(mean, recall, decay) over the frames DAVIS's evaluator scores. --predictions DIR scores "
                    "existing predictions of any method without a model. Under torchrun each rank tracks its "
                    "share of the sequences; complete sequences are skipped, so a rerun resumes.")
    grammar.add(p, "--data", required=True,
                help="a DAVIS folder (JPEGImages/480p/<seq>, Annotations/480p/<seq>; DAVIS 2016 or 2017)")
    p.add_argument("--sequences", metavar="A,B", help="only these sequences (default: every one in ROOT)")
    p.add_argument("--predictions", metavar="DIR", help="score these predictions instead of tracking")
    grammar.add(p, "--output", default="track-eval-out", help="folder for the predictions (one folder per sequence)")
    grammar.add_report(p, help="the scores as JSON (default: OUTPUT/davis.json)")
    grammar.add(p, "--overwrite", help="track sequences again whose predictions are complete (default: skip them)")
    grammar.add(p, "--runtime", choices=RUNTIMES,
                help="the tracker: PyTorch, or the exported graphs on ONNX Runtime or OpenVINO (exported on first "
                     "use, checked, and cached beside the weights) [torch]")
    grammar.add(p, "--export-dir")
    add_edgetam_weights_options(p)
    grammar.add(p, "--device")
    grammar.add(p, "--threads")
    grammar.add(p, "--quiet")
    p.set_defaults(func=run_track_eval)
