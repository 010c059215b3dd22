"""The format backends: one module per deployment format, each writing a fused model and running the
file it wrote, so a caller can prove the file computes what the model computes.

``onnx`` (ONNX Runtime), ``openvino`` (OpenVINO IR, NNCF INT8), ``litert`` (LiteRT flatbuffers, PT2E
INT8), ``coreml`` (Core ML ML programs), ``executorch`` (XNNPACK programs, PT2E INT8), ``torchscript``;
``quantize`` (ONNX Runtime INT8 and the INT8 acceptance limits), ``verify`` (parity reports, real
verification images) and ``artifact`` (file names, metadata, preprocessing). This package imports only
the model library and the shared data formats: what a capability exports lives with it
(``repvit.classification.export``, ``repvit.dense.export``, ``repvit.sam.export``,
``repvit.edgetam.export``) and uses these backends.
"""
from __future__ import annotations

from .artifact import FORMATS, artifact_path, fused_for_export
from .verify import ParityError, ParityReport, random_batch


def __getattr__(name: str):
    # the classifier exporter lived here in 0.1: its names still resolve, with a deprecation warning
    from .._moved import moved_attribute
    value = globals()[name] = moved_attribute(__name__, name)   # warned once
    return value


__all__ = ["FORMATS", "ParityError", "ParityReport", "artifact_path", "fused_for_export", "random_batch"]
