"""RepViT-SAM for deployment: the image encoder and the prompt decoder as separate files, each checked.

SAM is deployed in two parts because they run at different rates: the image encoder once per
image (the expensive part), the prompt decoder once per click. This module writes

* ``repvit_sam_encoder.onnx``: the *fused* RepViT encoder. Input ``image`` float32 1x3x1024x1024,
  output ``image_embeddings`` float32 1x256x64x64. The input is what ``Sam.preprocess`` returns
  for ``ResizeLongestSide(1024).apply_image(rgb)``: longest side resized to 1024, pixels
  normalised with SAM's mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375) on the
  0..255 scale, then zero-padded at the bottom and right to 1024x1024
  (``repvit.sam.export_parity.preprocess``).
* ``repvit_sam_decoder.onnx``: prompt encoder + mask decoder + mask upscaling in the layout of
  Meta's ``segment_anything.utils.onnx.SamOnnxModel``, which every SAM ONNX client reads:

  ========================  =================  ====================================================
  input                     shape              meaning
  ========================  =================  ====================================================
  ``image_embeddings``      1x256x64x64        the encoder's output
  ``point_coords``          1xNx2 (N dynamic)  (x, y) in the 1024 frame: original-image pixels mapped
                                               with ``ResizeLongestSide(1024).apply_coords``
  ``point_labels``          1xN                1 = foreground click, 0 = background click,
                                               2 = box top-left corner, 3 = box bottom-right corner,
                                               -1 = padding ("not a point")
  ``mask_input``            1x1x256x256        a previous ``low_res_masks`` channel, or zeros
  ``has_mask_input``        1                  1.0 when ``mask_input`` is used, else 0.0
  ``orig_im_size``          2                  (height, width) of the original image, float32
  ========================  =================  ====================================================

  **Prompts, as ``SamPredictor.predict`` builds them** (the questions of segment-anything issues
  #81 and #91): a box ``(x0, y0, x1, y1)`` is not a separate input but two more points,
  ``(x0, y0)`` with label 2 and ``(x1, y1)`` with label 3, placed after the clicks. When there is
  *no* box, append one padding point ``(0, 0)`` with label -1: the predictor adds it internally,
  and a decoder fed without it gives different masks. Several boxes are several runs (batch 1).
  ``repvit.sam.decoder_graph.onnx_prompt`` does all of this.

  Outputs: ``masks`` 1xKxHxW mask *logits* at the original size (``> 0`` is the mask),
  ``iou_predictions`` 1xK and ``low_res_masks`` 1xKx256x256 (feed one back as ``mask_input``).
  K is 4: channel 0 is the mask ``predict(multimask_output=False)`` returns, channels 1-3 the
  three of ``multimask_output=True``. ``return_single_mask=True`` keeps one (K=1): the best of
  1-3 by predicted IoU when there are at most two points counting the padding (one click, or a
  box), channel 0 otherwise. ``use_stability_score=True`` replaces the IoU predictions with
  stability scores of the low-resolution logits (IoU of the masks thresholded at +-1).

  segment-anything 1.0's ``SamOnnxModel`` turns the crop before the final resize into a Python
  integer, so a traced graph keeps the crop of the example image size and returns wrong masks
  for any other aspect ratio (0.3 logits off on a portrait image here); the decoder exported here
  (``repvit.sam.decoder_graph``) takes the crop from the tensor, so it follows ``orig_im_size``.

* Core ML (``.mlpackage`` ML programs, coremltools): the encoder with the same tensor input and
  output names, and the decoder without the final upscaling (inputs ``image_embeddings``,
  ``point_coords`` with 1-16 points, ``point_labels``, ``mask_input``, ``has_mask_input``;
  outputs ``iou_predictions`` and ``low_res_masks``; resize to the image in the app). Core ML
  predicts only on macOS: elsewhere the conversion and the file's input/output names are checked.
* ExecuTorch (``repvit_sam_encoder.pte``): the fused encoder lowered to XNNPACK at 1x3x1024x1024
  and checked with ExecuTorch's runtime.
* OpenVINO (``repvit_sam_encoder.xml`` / ``repvit_sam_decoder.xml``, each with its ``.bin``): the
  ONNX files' inputs and outputs, checked with OpenVINO's CPU plugin (``sam_openvino.py``).
* LiteRT (``repvit_sam_encoder.tflite`` / ``repvit_sam_decoder.tflite``, litert-torch, checked with
  the LiteRT interpreter): the encoder with the fixed 1x3x1024x1024 input; the decoder with the
  Core ML decoder's inputs and outputs at exactly two prompt points (one click + the padding
  point, or one box): LiteRT files have fixed shapes, and SAM's masks change with every extra
  padding point, so other prompts need the ONNX or OpenVINO decoder. Its low-resolution masks are
  checked after ``Sam.postprocess_masks`` against ``SamPredictor.predict`` (``sam_litert.py``).

Every file is checked against PyTorch on real photographs (the encoder on each image, the
decoder on that image's embedding with one click, a box, a box with a background click and a
click with a previous mask, compared both with the PyTorch module it was exported from and with
``SamPredictor.predict``: ``repvit.sam.export_parity``); a file beyond its tolerance is removed and
``ParityError`` raised. The ONNX graph, Core ML and ExecuTorch writing is the classifier exporters'
(``onnx.save_with_metadata``, ``coreml.convert_tensors``, ``executorch.export_executorch``).

(Just over 400 lines: the specification of the two files above is part of this module on purpose,
beside the code that writes them; the decoder modules and the parity checks live in
``sam_decoder.py`` and ``sam_parity.py``.)
"""
from __future__ import annotations

