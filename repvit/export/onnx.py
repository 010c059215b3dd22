"""ONNX export of the fused model (torch.export-based exporter), checked with ONNX Runtime.

The graph has a dynamic batch axis named ``batch``, records its opset, carries the export
metadata in ``metadata_props`` and, being exported from the fused model, contains no
BatchNormalization node (checked). ``fp16=True`` stores weights and computes in half
precision while keeping float32 input and output, so callers feed the same arrays.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "logits"


class _Float16Body(nn.Module):
    """float32 in, half-precision body, float32 out (the casts become the graph's first and last nodes)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.half()).float()


def export_onnx(fused: nn.Module, path: Union[str, os.PathLike], *, img_size: int, metadata: dict[str, str],
                opset: int = DEFAULT_OPSET, fp16: bool = False) -> Path:
    """Write ``fused`` (already re-parameterized, float32, eval) to ``path`` as one self-contained file."""
    import onnx
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = _Float16Body(_clone(fused)) if fp16 else fused
    example = torch.randn(2, 3, img_size, img_size)  # batch 2: a batch of 1 would be specialised away
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=True, verbose=False, external_data=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    proto = onnx.load(str(path))
    for value in (proto.graph.input[0], proto.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    proto.graph.name = f"{metadata.get('variant', 'repvit')}_fused"
    proto.doc_string = (f"RepViT {metadata.get('variant', '')} (fused). Input '{INPUT_NAME}': float32 NCHW, "
                        "normalized as in metadata 'preprocessing'. Output 'logits'.")
    full_meta = {**metadata, "opset": str(_opset(proto)), "precision": "float16" if fp16 else "float32"}
    save_with_metadata(proto, path, full_meta)
    check_graph(path)
    return path


def save_with_metadata(proto, path: Union[str, os.PathLike], metadata: dict) -> None:
    """Replace ``proto``'s ``metadata_props`` (non-string values as JSON), check it, and save it to ``path``."""
    import json
    import onnx
    del proto.metadata_props[:]
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _clone(module: nn.Module) -> nn.Module:
    import copy
    return copy.deepcopy(module)


def _opset(proto) -> int:
    return next(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx"))


def check_graph(path: Union[str, os.PathLike]) -> dict:
    """Structural facts about an exported graph; raises if BatchNormalization survived or the batch is fixed."""
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    ops = Counter(node.op_type for node in proto.graph.node)
    if ops.get("BatchNormalization"):
        raise ValueError(f"{path}: {ops['BatchNormalization']} BatchNormalization nodes left; "
                         "the export was not made from a fused model")
    batch_dims = [v.type.tensor_type.shape.dim[0] for v in (proto.graph.input[0], proto.graph.output[0])]
    dynamic = all(d.dim_param and not d.dim_value for d in batch_dims)
    if not dynamic:
        raise ValueError(f"{path}: the batch axis is fixed, expected a dynamic 'batch' dimension")
    return {"opset": _opset(proto), "ops": dict(ops), "dynamic_batch": dynamic,
            "inputs": [v.name for v in proto.graph.input], "outputs": [v.name for v in proto.graph.output]}


def read_metadata(path: Union[str, os.PathLike]) -> dict[str, str]:
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def session(path: Union[str, os.PathLike], threads: Optional[int] = None):
    """An ONNX Runtime CPU session with all graph optimizations and ``threads`` intra-op threads."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def runner(path: Union[str, os.PathLike], threads: Optional[int] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    return lambda x: torch.from_numpy(sess.run(None, {name: x.detach().cpu().float().contiguous().numpy()})[0])


def describe(path: Union[str, os.PathLike]) -> str:
    facts = check_graph(path)
    meta = read_metadata(path)
    return (f"opset {facts['opset']}, {sum(facts['ops'].values())} nodes, no BatchNormalization, dynamic batch axis, "
            f"precision {meta.get('precision', '?')}, metadata keys: {', '.join(sorted(meta))}")


__all__ = ["export_onnx", "check_graph", "read_metadata", "session", "runner", "describe", "DEFAULT_OPSET"]
