"""``repvit detect train|eval|predict|export``: detectors on RepViT: trained,
scored with COCOeval (fused by default), drawn, exported."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import _grammar as grammar
from ._dense import add_common, add_train, load_for_inference, real_images


def _load(args):
    from ..detection.detectors import load_detector
    return load_for_inference(load_detector, args)


def run_eval(args: argparse.Namespace) -> int:
    from ..detection.data import DetectionData, load_coco
    from ..detection.evaluation import evaluate_detector
    model, device = _load(args)
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
    result = evaluate_detector(model, data, batch_size=args.batch_size, device=device)
    result.update(checkpoint=str(args.checkpoint), fused=not args.unfused, data=str(args.data or args.annotations))
    for iou_type in ("bbox", "segm"):
        if iou_type in result:
            m = result[iou_type]
            print(f"{iou_type}: AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}  "
                  f"APs {m['APs']:.3f}  APm {m['APm']:.3f}  APl {m['APl']:.3f}")
    print(f"{result['images']} images, {result['detections']} detections "
          f"({'unfused' if args.unfused else 'fused'} model)")
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from ..detection.evaluation import predict_images
    from ..classification.eval_predict import expand_images
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold is a probability in [0, 1], got {args.score_threshold}")
    model, device = _load(args)
    results = predict_images(model, expand_images(args.images), Path(args.output), class_names=model.class_names,
                             score_threshold=args.score_threshold, device=device)
    for r in results:
        found = ", ".join(f"{d['class']} {d['score']:.2f}" for d in r["detections"]) or "nothing above the threshold"
        print(f"{r['image']}: {found} -> {r['drawn']}")
    if args.report:
        Path(args.report).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..detection.detectors import load_detector
    from ..export.dense import export_detector_torchscript
    model = load_detector(args.checkpoint)
    report = export_detector_torchscript(model, args.output, real_images(args.images, args.num_real),
                                         class_names=model.class_names, category_ids=model.category_ids)
    print(f"verified: {report['path']} (TorchScript, fused; max |diff| {report['max_abs_diff']:.3g} on "
          f"{len(report['detections'])} real images)")
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("detect", help="object detection / instance segmentation: train, eval, predict, export")
    sub = parser.add_subparsers(dest="detect_command", metavar="ACTION", required=True)
    ev = sub.add_parser("eval", help="COCO AP (bbox, and segm for Mask R-CNN) on a labelled folder")
    add_common(ev, "detector")
    grammar.add(ev, "--data", help="folder with images/ and annotations.json (COCO) or annotations/*.xml (VOC)")
    grammar.add(ev, "--annotations", help="a COCO instances JSON file (with --images; default: images/ beside it)")
    grammar.add(ev, "--images", help="the image folder of --annotations")
    grammar.add(ev, "--batch-size", default=2)
    grammar.add(ev, "--skip-bad", help="skip (and count) bad annotations and images")
    ev.set_defaults(func=run_eval)
    pr = sub.add_parser("predict", help="draw boxes, labels, scores and masks over images (PNG)")
    add_common(pr, "detector")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    grammar.add(pr, "--output", default="detections", help="folder for the drawn PNGs")
    pr.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this [0.5]")
    pr.set_defaults(func=run_predict)
    ex = sub.add_parser("export", help="the fused detector to TorchScript, checked on real images")
    grammar.add(ex, "--checkpoint", required=True, help="a detector saved by this library")
    grammar.add(ex, "--output", default="detector-fused.pt", help="file to write, used as given")
    grammar.add(ex, "--images", help="folder of real images to check the export on (default: two photos shipped "
                                     "with matplotlib)")
    ex.add_argument("--num-real", type=int, default=4, help="real images to check on [4]")
    grammar.add_report(ex, help="write the check's report to this JSON file")
    ex.set_defaults(func=run_export)
    add_train(sub, "detect", "..detection.training")
