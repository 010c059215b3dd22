"""Export a RepViT classifier for deployment, and prove the artifact computes what the model computes.

``export_model(model, "onnx" | "torchscript" | "coreml" | "executorch" | "openvino" | "litert", output)``
fuses the model, writes the artifact with its metadata, then checks it against the fused PyTorch model
on random and real images (``repvit.export.verify``). An artifact outside its tolerance is removed (or
kept under an ``-UNVERIFIED`` name on request) and ``ParityError`` is raised. The format specifics are
the backends' in ``repvit.export`` (one module per format); INT8 is ONNX Runtime's static quantization,
OpenVINO's NNCF, LiteRT's full-integer PT2E and ExecuTorch's XNNPACK quantizer.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

from ..export.artifact import (FORMATS, artifact_path, export_metadata, fused_for_export, resolved_preprocessing,
                               variant_name)
from ..export.quantize import INT8_MAX_REL_ERROR, INT8_MIN_TOP1_AGREEMENT
from ..export.verify import (REL_TOLERANCES, TOLERANCES, ParityError, ParityReport, compare, random_batch,
                             verification_inputs)

INT8_FORMATS = ("onnx", "openvino", "litert", "executorch")


@dataclass
class ExportResult:
    path: Path
    format: str
    reports: list[ParityReport] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    int8_path: Optional[Path] = None
    int8: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)

    def as_dict(self) -> dict:
        return {"path": str(self.path), "format": self.format, "passed": self.passed,
                "reports": [r.as_dict() for r in self.reports], "facts": self.facts, "notes": self.notes,
                "int8_path": str(self.int8_path) if self.int8_path else None, "int8": self.int8}


def export_model(model: nn.Module, fmt: str, output: Union[str, os.PathLike, None] = None, *,
                 img_size: Optional[int] = None, images=None, num_random: int = 4, num_real: int = 8,
                 tolerance: Optional[float] = None, keep_failed: bool = False, opset: Optional[int] = None,
                 fp16: bool = False, int8: bool = False, calib_images=None, calib_count: int = 300,
                 calib_method: str = "percentile", int8_weights: str = "int7", coreml_input: str = "image",
                 coreml_precision: str = "float16",
                 batch_size: int = 1, log: Callable[[str], None] = lambda _: None) -> ExportResult:
    """Fuse ``model``, write it as ``fmt`` and verify it; see the module docstring."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fp16 and fmt != "onnx":
        raise ValueError("--fp16 applies to ONNX; Core ML chooses its precision with coreml_precision")
    if int8 and fmt not in INT8_FORMATS:
        raise ValueError(f"INT8 quantization is done on the {' or '.join(INT8_FORMATS)} export: use one of those "
                         "formats with int8=True")
    if int8 and fp16:
        raise ValueError("choose one of fp16 and int8")
    fused = fused_for_export(model)
    preprocessing = resolved_preprocessing(model, img_size)
    size = preprocessing["input_size"][-1]
    metadata = export_metadata(model, fmt, preprocessing)
    path = artifact_path(output, variant_name(model), fmt, tag="fp16" if fp16 else "")
    result = ExportResult(path=path, format=fmt)
    log(f"exporting fused {metadata['variant']} ({metadata['num_classes']} classes) at {size}x{size} as {fmt} -> {path}")
    inputs = verification_inputs(preprocessing, images=images, num_random=num_random, num_real=num_real)
    reference = fused

    if fmt == "onnx":
        from ..export import onnx as fmt_onnx
        fmt_onnx.export_onnx(fused, path, img_size=size, metadata=metadata, opset=opset or fmt_onnx.DEFAULT_OPSET,
                             fp16=fp16)
        result.facts = fmt_onnx.check_graph(path)
        log(f"  graph: {fmt_onnx.describe(path)}")
        result.reports = compare(reference, fmt_onnx.runner(path), inputs, artifact="ONNX Runtime" + (" fp16" if fp16 else ""),
                                 tolerance=tolerance or TOLERANCES["onnx"],
                                 rel_tolerance=(tolerance or REL_TOLERANCES["fp16"]) if fp16 else None)
    elif fmt == "torchscript":
        from ..export import torchscript as fmt_ts
        fmt_ts.export_torchscript(fused, path, metadata=metadata)
        log(f"  archive: {fmt_ts.describe(path)}")
        result.reports = compare(reference, fmt_ts.runner(path), inputs, artifact="TorchScript",
                                 tolerance=tolerance or TOLERANCES["torchscript"])
    elif fmt == "coreml":
        _export_coreml(result, fused, preprocessing, metadata, inputs, coreml_input, coreml_precision, tolerance, log)
    elif fmt == "executorch":
        from ..export import executorch as fmt_et
        _, result.facts = fmt_et.export_executorch(fused, path, img_size=size, metadata=metadata,
                                                   batch_size=batch_size)
        log(f"  program: {result.facts['delegate_calls']} XNNPACK delegate call(s), ops left outside: "
            f"{result.facts['ops_outside_delegate'] or 'none'}")
        result.reports = compare(reference, fmt_et.runner(path), _multiple_of(inputs, batch_size),
                                 artifact="ExecuTorch (XNNPACK)", tolerance=tolerance or TOLERANCES["executorch"])
    elif fmt == "openvino":
        from ..export import openvino as fmt_ov
        fmt_ov.export_openvino(fused, path, img_size=size, metadata=metadata)
        result.facts = fmt_ov.check_graph(path)
        log(f"  IR: {fmt_ov.describe(path)}")
        result.reports = compare(reference, fmt_ov.runner(path), inputs, artifact="OpenVINO (CPU, f32)",
                                 tolerance=tolerance or TOLERANCES["openvino"])

    elif fmt == "litert":
        from ..export import litert as fmt_lt
        fmt_lt.export_litert(fused, path, img_size=size)
        result.facts = fmt_lt.describe(path)
        log(f"  flatbuffer: input {result.facts['input']}, {result.facts['ops'].get('DELEGATE', 0)} XNNPACK "
            f"partition(s), {result.facts['bytes'] / 1e6:.1f} MB")
        result.reports = compare(reference, fmt_lt.runner(path), inputs, artifact="LiteRT (XNNPACK)",
                                 tolerance=tolerance or TOLERANCES["litert"])
    for report in result.reports:
        log("  " + report.line())
    if not result.passed:
        _discard(result, keep_failed, log)
        from ..export.verify import require
        require(result.reports)
    if int8:
        _quantize(result, fused, preprocessing, inputs, calib_images, calib_count, calib_method, int8_weights, log)
    return result


