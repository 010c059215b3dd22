"""``build_sam``: a ``segment_anything.modeling.Sam`` whose image encoder is RepViT.

The prompt encoder and mask decoder are Meta's own classes with SAM's settings (256-d prompts,
64x64 embedding grid for a 1024 input, 16 mask-input channels, 3 multimask outputs, two-way
transformer of depth 2 / MLP 2048 / 8 heads, IoU head depth 3 width 256), so ``SamPredictor`` and
``SamAutomaticMaskGenerator`` run the result unchanged.
"""
from __future__ import annotations

import os
from typing import Mapping, Union

import torch
from torch import nn

from ..models.checkpoint import CheckpointError, read_file
from ..models.state_dict import load_strict
from .encoder import SAM_EMBED_DIM, SAM_IMAGE_SIZE, RepViTSamEncoder

SAM_PARTS = ("image_encoder.", "prompt_encoder.", "mask_decoder.")


def require_segment_anything():
    try:
        import segment_anything
    except ImportError:
        raise ImportError("RepViT-SAM needs Meta's segment-anything package: "
                          "pip install 'repvit-pytorch[sam]' (or pip install segment-anything)") from None
    return segment_anything


def sam_with_encoder(image_encoder: nn.Module, *, img_size: int = SAM_IMAGE_SIZE, stride: int = 16) -> nn.Module:
    """A ``Sam`` around ``image_encoder`` with SAM's own prompt encoder and mask decoder, in eval mode."""
    require_segment_anything()
    from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
    grid = img_size // stride
    sam = Sam(
        image_encoder=image_encoder,
        prompt_encoder=PromptEncoder(embed_dim=SAM_EMBED_DIM, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                 transformer=TwoWayTransformer(depth=2, embedding_dim=SAM_EMBED_DIM, mlp_dim=2048,
                                                               num_heads=8),
                                 transformer_dim=SAM_EMBED_DIM, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def build_sam(checkpoint: Union[str, os.PathLike, None] = None, *, fused: bool = False,
              pretrained: bool = False, encoder_checkpoint: Union[str, os.PathLike, None] = None,
              variant: str = "repvit_m2_3", img_size: int = SAM_IMAGE_SIZE, progress: bool = True) -> nn.Module:
    """RepViT-SAM as a ``segment_anything`` ``Sam`` model, in eval mode.

    ``checkpoint``: a whole-SAM file (the official flat ``repvit_sam.pt`` layout, or one written by
    ``repvit sam distill``/``save``), loaded by name, strictly. ``pretrained=True`` fetches the
    official ``repvit_sam.pt`` (cached, hash-recorded; see ``repvit.models.pretrained``).
    ``encoder_checkpoint``: start the image encoder's backbone from a RepViT classification
    checkpoint (prompt encoder and decoder stay random: the start of distillation).
    ``fused=True`` folds the encoder's BatchNorms and branches after loading and stores its
    convolution weights channels_last (faster on CPUs; same values).
    """
    if pretrained and checkpoint is not None:
        raise ValueError("pass pretrained=True (official weights) or checkpoint= (a file), not both")
    if pretrained:
        from ..models.pretrained import fetch
        from ..models.releases import find_release, SAM
        checkpoint = fetch(find_release("repvit_sam", "sam", kind=SAM), progress=progress)
    encoder = RepViTSamEncoder(variant, img_size=img_size)
    if encoder_checkpoint is not None:
        encoder.load_backbone(encoder_checkpoint)
    sam = sam_with_encoder(encoder, img_size=img_size, stride=encoder.stride)
    state = read_sam_state(checkpoint) if checkpoint is not None else None
    from ..models.reparam import reparameterize
    if fused and state is not None and is_fused_state(state):
        sam = reparameterize(sam, inplace=True)  # a fused file loads into the fused skeleton
    if state is not None:
        _load_checked(sam, state, f"checkpoint {str(checkpoint)!r}")
    if fused:
        sam = reparameterize(sam, inplace=True)  # no-op when already fused
        # the inference form: channels_last convolutions run the 1024x1024 encoder 1.2-1.5x faster on a CPU
        # (benchmarks/sam.md); the values are the same, only the weights' memory layout changes
        sam.image_encoder.to(memory_format=torch.channels_last)
    return sam.eval()


def is_fused_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True when a SAM state dict's image encoder has no BatchNorm left."""
    return not any(k.startswith("image_encoder.") and k.endswith("running_var") for k in state)


def read_tensors(path: Union[str, os.PathLike]) -> dict:
    """The tensors of a weights file, flat, read with ``weights_only=True``: a bare state dict or
    one under ``model`` / ``state_dict``, with DDP's ``module.`` prefix removed."""
    obj, _ = read_file(path)
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()
            if isinstance(v, torch.Tensor)}


def read_sam_state(path: Union[str, os.PathLike]) -> dict:
    """The flat ``image_encoder.* / prompt_encoder.* / mask_decoder.*`` state dict of a SAM file."""
    state = read_tensors(path)
    if not any(k.startswith(SAM_PARTS) for k in state):
        raise CheckpointError(
            f"{str(path)!r} is not a SAM checkpoint: none of its {len(state)} tensors starts with image_encoder., "
            "prompt_encoder. or mask_decoder. (a RepViT classifier goes to build_sam(encoder_checkpoint=...))")
    return state


def load_sam_weights(sam: nn.Module, source: Union[str, os.PathLike, Mapping[str, torch.Tensor]]) -> None:
    """Copy a whole-SAM state dict into ``sam`` by name, strictly; a mismatch says what and how to fix."""
    state = dict(source) if isinstance(source, Mapping) else read_sam_state(source)
    label = "state dict" if isinstance(source, Mapping) else f"checkpoint {str(source)!r}"
    _load_checked(sam, state, label)


def _load_checked(sam: nn.Module, state: dict, label: str) -> None:
    encoder = sam.image_encoder
    variant = getattr(getattr(encoder, "variant", None), "name", type(encoder).__name__)
    load_strict(sam, state, source=label, what=f"RepViT-SAM ({variant}, fused={getattr(encoder, 'fused', False)})",
                fix=lambda mismatch: _sam_fix(encoder, state, mismatch))


def _sam_fix(encoder: nn.Module, state: dict, mismatch) -> list[str]:
    hints = []
    file_fused = is_fused_state(state)
    if file_fused != bool(getattr(encoder, "fused", False)):
        hints.append(f"the file's encoder is {'fused' if file_fused else 'not fused'}: "
                     f"build_sam(..., fused={file_fused}) reads it")
    if any(k.startswith("image_encoder.blocks.") or k.startswith("image_encoder.patch_embed.") for k in state):
        hints.append("this is a ViT SAM (Meta's vit_b/l/h): build it with segment_anything.sam_model_registry")
    absent = [part for part in SAM_PARTS if not any(k.startswith(part) for k in state)]
    if absent:
        hints.append(f"the file holds no {', '.join(p.rstrip('.') for p in absent)}: pass the whole-SAM file "
                     "(image_encoder + prompt_encoder + mask_decoder), not a file of one part; a RepViT "
                     "classifier goes to build_sam(encoder_checkpoint=...)")
    if not hints:
        hints.append("pass a SAM file of the same encoder variant: the official repvit_sam.pt for repvit_m2_3, or "
                     "one written by `repvit sam distill` / save_sam with build_sam(variant=...) set as it was trained")
    return hints


def save_sam(sam: nn.Module, path: Union[str, os.PathLike]) -> None:
    """Write ``sam``'s state dict flat (the official ``repvit_sam.pt`` layout), atomically."""
    from pathlib import Path
    from ..models.checkpoint import atomic_write
    state = {k: v.detach().cpu() for k, v in sam.state_dict().items()}
    atomic_write(Path(path), lambda f: torch.save(state, f))
