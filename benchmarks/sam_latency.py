"""RepViT-SAM on the CPU, in one run: encoder latency at 1024x1024 (fused with channels_last
weights as ``build_sam(fused=True)`` gives it, fused NCHW, unfused, and
segment-anything's ViT-B image encoder in the same interleaved harness), decoder latency per
prompt, ONNX Runtime latency of both exported parts, and the wall time of automatic mask
generation ("everything", 32x32 grid) with FastMaskGenerator against SamAutomaticMaskGenerator,
with how far their masks agree. Random weights (seed 0): latency does not depend on them; the
masks they give mean nothing, but both generators must give the same ones.

    repvit sam export --random-weights --output-dir runs/sam-onnx --formats onnx
    PYTHONPATH=. python benchmarks/sam_latency.py --threads 2 --onnx-dir runs/sam-onnx \
        --image ../shared/data/coco128-instances/<an image> --json runs/bench/sam.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit.models.reparam import reparameterize  # noqa: E402
from repvit.engine.timing import environment, load_average, summarize, time_interleaved, torch_threads  # noqa: E402
from repvit.sam import build_sam  # noqa: E402
from repvit.sam.everything import FastMaskGenerator  # noqa: E402
from repvit.data.images import load_rgb  # noqa: E402


def vit_b_encoder() -> torch.nn.Module:
    from segment_anything import sam_model_registry
    torch.manual_seed(0)
    return sam_model_registry["vit_b"](checkpoint=None).image_encoder.eval()


@torch.inference_mode()
def encoder_latency(rounds: int) -> dict:
    torch.manual_seed(0)
    unfused = build_sam().image_encoder
    fused = reparameterize(unfused)
    fused_cl = build_sam(fused=True).image_encoder  # what build_sam(fused=True) gives: channels_last weights
    fused_cl.load_state_dict(fused.state_dict())
    vit_b = vit_b_encoder()
    x = torch.randn(1, 3, 1024, 1024)
    runs = {"repvit_sam_fused_channels_last": lambda: fused_cl(x), "repvit_sam_fused_nchw": lambda: fused(x),
            "repvit_sam_unfused": lambda: unfused(x), "sam_vit_b": lambda: vit_b(x)}
    samples = time_interleaved(runs, warmup=1, rounds=rounds, iters=1)
    return {name: summarize(s) for name, s in samples.items()}


@torch.inference_mode()
def decoder_latency(sam, image: np.ndarray, rounds: int) -> dict:
    from segment_anything import SamPredictor
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    h, w = image.shape[:2]
    point = predictor.transform.apply_coords_torch(torch.tensor([[[w / 2, h / 2]]]), (h, w))
    label = torch.ones(1, 1, dtype=torch.int)
    box = predictor.transform.apply_boxes_torch(torch.tensor([[w / 4, h / 4, 3 * w / 4, 3 * h / 4]]), (h, w))
    runs = {"point_multimask": lambda: predictor.predict_torch(point, label, multimask_output=True),
            "box_single_mask": lambda: predictor.predict_torch(None, None, box, multimask_output=False)}
    samples = time_interleaved(runs, warmup=3, rounds=rounds, iters=5)
    return {name: summarize(s) for name, s in samples.items()}


def onnx_latency(folder: Path, image: np.ndarray, rounds: int, threads: int) -> dict:
    from segment_anything.utils.transforms import ResizeLongestSide
    from repvit.export.onnx import session
    encoder_file, decoder_file = folder / "repvit_sam_encoder.onnx", folder / "repvit_sam_decoder.onnx"
    if not (encoder_file.is_file() and decoder_file.is_file()):
        raise SystemExit(f"{folder} lacks repvit_sam_encoder.onnx / repvit_sam_decoder.onnx: run "
                         f"`repvit sam export --random-weights --output-dir {folder} --formats onnx` first")
    encoder, decoder = session(encoder_file, threads), session(decoder_file, threads)
    torch.manual_seed(0)
    sam = build_sam()
    resized = ResizeLongestSide(1024).apply_image(image)
    x = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float()).numpy()
    enc_in = {encoder.get_inputs()[0].name: x}
    embedding = encoder.run(None, enc_in)[0]
    h, w = image.shape[:2]
    coords = ResizeLongestSide(1024).apply_coords(np.array([[[w / 2, h / 2], [0.0, 0.0]]]), (h, w)).astype(np.float32)
    dec_in = {"image_embeddings": embedding, "point_coords": coords,
              "point_labels": np.array([[1, -1]], dtype=np.float32),
              "mask_input": np.zeros((1, 1, 256, 256), dtype=np.float32),
              "has_mask_input": np.zeros(1, dtype=np.float32),
              "orig_im_size": np.array([h, w], dtype=np.float32)}
    dec_in = {k: v for k, v in dec_in.items() if k in {i.name for i in decoder.get_inputs()}}
    samples = time_interleaved({"encoder_onnxruntime": lambda: encoder.run(None, enc_in)},
                               warmup=1, rounds=rounds, iters=1)
    samples.update(time_interleaved({"decoder_onnxruntime_1_point": lambda: decoder.run(None, dec_in)},
                                    warmup=3, rounds=rounds, iters=5))
    return {name: summarize(s) for name, s in samples.items()}


def compare_records(ours: list, stock: list) -> dict:
    """How far two generators' records agree: identical RLEs, and the worst IoU of matched masks."""
    from pycocotools import mask as mask_utils
    key = lambda r: (tuple(r["point_coords"][0]), round(r["predicted_iou"], 4))  # noqa: E731
    ours_by, stock_by = {key(r): r for r in ours}, {key(r): r for r in stock}
    matched = set(ours_by) & set(stock_by)
    identical = sum(ours_by[k]["segmentation"] == stock_by[k]["segmentation"] for k in matched)
    ious = [float(mask_utils.iou([ours_by[k]["segmentation"]], [stock_by[k]["segmentation"]], [0])[0, 0])
            for k in matched]
    return {"ours": len(ours), "stock": len(stock), "matched": len(matched), "identical_rle": identical,
            "min_iou_of_matched": min(ious) if ious else None}


