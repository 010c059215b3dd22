"""CPU latency of backbone + FPN at 512x512 (batch 1) for every RepViT variant, fused and unfused,
beside torchvision's ResNet-50-FPN and MobileNetV3-Large-FPN, in one interleaved run; and the
size of the Mask R-CNN each backbone makes (parameters; backbone + FPN GMACs at 800x1333).

The RepViT neck is the Mask R-CNN one (FPN on strides 4-32, 256 channels, P6 by pooling).
torchvision's backbones are built as its detectors build them: ResNet-50 with all four stages
into the FPN, MobileNetV3-Large with its last two (strides 16 and 32), both with
FrozenBatchNorm2d (their inference form). Random weights: latency does not depend on them.

    PYTHONPATH=. python benchmarks/dense_latency.py --threads 2 --json runs/bench/dense.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit.dense.backbone import RepViTBackbone  # noqa: E402
from repvit.dense.neck import BackboneWithFPN  # noqa: E402
from repvit.detection.detectors import build_detector  # noqa: E402
from repvit.models.profile import count_macs, count_params  # noqa: E402
from repvit.models.reparam import reparameterize  # noqa: E402
from repvit.models.variants import VARIANTS  # noqa: E402
from repvit.runtime.module_bench import Subject, mobilenet_v3_large_fpn, prepare  # noqa: E402
from repvit.engine.timing import environment, load_average, summarize, time_interleaved, torch_threads  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402

MODERN = [n for n, v in VARIANTS.items() if not v.legacy]


def torchvision_necks() -> dict:
    """torchvision's backbones + FPN as its detectors build them, plus MobileNetV3-Large with an FPN on
    the same four strides as ours (4-32) and without any FPN, for a like-for-like comparison."""
    from torchvision.models.detection.backbone_utils import mobilenet_backbone, resnet_fpn_backbone
    return {"resnet50_fpn": resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=0).eval(),
            "mobilenet_v3_large_fpn": mobilenet_v3_large_fpn(levels=2),
            "mobilenet_v3_large_fpn_4_levels": mobilenet_v3_large_fpn(levels=4),
            "mobilenet_v3_large_backbone": mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None,
                                                              fpn=False, trainable_layers=0).eval()}


@torch.no_grad()
def detector_macs(model, height: int, width: int, seed: int = 0) -> int:
    """Conv and linear multiply-adds of one eval-mode forward of a torchvision detector on one image
    (the heads' share depends on how many proposals and detections pass: random weights, seeded)."""
    total = 0

    def conv(m, _i, out):
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, _i, out):
        nonlocal total
        total += out.numel() * m.in_features
    handles = [m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else linear)
               for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        torch.manual_seed(seed)
        model.eval()([torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed))])
    finally:
        for h in handles:
            h.remove()
    return total


def mask_rcnn_size(name: str) -> dict:
    """Parameters of the whole Mask R-CNN (81 COCO classes), GMACs of its backbone + FPN at 800x1333,
    and of the whole model on one 800x1333 image (1000 proposals, up to 100 masks)."""
    if name.startswith(("resnet50", "mobilenet")):
        from torchvision.models.detection import maskrcnn_resnet50_fpn, MaskRCNN
        if name == "resnet50_fpn":
            model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=81)
        elif name == "mobilenet_v3_large_fpn":
            # Two FPN levels + pooling: three feature maps, anchors as torchvision's MobileNetV3 detectors set them.
            from torchvision.models.detection.anchor_utils import AnchorGenerator
            anchors = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
            model = MaskRCNN(torchvision_necks()[name], num_classes=81, rpn_anchor_generator=anchors)
        else:
            model = MaskRCNN(torchvision_necks()[name], num_classes=81)
    else:
        model = build_detector("maskrcnn", name, num_classes=81)
    neck = model.backbone.eval()
    return {"params_mask_rcnn_m": round(count_params(model) / 1e6, 2),
            "params_backbone_fpn_m": round(count_params(neck) / 1e6, 2),
            "gmacs_backbone_fpn_800x1333": round(count_macs(neck, (800, 1333)) / 1e9, 1),
            "gmacs_mask_rcnn_800x1333": round(detector_macs(model, 800, 1333) / 1e9, 1)}


