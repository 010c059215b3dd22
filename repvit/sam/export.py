"""RepViT-SAM for deployment: the image encoder and the prompt decoder as separate files, each checked.

SAM is deployed in two parts because they run at different rates: the image encoder once per
image (the expensive part), the prompt decoder once per click. This module writes

* ``repvit_sam_encoder.onnx``: the *fused* RepViT encoder. Input ``image`` float32 1x3x1024x1024,
  output ``image_embeddings`` float32 1x256x64x64. The input is what ``Sam.preprocess`` returns
  for ``ResizeLongestSide(1024).apply_image(rgb)``: longest side resized to 1024, pixels
  normalised with SAM's mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375) on the
  0..255 scale, then zero-padded at the bottom and right to 1024x1024 (``preprocess`` here).
* ``repvit_sam_decoder.onnx``: prompt encoder + mask decoder + mask upscaling in the layout of
  Meta's ``segment_anything.utils.onnx.SamOnnxModel``, which every SAM ONNX client reads:

  ========================  =================  ====================================================
  input                     shape              meaning
  ========================  =================  ====================================================
  ``image_embeddings``      1x256x64x64        the encoder's output
  ``point_coords``          1xNx2 (N dynamic)  (x, y) in the 1024 frame: original-image pixels mapped
                                               with ``ResizeLongestSide(1024).apply_coords``
  ``point_labels``          1xN                1 = foreground click, 0 = background click,
                                               2 = box top-left corner, 3 = box bottom-right corner,
                                               -1 = padding ("not a point")
  ``mask_input``            1x1x256x256        a previous ``low_res_masks`` channel, or zeros
  ``has_mask_input``        1                  1.0 when ``mask_input`` is used, else 0.0
  ``orig_im_size``          2                  (height, width) of the original image, float32
  ========================  =================  ====================================================

  **Prompts, as ``SamPredictor.predict`` builds them** (the questions of segment-anything issues
  #81 and #91): a box ``(x0, y0, x1, y1)`` is not a separate input but two more points,
  ``(x0, y0)`` with label 2 and ``(x1, y1)`` with label 3, placed after the clicks. When there is
  *no* box, append one padding point ``(0, 0)`` with label -1: the predictor adds it internally,
  and a decoder fed without it gives different masks. Several boxes are several runs (batch 1).
  ``onnx_prompt`` does all of this.

  Outputs: ``masks`` 1xKxHxW mask *logits* at the original size (``> 0`` is the mask),
  ``iou_predictions`` 1xK and ``low_res_masks`` 1xKx256x256 (feed one back as ``mask_input``).
  K is 4: channel 0 is the mask ``predict(multimask_output=False)`` returns, channels 1-3 the
  three of ``multimask_output=True``. ``return_single_mask=True`` keeps one (K=1): the best of
  1-3 by predicted IoU when there are at most two points counting the padding (one click, or a
  box), channel 0 otherwise. ``use_stability_score=True`` replaces the IoU predictions with
  stability scores of the low-resolution logits (IoU of the masks thresholded at +-1).

  segment-anything 1.0's ``SamOnnxModel`` turns the crop before the final resize into a Python
  integer, so a traced graph keeps the crop of the example image size and returns wrong masks
  for any other aspect ratio (0.3 logits off on a portrait image here); the decoder exported here
  is that class with the crop taken from the tensor, so it follows ``orig_im_size``.

* Core ML (``.mlpackage`` ML programs, coremltools): the encoder with the same tensor input and
  output names, and the decoder without the final upscaling (inputs ``image_embeddings``,
  ``point_coords`` with 1-16 points, ``point_labels``, ``mask_input``, ``has_mask_input``;
  outputs ``iou_predictions`` and ``low_res_masks``; resize to the image in the app). Core ML
  predicts only on macOS: elsewhere the conversion and the file's input/output names are checked.
* ExecuTorch (``repvit_sam_encoder.pte``): the fused encoder lowered to XNNPACK at 1x3x1024x1024
  and checked with ExecuTorch's runtime.

Every file is checked against PyTorch on real photographs (the encoder on each image, the
decoder on that image's embedding with one click, a box, a box with a background click and a
click with a previous mask, compared both with the PyTorch module it was exported from and with
``SamPredictor.predict``); a file beyond its tolerance is removed and ``ParityError`` raised.
"""
from __future__ import annotations

import copy
import functools
import os
import platform
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..export.onnx import DEFAULT_OPSET, save_with_metadata
from ..export.verify import ParityError, find_images
from .builder import require_segment_anything

FORMATS = ("onnx", "coreml", "executorch")
ENCODER_INPUTS, ENCODER_OUTPUTS = ("image",), ("image_embeddings",)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input", "orig_im_size")
DECODER_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
COREML_DECODER_INPUTS = DECODER_INPUTS[:-1]
COREML_DECODER_OUTPUTS = ("iou_predictions", "low_res_masks")
COREML_MAX_POINTS = 16
FILE_NAMES = {("onnx", "encoder"): "repvit_sam_encoder.onnx", ("onnx", "decoder"): "repvit_sam_decoder.onnx",
              ("coreml", "encoder"): "repvit_sam_encoder.mlpackage",
              ("coreml", "decoder"): "repvit_sam_decoder.mlpackage",
              ("executorch", "encoder"): "repvit_sam_encoder.pte"}

