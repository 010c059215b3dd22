"""``repvit sam export``: the fused encoder and the prompt decoder as ONNX / Core ML / ExecuTorch / OpenVINO / LiteRT,
each checked."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import _grammar as grammar
from ._common import add_sam_weights, describe_weights, load_sam

REPORT_NAME = "repvit_sam_export.json"

DESCRIPTION = """\
Writes the fused image encoder and the prompt decoder into the --output folder and checks each file against
PyTorch on photographs: repvit_sam_encoder.onnx (input 'image' 1x3x1024x1024, output
'image_embeddings' 1x256x64x64), repvit_sam_decoder.onnx (segment-anything's SamOnnxModel layout),
repvit_sam_encoder.mlpackage / repvit_sam_decoder.mlpackage (Core ML), repvit_sam_encoder.pte
(ExecuTorch, XNNPACK), repvit_sam_encoder.xml / repvit_sam_decoder.xml (OpenVINO IRs, each with its
.bin; the ONNX files' inputs and outputs) and repvit_sam_encoder.tflite / repvit_sam_decoder.tflite (LiteRT;
the decoder takes exactly 2 points: one click + the padding point, or one box), plus a JSON report with every parity figure. A file that fails its check is
removed and the command exits with status 1.

Encoder input: RGB resized so the longest side is 1024 (segment-anything's ResizeLongestSide),
normalised with mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375) on the 0..255
scale, zero-padded at the bottom and right to 1024x1024 (Sam.preprocess).

Decoder prompts (inputs point_coords 1xNx2 and point_labels 1xN, N free): coordinates are pixels
of the original image mapped with ResizeLongestSide(1024).apply_coords. Labels: 1 foreground click,
0 background click, 2 box top-left corner, 3 box bottom-right corner, -1 padding. A box
(x0, y0, x1, y1) is the two points (x0, y0) label 2 and (x1, y1) label 3 after the clicks; with no
box, append the point (0, 0) with label -1 (SamPredictor does this itself; without it the masks
differ). mask_input is 1x1x256x256 (a previous low_res_masks channel, or zeros with
has_mask_input 0); orig_im_size is (height, width). Outputs: masks (logits at the original size,
> 0 is the mask), iou_predictions, low_res_masks; 4 masks (0: single-mask output, 1-3: multimask
outputs) unless --return-single-mask. Python helper: repvit.sam.decoder_graph.onnx_prompt.

--int8 also writes an INT8 encoder beside each float one (ONNX, OpenVINO, LiteRT, ExecuTorch:
repvit_sam_encoder-int8.onnx / .xml / .tflite / .pte), calibrated on --calib-images (photos like the
ones you will segment) and kept when the float decoder's masks from its embeddings agree with those
from the float encoder's (mean IoU >= 0.9 over the parity images and prompts; the report lists each).
The decoders stay float.

Core ML predictions need macOS: on other systems the conversion and the files' input and output
names are checked and the report says that no prediction was compared.
"""


def run_export(args: argparse.Namespace) -> int:
    from ...export.onnx import DEFAULT_OPSET
    from ...sam.export import export_sam, parse_formats
    formats = parse_formats(args.format) if args.format else None  # bad names fail before the model loads
    if args.num_real < 1:
        raise ValueError(f"--num-real must be at least 1, got {args.num_real}")
    if args.int8 and not args.calib_images:
        raise ValueError("--int8 needs --calib-images DIR: photos like the ones you will segment (16-64 are enough)")
    if args.calib_images and not Path(args.calib_images).exists():
        raise FileNotFoundError(f"--calib-images: {args.calib_images!r} does not exist")
    images = None
    if args.images:
        images = args.images[0] if len(args.images) == 1 else args.images
        for item in args.images:
            if not Path(item).exists():
                raise FileNotFoundError(f"--images: {item!r} does not exist")
    sam = load_sam(args)
    out = Path(args.output)
    try:
        report = export_sam(sam, out, formats=formats, images=images, max_images=args.num_real,
                            opset=args.opset or DEFAULT_OPSET,
                            return_single_mask=args.return_single_mask,
                            use_stability_score=args.use_stability_score, coreml_precision=args.coreml_precision,
                            strict=False, int8=args.int8, calibration=args.calib_images,
                            calib_count=args.calib_count,
                            log=print)
    except ImportError as err:
        raise ValueError(str(err)) from None
    report["weights"] = describe_weights(args)
    report_path = grammar.write_report(args.report or out / REPORT_NAME, report)
    if report["parity_on"].startswith("a synthetic"):
        print(f"note: parity was checked on {report['parity_on']}; pass --images to check on your photos")
    print(f"wrote {report_path}")
    if report["failures"]:
        print("parity check failed (those files were removed):\n  " + "\n  ".join(report["failures"]),
              file=sys.stderr)
        return 1
    return 0


def register(actions) -> None:
    p = actions.add_parser("export", help="export the encoder and prompt decoder (ONNX, Core ML, ExecuTorch, LiteRT, "
                                          "OpenVINO) with parity checks", description=DESCRIPTION,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    grammar.add(p, "--output", default="repvit_sam_export", help="folder for the files and the report")
    grammar.add_deprecated(p, "--output-dir", "--output", dest="output")
    grammar.add(p, "--format", help="comma-separated: onnx, coreml, executorch, openvino, litert (default: all whose "
                                    "package is installed; the others are listed as skipped)")
    grammar.add_deprecated(p, "--formats", "--format", dest="format")
    grammar.add(p, "--images",
                help="photos to check parity on (files or folders). Default: the photographs shipped with "
                        "matplotlib, or a generated test card if those are missing (the report says which)")
    grammar.add(p, "--num-real", default=2, help="check on at most this many images (each costs one 1024x1024 "
                                                 "encoder run per format)")
    grammar.add_retired(p, "--max-images", "--num-real N", meaning="how many images of the input are used")
    grammar.add(p, "--opset")
    p.add_argument("--return-single-mask", action="store_true",
                   help="decoder returns one mask: the best of the three multimask outputs for a lone click or a "
                        "box, the single-mask output for more points")
    p.add_argument("--use-stability-score", action="store_true",
                   help="decoder returns stability scores instead of predicted IoU")
    grammar.add(p, "--int8", help="also write INT8 encoders (ONNX, OpenVINO, LiteRT, ExecuTorch), calibrated on "
                                  "--calib-images and checked by their masks")
    grammar.add(p, "--calib-images", help="photos for INT8 calibration (a folder, searched recursively)")
    grammar.add(p, "--calib-count", default=16, help="calibration photos (each is one 1024x1024 encoder pass)")
    grammar.add(p, "--coreml-precision")
    grammar.add(p, "--report", help=f"write the report here (default: OUTPUT/{REPORT_NAME})")
    add_sam_weights(p, unfused=False)  # the exported encoder is always the fused one
    p.add_argument("--unfused", action=grammar.Deprecated, nargs=0, dest="unfused", replacement="",
                   message="sam export always writes the fused encoder; drop it (it has no effect)")
    grammar.add(p, "--threads", help="CPU threads for PyTorch (the reference encoder, INT8 calibration of LiteRT and "
                                      "ExecuTorch): a count, or auto (the cores idle when the command starts) [auto]")
    p.set_defaults(func=grammar.with_threads(run_export))
