"""Exporting dense models with parity checks on real images.

* Semantic FPN -> ONNX with dynamic batch, height and width; checked with ONNX Runtime at two
  image sizes against the fused PyTorch model.
* Backbone + FPN -> ONNX (one output per pyramid level, dynamic sizes), checked the same way.
* Both also -> OpenVINO IR (``.xml`` + ``.bin``, same dynamic sizes and outputs), checked with
  OpenVINO's CPU plugin in float32 the same way.
* Semantic FPN -> LiteRT (``.tflite`` at a fixed size, float or full-integer INT8), checked with the
  LiteRT interpreter; the flatbuffer carries no metadata here, so the record goes beside it
  (``<name>.json``).
* Semantic FPN -> ExecuTorch (``.pte`` delegated to XNNPACK at a fixed size, float or INT8 through the
  XNNPACK quantizer), checked with ExecuTorch's runtime; the record is the program's ``metadata``.
* INT8 copies of the ONNX and OpenVINO exports (``quantize_dense``): ONNX Runtime static QDQ or
  NNCF, calibrated on real images, kept only if they stay close to the float model on real images
  (segmenters: the class of at least 90% of the pixels unchanged).
The detector's TorchScript export is ``repvit.detection.export``; the exported segmenter run behind the
PyTorch model's interface (``ExportedSegmenter``) is ``repvit.segmentation.exported``.

Every export is of the fused model; a failed check removes the file (both files of an IR) and raises
``ParityError``.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..models.reparam import is_fused, reparameterize
from ..export.onnx import DEFAULT_OPSET, save_with_metadata, session
from ..export.quantize import INT8_MAX_REL_ERROR, INT8_MIN_PIXEL_AGREEMENT, WEIGHT_ENCODINGS
from ..export.verify import ParityError

SEG_TOLERANCE = 1e-3        # max |logit difference| for float32 ONNX Runtime vs PyTorch
DET_TOLERANCE = 1e-3        # max |box coordinate or score difference| for TorchScript vs eager


class _LevelsAsTuple(nn.Module):
    """ONNX graphs return a flat list of outputs, not an ordered dict."""

    def __init__(self, neck: nn.Module):
        super().__init__()
        self.neck = neck

    def forward(self, x: torch.Tensor):
        return tuple(self.neck(x).values())


def _fused(model: nn.Module) -> nn.Module:
    model = model.eval()
    return model if is_fused(model) else reparameterize(model)


def _export_dynamic_onnx(module: nn.Module, path: Path, output_names: list[str], metadata: dict, opset: int) -> None:
    import onnx
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.rand(2, 3, 256, 320)
    dims = _dynamic_dims()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=True, verbose=False, external_data=False,
                          input_names=["image"], output_names=output_names, opset_version=opset,
                          dynamic_shapes=(dims,))
    save_with_metadata(onnx.load(str(path)), path, metadata)


def _check_onnx(reference: nn.Module, path: Path, images: Sequence[torch.Tensor], tolerance: float) -> dict:
    sess = session(path)
    name = sess.get_inputs()[0].name
    return _check(reference, lambda x: sess.run(None, {name: x}), images, tolerance, path, "ONNX Runtime",
                  lambda: path.unlink(missing_ok=True))


def _check_openvino(reference: nn.Module, path: Path, images: Sequence[torch.Tensor], tolerance: float) -> dict:
    from ..export import openvino as fmt_ov
    return _check(reference, fmt_ov.array_runner(path), images, tolerance, path, "OpenVINO",
                  lambda: fmt_ov.remove(path))


def _check(reference: nn.Module, run, images: Sequence[torch.Tensor], tolerance: float, path: Path, engine: str,
           remove) -> dict:
    """Largest difference over every output of ``run`` (arrays in, list of arrays out) vs ``reference``."""
    worst = 0.0
    shapes = []
    with torch.no_grad():
        for image in images:
            want = reference(image[None])
            want = list(want.values()) if isinstance(want, dict) else [want]
            got = run(image[None].float().contiguous().numpy())
            if len(got) != len(want):
                worst = float("inf")
            for w, g in zip(want, got):
                g = torch.from_numpy(np.asarray(g))
                worst = max(worst, (w - g).abs().max().item() if g.shape == w.shape else float("inf"))
            shapes.append(list(image.shape[-2:]))
    report = {"max_abs_diff": worst, "tolerance": tolerance, "image_sizes": shapes, "passed": worst <= tolerance}
    if not report["passed"]:
        remove()
        raise ParityError(f"{engine} differs from PyTorch by {worst:.3g} (> {tolerance:g}) on real images "
                          f"{shapes}; {path} was removed")
    return report


def _segmenter_metadata(model: nn.Module, class_names: Sequence[str]) -> dict:
    """What scoring the file needs besides its graph: classes, the ignored label, the evaluation size."""
    eval_size = getattr(model, "eval_size", None)
    return {"producer": "repvit", "task": "segmentation", "class_names": list(class_names),
            "config": getattr(model, "repvit_config", {}), "input": "float32 RGB in 0..1, NCHW, any size",
            "ignore_index": getattr(model, "ignore_index", None),
            "reduce_zero_label": bool(getattr(model, "reduce_zero_label", False)),
            "eval_size": list(eval_size) if eval_size else None}


def export_segmenter_onnx(model: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor], *,
                          class_names: Sequence[str], opset: int = DEFAULT_OPSET) -> dict:
    """Fused Semantic FPN -> ONNX (input ``image`` float 0..1 NCHW of any size, output ``logits`` at that size)."""
    fused, path = _fused(model), Path(path)
    meta = _segmenter_metadata(model, class_names)
    _export_dynamic_onnx(fused, path, ["logits"], meta, opset)
    return {"path": str(path), **_check_onnx(fused, path, images, SEG_TOLERANCE)}


def export_neck_onnx(neck: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor], *,
                     opset: int = DEFAULT_OPSET) -> dict:
    """Fused backbone + FPN -> ONNX with one output per pyramid level (``p0`` ... finest first)."""
    fused, path = _fused(neck), Path(path)
    with torch.no_grad():
        levels = list(fused(torch.rand(1, 3, 128, 128)))
    _export_dynamic_onnx(_LevelsAsTuple(fused), path, [f"p{i}" for i in range(len(levels))],
                         {"producer": "repvit", "task": "backbone+fpn", "levels": levels}, opset)
    return {"path": str(path), **_check_onnx(fused, path, images, SEG_TOLERANCE)}


def _dynamic_dims() -> dict:
    return {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=64, max=4096),
            3: torch.export.Dim("width", min=64, max=4096)}


def _export_dynamic_openvino(module: nn.Module, path: Path, output_names: list[str], metadata: dict, what: str) -> None:
    from ..export import openvino as fmt_ov
    if path.suffix != ".xml":
        raise ValueError(f"an OpenVINO IR is named .xml (its weights go beside it as .bin), got {str(path)!r}")
    model = fmt_ov.convert(module, (torch.rand(2, 3, 256, 320),), (_dynamic_dims(),), output_names=output_names,
                           what=what, instead="the ONNX export (repvit segment export --format onnx)")
    fmt_ov.save(model, path, metadata)


def export_segmenter_openvino(model: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor], *,
                              class_names: Sequence[str]) -> dict:
    """Fused Semantic FPN -> OpenVINO IR with the ONNX export's input, output and dynamic sizes."""
    fused, path = _fused(model), Path(path)
    meta = _segmenter_metadata(model, class_names)
    _export_dynamic_openvino(fused, path, ["logits"], meta, "Semantic FPN")
    return {"path": str(path), **_check_openvino(fused, path, images, SEG_TOLERANCE)}