import copy
import os
import platform
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..models.reparam import is_fused, reparameterize
from .builder import require_segment_anything
from ..export import coreml, executorch
from ..export.onnx import DEFAULT_OPSET, save_with_metadata, session
from .decoder_graph import (COREML_DECODER_INPUTS, COREML_DECODER_OUTPUTS, DECODER_INPUTS, DECODER_OUTPUTS,
                          LowResDecoder, decoder_example, prompt_decoder)
from .export_parity import check_decoder, check_encoder, discard_failed, encode_images, parity_images
from ..export.verify import ParityError, max_abs_diff

FORMATS = ("onnx", "coreml", "executorch", "openvino", "litert")
ENCODER_INPUTS, ENCODER_OUTPUTS = ("image",), ("image_embeddings",)
COREML_MAX_POINTS = 16
FILE_NAMES = {("onnx", "encoder"): "repvit_sam_encoder.onnx", ("onnx", "decoder"): "repvit_sam_decoder.onnx",
              ("coreml", "encoder"): "repvit_sam_encoder.mlpackage",
              ("coreml", "decoder"): "repvit_sam_decoder.mlpackage",
              ("executorch", "encoder"): "repvit_sam_encoder.pte",
              ("openvino", "encoder"): "repvit_sam_encoder.xml", ("openvino", "decoder"): "repvit_sam_decoder.xml",
              ("litert", "encoder"): "repvit_sam_encoder.tflite", ("litert", "decoder"): "repvit_sam_decoder.tflite"}

MACOS_ONLY = "Core ML predictions need macOS; on {system} the conversion and the file's inputs and outputs are checked"


