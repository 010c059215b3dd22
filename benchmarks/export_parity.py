"""Export one model to every format and tabulate the verification (max |logit diff| vs fused PyTorch).

With ``--checkpoint`` the trained model is used; otherwise ``--model`` with random weights and
randomized BatchNorm statistics (so fusion changes every weight and the logits are not tiny).

    PYTHONPATH=. python benchmarks/export_parity.py --model repvit_m0_9 --images ../shared/data/imagenette-96/val \
        --out runs/bench/exports --json runs/bench/export_parity.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from repvit import create_model  # noqa: E402
from repvit.classification.export import export_model  # noqa: E402
from repvit.export import ParityError  # noqa: E402
from repvit.export import coreml as fmt_cm  # noqa: E402
from repvit.export import executorch as fmt_et  # noqa: E402
from repvit.testing import randomize_batchnorm  # noqa: E402
from repvit.commands._grammar import write_report  # noqa: E402

JOBS = [("onnx", {}), ("onnx", {"fp16": True}), ("torchscript", {}), ("coreml", {}), ("executorch", {})]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--model", default="repvit_m0_9")
    parser.add_argument("--img-size", type=int)
    parser.add_argument("--images", help="real images for verification (default: matplotlib's sample photos)")
    parser.add_argument("--num-real", type=int, default=16)
    parser.add_argument("--out", default="runs/bench/exports")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.checkpoint:
        model = create_model(checkpoint=args.checkpoint)
    else:
        model = randomize_batchnorm(create_model(args.model, num_classes=1000, distillation=True), seed=0).eval()
    rows = []
    for fmt, options in JOBS:
        if (fmt == "coreml" and not fmt_cm.available()) or (fmt == "executorch" and not fmt_et.available()):
            rows.append({"format": fmt, "skipped": "package not installed"})
            continue
        start = time.time()
        try:
            result = export_model(model, fmt, Path(args.out), img_size=args.img_size, images=args.images,
                                  num_real=args.num_real, log=print, **options)
        except ParityError as err:
            rows.append({"format": fmt, **options, "failed": str(err)})
            continue
        rows.append({"format": fmt + (" fp16" if options.get("fp16") else ""), "path": str(result.path),
                     "seconds": round(time.time() - start, 1), "notes": result.notes,
                     "reports": [r.as_dict() for r in result.reports]})
    print("\n| artifact | checked by | inputs | max abs diff | tolerance | top-1 agreement |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        if "reports" not in row:
            print(f"| {row['format']} | - | - | {row.get('skipped') or row.get('failed')} | - | - |")
            continue
        for r in row["reports"]:
            print(f"| {Path(row['path']).name} | {r['artifact']} | {r['count']} {r['inputs']} | "
                  f"{r['max_abs_diff']:.2e} | {r['tolerance']:.1e} | {r['top1_agreement']:.0%} |")
    if args.json:
        write_report(args.json, rows)
    return 1 if any("failed" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