def everything(sam, image: np.ndarray, rounds: int, settings: dict) -> dict:
    from segment_anything import SamAutomaticMaskGenerator
    result = {}
    for label, options in settings.items():
        generators = {"stock_segment_anything": SamAutomaticMaskGenerator(sam, output_mode="coco_rle", **options),
                      "fast_exact": FastMaskGenerator(sam, points_per_batch=64, shared_image=False,
                                                      output_mode="coco_rle", **options),
                      "fast_default": FastMaskGenerator(sam, output_mode="coco_rle", **options)}
        seconds = {name: [] for name in generators}
        records = {}
        for r in range(rounds):
            names = list(generators)
            for name in names[r % 3:] + names[:r % 3]:
                start = time.perf_counter()
                records[name] = generators[name].generate(image)
                seconds[name].append(time.perf_counter() - start)
                print(f"  everything[{label}] {name}: {seconds[name][-1]:.1f} s, {len(records[name])} masks",
                      file=sys.stderr, flush=True)
        result[label] = {"options": options,
                         "seconds": {n: {"median": float(np.median(s)), "runs": s} for n, s in seconds.items()},
                         "agreement_exact": compare_records(records["fast_exact"], records["stock_segment_anything"]),
                         "agreement_default": compare_records(records["fast_default"],
                                                              records["stock_segment_anything"])}
    return result


def agreement(sam, image: np.ndarray, points_per_side: int) -> dict:
    """Every candidate mask (no thresholds, no NMS) of both generators, compared; not timed."""
    from segment_anything import SamAutomaticMaskGenerator
    options = dict(points_per_side=points_per_side, pred_iou_thresh=0.0, stability_score_thresh=0.0,
                   box_nms_thresh=1.0, output_mode="coco_rle")
    stock = SamAutomaticMaskGenerator(sam, **options).generate(image)
    return {"options": options,
            "fast_exact": compare_records(FastMaskGenerator(sam, points_per_batch=64, shared_image=False,
                                                            **options).generate(image), stock),
            "fast_default": compare_records(FastMaskGenerator(sam, **options).generate(image), stock)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="a real photo for the decoder and everything timings")
    parser.add_argument("--onnx-dir", type=Path, help="folder from `repvit sam export` (skips ONNX when absent)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--everything-rounds", type=int, default=2)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--skip", nargs="*", default=[], choices=("encoder", "decoder", "onnx", "everything", "agreement"))
    parser.add_argument("--agreement-points-per-side", type=int, default=16,
                        help="grid for the untimed all-candidates comparison (3 masks per point)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    image = load_rgb(args.image)
    report = {"image": str(args.image), "image_size": [image.shape[1], image.shape[0]], "load_before": load_average()}
    with torch_threads(args.threads):
        report["environment"] = environment()
        torch.manual_seed(0)
        sam = build_sam(fused=True)
        if "encoder" not in args.skip:
            report["encoder_1024"] = encoder_latency(args.rounds)
            print(json.dumps(report["encoder_1024"], indent=1), file=sys.stderr)
        if "decoder" not in args.skip:
            report["decoder"] = decoder_latency(sam, image, args.rounds)
        if "onnx" not in args.skip and args.onnx_dir:
            report["onnx"] = onnx_latency(args.onnx_dir, image, args.rounds, args.threads)
        if "everything" not in args.skip:
            n = args.points_per_side
            report[f"everything_{n}x{n}"] = everything(sam, image, args.everything_rounds, {
                "default thresholds": {"points_per_side": n},
                "no thresholds": {"points_per_side": n, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}})
        if "agreement" not in args.skip:
            report["agreement_all_candidates"] = agreement(sam, image, args.agreement_points_per_side)
    report["load_after"] = load_average()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