def _need(module: str, extra: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this export needs {module.split('.')[0]}: pip install 'repvit-pytorch[{extra}]'") from None


def fused_cpu_copy(sam: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``sam`` in eval mode with its image encoder fused; ``sam`` is untouched."""
    if not hasattr(sam, "image_encoder") or not hasattr(sam, "mask_decoder"):
        raise TypeError(f"expected a segment_anything Sam model (see repvit.sam.build_sam), got {type(sam).__name__}")
    sam = copy.deepcopy(sam).eval().float().cpu()
    if not is_fused(sam.image_encoder):
        sam.image_encoder = reparameterize(sam.image_encoder, inplace=True)
    for p in sam.parameters():
        p.requires_grad_(False)
    return sam


# --------------------------------------------------------------------------- ONNX
def _write_metadata(path: Path, metadata: dict) -> dict:
    onnx = _need("onnx", "onnx")
    proto = onnx.load(str(path))
    save_with_metadata(proto, path, metadata)
    ops = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            "nodes": len(proto.graph.node), "batch_norm_nodes": ops.get("BatchNormalization", 0),
            "inputs": {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                       for v in proto.graph.input},
            "outputs": [v.name for v in proto.graph.output]}


def _base_metadata(part: str) -> dict:
    from ..version import __version__
    return {"producer": f"repvit {__version__} (torch {torch.__version__.split('+')[0]})",
            "model": "RepViT-SAM (RepViT-M2.3 image encoder, fused; SAM prompt encoder and mask decoder)",
            "part": part}


def export_encoder_onnx(sam: nn.Module, path: Union[str, os.PathLike], *, opset: int = DEFAULT_OPSET) -> dict:
    """Write the fused image encoder (``image`` 1x3xSxS -> ``image_embeddings``); returns graph facts."""
    _need("onnx", "onnx")
    _need("onnxscript", "onnx")
    sam, path = fused_cpu_copy(sam), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = sam.image_encoder.img_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(sam.image_encoder, (torch.randn(1, 3, size, size),), str(path), dynamo=True, verbose=False,
                          external_data=False, input_names=list(ENCODER_INPUTS), output_names=list(ENCODER_OUTPUTS),
                          opset_version=opset)
    facts = _write_metadata(path, {
        **_base_metadata("image encoder"),
        "input": f"image: float32 1x3x{size}x{size}; RGB with the longest side resized to {size} "
                 f"(ResizeLongestSide), normalised with mean {sam.pixel_mean.flatten().tolist()} and std "
                 f"{sam.pixel_std.flatten().tolist()} (0..255 scale), zero-padded at the bottom/right",
        "output": "image_embeddings: float32 1x256x{0}x{0}".format(size // sam.image_encoder.stride)})
    if facts["batch_norm_nodes"]:
        path.unlink(missing_ok=True)
        raise ValueError(f"{path}: {facts['batch_norm_nodes']} BatchNormalization nodes: the encoder was not fused")
    return {"path": str(path), **facts}


def export_decoder_onnx(sam: nn.Module, path: Union[str, os.PathLike], *, opset: int = DEFAULT_OPSET,
                        return_single_mask: bool = False, use_stability_score: bool = False) -> dict:
    """Write the prompt decoder in ``SamOnnxModel``'s layout with a dynamic number of points.

    Exported with PyTorch's TorchScript-based ONNX exporter (as Meta's export script does): the
    mask output's size is the *value* of ``orig_im_size``, which a trace records as a shape
    computation and ``torch.export`` would need as a data-dependent size.
    """
    _need("onnx", "onnx")
    sam, path = fused_cpu_copy(sam), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = prompt_decoder(sam, return_single_mask=return_single_mask, use_stability_score=use_stability_score)
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, decoder_example(sam), str(path), dynamo=False, verbose=False,
                          input_names=list(DECODER_INPUTS), output_names=list(DECODER_OUTPUTS), opset_version=opset,
                          dynamic_axes=dynamic, do_constant_folding=True)
    facts = _write_metadata(path, {
        **_base_metadata("prompt decoder"),
        "return_single_mask": str(bool(return_single_mask)).lower(),
        "use_stability_score": str(bool(use_stability_score)).lower(),
        "point_labels": "1 foreground click, 0 background click, 2 box top-left, 3 box bottom-right, -1 padding; "
                        "no box: append point (0, 0) with label -1",
        "point_coords": f"original-image pixels mapped with ResizeLongestSide({sam.image_encoder.img_size})"
                        ".apply_coords",
        "outputs": "masks: logits at orig_im_size (> 0 is the mask); iou_predictions; low_res_masks 256x256"})
    return {"path": str(path), **facts}


def onnx_session(path: Union[str, os.PathLike]):
    _need("onnxruntime", "onnx")
    return session(path)


def onnx_encoder_runner(path) -> Callable[[torch.Tensor], np.ndarray]:
    sess = onnx_session(path)
    return lambda x: sess.run(None, {ENCODER_INPUTS[0]: x.detach().cpu().float().contiguous().numpy()})[0]


def onnx_decoder_runner(path) -> Callable[[dict], list]:
    sess = onnx_session(path)
    return lambda feed: sess.run(None, feed)


# --------------------------------------------------------------------------- Core ML
def export_encoder_coreml(sam: nn.Module, path: Union[str, os.PathLike], *, precision: str = "float16") -> dict:
    """The fused encoder as an ML program with a tensor input ``image`` (already preprocessed)."""
    ct = coreml._require()
    sam, path = fused_cpu_copy(sam), Path(path)
    size = sam.image_encoder.img_size
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(sam.image_encoder, torch.randn(1, 3, size, size))
    coreml.convert_tensors(traced, path, inputs=[ct.TensorType(name=ENCODER_INPUTS[0], shape=(1, 3, size, size))],
                           outputs=ENCODER_OUTPUTS, precision=precision, metadata=_base_metadata("image encoder"),
                           descriptions={"image": f"float32 1x3x{size}x{size}: SAM-preprocessed "
                                                  "(see repvit.sam.export)",
                                         "image_embeddings": "1x256 image embedding grid"})
    return _coreml_facts(path, ENCODER_INPUTS, ENCODER_OUTPUTS)


def export_decoder_coreml(sam: nn.Module, path: Union[str, os.PathLike], *, precision: str = "float16",
                          max_points: int = COREML_MAX_POINTS) -> dict:
    """The prompt decoder up to the low-resolution masks, 1..``max_points`` points (padding and box corners
    included)."""
    coreml._require()
    sam, path = fused_cpu_copy(sam), Path(path)
    module = LowResDecoder(sam).eval()
    example = decoder_example(sam)[:5]
    # torch.export keeps the number of points symbolic through the attention reshapes; a trace turns
    # those sizes into integer ops that coremltools cannot convert.
    points = torch.export.Dim("num_points", min=1, max=int(max_points))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, example, dynamic_shapes=(None, {1: points}, {1: points}, None, None))
        program = program.run_decompositions({})
    coreml.convert_tensors(
        program, path, inputs=None, outputs=COREML_DECODER_OUTPUTS, precision=precision,
        metadata={**_base_metadata("prompt decoder (low-resolution masks)"),
                  "point_labels": "1 foreground, 0 background, 2 box top-left, 3 box bottom-right, "
                                  "-1 padding (append (0, 0) with -1 when there is no box)"},
        descriptions={"point_coords": "1xNx2 (x, y) in the 1024 frame (ResizeLongestSide.apply_coords)",
                      "point_labels": "1 fg, 0 bg, 2/3 box corners, -1 padding",
                      "low_res_masks": "1x4x256x256 logits; upscale to 1024, crop the resized image, resize to "
                                       "the original"})
    with torch.no_grad():  # what was converted equals the ONNX decoder's module on the low-res outputs
        ref = prompt_decoder(sam)(*decoder_example(sam))
        got = module(*example)
    facts = _coreml_facts(path, COREML_DECODER_INPUTS, COREML_DECODER_OUTPUTS)
    facts["converted_module_vs_onnx_module"] = max(max_abs_diff(got[0], ref[1]), max_abs_diff(got[1], ref[2]))
    return facts


def _coreml_facts(path: Path, inputs: Sequence[str], outputs: Sequence[str]) -> dict:
    spec = coreml.tensor_spec(path)
    if spec["type"] != "mlProgram" or list(spec["inputs"]) != list(inputs) or list(spec["outputs"]) != list(outputs):
        raise ValueError(f"{path}: Core ML file has {spec}, expected an mlProgram with inputs {list(inputs)} and "
                         f"outputs {list(outputs)}")
    note = None if coreml.can_predict() else MACOS_ONLY.format(system=platform.system())
    return {"path": str(path), **spec, "predicted": False, "note": note}


def coreml_can_predict() -> bool:
    return coreml.can_predict()


# --------------------------------------------------------------------------- ExecuTorch
def export_encoder_executorch(sam: nn.Module, path: Union[str, os.PathLike]) -> dict:
    """The fused encoder as an XNNPACK-delegated ``.pte`` (fixed 1x3xSxS input)."""
    if not executorch.available():
        raise ImportError("ExecuTorch export needs the executorch package: pip install 'repvit-pytorch[executorch]'")
    sam = fused_cpu_copy(sam)
    size = sam.image_encoder.img_size
    meta = {**_base_metadata("image encoder"), "output": "image_embeddings 1x256 grid"}
    path, facts = executorch.export_executorch(sam.image_encoder, path, img_size=size, metadata=meta)
    return {"path": str(path), **facts}


def executorch_encoder_runner(path) -> Callable[[torch.Tensor], np.ndarray]:
    run = executorch.runner(path)
    return lambda x: run(x.float()).numpy()


# --------------------------------------------------------------------------- everything
def parse_formats(text: Union[str, Sequence[str], None]) -> list[str]:
    """``"onnx,coreml"`` -> ``["onnx", "coreml"]``; an unknown name is an error listing the known ones."""
    if text is None:
        return list(FORMATS)
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown export format(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(FORMATS)} (comma-separated)")
    return list(dict.fromkeys(names))


def format_available(fmt: str) -> Optional[str]:
    """None when ``fmt`` can be written here, else the reason (the missing package and its pip extra)."""
    import importlib.util
    needs = {"onnx": [("onnx", "onnx"), ("onnxruntime", "onnx"), ("onnxscript", "onnx")],
             "coreml": [("coremltools", "coreml")], "executorch": [("executorch", "executorch")],
             "openvino": [("openvino", "deploy")],
             "litert": [("litert_torch", "litert"), ("ai_edge_litert", "litert")]}[fmt]
    for module, extra in needs:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: pip install 'repvit-pytorch[{extra}]'"
    return None


def export_sam(sam: nn.Module, output_dir: Union[str, os.PathLike], *, formats: Union[str, Sequence[str], None] = None,
               images=None, max_images: int = 2, opset: int = DEFAULT_OPSET, return_single_mask: bool = False,
               use_stability_score: bool = False, coreml_precision: str = "float16", strict_formats: bool = True,
               strict: bool = True, int8: bool = False, calibration=None, calib_count: Optional[int] = None,
               min_mask_iou: Optional[float] = None, log: Callable[[str], None] = lambda _: None) -> dict:
    """Write every asked format into ``output_dir``, check each, and return the report (also what the CLI saves).

    ``formats=None`` means every format whose package is installed (others are listed as skipped);
    a format named explicitly whose package is missing is an error when ``strict_formats``. A
    check beyond its tolerance removes that file; once every format is done, ``ParityError``
    (carrying the report as ``.report``) is raised, or with ``strict=False`` the report lists the
    failures under ``failures``. Core ML is checked as far as the platform allows; an ExecuTorch lowering
    that fails is reported with its reason instead of stopping the other formats.

    ``int8=True`` also writes an INT8 encoder beside the float one for ONNX, OpenVINO, LiteRT and
    ExecuTorch (``repvit_sam_encoder-int8.*``), calibrated on ``calibration`` (a folder or list of
    photos, ``calib_count`` of them) and kept when its masks agree with the float encoder's
    (``repvit.sam.export_int8``: mean IoU >= ``min_mask_iou``).
    """
    explicit = formats is not None
    formats = parse_formats(formats)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output folder {str(out)!r} is an existing file; name a folder")
    require_segment_anything()
    sam = fused_cpu_copy(sam)
    report = {"model": "RepViT-SAM", "image_size": sam.image_encoder.img_size, "formats": {}, "skipped": {}}
    calibrated = None
    if int8:
        from . import export_int8 as sam_int8
        if not set(sam_int8.INT8_FORMATS) & set(formats):
            raise ValueError(f"INT8 encoders are written for {', '.join(sam_int8.INT8_FORMATS)}; none of them is "
                             f"among the formats asked for ({', '.join(formats)})")
        arrays, paths = sam_int8.calibration_inputs(sam, calibration, calib_count or sam_int8.DEFAULT_CALIBRATION_COUNT)
        calibrated = (arrays, str(calibration) if isinstance(calibration, (str, os.PathLike)) else
                      f"{len(paths)} files")
        report["int8_calibration"] = {"images": len(arrays), "source": calibrated[1]}
        log(f"INT8: calibrating on {len(arrays)} photos from {calibrated[1]}")
    for fmt in list(formats):
        reason = format_available(fmt)
        if reason and (explicit and strict_formats):
            raise ImportError(f"cannot export {fmt}: {reason}")
        if reason:
            report["skipped"][fmt] = reason
            formats.remove(fmt)
            log(f"skipping {fmt}: {reason}")
    images = parity_images(images, limit=max_images)
    synthetic = any(name == "synthetic" for name, _ in images)
    report["parity_images"] = [{"name": name, "height": int(a.shape[0]), "width": int(a.shape[1])}
                               for name, a in images]
    report["parity_on"] = "a synthetic test card (no photograph found)" if synthetic else "real photographs"
    encoded = []
    if {"onnx", "executorch", "openvino", "litert"} & set(formats):  # Core ML alone predicts nothing here
        log(f"parity on {report['parity_on']}: " + ", ".join(n for n, _ in images))
        encoded = encode_images(sam, images)
    else:
        report["parity_on"] = "nothing run (Core ML predictions need macOS)"
    failures = []

    def record(fmt: str, part: str, entry: dict) -> None:
        report["formats"].setdefault(fmt, {})[part] = entry
        if "mask_iou_mean" in entry:
            log(f"{fmt} {part}: masks vs the float encoder's: mean IoU {entry['mask_iou_mean']:.4f} (min "
                f"{entry['mask_iou_min']:.4f}, needs >= {entry['min_mask_iou']:g}) -> "
                f"{'OK' if entry['passed'] else 'FAILED'}")
            if not entry["passed"]:
                failures.append(f"{fmt} {part}: mean mask IoU {entry['mask_iou_mean']:.4f} < {entry['min_mask_iou']:g}")
            return
        if "max_abs_diff" in entry:
            log(f"{fmt} {part}: max |diff| {entry['max_abs_diff']:.3e} (tolerance {entry['tolerance']:.0e}) "
                f"-> {'OK' if entry['passed'] else 'FAILED'}")
        if entry.get("passed") is False:
            failures.append(f"{fmt} {part}: max |diff| {entry['max_abs_diff']:.3g} > {entry['tolerance']:g}")

    def quantized(fmt: str, float_path: Path, runner, discard) -> None:
        """The INT8 encoder of ``fmt`` from the checked float one, checked by its masks."""
        from . import export_int8 as sam_int8
        if not Path(float_path).exists():   # the float file failed its own check
            record(fmt, "encoder_int8", {"written": False, "reason": "the float encoder failed its parity check"})
            return
        path = out / sam_int8.INT8_FILE_NAMES[fmt]
        try:
            facts = sam_int8.write_int8_encoder(fmt, sam, Path(float_path), path, calibrated[0], source=calibrated[1],
                                                metadata=_base_metadata("image encoder (int8)"))
        except Exception as err:  # noqa: BLE001 - reported like the ExecuTorch lowering; the other formats go on
            record(fmt, "encoder_int8", {"written": False, "reason": f"{type(err).__name__}: {err}"})
            log(f"{fmt} encoder_int8: not written: {type(err).__name__}: {err}")
            failures.append(f"{fmt} encoder_int8: {type(err).__name__}: {err}")
            return
        threshold = sam_int8.INT8_MIN_MASK_IOU if min_mask_iou is None else min_mask_iou
        check = sam_int8.check_int8_encoder(runner(path), sam, encoded, min_mask_iou=threshold)
        record(fmt, "encoder_int8", discard({**facts, **check}, path))

    if "onnx" in formats:
        path = out / FILE_NAMES["onnx", "encoder"]
        facts = export_encoder_onnx(sam, path, opset=opset)
        record("onnx", "encoder", discard_failed({**facts, **check_encoder(onnx_encoder_runner(path), encoded)}, path))
        if calibrated:
            quantized("onnx", path, onnx_encoder_runner, discard_failed)
        path = out / FILE_NAMES["onnx", "decoder"]
        facts = export_decoder_onnx(sam, path, opset=opset, return_single_mask=return_single_mask,
                                    use_stability_score=use_stability_score)
        check = check_decoder(onnx_decoder_runner(path), sam, encoded, return_single_mask=return_single_mask,
                              use_stability_score=use_stability_score)
        record("onnx", "decoder", discard_failed({**facts, **check}, path))
    if "coreml" in formats:
        for part, export in (("encoder", export_encoder_coreml), ("decoder", export_decoder_coreml)):
            facts = export(sam, out / FILE_NAMES["coreml", part], precision=coreml_precision)
            record("coreml", part, facts)
            log(f"coreml {part}: {facts['path']} (inputs {', '.join(facts['inputs'])}; outputs "
                f"{', '.join(facts['outputs'])}); {facts['note'] or 'prediction not checked'}")
    if "executorch" in formats:
        path = out / FILE_NAMES["executorch", "encoder"]
        try:
            facts = export_encoder_executorch(sam, path)
        except Exception as err:  # noqa: BLE001 - the report carries the exact reason
            record("executorch", "encoder", {"lowered": False, "reason": f"{type(err).__name__}: {err}"})
            log(f"executorch encoder: did not lower: {type(err).__name__}: {err}")
        else:
            try:
                check = check_encoder(executorch_encoder_runner(path), encoded)
            except Exception as err:  # noqa: BLE001
                record("executorch", "encoder", {"lowered": True, **facts, "verified": False,
                                                 "reason": f"ExecuTorch runtime: {type(err).__name__}: {err}"})
                log(f"executorch encoder: written, not verified: {err}")
            else:
                record("executorch", "encoder", discard_failed({"lowered": True, **facts, "verified": True, **check},
                                                               path))
                if calibrated:
                    quantized("executorch", path, executorch_encoder_runner, discard_failed)
    if "openvino" in formats:
        from . import export_openvino as ov
        path = out / FILE_NAMES["openvino", "encoder"]
        facts = ov.export_encoder_openvino(sam, path, metadata=_base_metadata("image encoder"))
        record("openvino", "encoder", ov.discard_failed({**facts, **check_encoder(ov.encoder_runner(path), encoded)},
                                                        path))
        if calibrated:
            quantized("openvino", path, ov.encoder_runner, ov.discard_failed)
        path = out / FILE_NAMES["openvino", "decoder"]
        facts = ov.export_decoder_openvino(sam, path, metadata=_base_metadata("prompt decoder"),
                                           return_single_mask=return_single_mask,
                                           use_stability_score=use_stability_score)
        check = check_decoder(ov.decoder_runner(path), sam, encoded, return_single_mask=return_single_mask,
                              use_stability_score=use_stability_score)
        record("openvino", "decoder", ov.discard_failed({**facts, **check}, path))
    if "litert" in formats:
        from . import export_litert as lt
        path = out / FILE_NAMES["litert", "encoder"]
        facts = lt.export_encoder_litert(sam, path)
        record("litert", "encoder", discard_failed({**facts, **check_encoder(lt.encoder_runner(path), encoded)},
                                                   path))
        if calibrated:
            quantized("litert", path, lt.encoder_runner, discard_failed)
        path = out / FILE_NAMES["litert", "decoder"]
        facts = lt.export_decoder_litert(sam, path)
        check = check_decoder(lt.decoder_runner(path, sam), sam, encoded, prompts=lt.parity_prompts_for_litert)
        record("litert", "decoder", discard_failed({**facts, **check}, path))
        if return_single_mask or use_stability_score:
            log("litert decoder: --return-single-mask / --use-stability-score apply to the ONNX and OpenVINO "
                "decoders; the LiteRT one returns the four masks and their predicted IoU")
    report["passed"] = not failures
    report["failures"] = failures
    if failures and strict:
        err = ParityError("parity check failed (the failing files were removed):\n  " + "\n  ".join(failures))
        err.report = report
        raise err
    return report


__all__ = ["export_sam", "export_encoder_onnx", "export_decoder_onnx", "export_encoder_coreml", "export_decoder_coreml",
           "export_encoder_executorch", "fused_cpu_copy", "parse_formats", "format_available", "onnx_session",
           "ParityError", "FORMATS", "FILE_NAMES"]
