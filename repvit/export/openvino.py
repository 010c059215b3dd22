"""OpenVINO export: the fused model as an IR (``model.xml`` with its weights in ``model.bin`` beside it).

OpenVINO is Intel's inference engine; its CPU plugin runs on any x86 (and ARM) CPU. The fused
model is captured with ``torch.export`` (dynamic batch) and converted in memory with
``openvino.convert_model``: no ONNX file in between, so the ``onnx`` extra is not needed and
no second converter can change the graph. The spatial size is then fixed at the export
resolution (the CPU plugin plans its kernels for a known size). Weights are saved in float32
(``save_model`` would halve them to float16 by default, which changes the logits), and the
export metadata is stored in the IR's ``rt_info`` under ``repvit``.

Artifacts are compiled with ``INFERENCE_PRECISION_HINT=f32`` (on CPUs with bfloat16 or AMX
the plugin would otherwise compute in bfloat16) and ``INFERENCE_NUM_THREADS`` set to the
requested thread count, so timings compare with PyTorch and ONNX Runtime at the same threads.

INT8 is NNCF post-training quantization (``nncf.quantize``) of the float IR on real,
preprocessed calibration images: FakeQuantize nodes, per-channel symmetric weights, which the
CPU plugin runs with integer kernels.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

INPUT_NAME, OUTPUT_NAME = "image", "logits"
RT_KEY = "repvit"  # rt_info section that holds the export metadata
INSTALL = "pip install 'repvit-pytorch[deploy]'"
PRESETS = ("mixed", "performance")
WEIGHT_ENCODINGS = ("int7", "int8")   # see quantize_openvino; the first is the default


def available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def require(what: str = "OpenVINO export"):
    """The ``openvino`` module, or an ImportError whose one line names the extra to install."""
    try:
        import openvino as ov
    except ImportError:
        raise ImportError(f"{what} needs the openvino package: {INSTALL}") from None
    return ov


def _require_nncf():
    quiet = logging.getLogger("torch.utils.cpp_extension")  # warns about CUDA_HOME when NNCF imports it
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        import nncf
    except ImportError:
        raise ImportError(f"OpenVINO INT8 quantization needs the nncf package: {INSTALL}") from None
    finally:
        quiet.setLevel(level)
    return nncf


def bin_path(xml: Union[str, os.PathLike]) -> Path:
    """Where OpenVINO keeps the weights of ``xml``: the same name ending in ``.bin``."""
    return Path(xml).with_suffix(".bin")


def remove(xml: Union[str, os.PathLike]) -> None:
    Path(xml).unlink(missing_ok=True)
    bin_path(xml).unlink(missing_ok=True)


def rename(xml: Union[str, os.PathLike], new_xml: Union[str, os.PathLike]) -> Path:
    """Move the IR pair; the ``.xml`` names its weights by file stem, so both are renamed together."""
    new_xml = Path(new_xml)
    remove(new_xml)
    Path(xml).rename(new_xml)
    bin_path(xml).rename(bin_path(new_xml))
    return new_xml


def convert(module: nn.Module, example: Sequence[torch.Tensor], dynamic_shapes=None, *,
            input_names: Sequence[str] = (INPUT_NAME,), output_names: Sequence[str] = (OUTPUT_NAME,),
            input_shapes: Optional[Sequence] = None, what: str = "model",
            instead: str = "the ONNX export (--format onnx)"):
    """``module`` -> ``openvino.Model`` through ``torch.export``; names its inputs and outputs.

    ``input_shapes`` (one entry per input, ``-1`` for a dynamic size) replaces what the export
    left dynamic; ``None`` entries keep the exported shape. A graph OpenVINO cannot take raises
    ``ValueError`` naming the operators it has no rule for and ``instead``, what to use.
    """
    ov = require()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, tuple(example), dynamic_shapes=dynamic_shapes)
        try:
            model = ov.convert_model(program)
        except Exception as err:  # noqa: BLE001 - OpConversionFailure and friends derive from Exception only
            raise ValueError(conversion_failure(err, what, instead)) from err
    if input_shapes is not None:
        model.reshape({i: ov.PartialShape(list(s)) for i, s in enumerate(input_shapes) if s is not None})
    for port, name in zip(model.inputs, input_names):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, output_names):
        port.get_tensor().set_names({name})
    return model


def conversion_failure(err: BaseException, what: str, instead: str) -> str:
    """One line from OpenVINO's conversion report: the operators without a rule (or that failed), and the way out."""
    import openvino as ov
    text = str(err)
    found = []
    for marker in ("No conversion rule found for operations:", "Conversion is failed for:"):
        for line in text.splitlines():
            if marker in line:
                found.append(line.split(marker, 1)[1].strip())
    ops = "; ".join(found) if found else (text.strip().splitlines() or [type(err).__name__])[-1][:300]
    return (f"OpenVINO {ov.get_version().split('-')[0]} cannot convert the {what}: unsupported operator(s) {ops}. "
            f"Use {instead}")


