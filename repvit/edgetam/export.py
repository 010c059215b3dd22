"""EdgeTAM's whole tracking loop to ONNX: four graphs, a JSON that says how they compose, parity checks.

``export_edgetam(model, out_dir)`` writes four graphs (``repvit.edgetam.graphs``; fixed
1024 input, the RepViT trunk fused). The shapes below are for one object; every per-object input
and output has an ``objects`` axis first (B objects of one frame in one call; the frame's own
inputs ``features``, ``features_pos``, ``high_res_*`` keep batch 1), checked at export for three:

* ``edgetam_image_encoder.onnx``: ``image`` 1x3x1024x1024 -> ``high_res_0`` 1x32x256x256,
  ``high_res_1`` 1x64x128x128, ``features`` and ``features_pos`` 1x256x64x64;
* ``edgetam_prompt_decoder.onnx``: ``image_embed`` 1x256x64x64, ``high_res_0``, ``high_res_1``,
  ``point_coords`` 1xNx2, ``point_labels`` 1xN (N dynamic), ``mask_input`` 1x1x256x256 and
  ``has_mask_input`` 1 (a previous mask fed back, for corrections) -> ``masks`` 1x4x256x256,
  ``iou_predictions`` 1x4, ``object_pointers`` 1x4x256, ``object_score_logits`` 1x1;
* ``edgetam_memory_encoder.onnx``: ``features``, ``mask_logits`` 1x1x256x256, ``from_points`` 1 ->
  ``memory`` and ``memory_pos`` 1x512x64;
* ``edgetam_memory_attention.onnx``: ``features``, ``features_pos``, ``memory`` and ``memory_pos``
  1xFx512x64, ``memory_tpos`` 1xF int64, ``memory_valid`` 1xF, ``object_pointers`` 1xPx256,
  ``pointer_valid`` 1xP -> ``conditioned`` 1x256x64x64;

and ``edgetam_export.json``: the files, every input and output with its shape, the frame
preprocessing, how prompts become ``point_coords``/``point_labels``, which of the four masks a
step keeps, the memory-bank rules (which frames fill the F memory slots and P pointer slots, what
``memory_tpos`` each gets, bfloat16 storage) and the one constant the loop adds itself (the
no-memory embedding of the prompted frame). ``repvit.edgetam.onnx_predictor.OnnxTracker`` is the
reference loop that reads it.

Variable memory: fixed maxima with a validity flag per slot (F = ``num_maskmem`` = 7 frames, P =
``max_obj_ptrs_in_encoder`` = 16 pointers by default), not dynamic axes. Empty slots get -1e4
before the softmax, so the result is sam2's for the frames present; the graph has no
data-dependent shapes (what Core ML and other mobile runtimes need) and always costs the full
bank, which is what a video reaches after its 7th frame anyway. Only the decoder's number of
points and the objects axis are dynamic.

Each graph is checked against the module it was exported from on seeded inputs (``check=True``);
a graph beyond tolerance is removed and ``ParityError`` raised. The test checks the modules
against sam2's own methods and the whole loop against ``build_video_predictor``'s masks.
Exported with PyTorch's TorchScript-based exporter (fixed shapes; the decoder's point axis is
traced as a shape computation, as for RepViT-SAM's decoder). The same four graphs as Core ML ML
programs: ``repvit.edgetam.export_coreml``.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from ..models.reparam import is_fused, reparameterize
from .graphs import (NO_OBJECT_SCORE, POINTER_SPLIT, ImageEncoderGraph, MemoryAttentionGraph,
                             MemoryEncoderGraph, PromptDecoderGraph)
from ..export.onnx import DEFAULT_OPSET, save_with_metadata, session
from ..export.verify import ParityError

SPEC_NAME = "edgetam_export.json"
SPEC_FORMAT = "repvit-edgetam-onnx"
FILES = {"image_encoder": "edgetam_image_encoder.onnx", "prompt_decoder": "edgetam_prompt_decoder.onnx",
         "memory_encoder": "edgetam_memory_encoder.onnx", "memory_attention": "edgetam_memory_attention.onnx"}
NAMES = {
    "image_encoder": (("image",), ("high_res_0", "high_res_1", "features", "features_pos")),
    "prompt_decoder": (("image_embed", "high_res_0", "high_res_1", "point_coords", "point_labels", "mask_input",
                        "has_mask_input"),
                       ("masks", "iou_predictions", "object_pointers", "object_score_logits")),
    "memory_encoder": (("features", "mask_logits", "from_points"), ("memory", "memory_pos")),
    "memory_attention": (("features", "features_pos", "memory", "memory_pos", "memory_tpos", "memory_valid",
                          "object_pointers", "pointer_valid"), ("conditioned",)),
}
# The frame's inputs (image features, high-resolution maps) have batch 1; every per-object input and
# output has an "objects" axis, so one call serves every object a frame tracks (the memory attention
# computes its first self-attention, which reads the frame alone, once for all of them).
SHARED_INPUTS = {"features", "features_pos", "high_res_0", "high_res_1"}
DYNAMIC = {name: {key: ({0: "objects", 1: "num_points"} if key in ("point_coords", "point_labels") else {0: "objects"})
                  for key in inputs + outputs if key not in SHARED_INPUTS}
           for name, (inputs, outputs) in NAMES.items() if name != "image_encoder"}

# Largest |ONNX - PyTorch| allowed per output: ATOL + RTOL * max |PyTorch| (float32 both sides).
ATOL, RTOL = 1e-3, 1e-4
# sam2's video predictor normalises frames with ImageNet statistics after scaling to 0..1.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def fused_copy(model: nn.Module) -> nn.Module:
    """A float32 CPU copy of an EdgeTAM in eval mode with its RepViT trunk fused; ``model`` is untouched."""
    if not all(hasattr(model, a) for a in ("image_encoder", "memory_attention", "memory_encoder", "spatial_perceiver")):
        raise TypeError(f"expected an EdgeTAM from repvit.edgetam.build_edgetam or build_video_predictor, got "
                        f"{type(model).__name__}")
    model = copy.deepcopy(model).eval().float().cpu()
    if not is_fused(model.image_encoder.trunk):
        reparameterize(model.image_encoder.trunk, inplace=True)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def output_folder(out_dir: Union[str, os.PathLike]) -> Path:
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output folder {str(out)!r} is an existing file; name a folder")
    return out


def bank_sizes(model: nn.Module, max_memory_frames: Optional[int], max_object_pointers: Optional[int]
               ) -> tuple[int, int]:
    """The memory attention's frame and pointer slots (default ``num_maskmem`` and ``max_obj_ptrs_in_encoder``)."""
    max_frames = int(max_memory_frames or model.num_maskmem)
    max_pointers = int(max_object_pointers or model.max_obj_ptrs_in_encoder)
    if max_frames < 2 or max_pointers < 1:
        raise ValueError(f"the memory attention needs at least 2 frame slots and 1 pointer slot, got "
                         f"{max_frames} and {max_pointers}")
    return max_frames, max_pointers


