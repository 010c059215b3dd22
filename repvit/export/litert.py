"""LiteRT (formerly TensorFlow Lite) export: a ``.tflite`` flatbuffer for Android and embedded CPUs.

The fused model is converted with Google's maintained converter ``litert-torch`` (formerly
ai-edge-torch: ``torch.export`` -> StableHLO -> LiteRT) at a fixed 1x3xSxS input (mobile apps
run one image at a time), and checked with the LiteRT interpreter (``ai-edge-litert``), whose
CPU path is the XNNPACK delegate, one image at a time.

INT8 is full-integer post-training quantization: PT2E (``torch.export`` + the converter's own
quantizer: int8 weights symmetric per output channel, int8 activations per tensor, static
ranges from real calibration images; the squeeze-and-excitation multiplications stay float,
``FLOAT_OPS``), so input and output are int8 too; ``runner`` quantizes
the float input and dequantizes the logits with the scales stored in the file. Where post-training
ranges cost too much accuracy, ``qat=`` fine-tunes the model with the same quantizer's QAT form
first (``repvit.engine.qat``) and writes the trained graph.

PyTorch's nearest-neighbour resize to a size that is not a whole multiple of the input (an FPN's
top-down path on an image whose sides are not multiples of 32) picks source pixels that the
converter's resize kernel does not: 26% of the outputs of a 12x15 -> 23x30 resize differ (litert-torch
2026-12). During conversion such resizes are written as gathers of exactly the rows and columns
PyTorch picks (``_exact_nearest``), so the file computes what the model computes.

Not done: the export metadata is not embedded in the flatbuffer (TFLite metadata needs the
TensorFlow metadata writer); the variant and preprocessing are in the file name and
``repvit export --report``.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

INSTALL = "pip install 'repvit-pytorch[litert]'"


def available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
        import litert_torch  # noqa: F401
    except ImportError:
        return False
    return True


def _require():
    try:
        import litert_torch
    except ImportError:
        raise ImportError(f"LiteRT export needs the litert-torch package: {INSTALL}") from None
    return litert_torch


@contextlib.contextmanager
def _quiet():
    """The converter prints a progress line per stage on stdout and warns on every torch.export."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _nearest_index(src: int, dst: int) -> torch.Tensor:
    """The source index PyTorch's "nearest" mode reads for each of ``dst`` outputs: floor(i * src / dst)
    in float32, as its CPU kernel computes it."""
    scale = torch.tensor(src / dst, dtype=torch.float32)
    return (torch.arange(dst, dtype=torch.float32) * scale).floor().clamp(max=src - 1).long()


@contextlib.contextmanager
def _exact_nearest():
    """Trace ``F.interpolate(..., mode="nearest", size=...)`` at a non-integer ratio as two index_selects."""
    original = torch.nn.functional.interpolate

    def interpolate(input, size=None, scale_factor=None, mode="nearest", align_corners=None,
                    recompute_scale_factor=None, antialias=False):
        if mode == "nearest" and size is not None and input.dim() == 4:
            src = [int(v) for v in input.shape[-2:]]
            dst = [int(size), int(size)] if isinstance(size, int) else [int(v) for v in size]
            if any(d % s for s, d in zip(src, dst)):
                return input.index_select(2, _nearest_index(src[0], dst[0])).index_select(
                    3, _nearest_index(src[1], dst[1]))
        return original(input, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners,
                        recompute_scale_factor=recompute_scale_factor, antialias=antialias)
    torch.nn.functional.interpolate = interpolate
    try:
        yield
    finally:
        torch.nn.functional.interpolate = original


# Operators left in float32 in INT8 files: the squeeze-and-excitation multiplications (feature map times
# the sigmoid gate). Quantizing their products cost the CamVid segmenter 0.77 of the 0.93 mIoU points its
# quantize/dequantize graph loses in PyTorch; left in float, the file loses 0.30 instead of 1.26 and runs
# as fast (XNNPACK takes the float multiplications too; benchmarks/deployment.md, section 2).
FLOAT_OPS = ("mul",)


