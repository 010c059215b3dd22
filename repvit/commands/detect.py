"""``repvit detect train|eval|predict|export``: detectors on RepViT: trained,
scored with COCOeval (fused by default), drawn, exported."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

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
        data = DetectionData(args.images or Path(args.annotations).parent / "images", load_coco(args.annotations),
                             masks=masks, skip_bad=args.skip_bad, source=args.annotations)
    elif args.data:
        data = DetectionData.from_folder(args.data, masks=masks, skip_bad=args.skip_bad)
    else:
        raise ValueError("pass --data DIR (images/ + annotations.json or annotations/*.xml) or --annotations FILE "
                         "[--images DIR]")
    result = evaluate_detector(model, data, batch_size=args.batch_size, device=device)
    result.update(checkpoint=str(args.checkpoint), fused=not args.unfused, data=str(args.data or args.annotations))
    for iou_type in ("bbox", "segm"):
        if iou_type in result:
            m = result[iou_type]
            print(f"{iou_type}: AP {m['AP']:.3f}  AP50 {m['AP50']:.3f}  AP75 {m['AP75']:.3f}  "
                  f"APs {m['APs']:.3f}  APm {m['APm']:.3f}  APl {m['APl']:.3f}")
    print(f"{result['images']} images, {result['detections']} detections "
          f"({'unfused' if args.unfused else 'fused'} model)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
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
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


def run_export(args: argparse.Namespace) -> int:
    from ..detection.detectors import load_detector
    from ..export.dense import export_detector_torchscript
    model = load_detector(args.checkpoint)
    report = export_detector_torchscript(model, args.output, real_images(args.images, args.num_real),
                                         class_names=model.class_names, category_ids=model.category_ids)
    print(f"verified: {report['path']} (TorchScript, fused; max |diff| {report['max_abs_diff']:.3g} on "
          f"{len(report['detections'])} real images)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("detect", help="object detection / instance segmentation: train, eval, predict, export")
    sub = parser.add_subparsers(dest="detect_command", metavar="ACTION", required=True)
    ev = sub.add_parser("eval", help="COCO AP (bbox, and segm for Mask R-CNN) on a labelled folder")
    add_common(ev, "detector")
    ev.add_argument("--data", help="folder with images/ and annotations.json (COCO) or annotations/*.xml (VOC)")
    ev.add_argument("--annotations", help="a COCO JSON file (with --images DIR; default: images/ beside it)")
    ev.add_argument("--images", help="image folder for --annotations")
    ev.add_argument("--batch-size", type=int, default=2)
    ev.add_argument("--skip-bad", action="store_true", help="skip (and count) bad annotations and images")
    ev.set_defaults(func=run_eval)
    pr = sub.add_parser("predict", help="draw boxes, labels, scores and masks over images (PNG)")
    add_common(pr, "detector")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    pr.add_argument("--output", default="detections", help="folder for the drawn PNGs [detections]")
    pr.add_argument("--score-threshold", type=float, default=0.5, help="draw detections scoring at least this [0.5]")
    pr.set_defaults(func=run_predict)
    ex = sub.add_parser("export", help="the fused detector to TorchScript, checked on real images")
    ex.add_argument("--checkpoint", required=True, help="a detector saved by this library")
    ex.add_argument("--output", default="detector-fused.pt", help="file to write, used as given [detector-fused.pt]")
    ex.add_argument("--images", default=None, help="folder of real images to check the export on (default: two "
                                                   "photos shipped with matplotlib)")
    ex.add_argument("--num-real", type=int, default=4, help="real images to check on [4]")
    ex.add_argument("--json", default=None, help="write the check's report to this JSON file")
    ex.set_defaults(func=run_export)
    add_train(sub, "detect", "..detection.training")