def export_neck_openvino(neck: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor]) -> dict:
    """Fused backbone + FPN -> OpenVINO IR, one output per pyramid level (``p0`` ... finest first)."""
    fused, path = _fused(neck), Path(path)
    with torch.no_grad():
        levels = list(fused(torch.rand(1, 3, 128, 128)))
    _export_dynamic_openvino(_LevelsAsTuple(fused), path, [f"p{i}" for i in range(len(levels))],
                             {"producer": "repvit", "task": "backbone+fpn", "levels": levels}, "backbone + FPN")
    return {"path": str(path), **_check_openvino(fused, path, images, SEG_TOLERANCE)}


def litert_record_path(path: Union[str, os.PathLike]) -> Path:
    """The JSON record beside a ``.tflite`` segmenter (LiteRT files carry no metadata of ours)."""
    return Path(path).with_suffix(".json")


def _check_fixed_size(fused: nn.Module, run, images: Sequence[torch.Tensor], size: tuple, path: Path, engine: str,
                      remove, calibration: Optional[Sequence[np.ndarray]], tool: str, qat=None) -> dict:
    """The check of a fixed-size export (LiteRT, ExecuTorch): ``images`` resized to ``size``, then the float
    tolerance, or with ``calibration`` or ``qat`` the INT8 limits (whose report names ``tool``)."""
    resized = [torch.nn.functional.interpolate(im[None], size=size, mode="bilinear", align_corners=False)[0]
               for im in images]
    if calibration is None and qat is None:
        return _check(fused, run, resized, SEG_TOLERANCE, path, engine, remove)
    report = _int8_check(fused, run, resized, path, remove, QAT_HINT if qat is not None else CALIBRATION_HINT)
    if qat is not None:
        report.update(calibration_images=0, tool=f"{tool}, quantization-aware trained", qat=dict(qat.report))
    else:
        report.update(calibration_images=len(calibration), tool=tool)
    return report


