"""The RepViT network (classification model and features-only backbone) and its factory.

The network is the official flat layout: ``features[0]`` is the stem, ``features[1:]`` the
blocks in order, then ``classifier``. Stage outputs (strides 4/8/16/32) are taken after the
last block that runs at each resolution, as the official detection/segmentation code does.
"""
from __future__ import annotations

import fnmatch
from typing import Optional, Sequence, Union

import torch
import torch.utils.checkpoint
from torch import nn

from .layers import Classifier, DownsampleBlock, RepViTBlock, stem
from .variants import VARIANTS, Variant

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_preprocessing(img_size: int = 224) -> dict:
    """Official evaluation transform: bicubic resize to size/0.875, centre crop, ImageNet mean/std."""
    return {"input_size": (3, img_size, img_size), "interpolation": "bicubic", "crop_pct": 0.875,
            "mean": IMAGENET_MEAN, "std": IMAGENET_STD}


class FeatureInfo(list):
    """List of ``{num_chs, reduction, module, index}`` dicts with timm-style accessors."""

    def channels(self) -> list[int]:
        return [f["num_chs"] for f in self]

    def reduction(self) -> list[int]:
        return [f["reduction"] for f in self]

    def module_name(self) -> list[str]:
        return [f["module"] for f in self]


class TimmHeadConventions:
    """timm's head API (``pretrained_cfg``, ``get/reset_classifier``, grad checkpointing), shared
    by ``RepViT`` and the roadmap networks; a subclass provides ``_make_classifier`` and the
    ``classifier``, ``num_classes``, ``distillation``, ``fused`` and ``preprocessing`` attributes."""

    __jit_unused_properties__ = ["pretrained_cfg", "default_cfg"]

    @property
    def pretrained_cfg(self) -> dict:
        return {**self.preprocessing, "num_classes": self.num_classes, "first_conv": "features.0.0.c",
                "classifier": "classifier"}

    @property
    def default_cfg(self) -> dict:
        return self.pretrained_cfg

    def _make_classifier(self, num_classes: int, distillation: bool) -> nn.Module:
        raise NotImplementedError(f"{type(self).__name__} must define _make_classifier")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    @torch.jit.ignore
    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None, distillation: bool = False) -> None:
        """Replace the classifier (new random weights) on the model's device and dtype."""
        name = type(self).__name__
        if global_pool not in (None, "avg"):
            raise ValueError(f"{name} only supports global_pool='avg', got {global_pool!r}")
        if self.fused:
            raise ValueError(f"reset_classifier on a fused {name} is not supported; reset before reparameterize()")
        ref = next(self.parameters())
        self.num_classes, self.distillation = num_classes, distillation
        self.classifier = self._make_classifier(num_classes, distillation).to(device=ref.device, dtype=ref.dtype)
        self.classifier.train(self.training)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


