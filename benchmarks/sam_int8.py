"""INT8 RepViT-SAM encoders: what quantization does to the masks, per runtime.

1. ``repvit sam export --int8``'s library path (``export_sam(int8=True)``): the fused float encoder for each
   runtime, then its INT8 copy calibrated on ``--calib-count`` COCO train photos, each kept only if the float
   decoder's masks from its embeddings agree with the float encoder's (mean IoU >= 0.9 on the check photo's
   click, box and box + background click);
2. ``repvit sam eval``'s scoring (``evaluate_coco``, prompted with each ground-truth box) of the PyTorch
   encoder and of every file (``exported_encoder_predictor``: the file's embedding, the PyTorch decoder) on
   the COCO val photos, and, per instance, the IoU of each file's mask with the PyTorch encoder's mask.

Without ``--checkpoint`` / ``--pretrained`` the weights are random (seed 0, as ``--random-weights``): the masks
then mean nothing against the ground truth, and the agreement with the float masks is a sensitivity check of
the quantized encoder, not a quality figure. With the official weights (``--pretrained``, downloaded once)
the same command gives both.

    PYTHONPATH=. python benchmarks/sam_int8.py --limit 40 --json sam_int8.json
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit.commands._grammar import write_report  # noqa: E402
from repvit.sam.export import export_sam, fused_cpu_copy  # noqa: E402
from repvit.sam.exported import exported_encoder_predictor  # noqa: E402
from repvit.sam.export_int8 import INT8_FILE_NAMES  # noqa: E402
from repvit.engine.timing import environment, load_average, torch_threads  # noqa: E402
from repvit.sam import build_sam  # noqa: E402
from repvit.sam.evaluation import evaluate_coco, find_coco_layout  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128-instances"
FLOAT_FILES = {"onnx": "repvit_sam_encoder.onnx", "openvino": "repvit_sam_encoder.xml",
               "litert": "repvit_sam_encoder.tflite", "executorch": "repvit_sam_encoder.pte"}


def mask_agreement(reference: list, candidate: list) -> dict:
    """Per-instance IoU of two runs' masks (COCO results of the same prompts, in the same order)."""
    from pycocotools import mask as mask_utils
    if [d["image_id"] for d in reference] != [d["image_id"] for d in candidate]:
        raise ValueError("the two runs prompted different instances")
    ious = np.array([mask_utils.iou([c["segmentation"]], [r["segmentation"]], [0])[0, 0]
                     for r, c in zip(reference, candidate)], np.float64)
    return {"mean_iou": float(ious.mean()), "min_iou": float(ious.min()),
            "share_above_0.9": float((ious >= 0.9).mean()), "instances": int(len(ious))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="RepViT-SAM weights (default: random, seed 0)")
    weights.add_argument("--pretrained", action="store_true", help="the official repvit_sam.pt (downloads once)")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--runtimes", default="onnx,openvino,litert,executorch")
    p.add_argument("--calib-count", type=int, default=16)
    p.add_argument("--limit", type=int, default=40, help="val images scored (by id)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", help="keep the exported files here (default: a temporary folder)")
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    sam = build_sam(checkpoint=args.checkpoint, pretrained=args.pretrained)
    sam = fused_cpu_copy(sam)
    described = args.checkpoint or ("official repvit_sam.pt" if args.pretrained else "random (seed 0)")
    annotations, images = find_coco_layout(args.data)
    calib = Path(args.data) / "images" / "train2017"
    check_photo = sorted(Path(images).glob("*.jpg"))[0]
    report = {"environment": environment(), "weights": described, "threads": args.threads,
              "load_before": load_average(), "results": {}}
    start = time.perf_counter()
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        exported = export_sam(sam, work, formats=args.runtimes, images=[check_photo], max_images=1, int8=True,
                              calibration=calib, calib_count=args.calib_count, strict=False, log=print)
        report["export"] = exported
        candidates = {"pytorch fused": None}
        for fmt in args.runtimes.split(","):
            candidates[f"{fmt} float"] = work / FLOAT_FILES[fmt]
            candidates[f"{fmt} int8"] = work / INT8_FILE_NAMES[fmt]
        masks = {}
        for name, path in candidates.items():
            if path is not None and not path.exists():
                report["results"][name] = {"missing": "not written or removed by its check (see export)"}
                print(f"{name}: no file", flush=True)
                continue
            model = sam if path is None else exported_encoder_predictor(sam, path)
            results = work / f"results-{name.replace(' ', '-')}.json"
            t = time.perf_counter()
            scored = evaluate_coco(model, annotations, images, prompt="box", limit=args.limit, results=results)
            entry = {"mIoU": scored["prompts"]["box"]["mIoU"], "AP": scored["prompts"]["box"]["segm"]["AP"],
                     "instances": scored["instances"], "images": scored["images"],
                     "encoder_seconds": scored["seconds"]["encoder"], "seconds": time.perf_counter() - t}
            masks[name] = json.loads(results.read_text())
            if path is not None:
                entry["vs_pytorch_masks"] = mask_agreement(masks["pytorch fused"], masks[name])
                check = exported["formats"].get(name.split()[0], {}).get("encoder_int8" if "int8" in name else
                                                                        "encoder", {})
                entry["export_check"] = {k: check.get(k) for k in ("passed", "mask_iou_mean", "max_abs_diff")}
            report["results"][name] = entry
            agree = entry.get("vs_pytorch_masks", {}).get("mean_iou")
            print(f"{name}: box mIoU {entry['mIoU']:.4f}, AP {entry['AP']:.4f}"
                  + ("" if agree is None else f", masks vs PyTorch's: mean IoU {agree:.4f}"), flush=True)
    report["load_after"] = load_average()
    report["wall_seconds"] = time.perf_counter() - start
    print(f"\n{report['environment']['cpu']}, weights {described}, load {report['load_before']} -> "
          f"{report['load_after']}")
    print(f"{'encoder':<20} {'box mIoU':>9} {'change':>7} {'masks vs float: mean IoU':>25} {'>= 0.9':>7}")
    base = report["results"]["pytorch fused"]["mIoU"]
    for name, r in report["results"].items():
        if "missing" in r:
            print(f"{name:<20} {r['missing']}")
            continue
        agree = r.get("vs_pytorch_masks")
        print(f"{name:<20} {100 * r['mIoU']:>9.2f} {100 * (r['mIoU'] - base):>+7.2f} "
              f"{'-' if agree is None else format(agree['mean_iou'], '.4f'):>25} "
              f"{'-' if agree is None else format(agree['share_above_0.9'], '.1%'):>7}")
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