def save(model, path: Union[str, os.PathLike], metadata: dict) -> Path:
    """Write ``model`` to ``path`` (``.xml``, weights in float32 beside it) with ``metadata`` in its rt_info."""
    ov = require()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for key, value in metadata.items():
        model.set_rt_info(value if isinstance(value, str) else json.dumps(value), [RT_KEY, key])
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def export_openvino(fused: nn.Module, path: Union[str, os.PathLike], *, img_size: int,
                    metadata: dict[str, str]) -> Path:
    """Write ``fused`` (re-parameterized, float32, eval) as an IR with a dynamic batch at ``img_size``."""
    example = torch.randn(2, 3, img_size, img_size)  # batch 2: a batch of 1 would be specialised away
    model = convert(fused, (example,), ({0: torch.export.Dim("batch")},),
                    input_shapes=[(-1, 3, img_size, img_size)])
    model.set_friendly_name(f"{metadata.get('variant', 'repvit')}_fused")
    path = save(model, path, {**metadata, "precision": "float32",
                              "input": f"{INPUT_NAME}: float32 Nx3x{img_size}x{img_size}, normalized as in "
                                       "'preprocessing'"})
    check_graph(path)
    return path


def read_model(path: Union[str, os.PathLike]):
    ov = require()
    return ov.Core().read_model(str(path))


def read_metadata(path: Union[str, os.PathLike]) -> dict[str, str]:
    model = read_model(path)
    if not model.has_rt_info([RT_KEY]):
        return {}
    return {k: v.astype(str) for k, v in model.get_rt_info([RT_KEY]).astype(dict).items()}


def check_graph(path: Union[str, os.PathLike]) -> dict:
    """Structural facts about an IR; raises if a BatchNorm survived or its weights file is missing."""
    if not bin_path(path).is_file():
        raise ValueError(f"{path}: its weights file {bin_path(path).name} is missing (an IR is the .xml and the "
                         ".bin together)")
    model = read_model(path)
    ops = Counter(op.get_type_name() for op in model.get_ordered_ops())
    batch_norms = sum(n for op, n in ops.items() if op.startswith("BatchNorm"))
    if batch_norms:
        raise ValueError(f"{path}: {batch_norms} BatchNorm operations left; the model was not fused")
    shape = model.input(0).get_partial_shape()
    return {"ops": dict(ops), "input_shape": str(shape), "dynamic_batch": shape[0].is_dynamic,
            "fake_quantize": ops.get("FakeQuantize", 0), "bytes": bin_path(path).stat().st_size}


def describe(path: Union[str, os.PathLike]) -> str:
    facts = check_graph(path)
    meta = read_metadata(path)
    counted = {k: v for k, v in facts["ops"].items() if k not in ("Constant", "Parameter", "Result")}
    return (f"{sum(counted.values())} operations, no BatchNorm, input {facts['input_shape']}, "
            f"weights {facts['bytes'] / 1e6:.1f} MB in {bin_path(path).name}, precision {meta.get('precision', '?')}"
            + (f", {facts['fake_quantize']} FakeQuantize" if facts["fake_quantize"] else ""))