def export_segmenter_litert(model: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor], *,
                            class_names: Sequence[str], size: Sequence[int],
                            calibration: Optional[Sequence[np.ndarray]] = None, qat=None) -> dict:
    """Fused Semantic FPN -> ``.tflite`` at 1x3x``size`` (LiteRT has no dynamic sizes), float32 or, with
    ``calibration`` (1x3xHxW float 0..1 arrays at ``size``), full-integer INT8, or with ``qat`` (a
    ``repvit.engine.qat.QATSetting`` whose samples are at ``size``) full-integer INT8 fine-tuned with
    quantization-aware training; checked with the LiteRT
    interpreter on ``images`` resized to ``size``. Float: logits within 1e-3 of PyTorch; INT8: the
    limits of ``quantize_dense``. The record goes beside the file as ``<name>.json``."""
    from ..export import litert as fmt_lt
    fused, path = _fused(model), Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"a LiteRT file is named .tflite, got {str(path)!r}")
    size = (int(size[0]), int(size[1]))
    fmt_lt.export_litert(fused, path, img_size=size, calibration=calibration, qat=qat)
    meta = _segmenter_metadata(model, class_names)
    meta.update(precision="float32" if calibration is None and qat is None else "int8", input_size=list(size))
    if qat is not None:
        meta["quantization"] = {"method": "quantization-aware training", **qat.report}
    record = litert_record_path(path)
    record.write_text(json.dumps(meta, indent=2) + "\n")
    run = fmt_lt.runner(path)

    def remove():
        path.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
    report = _check_fixed_size(fused, lambda x: [run(torch.from_numpy(x)).numpy()], images, size, path, "LiteRT",
                               remove, calibration, "LiteRT full-integer PT2E", qat)
    return {"path": str(path), "record": str(record), **report}


def export_segmenter_executorch(model: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor], *,
                                class_names: Sequence[str], size: Sequence[int],
                                calibration: Optional[Sequence[np.ndarray]] = None, qat=None) -> dict:
    """Fused Semantic FPN -> ExecuTorch ``.pte`` (whole graph delegated to XNNPACK) at 1x3x``size``, float32
    or, with ``calibration`` (1x3xHxW float 0..1 arrays at ``size``), INT8 through the XNNPACK quantizer
    (with ``qat``, a ``repvit.engine.qat.QATSetting``, fine-tuned with quantization-aware training);
    checked with ExecuTorch's runtime on ``images`` resized to ``size`` (float: 1e-3; INT8: the limits of
    ``quantize_dense``). The record (classes, ignored label, size) is embedded as the program's
    ``metadata`` method."""
    from ..export import executorch as fmt_et
    fused, path = _fused(model), Path(path)
    if path.suffix != ".pte":
        raise ValueError(f"an ExecuTorch program is named .pte, got {str(path)!r}")
    size = (int(size[0]), int(size[1]))
    meta = _segmenter_metadata(model, class_names)
    meta.update(precision="float32" if calibration is None and qat is None else "int8", input_size=list(size))
    if qat is not None:
        meta["quantization"] = f"quantization-aware training, {qat.epochs:g} epochs at lr {qat.lr:g}"
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    _, facts = fmt_et.export_executorch(fused, path, img_size=size, metadata=meta, calibration=calibration,
                                        input_note="float32 RGB in 0..1", qat=qat)
    run = fmt_et.runner(path)
    report = _check_fixed_size(fused, lambda x: [run(torch.from_numpy(x)).numpy()], images, size, path,
                               "ExecuTorch", lambda: path.unlink(missing_ok=True), calibration,
                               "ExecuTorch XNNPACK quantizer (PT2E)", qat)
    return {"path": str(path), **facts, **report}


