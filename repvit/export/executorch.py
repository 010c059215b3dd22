"""ExecuTorch export: a ``.pte`` program whose whole graph is delegated to XNNPACK.

ExecuTorch is PyTorch's on-device runtime (Android, iOS, embedded). The fused model is
captured with ``torch.export`` at a fixed input shape (batch 1 by default; mobile apps run
one image at a time), lowered with the XNNPACK partitioner and checked with ExecuTorch's
own Python runtime. The metadata is embedded as a constant method ``metadata`` that
returns the JSON text, so an app can read it with ``module.execute("metadata")``.

INT8 (``calibration=``) goes through ExecuTorch's XNNPACK quantizer with PyTorch's PT2E flow:
symmetric per-channel int8 weights and per-tensor int8 activations whose ranges are observed on the
calibration images, then the quantized graph is lowered to XNNPACK's integer kernels like the float
one (float input and output; the program quantizes at its entry and dequantizes at its exit).
With ``qat=`` the same quantizer's QAT form is fine-tuned first (``repvit.engine.qat``).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np

import torch
from torch import nn

METADATA_METHOD = "metadata"


def available() -> bool:
    try:
        import executorch.exir  # noqa: F401
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner  # noqa: F401
    except ImportError:
        return False
    return True


def _require():
    if not available():
        raise ValueError("ExecuTorch export needs the executorch package: pip install 'repvit-pytorch[executorch]'")


def _quantized(fused: nn.Module, example: tuple, calibration: Optional[Sequence[np.ndarray]], qat=None) -> nn.Module:
    """``fused`` with XNNPACK-quantizer INT8 observers calibrated on ``calibration`` (1x3xSxS arrays,
    fed in batches of the program's fixed batch size), or fine-tuned with its QAT form as ``qat`` (a
    ``repvit.engine.qat.QATSetting``, or any object with its ``fine_tune(fused, example, quantizer)``) says, and converted to quantize/dequantize pairs."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                        get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                is_qat=qat is not None))
    if qat is not None:
        if example[0].shape[0] != 1:
            raise ValueError("quantization-aware training fine-tunes a batch-1 program (batch_size=1)")
        graph = qat.fine_tune(fused, example, quantizer)
        return convert_pt2e(graph)
    graph = prepare_pt2e(torch.export.export(fused, example).module(), quantizer)
    batch = example[0].shape[0]
    arrays = np.concatenate([np.asarray(a, dtype=np.float32) for a in calibration])
    if len(arrays) < batch:
        raise ValueError(f"INT8 calibration of a batch-{batch} program needs at least {batch} images, got {len(arrays)}")
    with torch.no_grad():
        for start in range(0, len(arrays) - batch + 1, batch):
            graph(torch.from_numpy(arrays[start:start + batch]))
    return convert_pt2e(graph)


def export_executorch(fused: nn.Module, path: Union[str, os.PathLike], *, img_size: Union[int, Sequence[int]],
                      metadata: dict[str, str], batch_size: int = 1, calibration: Optional[Sequence[np.ndarray]] = None,
                      input_note: str = "normalized as in 'preprocessing'", qat=None) -> tuple[Path, dict]:
    """Write the ``.pte`` at ``batch_size``x3x``img_size``x``img_size`` (or x``H``x``W`` for a pair); returns
    ``(path, facts)`` where facts counts delegated and leftover ops. With ``calibration`` (preprocessed
    1x3xHxW arrays) the program is INT8 (see the module docstring); with ``qat`` (a
    ``repvit.engine.qat.QATSetting``, or any object with its ``fine_tune(fused, example, quantizer)``) INT8 fine-tuned with quantization-aware training instead."""
    if calibration is not None and qat is not None:
        raise ValueError("INT8 is either calibrated (calibration=) or quantization-aware trained (qat=), not both")
    _require()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    height, width = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
    example = (torch.randn(batch_size, 3, height, width),)
    meta = {**metadata, "input": f"float32 tensor {batch_size}x3x{height}x{width}, {input_note}",
            "delegate": "XNNPACK", "batch_size": str(batch_size)}
    if calibration is not None or qat is not None:
        meta.setdefault("precision", "int8 (XNNPACK quantizer, per-channel weights, static activations"
                                     + (", quantization-aware trained)" if qat is not None else ")"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fused if calibration is None and qat is None else _quantized(fused, example, calibration, qat)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, example)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                              constant_methods={METADATA_METHOD: json.dumps(meta)})
        et_program = lowered.to_executorch()
    calls = [n for n in et_program.exported_program().graph.nodes if n.op == "call_function"]
    delegated = sum("executorch_call_delegate" in str(n.target) for n in calls)
    # memory planning's ``alloc`` calls are buffers, not operators
    leftover = sorted({getattr(n.target, "__name__", str(n.target)) for n in calls
                       if not any(k in str(n.target) for k in ("executorch_call_delegate", "getitem", "alloc"))})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(et_program.buffer)
    return path, {"delegate_calls": delegated, "ops_outside_delegate": leftover, "batch_size": batch_size}


def _program(path: Union[str, os.PathLike]):
    _require()
    from executorch.runtime import Runtime
    return Runtime.get().load_program(str(path))


def read_metadata(path: Union[str, os.PathLike]) -> dict[str, str]:
    program = _program(path)
    if METADATA_METHOD not in program.method_names:
        return {}
    return json.loads(program.load_method(METADATA_METHOD).execute([])[0])


def runner(path: Union[str, os.PathLike]) -> Callable[[torch.Tensor], torch.Tensor]:
    """Batch runner over ExecuTorch's runtime; the program's fixed batch is fed one slice at a time."""
    meta = read_metadata(path)
    fixed = int(meta.get("batch_size", 1))
    size = tuple(json.loads(meta["input_size"])) if "input_size" in meta else None
    program = _program(path)
    method = program.load_method("forward")

    def run(x: torch.Tensor) -> torch.Tensor:
        if size and tuple(x.shape[-2:]) != size:
            raise ValueError(f"{path} takes {size[0]}x{size[1]} images (the program's shape is fixed), got "
                             f"{tuple(x.shape[-2:])}: resize first, or export at this size")
        if x.shape[0] % fixed:
            raise ValueError(f"the program takes batches of {fixed}; got {x.shape[0]} images")
        _ = program  # keep the program alive as long as its method
        outs = [method.execute([x[i:i + fixed].contiguous().float()])[0] for i in range(0, x.shape[0], fixed)]
        return torch.cat([torch.as_tensor(o) for o in outs])
    return run