def graph_modules(model: nn.Module, *, max_frames: int, max_pointers: int) -> dict[str, nn.Module]:
    return {"image_encoder": ImageEncoderGraph(model).eval(), "prompt_decoder": PromptDecoderGraph(model).eval(),
            "memory_encoder": MemoryEncoderGraph(model).eval(),
            "memory_attention": MemoryAttentionGraph(model, max_frames=max_frames, max_pointers=max_pointers).eval()}


def examples(model: nn.Module, *, max_frames: int, max_pointers: int, seed: int = 0) -> dict[str, tuple]:
    """Seeded inputs for each graph (partly filled memory bank, a click plus a box, both mask sources)."""
    gen = torch.Generator().manual_seed(seed)
    size = int(model.image_size)
    grid = size // int(model.backbone_stride)
    tokens = int(model.memory_attention.layers[0].cross_attn_image.tokens_per_frame)
    mem_dim, hidden = int(model.mem_dim), int(model.hidden_dim)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen) * scale

    tpos = torch.zeros(1, max_frames, dtype=torch.int64)
    tpos[0, 1:] = torch.arange(1, max_frames) % int(model.num_maskmem)
    memory_valid = torch.zeros(1, max_frames)
    memory_valid[0, [0, max_frames - 2, max_frames - 1]] = 1.0
    pointer_valid = torch.zeros(1, max_pointers)
    pointer_valid[0, :3] = 1.0
    return {
        "image_encoder": (randn(1, 3, size, size),),
        "prompt_decoder": (randn(1, hidden, grid, grid), randn(1, 32, 4 * grid, 4 * grid),
                           randn(1, 64, 2 * grid, 2 * grid),
                           torch.tensor([[[400.0, 300.0], [100.0, 120.0], [700.0, 650.0]]]),
                           torch.tensor([[1.0, 2.0, 3.0]]), randn(1, 1, 4 * grid, 4 * grid, scale=8.0),
                           torch.tensor([1.0])),
        "memory_encoder": (randn(1, hidden, grid, grid), randn(1, 1, 4 * grid, 4 * grid, scale=8.0),
                           torch.tensor([1.0])),
        "memory_attention": (randn(1, hidden, grid, grid), randn(1, hidden, grid, grid),
                             randn(1, max_frames, tokens, mem_dim), randn(1, max_frames, tokens, mem_dim),
                             tpos, memory_valid, randn(1, max_pointers, hidden), pointer_valid),
    }


