"""``repvit sam predict`` (point/box prompts) and ``repvit sam everything`` (automatic masks)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ...progress_bar import Progress
from .. import _grammar as grammar
from .._weights import EDGETAM_RELEASE as EDGETAM, edgetam_weights
from ._common import add_sam_weights, load_sam


def _predictor(args):
    """segment-anything's SamPredictor on RepViT-SAM, or EdgeTAM's image predictor (same calls)."""
    if getattr(args, "family", "repvit_sam") != EDGETAM:
        from segment_anything import SamPredictor
        return SamPredictor(load_sam(args))
    try:
        from ...edgetam import ImagePredictor, build_edgetam
    except ImportError as err:
        raise ImportError(f"--family edgetam needs Meta's sam2 package: pip install 'repvit-pytorch[edgetam]' ({err})") from None
    pretrained, device, seed = edgetam_weights(args)
    args.device = str(device)
    return ImagePredictor(build_edgetam(args.checkpoint, pretrained=pretrained, fused=not args.unfused, device=device,
                                        seed=seed))


def read_image_prompts(path) -> list:
    """The objects of a ``--prompts`` file on one image: the grammar's one prompt-file schema, where
    ``frame`` (an image is frame 0) may be left out and each entry is one object."""
    from ...data.prompts import read_prompt_entries
    from ...sam.prompts import Prompt
    prompts = []
    for i, entry in enumerate(read_prompt_entries(path, extra_keys=("object", "frame"))):
        if entry.get("frame") not in (None, 0):
            raise ValueError(f"prompt {i} of {str(path)!r}: frame {entry['frame']!r} on an image, which has only "
                             "frame 0: leave 'frame' out (frames are for `repvit track`)")
        prompts.append(Prompt(entry["points"], entry["box"]))
    return prompts


def run_predict(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from ...data.images import load_rgb, overlay, save_png
    from ...sam.prompts import Prompt, parse_box, parse_point, predict_prompts
    points = [parse_point(p) for p in args.point or []]
    boxes = [parse_box(b) for b in args.box or []]
    prompts = read_image_prompts(args.prompts) if args.prompts else []
    if len(boxes) > 1 and points:
        raise ValueError("several --box with --point is ambiguous: one --box with points is one object, several "
                         "boxes are several objects; put mixed prompts in a --prompts JSON file")
    if len(boxes) > 1:
        prompts += [Prompt(box=b) for b in boxes]
    elif points or boxes:
        prompts.append(Prompt(points, boxes[0] if boxes else None))
    if not prompts:
        raise ValueError("give a prompt: --point X,Y[,LABEL] (repeatable), --box X0,Y0,X1,Y1, or --prompts FILE.json")
    image = load_rgb(args.image)
    for prompt in prompts:   # before the model loads: a prompt outside the picture costs no encoder run
        prompt.check(image.shape[1], image.shape[0])
    predictor = _predictor(args)
    multimask = {"auto": None, "on": True, "off": False}[args.multimask]
    start = time.perf_counter()
    predictor.set_image(image)
    encode_s = time.perf_counter() - start
    # The first decoder call pays one-time set-up (kernel selection, lazy allocations): one prompt runs once
    # first, timed apart, so the decoder's figure is what the prompts on this image cost.
    start = time.perf_counter()
    predict_prompts(predictor, prompts[:1], multimask=multimask)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    results = predict_prompts(predictor, prompts, multimask=multimask)
    decode_s = time.perf_counter() - start
    out = Path(args.output)
    stem = Path(args.image).stem
    record = {"image": str(args.image), "model": args.family, "size": [image.shape[1], image.shape[0]],
              "threads": args.threads_used, "encoder_seconds": round(encode_s, 4),
              "decoder_seconds": round(decode_s, 4), "decoder_first_call_seconds": round(warmup_s, 4),
              "fused": not args.unfused, "objects": []}
    for k, r in enumerate(results):
        name = f"{stem}_mask.png" if len(results) == 1 else f"{stem}_mask_{k}.png"
        out.mkdir(parents=True, exist_ok=True)
        Image.fromarray((r["mask"] * 255).astype(np.uint8)).save(out / name)
        ys, xs = np.nonzero(r["mask"])
        record["objects"].append({**r["prompt"], "mask": name, "score": round(r["score"], 6),
                                  "scores": [round(s, 6) for s in r["scores"]], "chosen": r["chosen"],
                                  "area": int(r["mask"].sum()),
                                  "mask_box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
                                  if len(xs) else None})
    all_points = [p for pr in prompts for p in pr.points]
    drawn = overlay(image, [r["mask"] for r in results],
                    points=np.array([p[:2] for p in all_points]) if all_points else None,
                    labels=np.array([p[2] for p in all_points]) if all_points else None,
                    boxes=np.array([pr.box for pr in prompts if pr.box is not None]) if any(
                        pr.box is not None for pr in prompts) else None)
    save_png(drawn, out / f"{stem}_overlay.png")
    json_path = grammar.write_report(out / f"{stem}_scores.json", record)
    if args.report:
        grammar.write_report(args.report, record)
    print(f"{args.image}: encoder {encode_s * 1e3:.0f} ms (once), decoder {decode_s * 1e3:.0f} ms for "
          f"{len(prompts)} prompt(s), after a first call of {warmup_s * 1e3:.0f} ms (one-time set-up, not counted); "
          f"{args.threads_used} CPU thread(s)")
    for obj in record["objects"]:
        print(f"  {obj['mask']}: score {obj['score']:.3f}, {obj['area']} px")
    print(f"wrote {out / (stem + '_overlay.png')} and {json_path}" + (f" and {args.report}" if args.report else ""))
    return 0


def run_everything(args: argparse.Namespace) -> int:
    from ...sam.everything import FastMaskGenerator
    from ...data.images import load_rgb, overlay, save_png
    image = load_rgb(args.image)
    sam = load_sam(args)
    options = dict(points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
                   stability_score_thresh=args.stability_score_thresh, box_nms_thresh=args.box_nms_thresh,
                   crop_n_layers=args.crop_n_layers, min_mask_region_area=args.min_mask_region_area,
                   output_mode="coco_rle")
    if args.stock:
        from segment_anything import SamAutomaticMaskGenerator
        generator = SamAutomaticMaskGenerator(sam, points_per_batch=args.points_per_batch or 64, **options)
    else:
        bar = Progress(desc="decoder batches", enabled=not args.quiet)
        generator = FastMaskGenerator(sam, points_per_batch=args.points_per_batch, on_batch=bar.update_to, **options)
    start = time.perf_counter()
    records = generator.generate(image)
    seconds = time.perf_counter() - start
    if not args.stock:
        bar.close()
    from pycocotools import mask as mask_utils
    masks = [mask_utils.decode(r["segmentation"]).astype(bool) for r in records]
    order = sorted(range(len(masks)), key=lambda i: -records[i]["area"])  # big first, small ones stay visible
    out = Path(args.output)
    stem = Path(args.image).stem
    save_png(overlay(image, [masks[i] for i in order], alpha=0.45), out / f"{stem}_everything.png")
    record = {"image": str(args.image), "size": [image.shape[1], image.shape[0]],
              "generator": "segment_anything" if args.stock else "repvit FastMaskGenerator",
              "options": options, "seconds": round(seconds, 3), "masks": records}
    json_path = grammar.write_report(out / f"{stem}_masks.json", record, compact=True)
    if args.report:
        grammar.write_report(args.report, record, compact=True)
    print(f"{args.image}: {len(records)} masks in {seconds:.1f} s ({args.points_per_side}x{args.points_per_side} "
          f"grid) -> {out / (stem + '_everything.png')}, {json_path} (COCO RLE)"
          + (f" and {args.report}" if args.report else ""))
    return 0


def register(actions) -> None:
    p = actions.add_parser("predict", help="segment the objects given by points and/or boxes",
                           description="Masks for point/box prompts. Coordinates are pixels of the original image. "
                                       "All --point options and one --box form one object; several --box are "
                                       "several objects; --prompts FILE.json lists any number of objects "
                                       "([{\"points\": [[x, y, label]], \"box\": [x0, y0, x1, y1]}]). One image "
                                       "embedding serves every prompt.")
    p.add_argument("image")
    grammar.add(p, "--point", action="append")
    grammar.add(p, "--box", action="append")
    grammar.add(p, "--prompts", help="many objects at once (see above)")
    p.add_argument("--multimask", choices=("auto", "on", "off"), default="auto",
                   help="auto: three candidates for a lone point (keeps the best), one otherwise")
    grammar.add(p, "--family", choices=("repvit_sam", EDGETAM),
                help="repvit_sam (RepViT-M2.3 encoder, segment-anything's decoder; default) or edgetam (the "
                     "RepViT-M1 EdgeTAM model of `repvit track`, in image mode; needs the [edgetam] extra). "
                     "Its weights: --checkpoint edgetam.pt, --pretrained edgetam or --random-weights")
    grammar.add_deprecated(p, "--model", "--family", dest="family", choices=("repvit_sam", EDGETAM))
    grammar.add(p, "--output", default="sam-out", help="folder for <image>_mask.png, _overlay.png and _scores.json")
    grammar.add_report(p, help="also write the scores JSON here (OUTPUT/<image>_scores.json is always written)")
    add_sam_weights(p)
    grammar.add(p, "--threads")
    p.set_defaults(func=grammar.with_threads(run_predict))

    e = actions.add_parser("everything", help="automatic masks for everything in the image",
                           description="Prompts a regular grid of points, keeps confident, stable masks and removes "
                                       "duplicates (segment-anything's automatic mask generation, scheduled to "
                                       "do less work). Writes an overlay PNG and the masks as COCO RLE JSON.")
    e.add_argument("image")
    e.add_argument("--points-per-side", type=int, default=32, help="grid density: N x N points (default 32)")
    e.add_argument("--points-per-batch", type=int, default=None,
                   help="points per decoder batch (default: 4 on CPU, 64 on GPU)")
    e.add_argument("--pred-iou-thresh", type=float, default=0.88)
    e.add_argument("--stability-score-thresh", type=float, default=0.95)
    e.add_argument("--box-nms-thresh", type=float, default=0.7)
    e.add_argument("--crop-n-layers", type=int, default=0, help="also run on 4^k crops for small objects")
    e.add_argument("--min-mask-region-area", type=int, default=0,
                   help="remove islands and holes smaller than this (needs opencv-python)")
    e.add_argument("--stock", action="store_true", help="use segment-anything's own generator (to compare)")
    grammar.add(e, "--output", default="sam-out", help="folder for <image>_everything.png and _masks.json")
    grammar.add_report(e, help="also write the masks JSON here (OUTPUT/<image>_masks.json is always written)")
    grammar.add(e, "--quiet")
    add_sam_weights(e)
    grammar.add(e, "--threads")
    e.set_defaults(func=grammar.with_threads(run_everything))
