"""Automatic ("everything") mask generation, faster than segment-anything's generator at identical masks."""
from __future__ import annotations

from .builder import require_segment_anything

require_segment_anything()
from segment_anything import SamAutomaticMaskGenerator  # noqa: E402


class FastMaskGenerator(SamAutomaticMaskGenerator):
    """Same options and output as ``SamAutomaticMaskGenerator`` (work in progress: not yet faster)."""
