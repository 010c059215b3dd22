"""The RepViT variant table, written so it can be checked line by line against the paper.

Each stage is a string with one character per block, in the order of the official
``features`` list: ``D`` a stride-2 downsample block, ``1`` a block with squeeze-and-excitation,
``0`` a block without. The last ``0`` of a stage is the block the paper counts as the start of
the next "deeper downsampling layer"; it runs at the current resolution, so it belongs here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class Variant:
    name: str
    widths: tuple[int, int, int, int]
    stages: tuple[str, str, str, str]
    legacy: bool = False
    kernel_size: int = 3
    # Paper figures (ImageNet-1k top-1 with distillation, iPhone 12 latency), for display only.
    top1_300e: Optional[float] = None
    top1_450e: Optional[float] = None
    iphone12_ms: Optional[float] = None
    note: str = ""
    blocks: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        validate_stages(self.name, self.widths, self.stages)
        object.__setattr__(self, "blocks", tuple(c for stage in self.stages for c in stage))


def validate_stages(name: str, widths, stages) -> None:
    """Reject layouts the model cannot build, with a message that points at the bad stage."""
    if len(widths) != len(stages):
        raise ValueError(f"{name}: {len(widths)} widths but {len(stages)} stage patterns")
    for i, pattern in enumerate(stages):
        if not pattern or set(pattern) - set("D01"):
            raise ValueError(f"{name}: stage {i} pattern {pattern!r} must be non-empty and use only 'D', '0', '1'")
        if "D" in pattern[1:] or (i == 0) == pattern.startswith("D"):
            raise ValueError(f"{name}: stage {i} pattern {pattern!r}: every stage but the first starts with "
                             "exactly one 'D' (the downsample block) and the first has none")


def _v(name, widths, *stages, **kw) -> Variant:
    return Variant(name, tuple(widths), tuple(stages), **kw)


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    _v("repvit_m0_6", (40, 80, 160, 320), "10", "D10", "D101010100", "D1",
       top1_300e=74.1, iphone12_ms=0.6),
    _v("repvit_m0_9", (48, 96, 192, 384), "100", "D100", "D101010101010100", "D10",
       top1_300e=78.7, top1_450e=79.1, iphone12_ms=0.9),
    _v("repvit_m1_0", (56, 112, 224, 448), "100", "D100", "D101010101010100", "D10",
       top1_300e=80.0, top1_450e=80.3, iphone12_ms=1.0),
    _v("repvit_m1_1", (64, 128, 256, 512), "100", "D100", "D1010101010100", "D10",
       top1_300e=80.7, top1_450e=81.2, iphone12_ms=1.1),
    _v("repvit_m1_5", (64, 128, 256, 512), "10100", "D10100", "D1" + "01" * 11 + "00", "D1010",
       top1_300e=82.3, top1_450e=82.5, iphone12_ms=1.5),
    _v("repvit_m2_3", (80, 160, 320, 640), "1010100", "D1010100", "D1" + "01" * 16 + "00", "D10",
       top1_300e=83.3, top1_450e=83.7, iphone12_ms=2.3),
    # First public release (timm's repvit_m1/m2/m3): older depthwise unit, see RepDWConv(legacy=True).
    _v("repvit_m1", (48, 96, 192, 384), "100", "D100", "D101010101010100", "D10", legacy=True,
       note="legacy layout of repvit_m0_9 (EdgeSAM encoder)"),
    _v("repvit_m2", (64, 128, 256, 512), "100", "D100", "D1010101010100", "D10", legacy=True,
       note="legacy layout of repvit_m1_1"),
    _v("repvit_m3", (64, 128, 256, 512), "10100", "D10100", "D1" + "01" * 8 + "00", "D10", legacy=True,
       note="legacy layout, 4/4/18/2 blocks"),
]}