def object_batch(model: nn.Module, name: str, *, max_frames: int, max_pointers: int, count: int = 2) -> tuple:
    """``examples``' inputs of graph ``name`` for ``count`` objects of one frame: the frame's inputs once,
    each object's drawn with its own seed (checks that the objects axis keeps objects apart)."""
    per = [examples(model, max_frames=max_frames, max_pointers=max_pointers, seed=k)[name] for k in range(count)]
    inputs = NAMES[name][0]
    return tuple(per[0][i] if inputs[i] in SHARED_INPUTS else torch.cat([p[i] for p in per]) for i in range(len(inputs)))


def export_graph(module: nn.Module, example: tuple, path: Union[str, os.PathLike], name: str, *,
                 opset: int = DEFAULT_OPSET) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs, outputs = NAMES[name]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, example, str(path), dynamo=False, verbose=False, input_names=list(inputs),
                          output_names=list(outputs), opset_version=opset, dynamic_axes=DYNAMIC.get(name),
                          do_constant_folding=True)
    return path


def share_constants(proto) -> int:
    """Keep one Constant node per distinct tensor and point every consumer at it; returns how many went.

    TorchScript's exporter writes a constant out again for every operation that reads it (the memory
    attention's 2 MB RoPE tables 24 times); this makes the file about 50 MB smaller and changes no value.
    """
    first, rename, drop = {}, {}, []
    for node in proto.graph.node:
        if node.op_type != "Constant" or len(node.attribute) != 1 or node.attribute[0].name != "value":
            continue
        tensor = node.attribute[0].t
        key = (tensor.data_type, tuple(tensor.dims), tensor.raw_data)
        if not tensor.raw_data or len(tensor.raw_data) < 4096:
            continue
        if key in first:
            rename[node.output[0]] = first[key]
            drop.append(node)
        else:
            first[key] = node.output[0]
    for node in drop:
        proto.graph.node.remove(node)
    for node in proto.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for value in proto.graph.output:
        if value.name in rename:
            raise ValueError(f"graph output {value.name} is a duplicated constant")
    return len(drop)


def io_table(path: Union[str, os.PathLike]) -> dict:
    """``{"inputs": {name: {"shape", "dtype"}}, "outputs": {...}}`` as the graph file declares them."""
    import onnx
    proto = onnx.load(str(path), load_external_data=False)

    def entry(value):
        kind = value.type.tensor_type
        return {"shape": [d.dim_param or d.dim_value for d in kind.shape.dim],
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name}
    return {"inputs": {v.name: entry(v) for v in proto.graph.input},
            "outputs": {v.name: entry(v) for v in proto.graph.output}}