def _quantizer(qat: bool):
    """litert-torch's PT2E quantizer: int8 weights per output channel, static int8 activations, every
    operator it annotates but ``FLOAT_OPS``; with ``qat`` its quantization-aware form."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                             is_dynamic=False, is_qat=qat))
    quantizer.STATIC_OPS = [op for op in quantizer.STATIC_OPS if op not in FLOAT_OPS]
    if qat:
        # Its QAT-only annotators match conv + BatchNorm patterns (a fused model has none) and fail to
        # build those patterns under torch 2.14 (litert-torch 0.10): they are left out.
        quantizer.STATIC_QAT_ONLY_OPS = []
    return quantizer


def export_litert(fused: nn.Module, path: Union[str, os.PathLike], *, img_size: Union[int, Sequence[int], None] = None,
                  calibration: Optional[Sequence[np.ndarray]] = None,
                  example: Optional[Sequence[torch.Tensor]] = None, qat=None) -> Path:
    """Write ``fused`` as ``.tflite`` at 1x3x``img_size``x``img_size`` (or 1x3xHxW for ``img_size=(H, W)``);
    with ``calibration`` (preprocessed 1x3xHxW arrays) as a full-integer INT8 model, or with ``qat`` (a
    ``repvit.engine.qat.QATSetting``, or any object with its ``fine_tune(fused, example, quantizer)``) as one fine-tuned with quantization-aware training instead. A
    module with other inputs passes ``example`` (its arguments, whose shapes the file fixes) instead of
    ``img_size``."""
    litert_torch = _require()
    if calibration is not None and qat is not None:
        raise ValueError("INT8 is either calibrated (calibration=) or quantization-aware trained (qat=), not both")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if example is None:
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(int(v) for v in img_size)
        example = (torch.randn(1, 3, height, width),)
    example = tuple(example)
    graph = quantizer = None
    if qat is not None:
        quantizer = _quantizer(qat=True)
        with warnings.catch_warnings(), _exact_nearest():
            warnings.simplefilter("ignore")
            graph = qat.fine_tune(fused, example, quantizer)
    with _quiet(), torch.no_grad(), _exact_nearest():
        if calibration is None and graph is None:
            edge = litert_torch.convert(fused, example)
        else:
            from litert_torch.quantize.quant_config import QuantConfig
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            if graph is None:
                quantizer = _quantizer(qat=False)
                graph = prepare_pt2e(torch.export.export(fused, example).module(), quantizer)
                for array in calibration:
                    graph(torch.as_tensor(np.asarray(array, dtype=np.float32)))
            graph = convert_pt2e(graph, fold_quantize=False)
            edge = litert_torch.convert(graph, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
        edge.export(str(path))
    return path


def interpreter(path: Union[str, os.PathLike], threads: Optional[int] = None):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise ImportError(f"running a LiteRT model needs the ai-edge-litert package: {INSTALL}") from None
    interp = Interpreter(model_path=str(path), num_threads=int(threads) if threads else None)
    interp.allocate_tensors()
    return interp


def describe(path: Union[str, os.PathLike]) -> dict:
    """Input and output types and shapes, and the operators (``DELEGATE`` = run by XNNPACK)."""
    from collections import Counter
    interp = interpreter(path, 1)
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    ops = Counter(d["op_name"] for d in interp._get_ops_details())  # the public API has no listing
    return {"input": {"shape": i["shape"].tolist(), "dtype": np.dtype(i["dtype"]).name},
            "output": {"shape": o["shape"].tolist(), "dtype": np.dtype(o["dtype"]).name},
            "ops": dict(ops), "bytes": Path(path).stat().st_size}


def runner(path: Union[str, os.PathLike], threads: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """Float batch in, float logits out, one image at a time; int8 inputs/outputs are (de)quantized with the
    file's own scales. The images must have the file's fixed size (``input_size``)."""
    interp = interpreter(path, threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    size = tuple(int(v) for v in inp["shape"][-2:])
    in_scale, in_zero = inp["quantization"]
    out_scale, out_zero = out["quantization"]
    integer_in = np.dtype(inp["dtype"]).kind == "i"
    integer_out = np.dtype(out["dtype"]).kind == "i"

    def one(x: np.ndarray) -> np.ndarray:
        if integer_in:
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / in_scale) + in_zero, info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"])
        return (y.astype(np.float32) - out_zero) * out_scale if integer_out else y.copy()

    def run(batch: torch.Tensor) -> torch.Tensor:
        if tuple(batch.shape[-2:]) != size:
            raise ValueError(f"{path} takes {size[0]}x{size[1]} images (LiteRT files have a fixed size), got "
                             f"{tuple(batch.shape[-2:])}: resize first, or export at this size")
        arrays = batch.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(np.concatenate([one(arrays[k:k + 1]) for k in range(arrays.shape[0])]))
    return run


def _position(name: str) -> int:
    return int(name.rsplit("_", 1)[1])


def arrays_runner(path: Union[str, os.PathLike], threads: Optional[int] = None
                  ) -> Callable[..., list[np.ndarray]]:
    """``run(*arrays) -> [float arrays]`` for a ``.tflite`` file with several inputs and outputs, in the
    order of the module's ``forward`` arguments and returned values (the converter names them
    ``args_0``... and ``output_0``...); integer inputs and outputs of a full-integer file are
    (de)quantized with the file's own scales."""
    interp = interpreter(path, threads)
    signature = interp.get_signature_runner()
    in_details, out_details = signature.get_input_details(), signature.get_output_details()
    inputs, outputs = sorted(in_details, key=_position), sorted(out_details, key=_position)

    def quantize(a: np.ndarray, d: dict) -> np.ndarray:
        a = np.ascontiguousarray(a, dtype=np.float32)
        if np.dtype(d["dtype"]).kind != "i":
            return a
        scale, zero = d["quantization"]
        info = np.iinfo(d["dtype"])
        return np.clip(np.round(a / scale) + zero, info.min, info.max).astype(d["dtype"])

    def dequantize(a: np.ndarray, d: dict) -> np.ndarray:
        if np.dtype(d["dtype"]).kind != "i":
            return np.array(a)
        scale, zero = d["quantization"]
        return (a.astype(np.float32) - zero) * scale

    def run(*arrays: np.ndarray) -> list[np.ndarray]:
        if len(arrays) != len(inputs):
            raise ValueError(f"{path} takes {len(inputs)} inputs, got {len(arrays)}")
        got = signature(**{name: quantize(a, in_details[name]) for name, a in zip(inputs, arrays)})
        return [dequantize(got[name], out_details[name]) for name in outputs]
    return run


def input_size(path: Union[str, os.PathLike]) -> tuple[int, int]:
    """The fixed (height, width) a ``.tflite`` file takes."""
    shape = interpreter(path, 1).get_input_details()[0]["shape"]
    return int(shape[-2]), int(shape[-1])


__all__ = ["available", "export_litert", "runner", "arrays_runner", "describe", "interpreter", "input_size"]
