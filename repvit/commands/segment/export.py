"""``repvit segment export``: the fused model as ONNX or an OpenVINO IR (dynamic size), LiteRT or
ExecuTorch (fixed size), checked on real images; with ``--int8`` also its INT8 copy, calibrated on real images (or,
LiteRT and ExecuTorch, trained with ``--qat-data``) and checked pixel by pixel."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import _grammar as grammar
from .._dense import real_images

ENGINES = {"onnx": "ONNX Runtime", "openvino": "OpenVINO", "litert": "LiteRT", "executorch": "ExecuTorch"}
SUFFIXES = {"onnx": ".onnx", "openvino": ".xml", "litert": ".tflite", "executorch": ".pte"}
FIXED_SIZE = ("litert", "executorch")


def run_export(args: argparse.Namespace) -> int:
    from ...dense import export as dense
    from ...models.reparam import reparameterize
    from ...segmentation.data import EvalResize
    from ...segmentation.semantic_fpn import load_segmenter
    fmt = args.format
    output = args.output or f"segmenter-fused{SUFFIXES[fmt]}"
    for path in (output, args.neck_output):
        if path and Path(path).suffix != SUFFIXES[fmt]:
            raise ValueError(f"--format {fmt} writes {SUFFIXES[fmt]} files, got {path!r}")
    if args.input_size and fmt not in FIXED_SIZE:
        raise ValueError(f"--input-size fixes the size of a LiteRT or ExecuTorch file; --format {fmt} exports "
                         "dynamic sizes")
    if fmt == "executorch" and args.neck_output:
        raise ValueError("--neck-output: the backbone + FPN alone is exported to ONNX, OpenVINO or LiteRT (--format "
                         "onnx, openvino or litert); ExecuTorch takes the whole segmenter")
    if args.qat_data and not args.int8:
        raise ValueError("--qat-data fine-tunes the INT8 copy: add --int8")
    if args.qat_data and fmt not in FIXED_SIZE:
        raise ValueError(f"--qat-data: quantization-aware training is for the PT2E INT8 files (--format litert or "
                         f"executorch); {ENGINES[fmt]}'s INT8 is post-training (--calib-images), which kept CamVid "
                         "within 0.52 mIoU points of float (benchmarks/deployment.md)")
    if args.int8 and not args.calib_images and not args.qat_data:
        raise ValueError("--int8 calibrates on real images: pass --calib-images DIR (training images, e.g. "
                         "../shared/data/camvid/train/images), or train the INT8 copy with --qat-data DIR "
                         "(LiteRT, ExecuTorch)")
    model = load_segmenter(args.checkpoint)
    fused = reparameterize(model)
    images = real_images(args.images, args.num_real)
    calibration = []
    # Post-training INT8 calibrates on --calib-images; with --qat-data the segmenter is trained instead, and
    # the neck (no labels to train it on) calibrates on --calib-images or else on the QAT split's images.
    calib_folder = args.calib_images or (Path(args.qat_data) / "images" if args.qat_data else None)
    if args.int8 and (not args.qat_data or args.neck_output):
        # Calibrate on what the model sees at evaluation: the recorded aligned resize, or the raw size
        # (LiteRT: resized to the file's fixed size).
        resize = EvalResize(model.eval_size)
        calibration = [resize(im, None)[0][None] for im in real_images(str(calib_folder), args.calib_count)]
    if fmt in FIXED_SIZE:
        size = tuple(args.input_size or images[0].shape[-2:])
        calibration = [torch.nn.functional.interpolate(c, size=size, mode="bilinear", align_corners=False).numpy()
                       for c in calibration]
        qat = _qat_setting(args, model, size) if args.qat_data else None    # a bad folder stops before any export
        export_fixed = dense.export_segmenter_litert if fmt == "litert" else dense.export_segmenter_executorch
        report = export_fixed(model, output, images, class_names=model.class_names, size=size)
        report["format"] = fmt
        record = f"record {report['record']}" if "record" in report else "record embedded"
        print(f"verified: {report['path']} ({fmt}, fused, {size[0]}x{size[1]}; {ENGINES[fmt]} max |diff| "
              f"{report['max_abs_diff']:.3g}; {record})")
        if args.int8:
            int8_path = dense.int8_path_for(output)
            if qat is not None:
                print(f"quantization-aware training: {qat.epochs:g} epoch(s) of {len(qat.samples)} frames from "
                      f"{args.qat_data} at {size[0]}x{size[1]}, batch 1, lr {qat.lr:g}")
            report["int8"] = export_fixed(model, int8_path, images, class_names=model.class_names, size=size,
                                          calibration=None if qat is not None else calibration, qat=qat)
            _say_int8(report["int8"])
        if args.neck_output:
            report["neck"] = dense.export_neck_litert(model.backbone, args.neck_output, images, size=size)
            print(f"verified: {report['neck']['path']} (backbone + FPN, {len(report['neck']['levels'])} levels; "
                  f"LiteRT max |diff| {report['neck']['max_abs_diff']:.3g}; record {report['neck']['record']})")
            if args.int8:
                report["neck"]["int8"] = dense.export_neck_litert(model.backbone, dense.int8_path_for(args.neck_output),
                                                                  images, size=size, calibration=calibration)
                _say_int8(report["neck"]["int8"])
        if args.report:
            grammar.write_report(args.report, report)
        return 0
    calibration = [c.numpy() for c in calibration]
    # Two sizes: the images as they are and a crop whose sides are not multiples of 32.
    images = images + [im[:, : im.shape[1] * 2 // 3, : im.shape[2] * 3 // 4] for im in images[:1]]
    export_model = dense.export_segmenter_onnx if fmt == "onnx" else dense.export_segmenter_openvino
    export_neck = dense.export_neck_onnx if fmt == "onnx" else dense.export_neck_openvino
    report = export_model(model, output, images, class_names=model.class_names)
    report["format"] = fmt
    print(f"verified: {report['path']} ({fmt}, fused, dynamic height/width; {ENGINES[fmt]} max |diff| "
          f"{report['max_abs_diff']:.3g} at sizes {report['image_sizes']})")
    if args.neck_output:
        neck = export_neck(model.backbone, args.neck_output, images)
        report["neck"] = neck
        print(f"verified: {neck['path']} (backbone + FPN; max |diff| {neck['max_abs_diff']:.3g})")
    if args.int8:
        report["int8"] = dense.quantize_dense(fused, report["path"], images, calibration, weights=args.int8_weights,
                                              calibration_source=str(args.calib_images))
        _say_int8(report["int8"])
        if args.neck_output:
            report["neck"]["int8"] = dense.quantize_dense(fused.backbone, args.neck_output, images, calibration,
                                                          weights=args.int8_weights,
                                                          calibration_source=str(args.calib_images))
            _say_int8(report["neck"]["int8"])
    if args.report:
        grammar.write_report(args.report, report)
    return 0


def _qat_setting(args: argparse.Namespace, model, size: tuple):
    """The quantization-aware fine-tune of ``--qat-data``: its frames at the file's ``size`` with flips, the
    segmenter's cross-entropy (void ignored)."""
    import torch.nn.functional as F

    from ...engine.qat import QATSetting
    from ...segmentation.data import ResizeFlip, SemanticFolder
    samples = SemanticFolder(args.qat_data, num_classes=model.num_classes, ignore_index=model.ignore_index,
                             reduce_zero_label=model.reduce_zero_label, train_transform=ResizeFlip(size))

    def loss(logits, label):
        if logits.shape[-2:] != label.shape[-2:]:
            logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(logits, label, ignore_index=model.ignore_index)
    return QATSetting(samples, loss, epochs=args.qat_epochs, lr=args.qat_lr, seed=args.seed)