# Largest |difference| allowed, float32 against float32 PyTorch: the image embedding (values of a
# few units) and the decoder outputs (mask logits at both sizes and the scores).
ENCODER_TOLERANCE = 1e-3
DECODER_TOLERANCE = 1e-3

MACOS_ONLY = "Core ML predictions need macOS; on {system} the conversion and the file's inputs and outputs are checked"


def _need(module: str, extra: str):
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"this export needs {module.split('.')[0]}: pip install 'repvit-pytorch[{extra}]'") from None


# --------------------------------------------------------------------------- inputs
def preprocess(sam: nn.Module, image: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 RGB -> the encoder's 1x3xSxS input, computed exactly as ``SamPredictor.set_image``."""
    return sam.preprocess(_resized(sam, image).to(sam.pixel_mean.device))


def _resized(sam: nn.Module, image: np.ndarray) -> torch.Tensor:
    from segment_anything.utils.transforms import ResizeLongestSide
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image.dtype} of shape {image.shape}")
    resized = ResizeLongestSide(sam.image_encoder.img_size).apply_image(image)
    return torch.as_tensor(resized).permute(2, 0, 1).contiguous()[None]


def predictor_with_embedding(sam: nn.Module, embedding, original_size: Sequence[int]):
    """A ``SamPredictor`` whose image is set from an embedding computed elsewhere (an exported encoder)."""
    from segment_anything import SamPredictor
    from segment_anything.utils.transforms import ResizeLongestSide
    predictor = SamPredictor(sam)
    h, w = (int(v) for v in original_size)
    predictor.original_size = (h, w)
    predictor.input_size = ResizeLongestSide.get_preprocess_shape(h, w, sam.image_encoder.img_size)
    predictor.features = torch.as_tensor(np.asarray(embedding), dtype=torch.float32, device=sam.device)
    predictor.is_image_set = True
    return predictor


