"""``build_edgetam`` and ``build_video_predictor``: EdgeTAM on Meta's ``sam2`` package, in eval mode.

Weights: ``checkpoint=`` a file in the official ``edgetam.pt`` layout (``{"model": state_dict}``,
the trunk under timm's names) or one saved from this package's model (the trunk in the flat
RepViT layout); ``pretrained=True`` the official release file through the project's release
machinery (hub cache, recorded SHA-256, ``REPVIT_WEIGHTS_DIR``, ``REPVIT_WEIGHTS_URL``). Files are
read with ``weights_only=True`` and loaded strictly (names and shapes) by ``load_strict``.
Without weights the model is randomly initialised (nothing is downloaded); ``seed=N`` gives seeded
random weights that track something (``seeded_weights``).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..models.checkpoint import CheckpointError, read_file
from ..models.state_dict import load_strict
from .trunk import TRUNK_PREFIX, official_to_ours

PathLike = Union[str, os.PathLike]
EDGETAM_PARTS = ("image_encoder.", "memory_attention.", "memory_encoder.", "spatial_perceiver.", "sam_mask_decoder.",
                 "sam_prompt_encoder.")
INSTALL_HINT = ("EdgeTAM needs Meta's sam2 package: pip install 'repvit-pytorch[edgetam]' "
                "(on a CPU-only machine: SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0)")


def require_sam2():
    try:
        import sam2
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    return sam2


def build_edgetam(checkpoint: PathLike | None = None, *, pretrained: bool = False, fused: bool = False,
                  device: Union[str, torch.device] = "cpu", progress: bool = True, seed: Optional[int] = None
                  ) -> nn.Module:
    """EdgeTAM as a ``sam2`` ``SAM2Base`` model in eval mode: ``SAM2ImagePredictor(model)`` runs it.

    ``fused=True`` is the inference form: the RepViT trunk's BatchNorms and branches are folded after
    loading and every convolution weight is stored channels_last (the same values; a tracked frame
    costs 0.84x on a 2-core CPU, benchmarks/edgetam.md).
    """
    return _build(checkpoint, pretrained=pretrained, fused=fused, device=device, progress=progress, video=False,
                  seed=seed)


def build_video_predictor(checkpoint: PathLike | None = None, *, pretrained: bool = False, fused: bool = False,
                          device: Union[str, torch.device] = "cpu", progress: bool = True, seed: Optional[int] = None,
                          image_size: int = 1024) -> nn.Module:
    """EdgeTAM with sam2's video API, in eval mode.

    ``state = predictor.init_state(video_path=FOLDER_OF_JPEGS)``, then
    ``add_new_points_or_box(state, frame_idx=, obj_id=, points=, labels=, box=)`` for any number of
    objects on any frames, then ``for frame_idx, obj_ids, mask_logits in
    predictor.propagate_in_video(state)`` (logits at the video's resolution, one row per object).
    ``image_size``: the model's input side (a multiple of 256; the released weights are trained at 1024).
    """
    return _build(checkpoint, pretrained=pretrained, fused=fused, device=device, progress=progress, video=True,
                  seed=seed, image_size=image_size)


def _build(checkpoint, *, pretrained, fused, device, progress, video, seed=None, image_size=1024) -> nn.Module:
    require_sam2()
    if sum((pretrained, checkpoint is not None, seed is not None)) > 1:
        raise ValueError("pass one of pretrained=True (official weights), checkpoint= (a file) and seed= (seeded "
                         "random weights)")
    if pretrained:
        from ..models.pretrained import fetch
        from ..models.releases import EDGETAM, find_release
        checkpoint = fetch(find_release("edgetam", kind=EDGETAM), progress=progress)
    from .assembly import assemble
    model = assemble(video=video, image_size=image_size)
    if checkpoint is not None:
        load_edgetam_weights(model, checkpoint)
    elif seed is not None:
        load_edgetam_weights(model, seeded_weights([(k, tuple(v.shape)) for k, v in model.state_dict().items()], seed))
    model.eval()
    if fused:
        from ..models.reparam import reparameterize
        reparameterize(model.image_encoder.trunk, inplace=True)
        # channels_last weights make PyTorch's CPU convolutions (trunk, neck, memory encoder, mask
        # decoder upscaling) pick their NHWC kernels; values are unchanged, only the memory layout
        model.to(memory_format=torch.channels_last)
    return model.to(device)


OBJECT_SCORE_KEY = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
OBJECT_SCORE_BIAS = 10.0


def seeded_weights(layout: Sequence[tuple[str, tuple[int, ...]]], seed: int) -> dict[str, torch.Tensor]:
    """Seeded random values for every ``(name, shape)`` of ``layout``, drawn in that order: weights that
    track something, for checks without the official file (``seed=`` of the builders, ``--random-weights``).

    Weights of 2-D and larger tensors: normal with std ``gain / sqrt(fan_in)``, gain 0.5 in the RepViT
    trunk (~30 residual blocks stay finite) and 1 elsewhere; learned queries (the perceiver's latents)
    and the random-Fourier matrix of the prompt encoder: standard normal. BatchNorm running means
    N(0, 0.1^2) and variances U(0.5, 1.5); biases N(0, 0.1^2); other 1-D tensors (norm scales, layer
    scales) 1 + N(0, 0.2^2); ``num_batches_tracked`` 0. The object-score head's last bias gets
    +``OBJECT_SCORE_BIAS``: with plain random weights the object score is negative on every frame, sam2
    then writes -1024 everywhere, and every comparison would be of empty masks.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in layout:
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[name] = torch.zeros(shape, dtype=torch.long)
        elif leaf == "running_var":
            out[name] = 0.5 + torch.rand(shape, generator=gen)
        elif leaf in ("running_mean", "bias"):
            out[name] = 0.1 * torch.randn(shape, generator=gen)
        elif leaf in ("latents", "latents_2d", "positional_encoding_gaussian_matrix"):
            out[name] = torch.randn(shape, generator=gen)
        elif len(shape) >= 2:
            fan_in = 1
            for size in shape[1:]:
                fan_in *= int(size)
            gain = 0.5 if name.startswith("image_encoder.trunk.") else 1.0
            out[name] = torch.randn(shape, generator=gen) * (gain / fan_in ** 0.5)
        else:
            out[name] = 1 + 0.2 * torch.randn(shape, generator=gen)
    out[OBJECT_SCORE_KEY] = out[OBJECT_SCORE_KEY] + OBJECT_SCORE_BIAS
    return out


def read_edgetam_state(path: PathLike) -> dict:
    """The flat state dict of an EdgeTAM file (``{"model": ...}``, ``{"state_dict": ...}`` or bare)."""
    obj, _ = read_file(path)
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()
             if isinstance(v, torch.Tensor)}
    if not any(k.startswith(EDGETAM_PARTS) for k in state):
        raise CheckpointError(f"{str(path)!r} is not an EdgeTAM/SAM 2 checkpoint: none of its {len(state)} tensors "
                              f"starts with {', '.join(EDGETAM_PARTS)}")
    return state


def load_edgetam_weights(model: nn.Module, source: Union[PathLike, Mapping[str, torch.Tensor]]) -> None:
    """Copy an EdgeTAM state dict (official or our layout) into ``model`` by name, strictly."""
    state = dict(source) if isinstance(source, Mapping) else read_edgetam_state(source)
    label = "state dict" if isinstance(source, Mapping) else f"checkpoint {str(source)!r}"
    state, renamed = official_to_ours(state)
    trunk = getattr(model.image_encoder, "trunk", None)
    what = f"EdgeTAM (RepViT-M1 trunk, fused={getattr(trunk, 'fused', False)})"
    load_strict(model, state, source=label, what=what, fix=lambda mismatch: _fix(state, renamed, mismatch))


def _fix(state: dict, renamed: dict, mismatch) -> list[str]:
    hints = []
    named = [k for k in (*mismatch.unexpected_keys, *mismatch.wrong_shape_keys) if k in renamed]
    if named:
        hints.append("trunk tensors are listed in the RepViT layout; in the file they are " +
                     ", ".join(f"{renamed[k]} (= {k})" for k in named[:3]) + (" ..." if len(named) > 3 else ""))
    if any(k.startswith("image_encoder.trunk.") and "blocks." in k for k in state) or any(
            k.startswith("image_encoder.trunk.") and ".attn." in k for k in state):
        hints.append("this looks like a SAM 2 / SAM 2.1 Hiera checkpoint: build it with sam2.build_sam.build_sam2")
    if any(k.startswith(TRUNK_PREFIX + "features.") for k in state) and not any(
            k.endswith("running_var") for k in state if k.startswith(TRUNK_PREFIX)):
        hints.append("the file's trunk is fused: load the unfused file, then pass fused=True")
    absent = [p.rstrip(".") for p in EDGETAM_PARTS if not any(k.startswith(p) for k in state)]
    if absent:
        hints.append(f"the file holds no {', '.join(absent)}: pass a whole EdgeTAM checkpoint such as the "
                     "official edgetam.pt")
    if not hints:
        hints.append("pass the official edgetam.pt or a file saved from build_edgetam()'s model")
    return hints
