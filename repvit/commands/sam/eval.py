"""``repvit sam eval``: zero-shot COCO instance segmentation prompted with ground-truth boxes/points."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .. import _grammar as grammar
from ._common import add_sam_weights, describe_weights, load_sam


def run_eval(args: argparse.Namespace) -> int:
    from ...sam.evaluation import evaluate_coco, find_coco_layout, format_report
    annotations, images = find_coco_layout(args.data, annotations=args.annotations,
                                           images=grammar.one_path(args.images, "--images"), split=args.split)
    sam = load_sam(args)
    print(f"annotations {annotations}, images {images}, prompt {args.prompt}, "
          f"{'unfused' if args.unfused else 'fused'} encoder on {args.device}", file=sys.stderr)
    bar = _Progress(enabled=not args.quiet)
    start = time.perf_counter()
    try:
        report = evaluate_coco(sam, annotations, images, prompt=args.prompt, limit=args.limit, skip_bad=args.skip_bad,
                               batch_size=args.batch_size, results=args.results, progress=bar)
    finally:
        bar.close()
    report["wall_seconds"] = round(time.perf_counter() - start, 2)
    report["weights"] = describe_weights(args)
    report["fused"] = not args.unfused
    report["device"] = str(args.device)
    print(format_report(report))
    for item in report["skipped"][:10]:
        print(f"  skipped {item['file']}{', annotation ' + str(item['annotation']) if 'annotation' in item else ''}: "
              f"{item['reason']}")
    if len(report["skipped"]) > 10:
        print(f"  ... and {len(report['skipped']) - 10} more (all listed in the --report file)")
    print(f"{report['wall_seconds']:.1f} s ({report['seconds']['encoder']:.1f} s encoder, "
          f"{report['seconds']['decoder']:.1f} s decoder)")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.report}")
    for name, path in report.get("results_files", {}).items():
        print(f"wrote {path} (COCO results, {name} prompts)")
    return 0


class _Progress:
    """A tqdm bar over images on stderr; nothing with --quiet or without tqdm."""

    def __init__(self, *, enabled: bool):
        self.enabled, self._bar = enabled, None

    def __call__(self, done: int, total: int, info: dict) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            try:
                from tqdm import tqdm
            except ImportError:
                self.enabled = False
                return
            self._bar = tqdm(total=total, desc="images", unit="img", file=sys.stderr)
        self._bar.set_postfix_str(f"{info['image']}: {info['instances']} prompts", refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def register(actions) -> None:
    p = actions.add_parser(
        "eval", help="zero-shot COCO instance segmentation: mIoU and mask AP with ground-truth prompts",
        description="Prompts the model with each non-crowd ground-truth object of a COCO instances file: its box "
                    "(one mask) and/or one positive point at the box centre (three candidates, the one with the "
                    "highest predicted IoU kept; the best by true IoU is reported as the oracle). Reports mask "
                    "mIoU (also by COCO size) and COCOeval mask AP with masks scored by their predicted IoU. "
                    "Each image is encoded once and all its prompts are decoded together.")
    grammar.add(p, "--data", help="dataset folder: annotations.json + images/, or annotations/instances_<split>.json "
                                  "+ images/<split>/ or <split>/")
    grammar.add_deprecated(p, "--coco", "--data", dest="data")
    grammar.add(p, "--annotations")
    grammar.add(p, "--images", help="the image folder (overrides what --data finds)")
    p.add_argument("--split", help="which annotations/instances_<split>.json (default: the val split)")
    p.add_argument("--prompt", choices=("box", "point", "both"), default="both",
                   help="ground-truth box, box centre as one point, or both protocols (default: both)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images (by id), for quick runs")
    p.add_argument("--skip-bad", action="store_true",
                   help="count and skip missing images and annotations without a usable mask instead of stopping")
    grammar.add(p, "--batch-size", default=64, help="prompts per decoder call")
    grammar.add_report(p, help="write the report (all figures, counts, timings) here")
    p.add_argument("--results", metavar="FILE", help="write the predicted masks as a COCO results file (RLE); "
                                                     "with --prompt both, FILE_box.json and FILE_point.json")
    grammar.add(p, "--quiet")
    add_sam_weights(p)
    p.set_defaults(func=run_eval)