def onnx_prompt(original_size: Sequence[int], points: Optional[Sequence[Sequence[float]]] = None,
                labels: Optional[Sequence[int]] = None, box: Optional[Sequence[float]] = None, *,
                img_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """``(point_coords 1xNx2, point_labels 1xN)`` float32 for the decoder, from original-image pixels.

    ``points`` are (x, y) clicks with ``labels`` 1 (foreground, the default) or 0 (background);
    ``box`` is (x0, y0, x1, y1). The box becomes two points labelled 2 and 3 after the clicks;
    without a box a padding point (0, 0) labelled -1 is appended, as ``SamPredictor`` does.
    """
    from segment_anything.utils.transforms import ResizeLongestSide
    coords = np.asarray(points if points is not None else [], dtype=np.float32).reshape(-1, 2)
    if labels is None:
        labels = [1] * len(coords)
    labels = np.asarray(labels, dtype=np.float32).reshape(-1)
    if len(labels) != len(coords):
        raise ValueError(f"{len(coords)} points but {len(labels)} labels")
    if not set(labels.tolist()) <= {0.0, 1.0}:
        raise ValueError(f"click labels are 1 (foreground) or 0 (background), got {sorted(set(labels.tolist()))}; "
                         "give a box as box=(x0, y0, x1, y1)")
    if box is not None:
        corners = np.asarray(box, dtype=np.float32).reshape(-1)
        if corners.shape != (4,):
            raise ValueError(f"a box is (x0, y0, x1, y1), got {list(corners)}")
        coords = np.concatenate([coords, corners.reshape(2, 2)])
        labels = np.concatenate([labels, np.array([2, 3], np.float32)])
    else:
        if not len(coords):
            raise ValueError("give at least one point or a box")
        coords = np.concatenate([coords, np.zeros((1, 2), np.float32)])
        labels = np.concatenate([labels, np.array([-1], np.float32)])
    h, w = (int(v) for v in original_size)
    frame = ResizeLongestSide(img_size).apply_coords(coords, (h, w))
    if box is None:
        frame[-1] = 0.0  # the padding point stays at the origin, whatever the scale
    return frame[None].astype(np.float32), labels[None].astype(np.float32)


def parity_images(source=None, *, limit: int = 2) -> list[tuple[str, np.ndarray]]:
    """``(name, RGB array)`` pairs to check with.

    ``source``: an image file, a folder (searched recursively) or a list of files. Without one,
    the photographs that ship with matplotlib (a dependency: Grace Hopper's portrait and a
    product photo); without those, one generated image (named ``synthetic``: smooth gradients
    and shapes, 480x640), so a check always runs and the report says which it was.
    """
    from .images import load_rgb
    if limit < 1:
        raise ValueError(f"the number of parity images must be at least 1, got {limit}")
    if source is not None and not isinstance(source, (str, os.PathLike)):
        paths = []
        for item in source:
            paths += find_images(item, limit) if Path(item).is_dir() else [Path(item)]
        paths = paths[:limit]
    else:
        paths = find_images(source, limit)
    images = [(str(p), load_rgb(p)) for p in paths]
    return images or [("synthetic", synthetic_image())]


def synthetic_image(height: int = 480, width: int = 640) -> np.ndarray:
    """A deterministic RGB test card: gradients, a disc and a bar (not a photograph)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([255 * x / width, 255 * y / height, 128 + 64 * np.sin(x / 23.0) * np.cos(y / 17.0)], -1)
    image[(x - width * 0.35) ** 2 + (y - height * 0.5) ** 2 < (height * 0.2) ** 2] = (230, 40, 40)
    image[int(height * 0.2):int(height * 0.3), int(width * 0.55):int(width * 0.9)] = (20, 20, 200)
    return image.clip(0, 255).astype(np.uint8)


def parity_prompts(height: int, width: int) -> list[dict]:
    """The prompts the decoder is checked with on an image of this size (original-image pixels)."""
    def at(fx: float, fy: float) -> list[float]:
        return [round(fx * (width - 1), 1), round(fy * (height - 1), 1)]
    return [
        {"name": "one click", "points": [at(0.5, 0.5)], "labels": [1]},
        {"name": "box", "box": at(0.2, 0.15) + at(0.8, 0.9)},
        {"name": "box and background click", "box": at(0.25, 0.2) + at(0.75, 0.8), "points": [at(0.3, 0.3)],
         "labels": [0]},
        {"name": "click with previous mask", "points": [at(0.5, 0.5)], "labels": [1], "previous_mask": True},
    ]


# --------------------------------------------------------------------------- modules
def fused_cpu_copy(sam: nn.Module) -> nn.Module:
    """A float32 CPU copy of ``sam`` in eval mode with its image encoder fused; ``sam`` is untouched."""
    from ..models.reparam import is_fused, reparameterize
    if not hasattr(sam, "image_encoder") or not hasattr(sam, "mask_decoder"):
        raise TypeError(f"expected a segment_anything Sam model (see repvit.sam.build_sam), got {type(sam).__name__}")
    sam = copy.deepcopy(sam).eval().float().cpu()
    if not is_fused(sam.image_encoder):
        sam.image_encoder = reparameterize(sam.image_encoder, inplace=True)
    for p in sam.parameters():
        p.requires_grad_(False)
    return sam


@functools.lru_cache(maxsize=None)
def _decoder_class():
    require_segment_anything()
    from segment_anything.utils.onnx import SamOnnxModel

    class SamPromptDecoder(SamOnnxModel):
        """Meta's ``SamOnnxModel`` with the crop before the last resize read from ``orig_im_size``."""

        def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
            masks = F.interpolate(masks, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False)
            valid = self.resize_longest_image_size(orig_im_size, self.img_size)
            masks = masks[..., :valid[0], :valid[1]]  # tensor bounds: the trace keeps them symbolic
            size = orig_im_size.to(torch.int64)
            return F.interpolate(masks, size=(size[0], size[1]), mode="bilinear", align_corners=False)

    return SamPromptDecoder


def prompt_decoder(sam: nn.Module, *, return_single_mask: bool = False, use_stability_score: bool = False) -> nn.Module:
    """The decoder module that is exported to ONNX (``SamOnnxModel``'s inputs, outputs and options)."""
    return _decoder_class()(sam, return_single_mask=return_single_mask,
                            use_stability_score=use_stability_score).eval()


class LowResDecoder(nn.Module):
    """The Core ML decoder: ``prompt_decoder`` without the final resize (Core ML has no data-dependent
    output sizes); returns ``(iou_predictions 1x4, low_res_masks 1x4x256x256)``.

    ``MaskDecoder.predict_masks`` copies the image embedding once per prompt with a
    ``repeat_interleave`` whose count the trace keeps symbolic, which coremltools cannot convert;
    with one prompt set per call there is nothing to copy, so the same modules run on the embedding
    directly (checked equal to the ONNX decoder's module on export).
    """

    def __init__(self, sam: nn.Module):
        super().__init__()
        self.inner = prompt_decoder(sam)

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input):
        sam = self.inner.model
        decoder = sam.mask_decoder
        sparse = self.inner._embed_points(point_coords, point_labels)
        dense = self.inner._embed_masks(mask_input, has_mask_input)
        tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)[None]
        hs, src = decoder.transformer(image_embeddings + dense, sam.prompt_encoder.get_dense_pe(),
                                      torch.cat([tokens, sparse], dim=1))
        _, channels, height, width = image_embeddings.shape
        upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(1, channels, height, width))
        weights = torch.stack([mlp(hs[:, 1 + i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
        masks = (weights @ upscaled.flatten(2)).reshape(1, -1, *upscaled.shape[-2:])
        return decoder.iou_prediction_head(hs[:, 0]), masks


def decoder_example(sam: nn.Module, num_points: int = 5) -> tuple[torch.Tensor, ...]:
    grid = sam.prompt_encoder.image_embedding_size
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(1, sam.prompt_encoder.embed_dim, *grid, generator=gen),
            torch.randint(0, sam.image_encoder.img_size, (1, num_points, 2), generator=gen).float(),
            torch.tensor([[1.0, 0.0, 2.0, 3.0, -1.0][i % 5] for i in range(num_points)])[None],
            torch.randn(1, 1, 4 * grid[0], 4 * grid[1], generator=gen),
            torch.tensor([1.0]),
            torch.tensor([1500.0, 2250.0]))


# --------------------------------------------------------------------------- ONNX
def _write_metadata(path: Path, metadata: dict) -> dict:
    onnx = _need("onnx", "onnx")
    proto = onnx.load(str(path))
    save_with_metadata(proto, path, metadata)
    ops = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
            "nodes": len(proto.graph.node), "batch_norm_nodes": ops.get("BatchNormalization", 0),
            "inputs": {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                       for v in proto.graph.input},
            "outputs": [v.name for v in proto.graph.output]}


def _base_metadata(part: str) -> dict:
    from ..version import __version__
    return {"producer": f"repvit {__version__} (torch {torch.__version__.split('+')[0]})",
            "model": "RepViT-SAM (RepViT-M2.3 image encoder, fused; SAM prompt encoder and mask decoder)",
            "part": part}


def export_encoder_onnx(sam: nn.Module, path: Union[str, os.PathLike], *, opset: int = DEFAULT_OPSET) -> dict:
    """Write the fused image encoder (``image`` 1x3xSxS -> ``image_embeddings``); returns graph facts."""
    _need("onnx", "onnx")
    _need("onnxscript", "onnx")
    sam, path = fused_cpu_copy(sam), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = sam.image_encoder.img_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(sam.image_encoder, (torch.randn(1, 3, size, size),), str(path), dynamo=True, verbose=False,
                          external_data=False, input_names=list(ENCODER_INPUTS), output_names=list(ENCODER_OUTPUTS),
                          opset_version=opset)
    facts = _write_metadata(path, {
        **_base_metadata("image encoder"),
        "input": f"image: float32 1x3x{size}x{size}; RGB with the longest side resized to {size} "
                 f"(ResizeLongestSide), normalised with mean {sam.pixel_mean.flatten().tolist()} and std "
                 f"{sam.pixel_std.flatten().tolist()} (0..255 scale), zero-padded at the bottom/right",
        "output": "image_embeddings: float32 1x256x{0}x{0}".format(size // sam.image_encoder.stride)})
    if facts["batch_norm_nodes"]:
        path.unlink(missing_ok=True)
        raise ValueError(f"{path}: {facts['batch_norm_nodes']} BatchNormalization nodes: the encoder was not fused")
    return {"path": str(path), **facts}


def export_decoder_onnx(sam: nn.Module, path: Union[str, os.PathLike], *, opset: int = DEFAULT_OPSET,
                        return_single_mask: bool = False, use_stability_score: bool = False) -> dict:
    """Write the prompt decoder in ``SamOnnxModel``'s layout with a dynamic number of points.

    Exported with PyTorch's TorchScript-based ONNX exporter (as Meta's export script does): the
    mask output's size is the *value* of ``orig_im_size``, which a trace records as a shape
    computation and ``torch.export`` would need as a data-dependent size.
    """
    _need("onnx", "onnx")
    sam, path = fused_cpu_copy(sam), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = prompt_decoder(sam, return_single_mask=return_single_mask, use_stability_score=use_stability_score)
    dynamic = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, decoder_example(sam), str(path), dynamo=False, verbose=False,
                          input_names=list(DECODER_INPUTS), output_names=list(DECODER_OUTPUTS), opset_version=opset,
                          dynamic_axes=dynamic, do_constant_folding=True)
    facts = _write_metadata(path, {
        **_base_metadata("prompt decoder"),
        "return_single_mask": str(bool(return_single_mask)).lower(),
        "use_stability_score": str(bool(use_stability_score)).lower(),
        "point_labels": "1 foreground click, 0 background click, 2 box top-left, 3 box bottom-right, -1 padding; "
                        "no box: append point (0, 0) with label -1",
        "point_coords": f"original-image pixels mapped with ResizeLongestSide({sam.image_encoder.img_size})"
                        ".apply_coords",
        "outputs": "masks: logits at orig_im_size (> 0 is the mask); iou_predictions; low_res_masks 256x256"})
    return {"path": str(path), **facts}


def onnx_session(path: Union[str, os.PathLike]):
    _need("onnxruntime", "onnx")
    from ..export.onnx import session
    return session(path)


# --------------------------------------------------------------------------- parity
def _report(diffs: dict, tolerance: float, **extra) -> dict:
    worst = max(diffs.values()) if diffs else 0.0
    return {"max_abs_diff": worst, "tolerance": tolerance, "passed": bool(worst <= tolerance), "by_output": diffs,
            **extra}


def _max_diff(a, b) -> float:
    a, b = torch.as_tensor(np.asarray(a)).float(), torch.as_tensor(np.asarray(b)).float()
    if a.shape != b.shape:
        raise ParityError(f"output shape {tuple(a.shape)} != reference {tuple(b.shape)}")
    return float((a - b).abs().max()) if torch.isfinite(a).all() else float("inf")


def discard_failed(entry: dict, path: Union[str, os.PathLike]) -> dict:
    """Remove ``path`` when ``entry`` (a check's report) did not pass; says so in the entry."""
    if entry.get("passed") is False:
        Path(path).unlink(missing_ok=True)
        entry["removed"] = str(path)
    return entry


@torch.no_grad()
def encode_images(sam: nn.Module, images: Sequence[tuple[str, np.ndarray]]):
    """A ``SamPredictor`` per image with its PyTorch embedding set, and the encoder inputs."""
    from segment_anything import SamPredictor
    out = []
    for name, image in images:
        predictor = SamPredictor(sam)
        resized = _resized(sam, image)
        predictor.set_torch_image(resized, image.shape[:2])
        out.append((name, image, sam.preprocess(resized), predictor))
    return out


def check_encoder(run: Callable[[torch.Tensor], np.ndarray], encoded, *, tolerance: float = ENCODER_TOLERANCE) -> dict:
    """Largest |embedding difference| of ``run`` against the PyTorch embeddings of ``encode_images``."""
    diffs = {}
    for name, _, x, predictor in encoded:
        diffs[name] = _max_diff(run(x), predictor.features)
    return _report(diffs, tolerance, images=[name for name, *_ in encoded],
                   largest_embedding=max(float(p.features.abs().max()) for *_, p in encoded))


def _predictor_outputs(sam, predictor, prompt: dict, previous: Optional[np.ndarray], *, return_single_mask: bool,
                       use_stability_score: bool) -> tuple[np.ndarray, ...]:
    """What the exported decoder should return, built from ``SamPredictor.predict`` calls."""
    from segment_anything.utils.amg import calculate_stability_score
    kwargs = dict(point_coords=np.asarray(prompt["points"], np.float32) if prompt.get("points") else None,
                  point_labels=np.asarray(prompt["labels"]) if prompt.get("points") else None,
                  box=np.asarray(prompt["box"], np.float32) if prompt.get("box") else None,
                  mask_input=previous, return_logits=True)
    single = predictor.predict(multimask_output=False, **kwargs)
    multi = predictor.predict(multimask_output=True, **kwargs)
    masks, scores, low = (np.concatenate([s, m]) for s, m in zip(single, multi))
    if use_stability_score:
        scores = calculate_stability_score(torch.from_numpy(low), sam.mask_threshold, 1.0).numpy()
    if return_single_mask:
        num_points = len(prompt.get("points") or []) + (2 if prompt.get("box") else 1)
        pick = int(np.argmax(scores[1:])) + 1 if num_points <= 2 else 0
        masks, scores, low = masks[pick:pick + 1], scores[pick:pick + 1], low[pick:pick + 1]
    return masks[None], scores[None], low[None]


@torch.no_grad()
def check_decoder(run: Callable[[dict], list], sam: nn.Module, encoded, *, return_single_mask: bool = False,
                  use_stability_score: bool = False, tolerance: float = DECODER_TOLERANCE,
                  prompts: Optional[Callable[[int, int], list[dict]]] = None) -> dict:
    """Run the exported decoder on each image's embedding with ``prompts(height, width)`` (default
    ``parity_prompts``) and compare it with the PyTorch module it was exported from and with
    ``SamPredictor.predict``."""
    module = prompt_decoder(sam, return_single_mask=return_single_mask, use_stability_score=use_stability_score)
    vs_torch, vs_predictor, cases = {}, {}, []
    for name, image, _, predictor in encoded:
        h, w = image.shape[:2]
        first_low = None
        for prompt in (prompts or parity_prompts)(h, w):
            coords, labels = onnx_prompt((h, w), prompt.get("points"), prompt.get("labels"), prompt.get("box"),
                                         img_size=sam.image_encoder.img_size)
            use_mask = bool(prompt.get("previous_mask"))
            grid = sam.prompt_encoder.mask_input_size
            mask = first_low[None, None] if use_mask else np.zeros((1, 1, *grid), np.float32)
            feed = {"image_embeddings": predictor.features.numpy(), "point_coords": coords, "point_labels": labels,
                    "mask_input": mask.astype(np.float32), "has_mask_input": np.array([float(use_mask)], np.float32),
                    "orig_im_size": np.array([h, w], np.float32)}
            got = run(feed)
            want = module(*(torch.from_numpy(v) for v in feed.values()))
            expected = _predictor_outputs(sam, predictor, prompt, mask[0] if use_mask else None,
                                          return_single_mask=return_single_mask,
                                          use_stability_score=use_stability_score)
            key = f"{Path(name).name}: {prompt['name']}"
            vs_torch[key] = max(_max_diff(g, t) for g, t in zip(got, want))
            vs_predictor[key] = max(_max_diff(g, e) for g, e in zip(got, expected))
            cases.append({"image": name, "prompt": prompt["name"], "num_points": int(coords.shape[1]),
                          "mask_shape": list(np.shape(got[0])),
                          "mask_pixels": int((np.asarray(got[0])[0, 0] > sam.mask_threshold).sum())})
            if first_low is None:
                first_low = np.asarray(want[2][0, 0 if return_single_mask else int(np.argmax(want[1][0, 1:])) + 1])
    torch_report = _report(vs_torch, tolerance)
    predictor_report = _report(vs_predictor, tolerance)
    return {"max_abs_diff": max(torch_report["max_abs_diff"], predictor_report["max_abs_diff"]),
            "tolerance": tolerance, "passed": torch_report["passed"] and predictor_report["passed"],
            "vs_pytorch_module": torch_report, "vs_sam_predictor": predictor_report,
            "point_counts": sorted({c["num_points"] for c in cases}), "cases": cases,
            "return_single_mask": return_single_mask, "use_stability_score": use_stability_score}


def onnx_encoder_runner(path) -> Callable[[torch.Tensor], np.ndarray]:
    sess = onnx_session(path)
    return lambda x: sess.run(None, {ENCODER_INPUTS[0]: x.detach().cpu().float().contiguous().numpy()})[0]


def onnx_decoder_runner(path) -> Callable[[dict], list]:
    sess = onnx_session(path)
    return lambda feed: sess.run(None, feed)


# --------------------------------------------------------------------------- Core ML
def _coreml_convert(source, inputs: Optional[list], outputs: Sequence[str], path: Path, *, precision: str,
                    metadata: dict, descriptions: dict) -> Path:
    """``source``: a traced module (``inputs`` name and shape its tensors) or an ``ExportedProgram`` (its
    argument names and dynamic dimensions are the inputs; ``inputs`` is None)."""
    from ..export import coreml
    ct = coreml._require()
    if precision not in coreml.PRECISIONS:
        raise ValueError(f"Core ML precision must be one of {coreml.PRECISIONS}, got {precision!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlmodel = ct.convert(source, inputs=inputs, outputs=[ct.TensorType(name=n) for n in outputs],
                             convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                             compute_precision=ct.precision.FLOAT16 if precision == "float16" else ct.precision.FLOAT32)
    mlmodel.short_description = metadata["model"] + f" - {metadata['part']}"
    mlmodel.author = metadata["producer"]
    input_names = [i.name for i in mlmodel.get_spec().description.input]
    for name, text in descriptions.items():
        if name in input_names:
            mlmodel.input_description[name] = text
        else:
            mlmodel.output_description[name] = text
    for key, value in {**metadata, "compute_precision": precision}.items():
        mlmodel.user_defined_metadata[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))
    return path


def coreml_spec(path: Union[str, os.PathLike]) -> dict:
    """Model type and input/output names and shapes of a saved ``.mlpackage`` (works without macOS)."""
    from ..export import coreml
    spec = coreml.load(path).get_spec()

    def shape(feature):
        arr = feature.type.multiArrayType
        if arr.WhichOneof("ShapeFlexibility") == "shapeRange":
            return [[int(r.lowerBound), int(r.upperBound)] for r in arr.shapeRange.sizeRanges]
        return [int(d) for d in arr.shape]
    return {"type": spec.WhichOneof("Type"),
            "inputs": {i.name: shape(i) for i in spec.description.input},
            "outputs": {o.name: shape(o) for o in spec.description.output}}


def export_encoder_coreml(sam: nn.Module, path: Union[str, os.PathLike], *, precision: str = "float16") -> dict:
    """The fused encoder as an ML program with a tensor input ``image`` (already preprocessed)."""
    from ..export import coreml
    ct = coreml._require()
    sam, path = fused_cpu_copy(sam), Path(path)
    size = sam.image_encoder.img_size
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(sam.image_encoder, torch.randn(1, 3, size, size))
    _coreml_convert(traced, [ct.TensorType(name=ENCODER_INPUTS[0], shape=(1, 3, size, size))], ENCODER_OUTPUTS, path,
                    precision=precision, metadata=_base_metadata("image encoder"),
                    descriptions={"image": f"float32 1x3x{size}x{size}: SAM-preprocessed (see repvit.sam.export)",
                                  "image_embeddings": "1x256 image embedding grid"})
    return _coreml_facts(path, ENCODER_INPUTS, ENCODER_OUTPUTS)


def export_decoder_coreml(sam: nn.Module, path: Union[str, os.PathLike], *, precision: str = "float16",
                          max_points: int = COREML_MAX_POINTS) -> dict:
    """The prompt decoder up to the low-resolution masks, 1..``max_points`` points (padding and box corners
    included)."""
    from ..export import coreml
    coreml._require()
    sam, path = fused_cpu_copy(sam), Path(path)
    module = LowResDecoder(sam).eval()
    example = decoder_example(sam)[:5]
    # torch.export keeps the number of points symbolic through the attention reshapes; a trace turns
    # those sizes into integer ops that coremltools cannot convert.
    points = torch.export.Dim("num_points", min=1, max=int(max_points))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(module, example, dynamic_shapes=(None, {1: points}, {1: points}, None, None))
        program = program.run_decompositions({})
    _coreml_convert(program, None, COREML_DECODER_OUTPUTS, path, precision=precision,
                    metadata={**_base_metadata("prompt decoder (low-resolution masks)"),
                              "point_labels": "1 foreground, 0 background, 2 box top-left, 3 box bottom-right, "
                                              "-1 padding (append (0, 0) with -1 when there is no box)"},
                    descriptions={"point_coords": "1xNx2 (x, y) in the 1024 frame (ResizeLongestSide.apply_coords)",
                                  "point_labels": "1 fg, 0 bg, 2/3 box corners, -1 padding",
                                  "low_res_masks": "1x4x256x256 logits; upscale to 1024, crop the resized "
                                                   "image, resize to the original"})
    with torch.no_grad():  # what was converted equals the ONNX decoder's module on the low-res outputs
        ref = prompt_decoder(sam)(*decoder_example(sam))
        got = module(*example)
    facts = _coreml_facts(path, COREML_DECODER_INPUTS, COREML_DECODER_OUTPUTS)
    facts["converted_module_vs_onnx_module"] = max(_max_diff(got[0], ref[1]), _max_diff(got[1], ref[2]))
    return facts


def _coreml_facts(path: Path, inputs: Sequence[str], outputs: Sequence[str]) -> dict:
    spec = coreml_spec(path)
    if spec["type"] != "mlProgram" or list(spec["inputs"]) != list(inputs) or list(spec["outputs"]) != list(outputs):
        raise ValueError(f"{path}: Core ML file has {spec}, expected an mlProgram with inputs {list(inputs)} and "
                         f"outputs {list(outputs)}")
    from ..export import coreml
    note = None if coreml.can_predict() else MACOS_ONLY.format(system=platform.system())
    return {"path": str(path), **spec, "predicted": False, "note": note}


def coreml_can_predict() -> bool:
    from ..export import coreml
    return coreml.can_predict()


# --------------------------------------------------------------------------- ExecuTorch
def export_encoder_executorch(sam: nn.Module, path: Union[str, os.PathLike]) -> dict:
    """The fused encoder as an XNNPACK-delegated ``.pte`` (fixed 1x3xSxS input)."""
    from ..export import executorch
    if not executorch.available():
        raise ImportError("ExecuTorch export needs the executorch package: pip install 'repvit-pytorch[executorch]'")
    sam = fused_cpu_copy(sam)
    size = sam.image_encoder.img_size
    meta = {**_base_metadata("image encoder"), "output": "image_embeddings 1x256 grid"}
    path, facts = executorch.export_executorch(sam.image_encoder, path, img_size=size, metadata=meta)
    return {"path": str(path), **facts}


def executorch_encoder_runner(path) -> Callable[[torch.Tensor], np.ndarray]:
    from ..export import executorch
    run = executorch.runner(path)
    return lambda x: run(x.float()).numpy()


# --------------------------------------------------------------------------- everything
def parse_formats(text: Union[str, Sequence[str], None]) -> list[str]:
    """``"onnx,coreml"`` -> ``["onnx", "coreml"]``; an unknown name is an error listing the known ones."""
    if text is None:
        return list(FORMATS)
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ValueError(f"unknown export format(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(FORMATS)} (comma-separated)")
    return list(dict.fromkeys(names))


def format_available(fmt: str) -> Optional[str]:
    """None when ``fmt`` can be written here, else the reason (the missing package and its pip extra)."""
    import importlib.util
    needs = {"onnx": [("onnx", "onnx"), ("onnxruntime", "onnx"), ("onnxscript", "onnx")],
             "coreml": [("coremltools", "coreml")], "executorch": [("executorch", "executorch")]}[fmt]
    for module, extra in needs:
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: pip install 'repvit-pytorch[{extra}]'"
    return None


def export_sam(sam: nn.Module, output_dir: Union[str, os.PathLike], *, formats: Union[str, Sequence[str], None] = None,
               images=None, max_images: int = 2, opset: int = DEFAULT_OPSET, return_single_mask: bool = False,
               use_stability_score: bool = False, coreml_precision: str = "float16", strict_formats: bool = True,
               strict: bool = True, log: Callable[[str], None] = lambda _: None) -> dict:
    """Write every asked format into ``output_dir``, check each, and return the report (also what the CLI saves).

    ``formats=None`` means every format whose package is installed (others are listed as skipped);
    a format named explicitly whose package is missing is an error when ``strict_formats``. A
    check beyond its tolerance removes that file; once every format is done, ``ParityError``
    (carrying the report as ``.report``) is raised, or with ``strict=False`` the report lists the
    failures under ``failures``. Core ML is checked as far as the platform allows; an ExecuTorch lowering
    that fails is reported with its reason instead of stopping the other formats.
    """
    explicit = formats is not None
    formats = parse_formats(formats)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output folder {str(out)!r} is an existing file; name a folder")
    require_segment_anything()
    sam = fused_cpu_copy(sam)
    report = {"model": "RepViT-SAM", "image_size": sam.image_encoder.img_size, "formats": {}, "skipped": {}}
    for fmt in list(formats):
        reason = format_available(fmt)
        if reason and (explicit and strict_formats):
            raise ImportError(f"cannot export {fmt}: {reason}")
        if reason:
            report["skipped"][fmt] = reason
            formats.remove(fmt)
            log(f"skipping {fmt}: {reason}")
    images = parity_images(images, limit=max_images)
    synthetic = any(name == "synthetic" for name, _ in images)
    report["parity_images"] = [{"name": name, "height": int(a.shape[0]), "width": int(a.shape[1])}
                               for name, a in images]
    report["parity_on"] = "a synthetic test card (no photograph found)" if synthetic else "real photographs"
    encoded = []
    if {"onnx", "executorch"} & set(formats):  # Core ML alone predicts nothing here
        log(f"parity on {report['parity_on']}: " + ", ".join(n for n, _ in images))
        encoded = encode_images(sam, images)
    else:
        report["parity_on"] = "nothing run (Core ML predictions need macOS)"
    failures = []

    def record(fmt: str, part: str, entry: dict) -> None:
        report["formats"].setdefault(fmt, {})[part] = entry
        if "max_abs_diff" in entry:
            log(f"{fmt} {part}: max |diff| {entry['max_abs_diff']:.3e} (tolerance {entry['tolerance']:.0e}) "
                f"-> {'OK' if entry['passed'] else 'FAILED'}")
        if entry.get("passed") is False:
            failures.append(f"{fmt} {part}: max |diff| {entry['max_abs_diff']:.3g} > {entry['tolerance']:g}")

    if "onnx" in formats:
        path = out / FILE_NAMES["onnx", "encoder"]
        facts = export_encoder_onnx(sam, path, opset=opset)
        record("onnx", "encoder", discard_failed({**facts, **check_encoder(onnx_encoder_runner(path), encoded)}, path))
        path = out / FILE_NAMES["onnx", "decoder"]
        facts = export_decoder_onnx(sam, path, opset=opset, return_single_mask=return_single_mask,
                                    use_stability_score=use_stability_score)
        check = check_decoder(onnx_decoder_runner(path), sam, encoded, return_single_mask=return_single_mask,
                              use_stability_score=use_stability_score)
        record("onnx", "decoder", discard_failed({**facts, **check}, path))
    if "coreml" in formats:
        for part, export in (("encoder", export_encoder_coreml), ("decoder", export_decoder_coreml)):
            facts = export(sam, out / FILE_NAMES["coreml", part], precision=coreml_precision)
            record("coreml", part, facts)
            log(f"coreml {part}: {facts['path']} (inputs {', '.join(facts['inputs'])}; outputs "
                f"{', '.join(facts['outputs'])}); {facts['note'] or 'prediction not checked'}")
    if "executorch" in formats:
        path = out / FILE_NAMES["executorch", "encoder"]
        try:
            facts = export_encoder_executorch(sam, path)
        except Exception as err:  # noqa: BLE001 - the report carries the exact reason
            record("executorch", "encoder", {"lowered": False, "reason": f"{type(err).__name__}: {err}"})
            log(f"executorch encoder: did not lower: {type(err).__name__}: {err}")
        else:
            try:
                check = check_encoder(executorch_encoder_runner(path), encoded)
            except Exception as err:  # noqa: BLE001
                record("executorch", "encoder", {"lowered": True, **facts, "verified": False,
                                                 "reason": f"ExecuTorch runtime: {type(err).__name__}: {err}"})
                log(f"executorch encoder: written, not verified: {err}")
            else:
                record("executorch", "encoder", discard_failed({"lowered": True, **facts, "verified": True, **check},
                                                               path))
    report["passed"] = not failures
    report["failures"] = failures
    if failures and strict:
        err = ParityError("parity check failed (the failing files were removed):\n  " + "\n  ".join(failures))
        err.report = report
        raise err
    return report


__all__ = ["export_sam", "export_encoder_onnx", "export_decoder_onnx", "export_encoder_coreml",
           "export_decoder_coreml", "export_encoder_executorch", "check_encoder", "check_decoder", "encode_images",
           "onnx_prompt", "preprocess", "predictor_with_embedding", "prompt_decoder", "parity_images", "parse_formats",
           "discard_failed", "ParityError", "FORMATS", "FILE_NAMES", "ENCODER_TOLERANCE", "DECODER_TOLERANCE"]
