"""Which of litert-torch's INT8 annotators costs the CamVid segmenter its mIoU.

The post-training graph (litert-torch's PT2E quantizer, 50 calibration frames at 360x480) is run in
PyTorch after ``convert_pt2e`` (quantize/dequantize pairs: float arithmetic on the int8 grid), so what
is measured is the quantization scheme, not the converter or LiteRT's kernels. Each ``--leave-out``
entry drops one static annotator (or several joined by ``+``) from the quantizer's full list; ``none``
keeps them all (what litert-torch does by default). All val frames are scored.

    PYTHONPATH=. python benchmarks/litert_int8_ops.py --checkpoint runs/camvid/best.pth \
        --leave-out none mul fixed_qparams add cat adaptive_avg_pool2d --json litert_ops.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from litert_qat_camvid import Calls  # noqa: E402
from repvit import reparameterize  # noqa: E402
from repvit.commands._dense import real_images  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402
from repvit.export import litert as fmt_lt  # noqa: E402
from repvit.engine.timing import environment, load_average, torch_threads  # noqa: E402
from repvit.segmentation.data import EvalResize, SemanticFolder  # noqa: E402
from repvit.segmentation.evaluation import evaluate_segmenter  # noqa: E402
from repvit.segmentation.semantic_fpn import load_segmenter  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--leave-out", nargs="+", default=["none", "mul"])
    p.add_argument("--calib-count", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json")
    args = p.parse_args()
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    root = Path(args.data)
    model = load_segmenter(args.checkpoint)
    fused = reparameterize(model).eval()
    resize = EvalResize(model.eval_size)
    val = SemanticFolder(root / "val", num_classes=model.num_classes, ignore_index=model.ignore_index,
                         reduce_zero_label=model.reduce_zero_label, transforms=resize)
    example = (torch.rand(1, 3, *val[0][0].shape[-2:]),)
    calibration = [resize(im, None)[0][None] for im in real_images(str(root / "train" / "images"), args.calib_count)]
    every = list(PT2EQuantizer.STATIC_OPS)
    report = {"environment": environment(), "checkpoint": args.checkpoint, "load_before": load_average(),
              "static_ops": every, "results": {}}
    start = time.perf_counter()
    with torch_threads(args.threads), torch.no_grad():
        report["results"]["pytorch fused"] = evaluate_segmenter(fused, val, class_names=model.class_names)["mIoU"]
        print(f"pytorch fused: mIoU {100 * report['results']['pytorch fused']:.2f}", flush=True)
        for leave_out in args.leave_out:
            dropped = [] if leave_out == "none" else leave_out.split("+")
            unknown = [op for op in dropped if op not in every]
            if unknown:
                raise SystemExit(f"unknown annotator(s) {unknown}; litert-torch has {', '.join(every)}")
            quantizer = fmt_lt._quantizer(qat=False)
            quantizer.STATIC_OPS = [op for op in every if op not in dropped]
            with fmt_lt._exact_nearest():
                graph = prepare_pt2e(torch.export.export(fused, example).module(), quantizer)
                for image in calibration:
                    graph(image)
                graph = convert_pt2e(graph, fold_quantize=False)
            miou = evaluate_segmenter(Calls(graph.forward), val, class_names=model.class_names)["mIoU"]
            report["results"][f"without {leave_out}"] = miou
            change = 100 * (miou - report["results"]["pytorch fused"])
            print(f"q/dq graph without {leave_out}: mIoU {100 * miou:.2f} ({change:+.2f} points)", flush=True)
    report["load_after"] = load_average()
    report["wall_seconds"] = time.perf_counter() - start
    print(f"{report['environment']['cpu']}, load {report['load_before']} -> {report['load_after']}")
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