def export_neck_litert(neck: nn.Module, path: Union[str, os.PathLike], images: Sequence[torch.Tensor], *,
                       size: Sequence[int], calibration: Optional[Sequence[np.ndarray]] = None) -> dict:
    """Fused backbone + FPN -> ``.tflite`` at 1x3x``size``, one output per pyramid level (``p0`` ... finest
    first, as the ONNX file's); float32, or full-integer INT8 with ``calibration``. Checked with the
    LiteRT interpreter on ``images`` resized to ``size`` (float: 1e-3; INT8: ``quantize_dense``'s
    relative L2 limit). The record (levels, size, precision) goes beside it as ``<name>.json``."""
    from ..export import litert as fmt_lt
    fused, path = _fused(neck), Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"a LiteRT file is named .tflite, got {str(path)!r}")
    size = (int(size[0]), int(size[1]))
    with torch.no_grad():
        levels = list(fused(torch.rand(1, 3, *size)))
    fmt_lt.export_litert(_LevelsAsTuple(fused), path, img_size=size, calibration=calibration)
    record = litert_record_path(path)
    record.write_text(json.dumps({"producer": "repvit", "task": "backbone+fpn", "levels": levels,
                                  "outputs": [f"p{i}" for i in range(len(levels))], "input_size": list(size),
                                  "precision": "int8" if calibration is not None else "float32"}, indent=2) + "\n")
    run = fmt_lt.arrays_runner(path)

    def remove():
        path.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
    report = _check_fixed_size(fused, run, images, size, path, "LiteRT", remove, calibration,
                               "LiteRT full-integer PT2E")
    return {"path": str(path), "record": str(record), "levels": levels, **report}


def int8_path_for(path: Union[str, os.PathLike]) -> Path:
    """Where the INT8 copy of an exported file goes: ``<stem>-int8`` beside it, same suffix."""
    path = Path(path)
    return path.with_name(f"{path.stem}-int8{path.suffix}")


def _file_runner(path: Path, threads: Optional[int] = None):
    """``run(array) -> [arrays]`` for an ONNX file (ONNX Runtime) or an OpenVINO IR, and how to delete it."""
    if path.suffix == ".xml":
        from ..export import openvino as fmt_ov
        return fmt_ov.array_runner(path, threads), lambda: fmt_ov.remove(path)
    if path.suffix == ".onnx":
        sess = session(path, threads)
        name = sess.get_inputs()[0].name
        return (lambda x: sess.run(None, {name: x})), lambda: path.unlink(missing_ok=True)
    if path.suffix == ".tflite":
        from ..export import litert as fmt_lt
        run = fmt_lt.runner(path, threads)
        return (lambda x: [run(torch.from_numpy(x)).numpy()]), lambda: path.unlink(missing_ok=True)
    if path.suffix == ".pte":
        from ..export import executorch as fmt_et
        run = fmt_et.runner(path)
        return (lambda x: [run(torch.from_numpy(x)).numpy()]), lambda: path.unlink(missing_ok=True)
    raise ValueError(f"{path}: not an exported dense model (.onnx, an OpenVINO .xml, a LiteRT .tflite or an "
                     "ExecuTorch .pte); export one with repvit segment export")


