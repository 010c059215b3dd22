"""``repvit sam distill``: train RepViT-SAM's image encoder on a SAM ViT teacher's embeddings
(the library side is ``repvit.sam.distill``)."""
from __future__ import annotations

import argparse


def register(actions) -> None:
    from ...sam.distill import add_options
    p = actions.add_parser(
        "distill", help="distil a SAM ViT image encoder into RepViT-SAM's (-c FILE.yaml sets defaults)",
        description="Fit the RepViT-SAM image encoder to a segment-anything ViT's 256-channel embeddings (MSE), "
                    "with teacher embeddings cached on disk. Example (CPU check, random teacher): repvit sam "
                    "distill -c configs/sam-distill-cpu.yaml; real recipe: configs/sam-distill-vit-h.yaml")
    add_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ...sam.builder import require_segment_anything
    from ...sam.distill import distill, resolve
    from .._training import run_training
    require_segment_anything()
    explicit = {k: v for k, v in vars(args).items() if k not in ("func", "command", "sam_action")}
    cfg = resolve(explicit)
    return run_training("repvit sam distill", lambda: distill(cfg))
