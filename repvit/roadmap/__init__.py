"""The paper's modernization roadmap (RepViT, arXiv 2307.09283, Sec. 3 and Figure 2), runnable.

Importing this package registers one model per roadmap step, from MobileNetV3-L
(``roadmap_0_mnv3l``) to RepViT-M0.9 (``roadmap_8_cross_se``), and the paper's side
ablations, with ``repvit.create_model``. Each step is the previous one plus one design
decision (``spec.py``), built from RepViT's own blocks (``net.py``) plus MobileNetV3's block
for the baseline (``blocks.py``). Every model is re-parameterizable by ``repvit.reparameterize``.

Choices where the paper is silent (each is the reading closest to its text):

* Step 0: GELU replaces every hard-swish (stem, blocks 7-15, last 1x1 conv, head); the
  ReLUs of blocks 1-6 and the SE's ReLU and hard-sigmoid stay, since the paper names only
  hard-swish. Parameter count equals torchvision's ``mobilenet_v3_large`` (5,483,032).
* Step 1: every block keeps its kernel, stride, widths, SE flag and hidden width; the
  depthwise conv moves to the block input (on the input width) with its SE right after it,
  as in Figure 3(b), and uses RepViT's SE (sigmoid gate). Stride-1 depthwise convs become
  ``RepDWConv`` (kxk + 1x1 + identity; the 5x5 ones pad the 1x1 branch by 2). Stride-2
  blocks keep a plain depthwise kxk stride-2 ConvBN (no identity branch exists across a
  stride), and a block that changes width or stride has no residual. The channel mixer uses
  GELU in every block, MobileNetV3's ReLU blocks included: it is the RepViT block's activation.
* Step 2a: hidden width = 2 x the block's input width (MobileNet's convention for the ratio).
* Step 2b: stage widths 48/96/192/384 by output stride 4/8/16/32 (MobileNetV3's 80- and
  112-wide blocks both become 192); the stride-2 stem and first block stay 16 wide; the
  MobileNetV3 head keeps its 960/1280 widths (only the 4 stages are widened in the paper).
* Step 3: the two 3x3 stride-2 convs (24, 48) replace everything up to stride 4: the stem
  conv, the 16-wide block and the first stride-2 bottleneck.
* Step 4: each stride-2 block becomes a RepViT block (same kernel, no SE) + depthwise kxk
  s2 (same kernel; its SE, if it had one, in the official SE slot after the depthwise conv)
  + 1x1 + residual FFN (ratio 2).
* Step 5: the head is RepViT's: global pool, BN + Linear (the BN folds into the Linear).
* Step 6: depths are counted as the paper counts them (the RepViT block that opens a
  downsampling layer is part of that layer); a shallow stage repeats its last block, so
  the new blocks copy its kernel and SE flag.
* Step 8: SE on the 1st, 3rd, ... counted block of each stage, none in downsampling layers;
  the result is ``repvit_m0_9`` exactly (checked by the tests).
* Side ablations: "SE in every block" puts SE in every stride-1 RepViT block (the official
  downsampling layers never have one); "no re-parameterization" trains plain depthwise
  ConvBNs, which fuse to the same inference network.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

from ..models.layers import ConvBN, RepViTBlock
from ..models.model import RepViT, register_model
from ..models.variants import VARIANTS, Variant
from .net import RoadmapNet
from .spec import STEPS, NetSpec, Step, mobilenet_v3_large, stage_patterns, step2a_expansion_ratio_2, step2b_wider

__all__ = ["ABLATIONS", "STEPS", "Ablation", "NetSpec", "RoadmapNet", "Step", "roadmap_names", "stage_patterns"]


@dataclass(frozen=True)
class Ablation:
    name: str
    group: str
    change: str
    baseline: str                       # the model it is compared with in the paper
    paper_top1: Optional[float]
    paper_iphone12_ms: Optional[float]
    distilled: bool                     # the paper's figure was trained with distillation
    build: Callable[..., nn.Module]


def _step_builder(step: Step):
    def build(**kwargs) -> RoadmapNet:
        return RoadmapNet(step.build_spec(), name=step.name, **kwargs)
    build.__doc__ = f"Roadmap step {step.label}: {step.change}."
    return build


for _step in STEPS:
    register_model(_step.name)(_step_builder(_step))


# --------------------------------------------------------------------------- side ablations
def _mnv3_block_step2(**kwargs) -> RoadmapNet:
    """Step 2 (ratio 2, widths 48/96/192/384) applied to MobileNetV3's own block."""
    spec = step2b_wider(step2a_expansion_ratio_2(mobilenet_v3_large()))
    return RoadmapNet(spec, name="roadmap_2b_mnv3_block", **kwargs)


def _se_variant(base: str, name: str, placement: str) -> Variant:
    v = VARIANTS[base]
    flip = {"none": str.maketrans("1", "0"), "all": str.maketrans("0", "1")}[placement]
    return Variant(name, v.widths, tuple(s.translate(flip) for s in v.stages),
                   note=f"{base} with SE in {placement} blocks")


def _se_builder(base: str, name: str, placement: str):
    def build(**kwargs) -> RepViT:
        return RepViT(_se_variant(base, name, placement), **kwargs)
    return build


def _norep_builder(base: str, name: str):
    def build(**kwargs) -> RepViT:
        v = VARIANTS[base]
        model = RepViT(Variant(name, v.widths, v.stages, note=f"{base} without re-parameterization branches"),
                       **kwargs)
        for block in model.features:
            if isinstance(block, RepViTBlock):
                conv = block.token_mixer[0].conv.c
                block.token_mixer[0] = ConvBN(conv.in_channels, conv.in_channels, conv.kernel_size[0],
                                              groups=conv.in_channels)
        return model
    return build


ABLATIONS: list[Ablation] = [
    Ablation("roadmap_2b_mnv3_block", "block", "step 2 on the MobileNetV3 block", "roadmap_2b_wider", 73.0, 0.91,
             False, _mnv3_block_step2),
]
for _base, _tag, _figures in [("repvit_m0_9", "m0_9", {"none": (77.92, 0.83), "all": (78.75, 0.92)}),
                              ("repvit_m1_5", "m1_5", {"none": (81.86, 1.48), "all": (82.29, 1.58)})]:
    for _placement, (_top1, _ms) in _figures.items():
        _name = f"roadmap_se_{_placement}_{_tag}"
        ABLATIONS.append(Ablation(_name, "se", f"SE in {_placement} blocks", _base, _top1, _ms, True,
                                  _se_builder(_base, _name, _placement)))
for _base, _tag, _top1 in [("repvit_m0_9", "m0_9", 78.47), ("repvit_m1_5", "m1_5", 82.09),
                           ("repvit_m2_3", "m2_3", 83.10)]:
    _name = f"roadmap_norep_{_tag}"
    ABLATIONS.append(Ablation(_name, "reparam", "no re-parameterization branches", _base, _top1, None, True,
                              _norep_builder(_base, _name)))
for _ablation in ABLATIONS:
    register_model(_ablation.name)(_ablation.build)

# The paper's figures for the models the ablations are compared with (distilled, 300 epochs).
PAPER_REFERENCES = {"repvit_m0_9": (78.74, 0.87), "repvit_m1_5": (82.29, 1.52), "repvit_m2_3": (83.30, None)}


def roadmap_names(ablations: bool = False) -> list[str]:
    return [s.name for s in STEPS] + ([a.name for a in ABLATIONS] if ablations else [])