def check_graph(module: nn.Module, example: tuple, path: Union[str, os.PathLike], name: str) -> dict:
    """Run the file with ONNX Runtime and the module with PyTorch on ``example``; per-output max |diff|."""
    with torch.no_grad():
        want = module(*example)
    want = want if isinstance(want, (tuple, list)) else (want,)
    sess = session(path)
    feed = {n: t.numpy() for n, t in zip(NAMES[name][0], example)}
    got = sess.run(None, feed)
    diffs, passed = {}, True
    for out_name, g, w in zip(NAMES[name][1], got, want):
        w = w.numpy()
        diff = float(np.abs(g - w).max()) if np.isfinite(g).all() else float("inf")
        limit = ATOL + RTOL * float(np.abs(w).max())
        diffs[out_name] = {"max_abs_diff": diff, "tolerance": limit}
        passed &= diff <= limit
    return {"outputs": diffs, "passed": bool(passed)}


def export_spec(model: nn.Module, out_dir: Path, *, max_frames: int, max_pointers: int,
                files: Optional[dict] = None, graphs: Optional[dict] = None, fmt: str = SPEC_FORMAT) -> dict:
    """The JSON that tells a loop how the four graphs compose (``edgetam_loop.OnnxTracker`` reads it);
    ``files``/``graphs``/``fmt`` name another format's files and their inputs and outputs (Core ML)."""
    from ..version import __version__
    decoder = model.sam_mask_decoder
    cross = model.memory_attention.layers[0].cross_attn_image
    return {
        "format": fmt, "version": 1,
        "producer": f"repvit {__version__} (torch {torch.__version__.split('+')[0]})",
        "model": "EdgeTAM (RepViT-M1 trunk, fused; sam2 1.1.0 modules; spatial perceiver)",
        "image_size": int(model.image_size),
        "files": dict(files or FILES),
        "graphs": graphs or {name: io_table(out_dir / FILES[name]) for name in FILES},
        "preprocessing": {"resize": "each frame resized to image_size x image_size with PIL's Image.resize default "
                                    "filter, aspect ratio not kept (as sam2's video predictor)",
                          "scale": "pixels / 255 (float64), then float32", "mean": list(MEAN), "std": list(STD),
                          "layout": "1x3xSxS RGB float32, (x - mean) / std per channel"},
        "prompt": {"point_coords": "video pixels (x, y) * image_size / (video width, video height)",
                   "point_labels": "1 object, 0 background, 2 box top-left, 3 box bottom-right; a box comes "
                                   "first as its two corners, then the clicks",
                   "tracked_frames": "one point (0, 0) labelled -1 (no prompt)",
                   "mask_input": "has_mask_input 0 (mask_input ignored) except for a correction: prompts on a "
                                 "frame that already has an output of that object get that output's 256x256 "
                                 "logits, clamped to [-32, 32], with has_mask_input 1 (sam2's "
                                 "prev_sam_mask_logits)",
                   "padding": "the graph appends sam2's (0, 0) / -1 padding point itself"},
        "choice": {"multimask_output_in_sam": bool(model.multimask_output_in_sam),
                   "multimask_output_for_tracking": bool(model.multimask_output_for_tracking),
                   "multimask_min_points": int(model.multimask_min_pt_num),
                   "multimask_max_points": int(model.multimask_max_pt_num),
                   "multimask_token_for_pointer": bool(model.use_multimask_token_for_obj_ptr),
                   "dynamic_stability": bool(decoder.dynamic_multimask_via_stability),
                   "stability_delta": float(decoder.dynamic_multimask_stability_delta),
                   "stability_threshold": float(decoder.dynamic_multimask_stability_thresh),
                   "rule": "points = user points incl. box corners (0 on tracked frames); multimask when "
                           "multimask_output_in_sam and (prompted frame or multimask_output_for_tracking) and "
                           "min <= points <= max: keep the mask/pointer of tokens 1-3 with the highest IoU "
                           "prediction; otherwise mask 0 unless its stability (share of logits > delta among "
                           "logits > -delta) is below the threshold, then the best of 1-3; pointer of token 0"},
        "memory_bank": {
            "num_maskmem": int(model.num_maskmem), "max_obj_ptrs_in_encoder": int(model.max_obj_ptrs_in_encoder),
            "max_frames": int(max_frames), "max_pointers": int(max_pointers),
            "tokens_per_frame": int(cross.tokens_per_frame), "pointer_tokens": POINTER_SPLIT,
            "temporal_stride": int(model.memory_temporal_stride_for_eval),
            "storage": "memory rounded to bfloat16 (round to nearest even) before it is stored, as sam2 does; "
                       "memory_pos and pointers float32",
            "rules": [
                "prompted frame: decoder on features + no_memory_embedding; memory encoder with from_points 1",
                "tracked frame t: one slot per conditioning (prompted) frame with memory_tpos 0, then for "
                "k = num_maskmem-1 .. 1 the tracked frame t-k (if tracked) with memory_tpos num_maskmem-k; "
                "memory encoder with from_points 0",
                "pointers: those of conditioning frames at or before t, then of tracked frames t-1, t-2, ... "
                "down to t-(min(num_frames, max_obj_ptrs_in_encoder)-1)",
                "unused slots: valid 0 (any values)",
                "correction (prompts for an object on a frame it was already tracked on, not one of its prompted "
                "frames): memory attention as for a tracked frame, decoder with the prompts and the frame's "
                "previous mask (mask_input), multimask as for a tracked frame with that many points, memory "
                "encoder with from_points 1; the frame stays a tracked frame (its slot keeps memory_tpos "
                "num_maskmem-k) and keeps this output when the video is propagated again"]},
        "constants": {"no_memory_embedding": [float(v) for v in model.no_mem_embed.detach().flatten().tolist()],
                      "no_object_score": NO_OBJECT_SCORE, "mask_prompt": mask_prompt_constants(model)},
        "output": "the kept 256x256 logits resized to the video's size (bilinear, half-pixel centres, as "
                  "torch's align_corners=False); > 0 is the object. sam2's hole filling (fill_hole_area, "
                  "CUDA extension only) is not applied",
    }


