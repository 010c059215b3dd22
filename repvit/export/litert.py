"""LiteRT (formerly TensorFlow Lite) export: a ``.tflite`` flatbuffer for Android and embedded CPUs.

The fused model is converted with Google's maintained converter ``litert-torch`` (formerly
ai-edge-torch: ``torch.export`` -> StableHLO -> LiteRT) at a fixed 1x3xSxS input (mobile apps
run one image at a time), and checked with the LiteRT interpreter (``ai-edge-litert``), whose
CPU path is the XNNPACK delegate, one image at a time.

INT8 is full-integer post-training quantization: PT2E (``torch.export`` + the converter's own
quantizer: int8 weights symmetric per output channel, int8 activations per tensor, static
ranges from real calibration images), so input and output are int8 too; ``runner`` quantizes
the float input and dequantizes the logits with the scales stored in the file.

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


def export_litert(fused: nn.Module, path: Union[str, os.PathLike], *, img_size: int,
                  calibration: Optional[Sequence[np.ndarray]] = None) -> Path:
    """Write ``fused`` as ``.tflite`` at 1x3x``img_size``x``img_size``; with ``calibration`` (preprocessed
    1x3xSxS arrays) as a full-integer INT8 model."""
    litert_torch = _require()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.randn(1, 3, img_size, img_size),)
    with _quiet(), torch.no_grad():
        if calibration is None:
            edge = litert_torch.convert(fused, example)
        else:
            from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
            from litert_torch.quantize.quant_config import QuantConfig
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                     is_dynamic=False))
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
    file's own scales."""
    interp = interpreter(path, threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
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
        arrays = batch.detach().cpu().float().contiguous().numpy()
        return torch.from_numpy(np.concatenate([one(arrays[k:k + 1]) for k in range(arrays.shape[0])]))
    return run


__all__ = ["available", "export_litert", "runner", "describe", "interpreter"]
