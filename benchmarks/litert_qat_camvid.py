"""Quantization-aware fine-tuning for LiteRT's full-integer CamVid segmenter: what it recovers over
post-training quantization.

Post-training full-integer quantization with litert-torch's PT2E quantizer lost 1.26 mIoU points on the
CamVid recipe's model (benchmarks/deployment.md), the one runtime beyond the 1-point goal. Here the
fused model, exported at the frames' 360x480, goes through the same quantizer in its QAT form
(``get_symmetric_quantization_config(is_qat=True)``: int8 per-channel weights and int8 activations as
fake-quantized ops with moving-average ranges), is fine-tuned on the CamVid training frames (whole
frames, random horizontal flips, the recipe's cross-entropy with the void class ignored, AdamW at a
small learning rate, batch 1: the exported graph has the frames' fixed shape), converted and written as
``.tflite``, and scored on all val frames by the LiteRT interpreter beside the PTQ file of the same
quantizer (50 calibration frames, as ``repvit segment export --int8``).

    PYTHONPATH=. python benchmarks/litert_qat_camvid.py --checkpoint runs/camvid/best.pth --epochs 1 \
        --json litert_qat.json
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit import reparameterize  # noqa: E402
from repvit.commands._dense import real_images  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402
from repvit.export import litert as fmt_lt  # noqa: E402
from repvit.runtime.timing import environment, load_average, torch_threads  # noqa: E402
from repvit.segmentation.data import EvalResize, SemanticFolder  # noqa: E402
from repvit.segmentation.evaluation import evaluate_segmenter  # noqa: E402
from repvit.segmentation.semantic_fpn import load_segmenter  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"


class FileSegmenter(torch.nn.Module):
    """A ``.tflite`` segmenter as a module (the LiteRT interpreter, logits back as float)."""

    def __init__(self, path: Path, threads: int):
        super().__init__()
        self.run = fmt_lt.runner(path, threads)

    def forward(self, x):
        return self.run(x)


def quantizer(qat: bool):
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    q = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
    # The QAT-only annotators look for conv + BatchNorm patterns, which a fused model has none of, and
    # they fail under torch 2.14 (their pattern is exported from a plain function): skip them.
    q.STATIC_QAT_ONLY_OPS = []
    return q


def write(graph, example, q, path: Path) -> Path:
    import litert_torch
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e
    with fmt_lt._quiet(), torch.no_grad(), fmt_lt._exact_nearest():
        converted = convert_pt2e(graph, fold_quantize=False)
        litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=q)).export(str(path))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--calib-count", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args()
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    root = Path(args.data)
    model = load_segmenter(args.checkpoint)
    fused = reparameterize(model).eval()
    resize = EvalResize(model.eval_size)
    common = dict(num_classes=model.num_classes, ignore_index=model.ignore_index,
                  reduce_zero_label=model.reduce_zero_label, transforms=resize)
    val, train = SemanticFolder(root / "val", **common), SemanticFolder(root / "train", **common)
    size = tuple(val[0][0].shape[-2:])
    example = (torch.randn(1, 3, *size),)
    report = {"environment": environment(), "checkpoint": args.checkpoint, "load_before": load_average(),
              "epochs": args.epochs, "lr": args.lr, "results": {}}
    start = time.perf_counter()
    with torch_threads(args.threads), tempfile.TemporaryDirectory() as tmp:
        with torch.no_grad():
            report["results"]["pytorch fused"] = evaluate_segmenter(fused, val, class_names=model.class_names)
        base = report["results"]["pytorch fused"]["mIoU"]
        print(f"pytorch fused: mIoU {base:.4f}", flush=True)

        q = quantizer(qat=False)   # post-training, what `repvit segment export --int8` writes
        with fmt_lt._quiet(), torch.no_grad(), fmt_lt._exact_nearest():
            graph = prepare_pt2e(torch.export.export(fused, example).module(), q)
            for image in real_images(str(root / "train" / "images"), args.calib_count):
                graph(resize(image, None)[0][None])
        ptq = write(graph, example, q, Path(tmp) / "ptq.tflite")

        q = quantizer(qat=True)
        with fmt_lt._exact_nearest():
            graph = prepare_qat_pt2e(torch.export.export(fused, example).module(), q)
        move_exported_model_to_train(graph)
        optimizer = torch.optim.AdamW([p for p in graph.parameters() if p.requires_grad], lr=args.lr,
                                      weight_decay=0.0)
        steps = int(round(args.epochs * len(train)))
        order = [i for _ in range(int(np.ceil(args.epochs)) + 1) for i in random.sample(range(len(train)),
                                                                                        len(train))][:steps]
        losses, t = [], time.perf_counter()
        with fmt_lt._exact_nearest():
            for step, index in enumerate(order, 1):
                image, label = train[index]
                if random.random() < 0.5:
                    image, label = image.flip(-1), label.flip(-1)
                logits = graph(image[None])
                loss = F.cross_entropy(logits, label[None], ignore_index=model.ignore_index)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss))
                if step % 50 == 0 or step == steps:
                    print(f"QAT step {step}/{steps}: loss {np.mean(losses[-50:]):.4f} "
                          f"({(time.perf_counter() - t) / step:.2f} s/step)", flush=True)
        move_exported_model_to_eval(graph)
        report["qat_steps"], report["qat_seconds"] = steps, time.perf_counter() - t
        report["qat_loss_first_last_50"] = [float(np.mean(losses[:50])), float(np.mean(losses[-50:]))]
        qat = write(graph, example, q, Path(tmp) / "qat.tflite")

        for name, path in (("litert-int8, post-training", ptq), ("litert-int8, QAT fine-tuned", qat)):
            entry = evaluate_segmenter(FileSegmenter(path, args.threads), val, class_names=model.class_names)
            entry["mIoU_change_points"] = 100 * (entry["mIoU"] - base)
            report["results"][name] = entry
            print(f"{name}: mIoU {entry['mIoU']:.4f} ({entry['mIoU_change_points']:+.2f} points)", flush=True)
    report["load_after"] = load_average()
    report["wall_seconds"] = time.perf_counter() - start
    print(f"{report['environment']['cpu']}, load {report['load_before']} -> {report['load_after']}")
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