def mask_prompt_constants(model: nn.Module) -> dict:
    """What a mask prompt needs beside the graphs (sam2's ``_use_mask_as_output``): the 4x4 stride-4
    convolution that turns the binary mask at the model's size into the decoder's mask input."""
    if not model.use_mask_input_as_output_without_sam:
        raise ValueError("the exported loop follows EdgeTAM's mask prompts (use_mask_input_as_output_without_sam)")
    conv = model.mask_downsample
    return {"downsample_weight": [float(v) for v in conv.weight.detach().flatten().tolist()],
            "downsample_bias": float(conv.bias.detach().item()),
            "rule": "mask (frame size) -> model size (bilinear, antialiased, >= 0.5); output logits: that mask * 20 "
                    "- 10 resized to 256x256 (bilinear, antialiased); pointer: the decoder on the frame's features "
                    "(no memory) with no points and mask_input = the convolution of the binary mask; memory "
                    "encoder on the output logits with from_points 1"}


def export_edgetam(model: nn.Module, out_dir: Union[str, os.PathLike], *, opset: int = DEFAULT_OPSET,
                   max_memory_frames: Optional[int] = None, max_object_pointers: Optional[int] = None,
                   check: bool = True, log: Callable[[str], None] = lambda _: None) -> dict:
    """Write the four graphs and ``edgetam_export.json`` into ``out_dir``; returns the report.

    ``model``: an EdgeTAM from ``build_edgetam`` or ``build_video_predictor`` (fused or not; a fused
    copy is exported, ``model`` is untouched). ``max_memory_frames`` / ``max_object_pointers``:
    the memory attention's slots (default ``num_maskmem`` and ``max_obj_ptrs_in_encoder``).
    """
    out = output_folder(out_dir)
    model = fused_copy(model)
    max_frames, max_pointers = bank_sizes(model, max_memory_frames, max_object_pointers)
    modules = graph_modules(model, max_frames=max_frames, max_pointers=max_pointers)
    inputs = examples(model, max_frames=max_frames, max_pointers=max_pointers)
    import onnx
    from ..version import __version__
    report = {"out_dir": str(out), "files": {}, "passed": True}
    failures = []
    for name, module in modules.items():
        path = export_graph(module, inputs[name], out / FILES[name], name, opset=opset)
        proto = onnx.load(str(path))
        share_constants(proto)
        save_with_metadata(proto, path, {
            "producer": f"repvit {__version__}", "model": "EdgeTAM (RepViT-M1 trunk, fused)", "part": name,
            "spec": SPEC_NAME})
        entry = {"path": str(path)}
        if check:
            entry.update(check_graph(module, inputs[name], path, name))
            if name in DYNAMIC and entry["passed"]:   # and for three objects at once, on the objects axis
                batch = check_graph(module, object_batch(model, name, max_frames=max_frames,
                                                         max_pointers=max_pointers, count=3), path, name)
                entry["objects_axis"] = batch["outputs"]
                entry["passed"] = batch["passed"]
            log(f"{name}: " + ", ".join(f"{k} {v['max_abs_diff']:.2e}" for k, v in entry["outputs"].items()) +
                (" OK" if entry["passed"] else " FAILED"))
            if not entry["passed"]:
                failures.append(name)
                path.unlink(missing_ok=True)
        report["files"][name] = entry
    if failures:
        report["passed"] = False
        err = ParityError(f"ONNX graphs differ from their PyTorch modules beyond tolerance (removed): {failures}")
        err.report = report
        raise err
    spec = export_spec(model, out, max_frames=max_frames, max_pointers=max_pointers)
    spec["objects_axis"] = True
    (out / SPEC_NAME).write_text(json.dumps(spec, indent=1))
    report["spec"] = str(out / SPEC_NAME)
    return report


