"""RepViT-SAM: Segment Anything with a RepViT-M2.3 image encoder.

The prompt encoder, mask decoder, ``SamPredictor`` and ``SamAutomaticMaskGenerator`` are Meta's
``segment-anything`` package (``pip install 'repvit-pytorch[sam]'``); this package adds the encoder,
the builder that reads the official ``repvit_sam.pt``, faster automatic masks, distillation,
zero-shot COCO evaluation and a demo page. Export lives with the other exporters, in
``repvit.sam.export``. Nothing here imports the demo's web stack.
"""
from __future__ import annotations

from .encoder import RepViTSamEncoder
from .builder import build_sam, load_sam_weights

__all__ = ["RepViTSamEncoder", "build_sam", "load_sam_weights"]