class RepViT(TimmHeadConventions, nn.Module):
    """RepViT classifier. ``variant`` gives widths and block pattern (see ``variants.py``)."""

    def __init__(self, variant: Union[str, Variant] = "repvit_m0_9", *, num_classes: int = 1000,
                 distillation: bool = False, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, kernel_size: Optional[int] = None, last_stride: int = 2):
        super().__init__()
        if isinstance(variant, str):
            variant = get_variant(variant)
        if not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be a non-negative int (0 removes the classifier), got {num_classes!r}")
        self.variant = variant
        self.in_chans = in_chans
        self.kernel_size = kernel_size or variant.kernel_size
        self.grad_checkpointing = False
        self.fused = False
        self.preprocessing = default_preprocessing()

        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 2 (the classifier) or 1 (stride-16 output, as RepViT-SAM), "
                             f"got {last_stride!r}")
        self.last_stride = last_stride
        self.features, self.feature_info = _build_features(variant, in_chans, self.kernel_size, drop_path_rate,
                                                           last_stride)
        self.num_features = self.head_hidden_size = variant.widths[-1]
        self.drop_rate = drop_rate
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.head_drop = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.distillation = distillation
        self.classifier = self._make_classifier(num_classes, distillation)

    def _make_classifier(self, num_classes: int, distillation: bool) -> nn.Module:
        if num_classes == 0:
            return nn.Identity()
        return Classifier(self.num_features, num_classes, distillation=distillation)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)"}

    @torch.jit.unused
    def _run_checkpointed(self, x: torch.Tensor, start: int, end: int) -> torch.Tensor:
        for block in self.features[start:end]:
            x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_chans)
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            return self._run_checkpointed(x, 0, len(self.features))
        for block in self.features:
            x = block(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x).flatten(1))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @torch.jit.ignore
    def forward_intermediates(self, x: torch.Tensor, indices: Union[int, Sequence[int], None] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """Stage outputs (and, unless ``intermediates_only``, the final feature map).

        ``indices``: None for all four stages, an int n for the last n, or a list of stage indices.
        """
        if output_fmt != "NCHW":
            raise ValueError(f"RepViT features are NCHW only, got output_fmt={output_fmt!r}")
        take = _stage_indices(indices, len(self.feature_info))
        _check_input(x, self.in_chans)
        taps = {self.feature_info[i]["index"]: i for i in take}
        last = max(taps) if stop_early or intermediates_only else len(self.features) - 1
        outputs = []
        for idx, block in enumerate(self.features[:last + 1]):
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if idx in taps:
                outputs.append(x)
        return outputs if intermediates_only else (x, outputs)


class RepViTFeatures(RepViT):
    """Features-only backbone: ``forward`` returns the selected stage outputs (strides 4..32)."""

    def __init__(self, variant: Union[str, Variant] = "repvit_m0_9", *, out_indices: Sequence[int] = (0, 1, 2, 3),
                 **kwargs):
        kwargs.pop("num_classes", None)
        kwargs.pop("distillation", None)
        super().__init__(variant, num_classes=0, **kwargs)
        self.out_indices = _stage_indices(list(out_indices), len(self.feature_info))
        self.feature_info = FeatureInfo(self.feature_info[i] for i in self.out_indices)
        self.tap_indices = [f["index"] for f in self.feature_info]
        # Blocks after the last tap never influence the outputs, so they are dropped.
        del self.features[max(self.tap_indices) + 1:]
        del self.classifier, self.head_drop, self.global_pool

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_input(x, self.in_chans)
        outputs = []
        for idx, block in enumerate(self.features):
            if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = self._run_checkpointed(x, idx, idx + 1)
            else:
                x = block(x)
            if idx in self.tap_indices:
                outputs.append(x)
        return outputs

    def forward_head(self, x, pre_logits: bool = False):
        raise RuntimeError("a features-only RepViT has no head; build it with create_model(name) instead")


def _build_features(variant: Variant, in_chans: int, kernel_size: int, drop_path_rate: float,
                    last_stride: int = 2):
    """The official flat block list. ``last_stride`` is the last stage's downsample stride."""
    widths, layers, info = variant.widths, [stem(in_chans, variant.widths[0])], FeatureInfo()
    num_blocks = len(variant.blocks)
    width, reduction = widths[0], 4
    last_stage = len(variant.stages) - 1
    for stage_idx, pattern in enumerate(variant.stages):
        for kind in pattern:
            drop_path = drop_path_rate * (len(layers) - 1) / max(num_blocks - 1, 1)
            if kind == "D":
                stride = last_stride if stage_idx == last_stage else 2
                reduction *= stride
                layers.append(DownsampleBlock(width, widths[stage_idx], kernel_size=kernel_size, drop_path=drop_path,
                                              stride=stride))
                width = widths[stage_idx]
            else:
                layers.append(RepViTBlock(width, use_se=kind == "1", kernel_size=kernel_size,
                                          legacy=variant.legacy, drop_path=drop_path))
        info.append({"num_chs": width, "reduction": reduction, "module": f"features.{len(layers) - 1}",
                     "index": len(layers) - 1, "stage": stage_idx})
    return nn.ModuleList(layers), info


def _stage_indices(indices, num_stages: int) -> list[int]:
    if indices is None:
        return list(range(num_stages))
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f"indices={indices} must take between 1 and {num_stages} stages")
        return list(range(num_stages - indices, num_stages))
    picked = sorted({num_stages + i if i < 0 else i for i in indices})
    if not picked or picked[0] < 0 or picked[-1] >= num_stages:
        raise ValueError(f"stage indices {list(indices)} out of range for {num_stages} stages")
    return picked


def _check_input(x: torch.Tensor, in_chans: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_chans:
        raise ValueError("RepViT expects a 4-D NCHW image batch with {} channels, got shape {}; add a batch "
                         "dimension with x.unsqueeze(0) or convert the image to RGB".format(in_chans, list(x.shape)))


def get_variant(name: str) -> Variant:
    if isinstance(name, Variant):
        return name
    key = name.replace(".", "_").lower()
    if key not in VARIANTS:
        raise ValueError(f"unknown RepViT variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[key]


def list_models(pattern: Optional[str] = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern such as ``'repvit_m1*'``."""
    names = list(VARIANTS) + list(MODEL_BUILDERS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


# Other model families (e.g. the roadmap) register here: name -> builder(**kwargs) -> nn.Module.
MODEL_BUILDERS: dict = {}


def register_model(name: str):
    def wrap(builder):
        if name in VARIANTS or name in MODEL_BUILDERS:
            raise ValueError(f"model name {name!r} is already registered")
        MODEL_BUILDERS[name] = builder
        return builder
    return wrap

