"""The roadmap as data: MobileNetV3-L's block table and one function per design step.

A ``NetSpec`` lists every block of a network (kind, widths, kernel, hidden width, stride,
SE, activation, stage); each roadmap step is a pure function ``NetSpec -> NetSpec`` that
makes exactly the change the paper describes, applied to the previous step. ``STEP_SPECS``
composes them, so step n is, by construction, step n-1 plus one decision.

Block kinds:
  ``ir``     MobileNetV3 inverted residual (``blocks.InvertedResidual``)
  ``mixer``  token mixer + channel mixer (``layers.RepViTBlock`` where it fits, otherwise
             ``blocks.SeparatedBlock`` for stride 2 / width change / odd hidden widths)
  ``down``   RepViT's deeper downsampling unit (``layers.DownsampleBlock``)

Stages are numbered by resolution: -1 is stride 2 (MobileNetV3's first block, before the
first stage), 0..3 are strides 4..32. Roles follow the paper's counting of depth: ``body``
blocks make a stage's depth (2:2:14:2 for RepViT-M0.9), ``pre`` is the RepViT block that
opens a deeper downsampling layer (it runs at the old resolution), ``down`` the rest of it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

REPVIT_WIDTHS = (48, 96, 192, 384)      # step 2b
REPVIT_DEPTHS = (2, 2, 14, 2)          # step 6: stage ratio 1:1:7:1
EARLY_CONV_WIDTHS = (24, 48)           # step 3: two 3x3 stride-2 convolutions
MBV3_HEAD_WIDTHS = (960, 1280)         # MobileNetV3-L's last 1x1 conv and hidden Linear


@dataclass(frozen=True)
class BlockSpec:
    kind: str          # "ir" | "mixer" | "down"
    in_ch: int
    out_ch: int
    kernel: int
    hidden: int        # expanded width (ir) or channel-mixer hidden width (mixer, down)
    stride: int = 1
    se: bool = False
    act: str = "gelu"
    stage: int = 0
    role: str = "body"  # "body" | "pre" | "down"


@dataclass(frozen=True)
class NetSpec:
    stem: str                          # "mbv3": 3x3 s2 conv + act; "early": two 3x3 s2 convs
    stem_width: int
    blocks: tuple[BlockSpec, ...]
    head: str                          # "mbv3": 1x1 conv, pool, Linear, act, Linear; "linear": pool, BN+Linear
    act: str = "gelu"                  # activation of the stem and the MobileNetV3 head
    head_widths: tuple[int, int] = MBV3_HEAD_WIDTHS

    @property
    def out_width(self) -> int:
        return self.blocks[-1].out_ch


# MobileNetV3-L (Howard et al. 2019, Table 1), one row per bottleneck after the 16-channel stem:
# kernel, expanded width, output width, SE, nonlinearity, stride. "hs" marks the rows where the
# original uses hard-swish; step 0 gives them GELU.
_MBV3_LARGE_ROWS = [
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hs", 2),
    (3, 200, 80, False, "hs", 1),
    (3, 184, 80, False, "hs", 1),
    (3, 184, 80, False, "hs", 1),
    (3, 480, 112, True, "hs", 1),
    (3, 672, 112, True, "hs", 1),
    (5, 672, 160, True, "hs", 2),
    (5, 960, 160, True, "hs", 1),
    (5, 960, 160, True, "hs", 1),
]


def mobilenet_v3_large(hard_swish: str = "gelu") -> NetSpec:
    """MobileNetV3-L with ``hard_swish`` where the original has hard-swish (``"hardswish"`` = the original)."""
    blocks, in_ch, stride = [], 16, 2
    for kernel, hidden, out_ch, se, act, s in _MBV3_LARGE_ROWS:
        stride *= s
        blocks.append(BlockSpec("ir", in_ch, out_ch, kernel, hidden, stride=s, se=se,
                                act=hard_swish if act == "hs" else act, stage=_stage_of(stride)))
        in_ch = out_ch
    return NetSpec(stem="mbv3", stem_width=16, blocks=tuple(blocks), head="mbv3", act=hard_swish)


def _stage_of(stride: int) -> int:
    return stride.bit_length() - 3  # 2 -> -1, 4 -> 0, ..., 32 -> 3


def _with_blocks(spec: NetSpec, blocks) -> NetSpec:
    return replace(spec, blocks=tuple(blocks))


# --------------------------------------------------------------------------- the steps
def step1_repvit_block(spec: NetSpec) -> NetSpec:
    """Move the depthwise conv (and its SE) above the 1x1 expansion: token mixer, then channel mixer.

    Each block keeps its kernel, stride, widths, SE flag and hidden width; the channel mixer
    uses GELU (the RepViT block's activation), so MobileNetV3's early ReLU blocks change too.
    """
    return _with_blocks(spec, (replace(b, kind="mixer", act="gelu") for b in spec.blocks))


def step2a_expansion_ratio_2(spec: NetSpec) -> NetSpec:
    """Channel-mixer hidden width = 2x the block's input width, in every block."""
    return _with_blocks(spec, (replace(b, hidden=2 * b.in_ch) for b in spec.blocks))


def step2b_wider(spec: NetSpec, widths=REPVIT_WIDTHS) -> NetSpec:
    """Stage widths 48/96/192/384; each block keeps its expansion ratio (hidden scales with its input)."""
    blocks, in_ch = [], spec.stem_width
    for b in spec.blocks:
        out_ch = widths[b.stage] if b.stage >= 0 else b.out_ch
        blocks.append(replace(b, in_ch=in_ch, out_ch=out_ch, hidden=round(b.hidden * in_ch / b.in_ch)))
        in_ch = out_ch
    return _with_blocks(spec, blocks)


def step3_early_conv(spec: NetSpec) -> NetSpec:
    """Early convolutions replace everything before the first stride-4 stage block.

    MobileNetV3-L reaches stride 4 through its 3x3 stem, the stride-2 block and the first
    stride-2 bottleneck; two 3x3 stride-2 convs (24, then 48 channels) take their place.
    """
    first = next(i for i, b in enumerate(spec.blocks) if b.stage == 0 and b.stride == 1)
    blocks = list(spec.blocks[first:])
    if blocks[0].in_ch != EARLY_CONV_WIDTHS[1]:
        raise ValueError(f"step 3 expects the first stage to be {EARLY_CONV_WIDTHS[1]} wide (apply step 2b first)")
    return replace(spec, stem="early", stem_width=EARLY_CONV_WIDTHS[1], blocks=tuple(blocks))


def step4_deeper_downsampling(spec: NetSpec) -> NetSpec:
    """Each stride-2 block becomes: RepViT block, depthwise kxk s2 (+ its SE) + 1x1, residual FFN.

    The leading block keeps the kernel, has no SE and belongs to the stage it runs in; the
    stride-2 unit keeps the old block's kernel and SE (in RepViT's SE slot after the DW conv).
    """
    blocks = []
    for b in spec.blocks:
        if b.stride == 1:
            blocks.append(b)
            continue
        blocks.append(BlockSpec("mixer", b.in_ch, b.in_ch, b.kernel, 2 * b.in_ch, stage=b.stage - 1, role="pre"))
        blocks.append(BlockSpec("down", b.in_ch, b.out_ch, b.kernel, 2 * b.out_ch, stride=2, se=b.se,
                                stage=b.stage, role="down"))
    return _with_blocks(spec, blocks)


def step5_simple_classifier(spec: NetSpec) -> NetSpec:
    """Global average pooling and one (BN+)Linear replace the 1x1 conv and two-Linear head."""
    return replace(spec, head="linear")


def step6_stage_ratio(spec: NetSpec, depths=REPVIT_DEPTHS) -> NetSpec:
    """Stage depths 2:2:14:2; a stage that is too shallow repeats its last body block."""
    blocks = list(spec.blocks)
    for stage, depth in enumerate(depths):
        body = [i for i, b in enumerate(blocks) if b.stage == stage and b.role == "body"]
        if len(body) > depth:
            raise ValueError(f"stage {stage} already has {len(body)} blocks, more than {depth}")
        last = blocks[body[-1]]
        blocks[body[-1] + 1:body[-1] + 1] = [last] * (depth - len(body))
    return _with_blocks(spec, blocks)


def step7_kernel3(spec: NetSpec) -> NetSpec:
    """3x3 depthwise kernels everywhere (MobileNetV3's 5x5 ones included)."""
    return _with_blocks(spec, (replace(b, kernel=3) for b in spec.blocks))


def step8_cross_block_se(spec: NetSpec) -> NetSpec:
    """SE on the 1st, 3rd, 5th ... body block of every stage and nowhere else."""
    blocks, seen = [], {}
    for b in spec.blocks:
        if b.role == "body":
            index = seen[b.stage] = seen.get(b.stage, -1) + 1
            blocks.append(replace(b, se=index % 2 == 0))
        else:
            blocks.append(replace(b, se=False))
    return _with_blocks(spec, blocks)


# --------------------------------------------------------------------------- the roadmap
@dataclass(frozen=True)
class Step:
    name: str                         # registered model name
    label: str                        # "0", "1", "2a", ...
    short: str                        # axis label for plots
    change: str                       # the paper's one-line description
    build_spec: Callable[[], NetSpec]
    paper_top1: Optional[float]       # ImageNet-1k, 300 epochs, no distillation (Figure 2)
    paper_iphone12_ms: Optional[float]


def _chain(*steps: Callable[[NetSpec], NetSpec]) -> Callable[[], NetSpec]:
    def build() -> NetSpec:
        spec = mobilenet_v3_large()
        for step in steps:
            spec = step(spec)
        return spec
    return build


_TRANSFORMS = [step1_repvit_block, step2a_expansion_ratio_2, step2b_wider, step3_early_conv,
               step4_deeper_downsampling, step5_simple_classifier, step6_stage_ratio, step7_kernel3,
               step8_cross_block_se]
_STEP_ROWS = [
    # name                          label short           change                                               top-1  iPhone ms
    ("roadmap_0_mnv3l",             "0",  "MobileNetV3-L", "MobileNetV3-L, GELU for hard-swish",                 71.5, 1.01),
    ("roadmap_1_repvit_block",      "1",  "RepViT block",  "RepViT block: DW (+SE) moved up, re-parameterized", 68.3, 0.81),
    ("roadmap_2a_expansion2",       "2a", "ratio 2",       "channel-mixer expansion ratio 2",                    None, 0.65),
    ("roadmap_2b_wider",            "2b", "wider",         "widths 48/96/192/384",                               73.5, 0.89),
    ("roadmap_3_early_conv",        "3",  "early conv",    "early-convolution stem",                             73.9, 0.86),
    ("roadmap_4_deeper_down",       "4",  "deeper down",   "deeper downsampling layers",                         75.4, 0.96),
    ("roadmap_5_simple_classifier", "5",  "simple head",   "simple classifier (pool + linear)",                  74.8, 0.77),
    ("roadmap_6_stage_ratio",       "6",  "2:2:14:2",      "stage depths 2:2:14:2",                              76.9, 0.91),
    ("roadmap_7_kernel3",           "7",  "3x3 only",      "3x3 kernels only",                                   76.9, 0.89),
    ("roadmap_8_cross_se",          "8",  "cross SE",      "cross-block SE = RepViT-M0.9",                       77.4, 0.87),
]
STEPS: list[Step] = [Step(name, label, short, change, _chain(*_TRANSFORMS[:i]), top1, ms)
                     for i, (name, label, short, change, top1, ms) in enumerate(_STEP_ROWS)]


def stage_patterns(spec: NetSpec) -> tuple[str, ...]:
    """The spec in ``repvit.variants`` notation ('D' downsample, '1'/'0' block with/without SE).

    Defined once the macro design is RepViT's (step 4 on); used to check that step 8 is RepViT-M0.9.
    """
    if spec.stem != "early" or any(b.kind == "ir" or b.stage < 0 for b in spec.blocks):
        raise ValueError("only specs with RepViT's stem and blocks have a variant pattern")
    patterns = ["", "", "", ""]
    for b in spec.blocks:
        patterns[b.stage] += "D" if b.kind == "down" else "1" if b.se else "0"
    return tuple(patterns)
