"""An exported Semantic FPN (any format ``repvit.dense.export`` writes, float or INT8) behind the PyTorch
model's interface, so ``repvit segment eval`` and ``evaluate_segmenter`` score the deployed file itself."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import nn

from ..dense.export import _file_runner, litert_record_path
from ..export.onnx import read_metadata


class ExportedSegmenter(nn.Module):
    """An exported Semantic FPN (``.onnx`` through ONNX Runtime, an OpenVINO ``.xml``, a LiteRT ``.tflite``
    with its ``.json`` record or an ExecuTorch ``.pte``; float or INT8)
    with the loaded PyTorch model's interface: image tensor in, logits out, and the recorded
    ``class_names``, ``num_classes``, ``ignore_index``, ``reduce_zero_label`` and ``eval_size``, so
    ``evaluate_segmenter`` scores the deployed file itself. Files exported before the ignore value
    and evaluation size were recorded have ``ignore_index`` None (the caller must supply it)."""

    def __init__(self, path: Union[str, os.PathLike], threads: Optional[int] = None):
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such file")
        if self.path.suffix == ".xml":
            from ..export import openvino as fmt_ov
            meta, self.runtime = fmt_ov.read_metadata(self.path), "OpenVINO"
        elif self.path.suffix == ".tflite":
            record = litert_record_path(self.path)
            if not record.is_file():
                raise FileNotFoundError(f"{self.path}: its record {record.name} is missing (a LiteRT segmenter is "
                                        "the .tflite and the .json that repvit segment export writes beside it)")
            meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in json.loads(record.read_text()).items()}
            self.runtime = "LiteRT"
        elif self.path.suffix == ".pte":
            from ..export import executorch as fmt_et
            meta, self.runtime = fmt_et.read_metadata(self.path), "ExecuTorch"
        else:
            meta, self.runtime = (read_metadata(self.path) if self.path.suffix == ".onnx" else {}), "ONNX Runtime"
        if meta.get("task") != "segmentation":
            raise ValueError(f"{self.path} is not a segmentation export of this library (task "
                             f"{meta.get('task', 'not recorded')!r}); write one with repvit segment export")
        self._run, _ = _file_runner(self.path, threads)
        field = lambda key: json.loads(meta[key]) if key in meta else None  # noqa: E731
        self.class_names = list(field("class_names"))
        self.num_classes = len(self.class_names)
        self.ignore_index = field("ignore_index")
        self.reduce_zero_label = bool(field("reduce_zero_label"))
        self.eval_size = tuple(field("eval_size")) if field("eval_size") else None
        self.precision = meta.get("precision", "float32")

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self._run(image.detach().cpu().float().contiguous().numpy())[0]))


__all__ = ["ExportedSegmenter"]