def quantize_dense(reference: nn.Module, float_path: Union[str, os.PathLike], images: Sequence[torch.Tensor],
                   calibration: Sequence[np.ndarray], *, weights: str = WEIGHT_ENCODINGS[0],
                   calibration_source: str = "") -> dict:
    """The INT8 copy of an exported Semantic FPN or backbone + FPN, written beside it (``<stem>-int8``).

    ``.onnx``: ONNX Runtime static QDQ; ``.xml``: NNCF post-training quantization (``weights``: see
    ``quantize.py`` and ``openvino.quantize_openvino``; OpenVINO takes int7 or int8). ``calibration``: 1x3xHxW float 0..1 arrays of real images at the size the model
    runs at. The copy is checked on ``images`` against ``reference`` (the fused float model): the
    mean relative L2 error of every output, and for a segmenter the share of pixels whose class
    (argmax) is unchanged. Outside the limits the copy is removed and ``ParityError`` raised."""
    float_path = Path(float_path)
    out = int8_path_for(float_path)
    calibration = [np.ascontiguousarray(a, dtype=np.float32) for a in calibration]
    if float_path.suffix == ".xml":
        from ..export import openvino as fmt_ov
        fmt_ov.quantize_openvino(float_path, out, calibration, calibration_source=calibration_source,
                                 weights=weights)
        tool = f"NNCF post-training quantization, {weights} weights"
    elif float_path.suffix == ".onnx":
        from ..export.quantize import quantize_onnx
        quantize_onnx(float_path, out, calibration, weights=weights, calibration_source=calibration_source)
        tool = f"ONNX Runtime static QDQ, {weights} weights"
    else:
        raise ValueError(f"INT8 copies are made of .onnx and .xml exports, got {str(float_path)!r}")
    run, remove = _file_runner(out)
    report = _int8_check(reference, run, images, out, remove)
    return {"path": str(out), "tool": tool, "calibration_images": len(calibration), **report}


CALIBRATION_HINT = "Try more calibration images (--calib-count), or keep the float file"
QAT_HINT = ("The fine-tune moved the model too far from the float one: lower --qat-lr or --qat-epochs, or keep "
            "the float file")


def _int8_check(reference: nn.Module, run, images: Sequence[torch.Tensor], path: Path, remove,
                hint: str = CALIBRATION_HINT) -> dict:
    """Mean relative L2 error of every output of ``run`` vs ``reference`` on ``images``, and for a
    segmenter the share of pixels whose class is unchanged; outside the limits ``remove()`` and raise."""
    errors, agreement, shapes = [], [], []
    with torch.no_grad():
        for image in images:
            want = reference(image[None])
            segmenter = not isinstance(want, dict)
            want = [want] if segmenter else list(want.values())
            got = [torch.from_numpy(np.asarray(g)) for g in run(image[None].float().contiguous().numpy())]
            for w, g in zip(want, got):
                errors.append(((g - w).norm() / w.norm().clamp_min(1e-12)).item())
            if segmenter:
                agreement.append((got[0].argmax(1) == want[0].argmax(1)).float().mean().item())
            shapes.append(list(image.shape[-2:]))
    report = {"image_sizes": shapes, "relative_l2_error": float(np.mean(errors)),
              "pixel_agreement": float(np.mean(agreement)) if agreement else None}
    problems = []
    if report["relative_l2_error"] > INT8_MAX_REL_ERROR:
        problems.append(f"relative L2 error {report['relative_l2_error']:.3f} > {INT8_MAX_REL_ERROR}")
    if agreement and report["pixel_agreement"] < INT8_MIN_PIXEL_AGREEMENT:
        problems.append(f"{report['pixel_agreement']:.1%} of the pixels keep their class "
                        f"(< {INT8_MIN_PIXEL_AGREEMENT:.0%})")
    report["passed"] = not problems
    if problems:
        remove()
        raise ParityError(f"the INT8 copy is too far from the float model on real images ({'; '.join(problems)}); "
                          f"{path} was removed. {hint}")
    return report


def __getattr__(name: str):
    # ExportedSegmenter and the detector's TorchScript export moved to their capabilities in 0.2
    from .._moved import moved_attribute
    value = globals()[name] = moved_attribute(__name__, name)
    return value
