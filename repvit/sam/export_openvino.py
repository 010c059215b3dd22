"""RepViT-SAM as OpenVINO IRs: the fused image encoder and the prompt decoder, each checked on photographs.

* ``repvit_sam_encoder.xml`` (+ ``.bin``): the ONNX encoder's contract (input ``image`` float32
  1x3x1024x1024, SAM-preprocessed; output ``image_embeddings`` 1x256x64x64).
* ``repvit_sam_decoder.xml`` (+ ``.bin``): the ONNX decoder's inputs and outputs exactly
  (``repvit.sam.export`` describes them), with a dynamic number of points and masks at the size
  the ``orig_im_size`` input asks for.

Both are captured with ``torch.export`` and converted by ``openvino.convert_model``
(``repvit.export.openvino.convert``), saved with float32 weights, and checked with OpenVINO's
CPU plugin in float32 by the same checks as the ONNX files (``sam_parity``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from torch import nn

from ..export import openvino as fmt_ov
from .decoder_graph import DECODER_INPUTS, DECODER_OUTPUTS, decoder_example, prompt_decoder

ENCODER_INPUTS, ENCODER_OUTPUTS = ("image",), ("image_embeddings",)
INSTEAD = "the ONNX export (repvit sam export --formats onnx)"


def _facts(path: Path) -> dict:
    model = fmt_ov.read_model(path)
    return {"path": str(path),
            "inputs": {p.get_any_name(): str(p.get_partial_shape()) for p in model.inputs},
            "outputs": [p.get_any_name() for p in model.outputs],
            "batch_norm_ops": sum(op.get_type_name().startswith("BatchNorm") for op in model.get_ordered_ops())}


def export_encoder_openvino(sam: nn.Module, path: Union[str, os.PathLike], *, metadata: dict) -> dict:
    """Write the fused image encoder (``sam`` already fused, float32, CPU) at its fixed input size."""
    path = Path(path)
    size = sam.image_encoder.img_size
    model = fmt_ov.convert(sam.image_encoder, (torch.randn(1, 3, size, size),), input_names=ENCODER_INPUTS,
                           output_names=ENCODER_OUTPUTS, input_shapes=[(1, 3, size, size)],
                           what="RepViT-SAM image encoder", instead=INSTEAD)
    fmt_ov.save(model, path, {**metadata, "part": "image encoder",
                              "input": f"image: float32 1x3x{size}x{size}, SAM-preprocessed (see repvit.sam.export)"})
    facts = _facts(path)
    if facts["batch_norm_ops"]:
        fmt_ov.remove(path)
        raise ValueError(f"{path}: {facts['batch_norm_ops']} BatchNorm operations: the encoder was not fused")
    return facts


def export_decoder_openvino(sam: nn.Module, path: Union[str, os.PathLike], *, metadata: dict,
                            return_single_mask: bool = False, use_stability_score: bool = False) -> dict:
    """Write the prompt decoder with the ONNX decoder's inputs and outputs and a dynamic number of points."""
    path = Path(path)
    module = prompt_decoder(sam, return_single_mask=return_single_mask, use_stability_score=use_stability_score)
    example = decoder_example(sam)
    points = torch.export.Dim("num_points", min=1, max=4096)
    grid = tuple(example[0].shape)
    model = fmt_ov.convert(module, example, (None, {1: points}, {1: points}, None, None, None),
                           input_names=DECODER_INPUTS, output_names=DECODER_OUTPUTS,
                           input_shapes=[grid, (1, -1, 2), (1, -1), tuple(example[3].shape), (1,), (2,)],
                           what="SAM prompt decoder", instead=INSTEAD)
    fmt_ov.save(model, path, {**metadata, "part": "prompt decoder",
                              "return_single_mask": str(bool(return_single_mask)).lower(),
                              "use_stability_score": str(bool(use_stability_score)).lower(),
                              "inputs": "as repvit_sam_decoder.onnx (see repvit.sam.export)"})
    return _facts(path)


def encoder_runner(path) -> Callable[[torch.Tensor], np.ndarray]:
    run = fmt_ov.array_runner(path)
    return lambda x: run(x.detach().cpu().float().contiguous().numpy())[0]


def decoder_runner(path) -> Callable[[dict], list]:
    run = fmt_ov.array_runner(path)
    return lambda feed: run(*(np.asarray(feed[name], dtype=np.float32) for name in DECODER_INPUTS))


def discard_failed(entry: dict, path: Union[str, os.PathLike]) -> dict:
    """Remove both files of the IR when ``entry`` (a check's report) did not pass."""
    if entry.get("passed") is False:
        fmt_ov.remove(path)
        entry["removed"] = f"{path} and {fmt_ov.bin_path(path)}"
    return entry


__all__ = ["export_encoder_openvino", "export_decoder_openvino", "encoder_runner", "decoder_runner",
           "discard_failed"]
