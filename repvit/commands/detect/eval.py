"""``repvit detect eval``: COCO AP (bbox, and segm for Mask R-CNN) of a detector, fused by default."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ...progress_bar import Progress
from .. import _grammar as grammar
from .._dense import add_common, load_for_inference


def run_eval(args: argparse.Namespace) -> int:
    from ...detection.detectors import load_detector
    from ...detection.data import DetectionData, load_coco
    from ...detection.evaluation import evaluate_detector
    model, device = load_for_inference(load_detector, args)
    masks = model.repvit_config["kind"] == "maskrcnn"
    if args.annotations:
        images = grammar.one_path(args.images, "--images")
        data = DetectionData(images or Path(args.annotations).parent / "images", load_coco(args.annotations),
                             masks=masks, skip_bad=args.skip_bad, source=args.annotations)
    elif args.data:
        data = DetectionData.from_folder(args.data, masks=masks, skip_bad=args.skip_bad)
    else:
        raise ValueError("pass --data PATH (images/ + annotations.json or annotations/*.xml) or --annotations PATH "
                         "[--images PATH]")
    if data.skip_report():   # what --skip-bad left out, by reason
        print(data.skip_report(), file=sys.stderr)
    bar = Progress(desc="images", unit="img", enabled=not args.quiet)
    try:
        result = evaluate_detector(model, data, batch_size=args.batch_size, device=device, progress=bar.update_to)
    finally:
        bar.close()
    result.update(checkpoint=str(args.checkpoint), fused=not args.unfused, data=str(args.data or args.annotations))
    for iou_type in ("bbox", "segm"):
        if iou_type in result:
            m = result[iou_type]
            print(f"{iou_type}: AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}  "
                  f"APs {m['APs']:.3f}  APm {m['APm']:.3f}  APl {m['APl']:.3f}")
    print(f"{result['images']} images, {result['detections']} detections "
          f"({'unfused' if args.unfused else 'fused'} model)")
    if args.report:
        grammar.write_report(args.report, result)
    return 0


def register(actions) -> None:
    ev = actions.add_parser("eval", help="COCO AP (bbox, and segm for Mask R-CNN) on a labelled folder")
    add_common(ev, "detector")
    grammar.add(ev, "--data", help="folder with images/ and annotations.json (COCO) or annotations/*.xml (VOC)")
    grammar.add(ev, "--annotations", help="a COCO instances JSON file (with --images; default: images/ beside it)")
    grammar.add(ev, "--images", help="the image folder of --annotations")
    grammar.add(ev, "--batch-size", default=2)
    grammar.add(ev, "--skip-bad", help="skip (and count) bad annotations and images")
    grammar.add(ev, "--quiet")
    ev.set_defaults(func=grammar.with_threads(run_eval))