# This script's runtime names -> repvit bench's (the same preparation and checks as `repvit bench --task dense`).
RUNTIMES = {"channels-last": "eager-fused-cl", "onnxruntime": "onnxruntime", "openvino": "openvino",
            "int8": "int8", "openvino-int8": "openvino-int8"}


def runtime_runner(module, runtime: str, x: torch.Tensor, threads: int, tmp: Path):
    """A no-argument call of ``module`` on ``x`` through ``runtime``, checked against eager first."""
    return prepare(Subject(type(module).__name__, "", module.eval(), module.eval()), RUNTIMES[runtime], x, threads,
                   str(tmp))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=MODERN)
    p.add_argument("--img-size", type=int, default=512)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--json", default=None)
    p.add_argument("--sizes-only", action="store_true", help="only the Mask R-CNN sizes (no timing)")
    p.add_argument("--runtimes", nargs="*", default=[], choices=list(RUNTIMES),
                   help="also time the fused RepViT necks and torchvision's MobileNetV3-Large necks through these "
                        "(same graph, same threads, interleaved with the eager ones)")
    args = p.parse_args()
    x = torch.randn(1, 3, args.img_size, args.img_size)
    candidates, sizes = {}, {}
    for name in args.models:
        unfused = BackboneWithFPN(RepViTBackbone(name, taps="detection"), extra="pool").eval()
        candidates[f"{name} unfused"] = unfused
        candidates[f"{name} fused"] = reparameterize(unfused)
        candidates[f"{name} backbone fused"] = candidates[f"{name} fused"].body
    candidates.update(torchvision_necks())
    for name in list(args.models) + ["resnet50_fpn", "mobilenet_v3_large_fpn", "mobilenet_v3_large_fpn_4_levels"]:
        sizes[name] = mask_rcnn_size(name)
    if args.sizes_only:
        for key, row in sizes.items():
            print(key, row)
        return
    runs = {k: (lambda m=m: m(x)) for k, m in candidates.items()}
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as tmp:
        targets = {k: m for k, m in candidates.items()
                   if k.endswith(" fused") or k.startswith("mobilenet_v3_large_fpn")}
        for key, module in targets.items():
            for runtime in args.runtimes:
                print(f"preparing {key} {runtime} ...", flush=True)
                runs[f"{key} {runtime}"] = runtime_runner(module, runtime, x, args.threads, Path(tmp))
    load_before = load_average()
    with torch_threads(args.threads), torch.inference_mode():
        samples = time_interleaved(runs, warmup=args.warmup, rounds=args.rounds, iters=args.iters)
    report = {"environment": environment(), "threads": args.threads, "img_size": args.img_size,
              "load_before": load_before, "load_after": load_average(),
              "latency": {k: summarize(v) for k, v in samples.items()}, "sizes": sizes}
    print(f"backbone + FPN, batch 1, {args.img_size}x{args.img_size}, {args.threads} threads, "
          f"{report['environment']['cpu']}, load {load_before} -> {report['load_after']}")
    print(f"{'model':<48} {'median ms':>10} {'p10':>8} {'p90':>8}")
    for key, stats in report["latency"].items():
        print(f"{key:<48} {stats['median_ms']:>10.1f} {stats['p10_ms']:>8.1f} {stats['p90_ms']:>8.1f}")
    print(f"\n{'Mask R-CNN (81 classes)':<32} {'params M':>9} {'bb+FPN params M':>16} {'bb+FPN GMACs':>13} "
          f"{'model GMACs':>12}  (800x1333)")
    for key, row in sizes.items():
        print(f"{key:<32} {row['params_mask_rcnn_m']:>9} {row['params_backbone_fpn_m']:>16} "
              f"{row['gmacs_backbone_fpn_800x1333']:>13} {row['gmacs_mask_rcnn_800x1333']:>12}")
    if args.json:
        write_report(args.json, report)


if __name__ == "__main__":
    main()
