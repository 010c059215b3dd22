"""``repvit sam demo``: serve the RepViT-SAM page (point, box and everything modes) with Gradio."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._common import add_sam_weights, describe_weights, load_sam

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def example_images(folder) -> list:
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--examples {folder}: no such folder")
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"--examples {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in that folder")
    return images


def run_demo(args: argparse.Namespace) -> int:
    try:
        from ...sam.demo_page import require_gradio
        require_gradio()
    except ImportError as err:
        print(f"repvit sam demo: error: {err}", file=sys.stderr)
        return 2
    from ...sam.demo import SamDemo
    from ...sam.demo_page import build_app, launch
    examples = example_images(args.examples) if args.examples else []
    sam = load_sam(args)
    weights = ("**random (seed 0): the masks check the pipeline and mean nothing**" if args.random_weights
               else f"`{describe_weights(args)}`")
    demo = SamDemo(sam, weights=weights)
    app = build_app(demo, examples=examples)
    print(f"RepViT-SAM demo on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    try:
        launch(app, host=args.host, port=args.port, share=args.share,
               allowed_paths=[args.examples] if examples else [])
    finally:
        demo.close()  # the mask PNGs and their temporary folder
    return 0


def register(actions) -> None:
    p = actions.add_parser("demo", help="a web page: point, box and everything modes on an uploaded image",
                           description="Serves a local page (Gradio) to segment an uploaded image by clicking "
                                       "points, drawing a box or segmenting everything. The image encoder runs "
                                       "once per image; every later prompt reuses its embedding. Needs "
                                       "pip install 'repvit-pytorch[sam-demo]'.")
    add_sam_weights(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for the network)")
    p.add_argument("--port", type=int, default=7860, help="default 7860")
    p.add_argument("--share", action="store_true",
                   help="also publish a temporary public link through Gradio's share servers (off by default)")
    p.add_argument("--examples", metavar="DIR", help="offer the images in DIR as examples (none are bundled)")
    p.set_defaults(func=run_demo)