def _say_int8(int8: dict) -> None:
    agreement = "" if int8["pixel_agreement"] is None else f", {int8['pixel_agreement']:.1%} of pixels keep their class"
    qat = int8.get("qat")
    how = (f"{qat['steps']} QAT steps, loss {qat['loss_first']:.4f} -> {qat['loss_last']:.4f}" if qat
           else f"{int8['calibration_images']} calibration images")
    print(f"verified: {int8['path']} (INT8: {int8['tool']}, {how}; on the "
          f"real images: relative L2 error {int8['relative_l2_error']:.3f}{agreement})")


def register(actions) -> None:
    ex = actions.add_parser("export", help="the fused model to ONNX or OpenVINO (dynamic size), LiteRT or "
                                           "ExecuTorch (fixed size), float or INT8, checked on real images")
    grammar.add(ex, "--checkpoint", required=True, help="a segmentation model saved by this library")
    grammar.add(ex, "--format", default="onnx", choices=list(SUFFIXES),
                help="onnx (checked with ONNX Runtime), openvino (an IR .xml with its .bin beside it, "
                         "checked with OpenVINO), litert (.tflite at a fixed size with its .json record beside "
                         "it, checked with the LiteRT interpreter) or executorch (.pte at a fixed size, XNNPACK, "
                         "checked with ExecuTorch's runtime) [onnx]")
    ex.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                    help="LiteRT and ExecuTorch: the file's fixed input size [the size of the first check image]")
    grammar.add(ex, "--output", default=None, help="file to write, used as given [segmenter-fused.onnx, .xml, .tflite or .pte]")
    ex.add_argument("--neck-output", default=None, help="also export the fused backbone + FPN (one output per pyramid level) to this file, same format as --output")
    grammar.add(ex, "--images", help="folder of real images to check the export on (default: two photos shipped "
                                     "with matplotlib)")
    grammar.add(ex, "--num-real", default=2)
    q = ex.add_argument_group("INT8")
    grammar.add(q, "--int8", help="also write INT8 copies (<name>-int8, of the neck too): ONNX Runtime static QDQ, "
                                  "NNCF post-training quantization, LiteRT full integer or the ExecuTorch XNNPACK "
                                  "quantizer, calibrated on "
                                  "--calib-images (or trained with --qat-data) and kept only if "
                                  "90%% of the pixels of the real images keep their class")
    grammar.add(q, "--calib-images", help="folder of training images to calibrate on (at the model's evaluation size)")
    grammar.add(q, "--calib-count", default=100)
    grammar.add(q, "--int8-weights")
    q.add_argument("--qat-data", metavar="DIR",
                   help="LiteRT and ExecuTorch: train the INT8 copy with quantization-aware fine-tuning on this "
                        "labelled split (images/ and labels/, e.g. ../shared/data/camvid/train) instead of "
                        "post-training calibration; frames resized to the file's size, flips, batch 1")
    q.add_argument("--qat-epochs", type=float, default=1.0, metavar="N",
                   help="passes over --qat-data (fractions allowed) [1]")
    q.add_argument("--qat-lr", type=float, default=1e-5, metavar="LR", help="QAT learning rate (AdamW) [1e-5]")
    grammar.add(q, "--seed")
    grammar.add_report(ex, help="write the check's report to this JSON file")
    ex.set_defaults(func=run_export)
