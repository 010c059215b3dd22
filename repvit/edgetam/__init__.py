"""EdgeTAM: track anything in video with a RepViT-M1 image encoder (Meta, CVPR 2025).

Built on Meta's ``sam2`` package (``pip install 'repvit-pytorch[edgetam]'``): its image encoder
frame, FPN neck, prompt encoder, mask decoder, memory encoder, memory attention, ``SAM2Base``,
``SAM2ImagePredictor`` and ``SAM2VideoPredictor`` are used as they are; this package adds what
EdgeTAM changes (the RepViT trunk with timm's tap points, the 2D spatial perceiver, the
cross-attention with separate query/key RoPE grids) and reads the official ``edgetam.pt``.
Importing this package does not import ``sam2``; building a model does.
"""
from __future__ import annotations

from .builder import build_edgetam, build_video_predictor, load_edgetam_weights, read_edgetam_state
from .image import ImagePredictor

__all__ = ["ImagePredictor", "build_edgetam", "build_video_predictor", "load_edgetam_weights", "read_edgetam_state"]