def _export_coreml(result, fused, preprocessing, metadata, inputs, input_type, precision, tolerance, log) -> None:
    from ..export import coreml as fmt_cm
    size = preprocessing["input_size"][-1]
    fmt_cm.export_coreml(fused, result.path, preprocessing=preprocessing, metadata=metadata, input_type=input_type,
                         precision=precision)
    result.facts = fmt_cm.check_spec(result.path, img_size=size, num_classes=int(metadata["num_classes"]),
                                     input_type=input_type)
    log(f"  spec: ML program, inputs {result.facts['inputs']}, outputs {result.facts['outputs']}")
    if input_type == "image":
        # What was converted is the normalization wrapper: check it equals the fused model on
        # preprocessed images (the image input hands it pixels / 255).
        inputs["random"] = _random_pixels(inputs["random"].shape[0], size, preprocessing)
        wrapper = fmt_cm.NormalizedInput(fused, preprocessing["mean"], preprocessing["std"]).eval()
        mean = torch.tensor(preprocessing["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(preprocessing["std"]).view(1, 3, 1, 1)
        result.reports += compare(fused, lambda x: wrapper(x * std + mean), inputs,
                                  artifact="converted normalization wrapper (PyTorch)",
                                  tolerance=TOLERANCES["torchscript"])
    if fmt_cm.can_predict():
        rel = REL_TOLERANCES["fp16"] if precision == "float16" else None
        result.reports += compare(fused, fmt_cm.runner(result.path, preprocessing=preprocessing, input_type=input_type),
                                  inputs, artifact=f"Core ML ({precision})",
                                  tolerance=tolerance or TOLERANCES["coreml"], rel_tolerance=tolerance or rel)
    else:
        note = ("Core ML predictions need macOS: on this machine the conversion, the spec (ML program, input, output "
                "shape), the metadata and the converted normalization were verified, not the Core ML runtime's logits")
        result.notes.append(note)
        log("  note: " + note)


def _random_pixels(count: int, size: int, preprocessing: dict) -> torch.Tensor:
    """Random 8-bit images, normalized: what a Core ML image input can actually receive."""
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, 3, size, size), generator=gen).float() / 255
    mean = torch.tensor(preprocessing["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing["std"]).view(1, 3, 1, 1)
    return (pixels - mean) / std


def _multiple_of(inputs: dict, batch: int) -> dict:
    out = {}
    for kind, x in inputs.items():
        n = (x.shape[0] // batch) * batch
        if n == 0:
            x, n = x.repeat(batch, 1, 1, 1), batch
        out[kind] = x[:n]
    return out


def _discard(result: ExportResult, keep_failed: bool, log) -> None:
    path = result.path
    if keep_failed:
        kept = path.with_name(f"{path.stem}-UNVERIFIED{path.suffix}")
        if result.format == "openvino":
            from ..export.openvino import rename
            rename(path, kept)
        else:
            if kept.exists():
                shutil.rmtree(kept) if kept.is_dir() else kept.unlink()
            path.rename(kept)
        result.path = kept
        log(f"  parity FAILED: artifact kept as {kept} (do not deploy it)")
    else:
        _remove(path, result.format)
        log(f"  parity FAILED: artifact {path} removed (pass keep_failed / --keep-failed to inspect it)")


def _remove(path: Path, fmt: str) -> None:
    if fmt == "openvino":
        from ..export.openvino import remove
        remove(path)
    else:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def _quantize(result, fused, preprocessing, inputs, calib_images, calib_count, calib_method, int8_weights,
              log) -> None:
    from ..export.quantize import agreement, calibration_batches
    if calib_images is None:
        raise ValueError("INT8 calibration needs real training images: pass calib_images / --calib-images DIR")
    arrays, paths = calibration_batches(calib_images, preprocessing, calib_count)
    int8_path = result.path.with_name(f"{result.path.stem}-int8{result.path.suffix}")
    if result.format == "openvino":
        from ..export import openvino as fmt_ov
        log(f"  INT8: NNCF post-training quantization on {len(arrays)} images from {calib_images} -> {int8_path}")
        fmt_ov.quantize_openvino(result.path, int8_path, arrays, calibration_source=str(calib_images),
                                 weights=int8_weights)
        run_int8 = fmt_ov.runner(int8_path)
        nodes = {"FakeQuantize": fmt_ov.check_graph(int8_path)["fake_quantize"]}
    elif result.format == "litert":
        from ..export import litert as fmt_lt
        log(f"  INT8: full-integer PT2E quantization on {len(arrays)} images from {calib_images} -> {int8_path}")
        fmt_lt.export_litert(fused, int8_path, img_size=preprocessing["input_size"][-1], calibration=arrays)
        run_int8 = fmt_lt.runner(int8_path)
        facts = fmt_lt.describe(int8_path)
        nodes = {"input": facts["input"], "output": facts["output"], "ops": facts["ops"]}
    elif result.format == "executorch":
        from ..export import executorch as fmt_et
        batch = int(result.facts.get("batch_size", 1))
        log(f"  INT8: XNNPACK quantizer (PT2E) on {len(arrays)} images from {calib_images} -> {int8_path}")
        _, facts = fmt_et.export_executorch(fused, int8_path, img_size=preprocessing["input_size"][-1],
                                            metadata=fmt_et.read_metadata(result.path), batch_size=batch,
                                            calibration=arrays)
        run_int8 = fmt_et.runner(int8_path)
        inputs = _multiple_of(inputs, batch)
        nodes = {"delegate_calls": facts["delegate_calls"], "ops_outside_delegate": facts["ops_outside_delegate"]}
    else:
        from ..export import onnx as fmt_onnx
        from ..export.quantize import count_quantized, quantize_onnx
        log(f"  INT8: calibrating on {len(arrays)} images from {calib_images} ({calib_method}, {int8_weights} "
            f"weights) -> {int8_path}")
        quantize_onnx(result.path, int8_path, arrays, method=calib_method, calibration_source=str(calib_images),
                      weights=int8_weights)
        run_int8 = fmt_onnx.runner(int8_path)
        nodes = count_quantized(int8_path)
    stats = {}
    with torch.no_grad():
        for kind, x in inputs.items():
            stats[kind] = agreement(fused(x), run_int8(x))
    result.int8_path, result.int8 = int8_path, {"nodes": nodes, "vs_float": stats, "calibration_images": len(arrays)}
    for kind, s in stats.items():
        log(f"  INT8 vs fused float, {inputs[kind].shape[0]} {kind} images: relative L2 error "
            f"{s['relative_l2_error']:.3f}, cosine {s['cosine']:.4f}, top-1 agreement {s['top1_agreement']:.1%}, "
            f"max |diff| {s['max_abs_diff']:.3f}")
    kind = "real" if "real" in stats else "random"
    check = stats[kind]
    problems = []
    if check["relative_l2_error"] > INT8_MAX_REL_ERROR:
        problems.append(f"relative L2 error {check['relative_l2_error']:.3f} > {INT8_MAX_REL_ERROR}")
    if kind == "real" and inputs["real"].shape[0] >= 4 and check["top1_agreement"] < INT8_MIN_TOP1_AGREEMENT:
        problems.append(f"top-1 agreement {check['top1_agreement']:.1%} < {INT8_MIN_TOP1_AGREEMENT:.0%} on real images")
    if problems:
        _remove(int8_path, result.format)
        raise ParityError(f"INT8 model is too far from the float model ({'; '.join(problems)}); it was removed. "
                          "Try more calibration images" + (" or --calib-method percentile"
                                                            if result.format == "onnx" else ""))


__all__ = ["ExportResult", "ParityError", "ParityReport", "export_model", "FORMATS", "fused_for_export",
           "artifact_path", "random_batch"]
