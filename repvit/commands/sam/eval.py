"""``repvit sam eval``: zero-shot COCO instance segmentation prompted with ground-truth boxes/points."""
from __future__ import annotations

import argparse
import sys
import time

from ...progress_bar import Progress
from .. import _grammar as grammar
from ._common import add_sam_weights, describe_weights, load_sam


def run_eval(args: argparse.Namespace) -> int:
    from ...sam.evaluation import evaluate_coco, find_coco_layout, format_report
    annotations, images = find_coco_layout(args.data, annotations=args.annotations,
                                           images=grammar.one_path(args.images, "--images"), split=args.split)
    sam = load_sam(args)
    model, encoder = sam, ("unfused" if args.unfused else "fused") + f" encoder on {args.device}"
    if args.encoder:
        from ...sam.exported import exported_encoder_predictor
        if args.unfused:
            raise ValueError("--encoder replaces the PyTorch encoder: drop --unfused")
        model = exported_encoder_predictor(sam.cpu(), args.encoder)
        encoder = f"encoder file {args.encoder} (the decoder from the weights)"
    point = f" (point: {args.point})" if args.prompt != "box" else ""
    print(f"annotations {annotations}, images {images}, prompt {args.prompt}{point}, {encoder}", file=sys.stderr)
    bar = Progress(desc="images", unit="img", enabled=not args.quiet)

    def progress(done: int, total: int, info: dict) -> None:
        bar.set_postfix(f"{info['image']}: {info['instances']} prompts")
        bar.update_to(done, total)
    start = time.perf_counter()
    try:
        report = evaluate_coco(model, annotations, images, prompt=args.prompt, point=args.point, limit=args.max_images,
                               skip_bad=args.skip_bad, batch_size=args.batch_size, results=args.results,
                               progress=progress)
    finally:
        bar.close()
    report["wall_seconds"] = round(time.perf_counter() - start, 2)
    report["weights"] = describe_weights(args)
    report["fused"] = not args.unfused
    report["device"] = "cpu" if args.encoder else str(args.device)
    report["encoder_file"] = str(args.encoder) if args.encoder else None
    print(format_report(report))
    for item in report["skipped"][:10]:
        print(f"  skipped {item['file']}{', annotation ' + str(item['annotation']) if 'annotation' in item else ''}: "
              f"{item['reason']}")
    if len(report["skipped"]) > 10:
        print(f"  ... and {len(report['skipped']) - 10} more (all listed in the --report file)")
    print(f"{report['wall_seconds']:.1f} s ({report['seconds']['encoder']:.1f} s encoder, "
          f"{report['seconds']['decoder']:.1f} s decoder)")
    if args.report:
        grammar.write_report(args.report, report)
        print(f"wrote {args.report}")
    for name, path in report.get("results_files", {}).items():
        print(f"wrote {path} (COCO results, {name} prompts)")
    return 0


def register(actions) -> None:
    p = actions.add_parser(
        "eval", help="zero-shot COCO instance segmentation: mIoU and mask AP with ground-truth prompts",
        description="Prompts the model with each non-crowd ground-truth object of a COCO instances file: its box "
                    "(one mask) and/or one positive point (--point-at: at the box centre, or farthest from the mask "
                    "boundary as published SAM figures do; three candidates, the one with the highest predicted "
                    "IoU kept; the best by true IoU is reported as the oracle). Reports mask "
                    "mIoU (also by COCO size) and COCOeval mask AP with masks scored by their predicted IoU. "
                    "Each image is encoded once and all its prompts are decoded together.")
    grammar.add(p, "--data", help="dataset folder: annotations.json + images/, or annotations/instances_<split>.json "
                                  "+ images/<split>/ or <split>/")
    grammar.add_deprecated(p, "--coco", "--data", dest="data")
    grammar.add(p, "--annotations")
    grammar.add(p, "--images", help="the image folder (overrides what --data finds)")
    p.add_argument("--split", help="which annotations/instances_<split>.json (default: the val split)")
    p.add_argument("--prompt", choices=("box", "point", "both"), default="both",
                   help="ground-truth box, one point, or both protocols (default: both)")
    p.add_argument("--point-at", dest="point", choices=("center", "farthest"), default="center",
                   help="where the point goes: the centre of the ground-truth box (default), or the mask pixel "
                        "farthest from the mask boundary, the click published SAM point figures simulate")
    grammar.add_retired(p, "--point", "--point-at center|farthest", meaning="a point prompt X,Y[,LABEL]")
    grammar.add(p, "--max-images", help="only the first N images (by id), for quick runs")
    grammar.add_deprecated(p, "--limit", "--max-images", dest="max_images", type=int)
    grammar.add(p, "--skip-bad", help="count and skip missing images and annotations without a usable mask instead "
                                      "of stopping")
    grammar.add(p, "--batch-size", default=64, help="prompts per decoder call")
    grammar.add_report(p, help="write the report (all figures, counts, timings) here")
    p.add_argument("--results", metavar="FILE", help="write the predicted masks as a COCO results file (RLE); "
                                                     "with --prompt both, FILE_box.json and FILE_point.json")
    grammar.add(p, "--quiet")
    p.add_argument("--encoder", metavar="FILE",
                   help="score an exported encoder instead of the PyTorch one: repvit_sam_encoder[-int8].onnx, "
                        ".xml (OpenVINO), .tflite (LiteRT) or .pte (ExecuTorch) from `repvit sam export`; the "
                        "decoder is the weights' (give the weights the file was exported from)")
    add_sam_weights(p)
    grammar.add(p, "--threads")
    p.set_defaults(func=grammar.with_threads(run_eval))
