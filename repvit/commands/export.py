"""``repvit export``: fused model -> ONNX / TorchScript / Core ML / ExecuTorch / OpenVINO / LiteRT, verified before it is kept."""
from __future__ import annotations

import sys

from ..classification.export import export_model
from ..export import FORMATS, ParityError
from ..models.factory import create_model, create_model_from
from . import _grammar as grammar
from ._weights import add_weights_options


def load_model(args):
    """The model named by ``--checkpoint``, ``--pretrained`` or ``--model`` (random weights, said so)."""
    if args.checkpoint or args.pretrained:
        return create_model_from(checkpoint=args.checkpoint, pretrained=args.pretrained,
                                 **({"name": args.model} if args.model and args.checkpoint else {}))
    print(f"note: no --checkpoint, exporting {args.model} with random weights (for trying the pipeline only)")
    return create_model(args.model, num_classes=args.num_classes, distillation=args.distillation).eval()


def run(args) -> int:
    if not args.checkpoint and not args.pretrained and not args.model:
        raise ValueError("pass --checkpoint PATH (the variant is read from it), --pretrained NAME[:TAG] "
                         "(official weights) or --model NAME (random weights)")
    model = load_model(args)
    try:
        result = export_model(
            model, args.format, args.output, img_size=args.img_size, images=grammar.image_source(args.images),
            num_random=args.num_random,
            num_real=args.num_real, tolerance=args.tol, keep_failed=args.keep_failed, opset=args.opset, fp16=args.fp16,
            int8=args.int8, calib_images=args.calib_images, calib_count=args.calib_count, calib_method=args.calib_method,
            int8_weights=args.int8_weights,
            coreml_input=args.coreml_input, coreml_precision=args.coreml_precision, batch_size=args.fixed_batch,
            log=print)
    except ParityError as err:
        print(f"\nEXPORT FAILED VERIFICATION: {err}", file=sys.stderr)
        return 1
    if args.report:
        grammar.write_report(args.report, result.as_dict())
    print(f"verified: {result.path}" + (f" and {result.int8_path}" if result.int8_path else ""))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export the fused model (ONNX, TorchScript, Core ML, ExecuTorch, "
                                             "OpenVINO, LiteRT) and verify it against PyTorch")
    src = p.add_argument_group("model")
    add_weights_options(src, required=False,
                        checkpoint_help="trained checkpoint (any accepted format); the variant is read from it")
    grammar.add(src, "--model", help="variant name, e.g. repvit_m0_9 (random weights without --checkpoint)")
    grammar.add(src, "--num-classes", default=1000, help="classes when building without a checkpoint")
    src.add_argument("--distillation", action="store_true", help="with a distillation head (no checkpoint)")
    grammar.add(p, "--format", default="onnx", choices=list(FORMATS), help=f"the export format: {', '.join(FORMATS)}")
    grammar.add(p, "--output", help="file name (used as given; OpenVINO writes its .bin beside the .xml) or "
                                    "directory (default: ./<variant>-fused.<ext>)")
    grammar.add(p, "--img-size", help="input resolution (default: the model's preprocessing input size)")
    ver = p.add_argument_group("verification")
    grammar.add(ver, "--images", help="real images to verify on (default: two photos shipped with matplotlib)")
    grammar.add(ver, "--num-real", default=8, help="real images to verify on (0 to skip)")
    ver.add_argument("--num-random", type=int, default=4, help="random inputs to verify on")
    grammar.add(ver, "--tol", help="largest allowed |PyTorch - export| logit (default: the format's tolerance)")
    ver.add_argument("--keep-failed", action="store_true", help="keep an artifact that fails verification, "
                                                                "renamed -UNVERIFIED")
    grammar.add_report(ver, help="write the verification report to this JSON file")
    onnx = p.add_argument_group("ONNX, OpenVINO, LiteRT and ExecuTorch")
    grammar.add(onnx, "--opset")
    onnx.add_argument("--fp16", action="store_true", help="ONNX: half-precision weights and compute, float32 "
                                                          "input/output")
    grammar.add(onnx, "--int8", help="also write an INT8 model (<name>-int8), calibrated on --calib-images: ONNX "
                                     "Runtime static QDQ, OpenVINO with NNCF post-training quantization, LiteRT full "
                                     "integer (PT2E) or ExecuTorch with the XNNPACK quantizer (PT2E)")
    grammar.add(onnx, "--calib-images", help="folder of training images for INT8 calibration")
    grammar.add(onnx, "--calib-count", default=300, help="calibration images (spread over sub-folders)")
    onnx.add_argument("--calib-method", default="percentile", choices=["minmax", "percentile", "entropy"],
                      help="ONNX activation ranges: 99.999th percentile (default), extremes, or entropy "
                           "(OpenVINO, LiteRT and ExecuTorch use their quantizers' own ranges)")
    grammar.add(onnx, "--int8-weights")
    cm = p.add_argument_group("Core ML")
    cm.add_argument("--coreml-input", default="image", choices=["image", "tensor"],
                    help="image: RGB image input, normalization inside the model; tensor: normalized float input")
    grammar.add(cm, "--coreml-precision")
    et = p.add_argument_group("ExecuTorch")
    grammar.add(et, "--fixed-batch", help="the batch size fixed in the ExecuTorch program")
    grammar.add_deprecated(et, "--batch-size", "--fixed-batch", dest="fixed_batch", type=int)
    grammar.add(p, "--threads", help="CPU threads for PyTorch (the reference model, TorchScript, INT8 calibration of "
                                      "LiteRT and ExecuTorch): a count, or auto (the cores idle when the command "
                                      "starts) [auto]")
    p.set_defaults(func=grammar.with_threads(run))
