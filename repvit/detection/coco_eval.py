"""COCO detection metrics: ``coco_metrics`` lives in ``repvit.data.coco`` (shared with SAM's
evaluation); this name stays for the detection modules that import it from here."""
from __future__ import annotations

from ..data.coco import STAT_NAMES, coco_metrics

__all__ = ["STAT_NAMES", "coco_metrics"]