def compile_model(model_or_path, threads: Optional[int] = None, *, latency: bool = True):
    """A CPU ``CompiledModel``: float32 inference precision, ``threads`` inference threads (None: the plugin's
    default), one stream for batch-1 latency."""
    ov = require("the OpenVINO runtime")
    config = {"INFERENCE_PRECISION_HINT": "f32",
              "PERFORMANCE_HINT": "LATENCY" if latency else "THROUGHPUT"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    if latency:
        config["NUM_STREAMS"] = 1
    core = ov.Core()
    model = core.read_model(str(model_or_path)) if isinstance(model_or_path, (str, os.PathLike)) else model_or_path
    return core.compile_model(model, "CPU", config)


def array_runner(model_or_path, threads: Optional[int] = None) -> Callable[..., list]:
    """``run(*arrays) -> [outputs as numpy arrays]`` on one reused infer request (outputs copied)."""
    request = compile_model(model_or_path, threads).create_infer_request()

    def run(*arrays):
        request.infer([np.ascontiguousarray(a) for a in arrays])
        return [request.get_output_tensor(i).data.copy() for i in range(len(request.model_outputs))]
    return run


def runner(model_or_path, threads: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Tensor in, tensor out (the first output), for parity checks and ``optimize_for_inference``."""
    run = array_runner(model_or_path, threads)
    return lambda x: torch.from_numpy(run(x.detach().cpu().float().contiguous().numpy())[0])


def quantize_openvino(fp32_path: Union[str, os.PathLike], out_path: Union[str, os.PathLike],
                      calibration: Sequence[np.ndarray], *, preset: str = "mixed", weights: str = "int7",
                      calibration_source: str = "", keep_float: Sequence[str] = ()) -> Path:
    """Write the INT8 IR of ``fp32_path``, calibrated on ``calibration`` (preprocessed 1x3xHxW arrays, or
    for a model of several inputs one ``{input name: array}`` per sample).

    ``preset="mixed"`` (default) quantizes activations asymmetrically, which suits RepViT's
    GELU and hard-swish outputs (mostly positive, a short negative tail); ``"performance"``
    makes them symmetric. Weights are symmetric per output channel either way.

    ``weights="int7"`` (default) keeps every layer's weights in 7 bits (NNCF's overflow fix on all
    layers); ``"int8"`` uses the full range except in the first layer (NNCF's default). On x86 CPUs
    without VNNI (AMD Zen 3 and older, Intel before Cascade Lake) the CPU plugin's int8 kernels add
    pairs of uint8 x int8 products in 16 bits, which saturate with full-range weights: a CamVid
    Semantic FPN with random weights kept the class of 27% of its pixels that way and 96% with 7-bit
    weights (the same saturation as ONNX Runtime's, see ``quantize.py``).

    ``keep_float``: regular expressions; operations whose names match one stay float (NNCF's ignored scope).
    """
    require()
    nncf = _require_nncf()
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    if weights not in WEIGHT_ENCODINGS:
        raise ValueError(f"OpenVINO INT8 weights are int7 (7-bit range, every layer) or int8 (full range), got "
                         f"{weights!r}")
    calibration = [{k: np.ascontiguousarray(v) for k, v in a.items()} if isinstance(a, dict)
                   else np.ascontiguousarray(a, dtype=np.float32) for a in calibration]
    if not calibration:
        raise ValueError("INT8 quantization needs calibration images")
    model = read_model(fp32_path)
    meta = read_metadata(fp32_path)
    level = logging.getLogger("nncf").level
    logging.getLogger("nncf").setLevel(logging.ERROR)  # notes on every call otherwise
    overflow_fix = OverflowFix.ENABLE if weights == "int7" else OverflowFix.FIRST_LAYER
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws progress bars on stdout
            quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration),
                                      preset={"mixed": nncf.QuantizationPreset.MIXED,
                                              "performance": nncf.QuantizationPreset.PERFORMANCE}[preset],
                                      advanced_parameters=AdvancedQuantizationParameters(overflow_fix=overflow_fix),
                                      ignored_scope=nncf.IgnoredScope(patterns=list(keep_float), validate=False)
                                      if keep_float else None)
    finally:
        logging.getLogger("nncf").setLevel(level)
    quantized.set_friendly_name(model.get_friendly_name() + "_int8")
    meta["precision"] = "int8"
    meta["quantization"] = json.dumps({
        "tool": f"nncf.quantize {nncf.__version__} (post-training)", "preset": preset,
        "weights": ("int8 in a 7-bit range (overflow fix on every layer)" if weights == "int7"
                    else "int8 (7-bit range in the first layer only)") + ", symmetric, per output channel",
        "activations": "int8, " + ("asymmetric" if preset == "mixed" else "symmetric") + ", per tensor",
        "calibration": {"images": len(calibration), "source": calibration_source}, "kept_float": list(keep_float)})
    return save(quantized, out_path, meta)


__all__ = ["available", "require", "export_openvino", "conversion_failure", "quantize_openvino", "read_metadata",
           "check_graph", "describe", "compile_model", "runner", "array_runner", "convert", "save", "bin_path",
           "remove", "rename"]
