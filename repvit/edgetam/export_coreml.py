"""EdgeTAM's four tracking graphs as Core ML ML programs (``.mlpackage``), for iPhones and Macs.

``export_edgetam_coreml(model, out_dir)`` converts the modules that ``export_edgetam`` writes to ONNX
(``repvit.edgetam.graphs``: image encoder, prompt decoder, memory encoder with the spatial
perceiver, memory attention over a fixed bank) with ``torch.export`` and coremltools, with the same
input and output names and shapes, and writes ``edgetam_coreml.json``: the ONNX spec's loop
description (preprocessing, prompts, mask choice, memory-bank rules, constants) with these files. An
app runs the same loop as ``edgetam_loop.OnnxTracker`` over them. The prompt decoder takes 1 to
``max_points`` points (a flexible axis); every other shape is fixed (1024 input, one object).

Checked here: each program's inputs and outputs against the graph's names and shapes. Core ML runs
only on macOS: there (``coreml.can_predict()``) each program's outputs are also compared with the
PyTorch module's on the export's seeded inputs (float32: 1e-3 + 1e-4 x the largest value; float16:
5% of the largest value); elsewhere the report says the outputs were not compared.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from ..export import coreml as fmt_cm
from .export import (ATOL, NAMES, RTOL, bank_sizes, examples, export_spec, fused_copy, graph_modules,
                      output_folder)
from ..export.verify import ParityError

COREML_SPEC_NAME = "edgetam_coreml.json"
COREML_SPEC_FORMAT = "repvit-edgetam-coreml"
COREML_FILES = {"image_encoder": "edgetam_image_encoder.mlpackage",
                "prompt_decoder": "edgetam_prompt_decoder.mlpackage",
                "memory_encoder": "edgetam_memory_encoder.mlpackage",
                "memory_attention": "edgetam_memory_attention.mlpackage"}
FLOAT16_RELATIVE = 0.05


def _program(module: nn.Module, example: tuple, name: str, max_points: int):
    dynamic = None
    if name == "prompt_decoder":
        points = torch.export.Dim("num_points", min=1, max=int(max_points))
        dynamic = (None, None, None, {1: points}, {1: points}, None, None)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.export(module, example, dynamic_shapes=dynamic).run_decompositions({})


def _check_io(path: Path, name: str, example: tuple, max_points: int) -> dict:
    spec = fmt_cm.tensor_spec(path)
    inputs, outputs = NAMES[name]
    want = {}
    for n, x in zip(inputs, example):
        shape = [int(v) for v in x.shape]
        if name == "prompt_decoder" and n in ("point_coords", "point_labels"):
            shape = [[1, 1], [1, int(max_points)]] + ([[2, 2]] if n == "point_coords" else [])
        want[n] = shape
    problems = [f"input {n}: {spec['inputs'].get(n)} != {s}" for n, s in want.items() if spec["inputs"].get(n) != s]
    problems += [f"output {n} missing" for n in outputs if n not in spec["outputs"]]
    if problems:
        raise ParityError(f"{path.name}: the Core ML program's tensors differ from the graph's: {'; '.join(problems)}")
    return {"inputs": spec["inputs"], "outputs": spec["outputs"]}


def _compare(module: nn.Module, example: tuple, path: Path, name: str, precision: str) -> dict:
    with torch.no_grad():
        want = [t.numpy() for t in module(*example)]
    feed = {n: x.numpy().astype(np.int32 if x.dtype == torch.int64 else np.float32)
            for n, x in zip(NAMES[name][0], example)}
    got = fmt_cm.load(path).predict(feed)
    report, passed = {}, True
    for n, w in zip(NAMES[name][1], want):
        diff = float(np.abs(np.asarray(got[n], np.float32).reshape(w.shape) - w).max())
        scale = float(np.abs(w).max())
        allowed = (ATOL + RTOL * scale) if precision == "float32" else FLOAT16_RELATIVE * max(scale, 1.0)
        report[n] = {"max_abs_diff": diff, "tolerance": allowed}
        passed &= diff <= allowed
    return {"outputs_compared": report, "passed": bool(passed)}


def export_edgetam_coreml(model: nn.Module, out_dir: Union[str, Path], *, precision: str = "float32",
                          max_memory_frames: Optional[int] = None, max_object_pointers: Optional[int] = None,
                          max_points: int = 16, log: Callable[[str], None] = lambda _: None) -> dict:
    """Write the four ``.mlpackage`` programs and ``edgetam_coreml.json`` into ``out_dir``; returns the report.

    ``model``: an EdgeTAM from ``build_edgetam`` or ``build_video_predictor`` (a fused copy is converted;
    ``model`` is untouched). ``precision``: ``float32`` (faithful) or ``float16`` (what the Neural
    Engine runs). ``max_points``: the most prompt points the decoder takes (a box counts two).
    """
    if precision not in fmt_cm.PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(fmt_cm.PRECISIONS)}, got {precision!r}")
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    out = output_folder(out_dir)
    if not fmt_cm.available():
        raise ImportError("EdgeTAM's Core ML export needs coremltools: pip install 'repvit-pytorch[coreml]'")
    model = fused_copy(model)
    max_frames, max_pointers = bank_sizes(model, max_memory_frames, max_object_pointers)
    modules = graph_modules(model, max_frames=max_frames, max_pointers=max_pointers)
    inputs = examples(model, max_frames=max_frames, max_pointers=max_pointers)
    from ..version import __version__
    report = {"out_dir": str(out), "precision": precision, "files": {}, "compared": fmt_cm.can_predict()}
    graphs = {}
    for name, module in modules.items():
        program = _program(module, inputs[name], name, max_points)
        path = fmt_cm.convert_tensors(
            program, out / COREML_FILES[name], inputs=None, outputs=NAMES[name][1], precision=precision,
            metadata={"producer": f"repvit {__version__}", "model": "EdgeTAM (RepViT-M1 trunk, fused)",
                      "part": name, "spec": COREML_SPEC_NAME}, descriptions={})
        entry = {"path": str(path), **_check_io(path, name, inputs[name], max_points)}
        graphs[name] = {side: {n: {"shape": shape} for n, shape in entry[side].items()} for side in ("inputs", "outputs")}
        if report["compared"]:
            entry.update(_compare(module, inputs[name], path, name, precision))
            if not entry["passed"]:
                raise ParityError(f"{path.name} differs from its PyTorch module: {entry['outputs_compared']}")
        log(f"{name}: {path.name}" + (" (outputs compared)" if report["compared"] else
                                      " (converted; Core ML runs on macOS only, outputs not compared here)"))
        report["files"][name] = entry
    spec = export_spec(model, out, max_frames=max_frames, max_pointers=max_pointers, files=COREML_FILES,
                       graphs=graphs, fmt=COREML_SPEC_FORMAT)
    spec["precision"] = precision
    spec["prompt"]["max_points"] = int(max_points)
    (out / COREML_SPEC_NAME).write_text(json.dumps(spec, indent=1))
    report["spec"] = str(out / COREML_SPEC_NAME)
    return report


__all__ = ["export_edgetam_coreml", "COREML_FILES", "COREML_SPEC_NAME"]
