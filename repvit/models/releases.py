"""The official RepViT release files, as data beside the variant table.

One row per file the authors published (github.com/THU-MIG/RepViT, release ``v1.0``): the
distilled ImageNet-1k classifiers trained for 300 and 450 epochs, M0.6, the first release's
M1/M2/M3, RepViT-SAM, and the COCO / ADE20K downstream models. The paper's figure for each
file is recorded with it (ImageNet top-1 for classifiers; box/mask AP and mIoU downstream).

The authors publish no checksums. ``sha256`` is pinned where we know a file's digest; every
other file is verified against the digest recorded when it was first downloaded (see
``repvit.models.pretrained``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .variants import VARIANTS

RELEASE_BASE_URL = "https://github.com/THU-MIG/RepViT/releases/download/v1.0"
# The first release (M1/M2/M3) lived in the authors' earlier repository (GitHub redirects it) and its
# files lack the "e" of later names: ``repvit_m1_distill_300.pth``, as the official README of July 2023
# links them (tests/test_pretrained.py pins every URL of this table to a link the READMEs publish).
LEGACY_BASE_URL = "https://github.com/jameslahm/RepViT/releases/download/v1.0"

CLASSIFICATION, SAM, DETECTION, SEGMENTATION = "classification", "sam", "detection", "segmentation"
EDGETAM = "edgetam"
# EdgeTAM (facebookresearch/EdgeTAM, Apache-2.0) keeps its one checkpoint in the repository; its README links
# .../tree/main/checkpoints/edgetam.pt. The file is served under raw/, pinned here to the commit that added it
# (2025-04-28; unchanged since, git blob abd54d22bbd22ba3e53cf59a307e59e0f3701be6). No SHA-256 is published.
EDGETAM_BASE_URL = "https://github.com/facebookresearch/EdgeTAM/raw/1c2ec2184a3313a5657ac924f450ddf72b56eebf/checkpoints"


@dataclass(frozen=True)
class Release:
    model: str                      # registered model name this file fits ("repvit_sam" for RepViT-SAM)
    tag: str                        # what picks it: "dist_300e", "dist_450e", "sam", "coco", "ade20k"
    filename: str                   # the release asset's name (also its name in caches and REPVIT_WEIGHTS_DIR)
    kind: str = CLASSIFICATION
    paper: dict = field(default_factory=dict)   # the paper's figures for this file
    base_url: str = RELEASE_BASE_URL
    sha256: Optional[str] = None    # pinned digest, where known
    num_classes: int = 1000
    note: str = ""

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.filename}"

    @property
    def spec(self) -> str:
        return f"{self.model}:{self.tag}"


def _classifier(model: str, epochs: int) -> Release:
    top1 = getattr(VARIANTS[model], f"top1_{epochs}e")
    return Release(model, f"dist_{epochs}e", f"{model}_distill_{epochs}e.pth", paper={"top1": top1})


def _legacy(model: str, top1: float) -> Release:
    return Release(model, "dist_300e", f"{model}_distill_300.pth", paper={"top1": top1}, base_url=LEGACY_BASE_URL,
                   note="first release (arXiv v1 figures)")


RELEASES: tuple[Release, ...] = (
    _classifier("repvit_m0_6", 300),
    *(_classifier(name, epochs) for name in ("repvit_m0_9", "repvit_m1_0", "repvit_m1_1", "repvit_m1_5",
                                             "repvit_m2_3") for epochs in (300, 450)),
    _legacy("repvit_m1", 78.5), _legacy("repvit_m2", 80.6), _legacy("repvit_m3", 81.4),
    Release("repvit_sam", "sam", "repvit_sam.pt", kind=SAM, num_classes=0,
            note="SAM with a RepViT-M2.3 image encoder (distilled from SAM ViT-H)"),
    *(Release(name, "coco", f"{name}_coco.pth", kind=DETECTION, num_classes=80, paper={"box_ap": box, "mask_ap": mask},
              note="Mask R-CNN 1x on COCO")
      for name, box, mask in (("repvit_m1_1", 39.8, 37.2), ("repvit_m1_5", 41.6, 38.6), ("repvit_m2_3", 44.6, 40.8))),
    *(Release(name, "ade20k", f"{name}_ade20k.pth", kind=SEGMENTATION, num_classes=150, paper={"miou": miou},
              note="Semantic FPN 40k iterations on ADE20K")
      for name, miou in (("repvit_m1_1", 40.6), ("repvit_m1_5", 43.6), ("repvit_m2_3", 46.1))),
    Release("edgetam", "sav", "edgetam.pt", kind=EDGETAM, num_classes=0, base_url=EDGETAM_BASE_URL,
            paper={"davis17_jf": 87.7, "sav_test_jf": 71.7},
            note="EdgeTAM: SAM 2 with a RepViT-M1 image encoder and a 2D spatial perceiver (Meta, CVPR 2025)"),
)


def releases_for(model: str, kind: Optional[str] = None) -> list[Release]:
    return [r for r in RELEASES if r.model == model and (kind is None or r.kind == kind)]


def parse_spec(spec: str) -> tuple[str, Optional[str]]:
    """``"repvit_m1_1:dist_300e"`` -> ``("repvit_m1_1", "dist_300e")``; no tag -> ``(name, None)``."""
    name, _, tag = str(spec).partition(":")
    if not name:
        raise ValueError(f"--pretrained {spec!r}: expected NAME or NAME:TAG, e.g. repvit_m1_1 or "
                         "repvit_m1_1:dist_300e")
    return name, (tag or None)


def find_release(model: str, tag: Optional[str] = None, *, kind: str = CLASSIFICATION) -> Release:
    """The release file for ``model``: the given tag, or the best (highest paper figure) of ``kind``."""
    candidates = releases_for(model, kind)
    if not candidates:
        have = sorted({r.model for r in RELEASES if r.kind == kind})
        raise ValueError(f"no official {kind} weights for {model!r}; models with some: {', '.join(have)}")
    if tag is None:
        return max(candidates, key=lambda r: next(iter(r.paper.values()), 0.0) or 0.0)
    for release in releases_for(model):
        if release.tag == tag:
            if release.kind != kind:
                raise ValueError(f"{release.spec} is the {release.note or release.kind} checkpoint "
                                 f"({release.filename}), not {kind} weights; tags with {kind} weights: "
                                 f"{', '.join(r.tag for r in candidates)}")
            return release
    raise ValueError(f"{model} has no official weights tagged {tag!r}; choose from "
                     f"{', '.join(r.tag for r in releases_for(model))}")


def release_by_spec(spec: str) -> Release:
    """Any release file (classifier, SAM or downstream) by ``NAME:TAG``; ``NAME`` alone means its best classifier."""
    name, tag = parse_spec(spec)
    if tag is None:
        return find_release(name)
    for release in RELEASES:
        if release.model == name and release.tag == tag:
            return release
    have = [r.spec for r in RELEASES if r.model == name]
    raise ValueError(f"no official file {spec!r}; " + (f"{name} has {', '.join(have)}" if have else
                                                       "see `repvit weights` for the list"))