def cached_export(model: nn.Module, folder: Union[str, os.PathLike], *, weights_id: str,
                  log: Callable[[str], None] = lambda _: None) -> Path:
    """The checked graphs of ``model`` in ``folder``: reused when its spec was made from ``weights_id``
    (a digest of the weights file, say), else exported into a partial folder beside it and renamed into
    place when complete (an interrupted export never leaves a half folder under the name)."""
    folder = Path(folder)
    spec_path = folder / SPEC_NAME
    if spec_path.is_file():
        try:
            spec = json.loads(spec_path.read_text())
            if spec.get("weights_id") == weights_id and spec.get("objects_axis"):
                if "mask_prompt" not in spec["constants"]:   # graphs of the release before mask prompts
                    spec["constants"]["mask_prompt"] = mask_prompt_constants(model)
                    spec_path.write_text(json.dumps(spec, indent=1))
                return folder
            log(f"{folder}: " + ("made from other weights" if spec.get("weights_id") != weights_id else
                                 "graphs of an older release (one object per call)") + ", exporting again")
        except ValueError:
            log(f"{folder}: unreadable {SPEC_NAME}, exporting again")
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    export_edgetam(model, partial, log=log)
    spec = json.loads((partial / SPEC_NAME).read_text())
    spec["weights_id"] = weights_id
    (partial / SPEC_NAME).write_text(json.dumps(spec, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    partial.rename(folder)
    return folder


__all__ = ["export_edgetam", "cached_export", "export_spec", "mask_prompt_constants", "fused_copy", "graph_modules", "bank_sizes", "output_folder", "examples",
           "object_batch", "check_graph", "FILES", "NAMES",
           "SPEC_NAME"]
