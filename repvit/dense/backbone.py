"""``RepViTBackbone``: RepViT's stage outputs at strides 4/8/16/32 as an ordered dict, the form
torchvision's detection models and our segmentation models take.

Two tap conventions, as in the official downstream code. Each stage's last block is the one the
paper counts as the start of the next stage's deeper downsampling layer, though it still runs at
the stage's resolution:

* ``"segmentation"`` taps after that block (the last block at each resolution): M1.1 taps
  features 3, 7, 21, 24;
* ``"detection"`` taps one block earlier, before it (M1.1: 2, 6, 20, 24; the last stage is
  tapped at its end in both).

Options from the official recipes, made explicit instead of hidden in an overridden ``train()``:
``norm_eval`` keeps every BatchNorm on its running statistics in training mode (the official
default: detection batches of 2 images per GPU make batch statistics noise), and
``frozen_stages`` freezes the stem (0) and the first stages (1..4) entirely.
"""
from __future__ import annotations

import os
from typing import Dict, Sequence, Union

import torch
from torch import nn

from ..models.checkpoint import load_state_dict, read_checkpoint
from ..models.model import RepViTFeatures, get_variant
from ..models.pretrained import fetch
from ..models.releases import find_release, parse_spec
from ..models.variants import VARIANTS

TAP_CONVENTIONS = ("detection", "segmentation")


def tap_indices(name: str, taps: str = "detection") -> list[int]:
    """Indices into ``features`` that the convention taps, one per stage."""
    if taps not in TAP_CONVENTIONS:
        raise ValueError(f"taps must be one of {', '.join(TAP_CONVENTIONS)}, got {taps!r}")
    variant = get_variant(name)
    ends, index = [], 0
    for pattern in variant.stages:
        index += len(pattern)
        ends.append(index)          # features[0] is the stem, so a stage's last block sits at the running count
    if taps == "segmentation":
        return ends
    return [end - 1 for end in ends[:-1]] + [ends[-1]]


class RepViTBackbone(nn.Module):
    """RepViT feature extractor for detection and segmentation.

    ``forward`` returns ``{str(stage): tensor}`` in stage order for ``out_stages``; ``channels`` and
    ``strides`` describe them. Weights come from ``checkpoint`` (any file the model library reads:
    official, timm, ours) or official ``pretrained`` weights (``True`` or ``"NAME[:TAG]"``); the
    classifier is dropped and every backbone key is matched by name, strictly.
    """

    def __init__(self, name: str = "repvit_m1_1", *, taps: str = "detection", out_stages: Sequence[int] = (0, 1, 2, 3),
                 norm_eval: bool = True, frozen_stages: int = -1, drop_path_rate: float = 0.0,
                 checkpoint: Union[str, os.PathLike, None] = None, pretrained: Union[bool, str, None] = None,
                 use_ema: bool = False):
        super().__init__()
        out_stages = sorted(set(out_stages))
        if not out_stages or out_stages[0] < 0 or out_stages[-1] > 3:
            raise ValueError(f"out_stages must be a non-empty subset of 0..3 (strides 4, 8, 16, 32), got {out_stages}")
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"frozen_stages must be -1 (none), 0 (the stem) or 1..4 (the stem and that many "
                             f"stages), got {frozen_stages}")
        self.name, self.taps, self.out_stages = get_variant(name).name, taps, out_stages
        self.norm_eval, self.frozen_stages = norm_eval, frozen_stages
        self.body = RepViTFeatures(name, out_indices=out_stages, drop_path_rate=drop_path_rate)
        # The body keeps blocks up to the last stage's end; its taps follow the chosen convention.
        self.body.tap_indices = [tap_indices(name, taps)[s] for s in out_stages]
        self.out_names = [str(stage) for stage in out_stages]
        self.channels = [f["num_chs"] for f in self.body.feature_info]
        self.strides = [f["reduction"] for f in self.body.feature_info]
        self._stage_ends = tap_indices(name, "segmentation")
        if checkpoint is not None or pretrained not in (None, False):
            self.load_weights(checkpoint=checkpoint, pretrained=pretrained, use_ema=use_ema)
        self._freeze()

    # ------------------------------------------------------------------ weights
    def load_weights(self, *, checkpoint=None, pretrained=None, use_ema: bool = False) -> str:
        """Load the backbone part of a classification checkpoint (strictly); returns where it came from."""
        if (checkpoint is None) == (pretrained in (None, False)):
            raise ValueError("give the backbone weights as checkpoint=PATH or pretrained=True / 'NAME[:TAG]', "
                             "not both")
        if pretrained not in (None, False):
            if pretrained is True:
                name, tag = self.name, None
            elif ":" in pretrained or pretrained in VARIANTS:
                name, tag = parse_spec(pretrained)
            else:
                name, tag = self.name, pretrained   # a bare tag such as "dist_300e"
            if name != self.name:
                raise ValueError(f"pretrained={pretrained!r} holds {name} weights, but this backbone is {self.name}")
            release = find_release(name, tag)
            checkpoint, source = fetch(release), f"official {release.spec}"
        else:
            source = f"checkpoint {str(checkpoint)!r}"
        state, _ = read_checkpoint(checkpoint, use_ema=use_ema)
        load_state_dict(self.body, state, source=source)
        return source

    # ------------------------------------------------------------------ training behaviour
    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        last = 0 if self.frozen_stages == 0 else self._stage_ends[self.frozen_stages - 1]
        return list(self.body.features[: last + 1])

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "RepViTBackbone":
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        # A plain dict keeps insertion order and scripts (torchvision's detectors are scripted whole).
        result: Dict[str, torch.Tensor] = {}
        for name, out in zip(self.out_names, self.body(x)):
            result[name] = out
        return result

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, taps={self.taps!r}, out_stages={self.out_stages}, norm_eval={self.norm_eval}, "
                f"frozen_stages={self.frozen_stages}")
