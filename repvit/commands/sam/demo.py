"""``repvit sam demo``: serve the RepViT-SAM page (point, box and everything modes) with Gradio."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import _grammar as grammar
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


def video_demo(args):
    """The video tab's work: EdgeTAM with the weights ``--video`` names (a file, ``edgetam``, ``random``)."""
    from ...edgetam.video_demo import VideoDemo
    from ..track import EXTRA, RELEASE
    try:
        from ...edgetam import build_video_predictor
    except ImportError as err:
        raise ImportError(f"the video tab needs Meta's sam2 package: {EXTRA} ({err})") from None
    spec = args.video
    if spec != "random" and spec != RELEASE and not Path(spec).is_file():
        raise FileNotFoundError(f"--video {spec}: not a file; give an EdgeTAM checkpoint, {RELEASE} (the official "
                                "weights) or random")
    predictor = build_video_predictor(None if spec in ("random", RELEASE) else spec, pretrained=spec == RELEASE,
                                      device=args.device if args.device != "auto" else "cpu",
                                      seed=0 if spec == "random" else None)
    label = ("**random (seed 0): the tracks check the pipeline and mean nothing**" if spec == "random"
             else f"`{spec}`")
    return VideoDemo(predictor, weights=label, max_frames=args.max_frames)


def example_clips(folder, video) -> list:
    """Video files in ``folder``, or ``folder`` itself when it is a folder of frames (encoded once into
    an mp4 of its first ``max_frames`` frames, in the demo's output folder)."""
    from ...data.video import VIDEO_SUFFIXES, open_frames, write_video
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"--video-examples {folder}: no such folder")
    clips = sorted(p for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if clips:
        return clips
    frames = open_frames(root, video.files.folder / "example-frames", max_frames=video.max_frames)
    return [write_video((frames.frame(i) for i in range(len(frames))), video.files.folder / f"{root.name}.mp4",
                        fps=frames.fps or 24)]


def run_demo(args: argparse.Namespace) -> int:
    try:
        from ...demo.page import require_gradio
        require_gradio()
    except ImportError as err:
        print(f"repvit sam demo: error: {err}", file=sys.stderr)
        return 2
    from ...sam.demo import SamDemo
    from ...demo.page import build_app, launch
    examples = example_images(args.examples) if args.examples else []
    video = video_demo(args) if args.video else None
    video_examples = example_clips(args.video_examples, video) if video and args.video_examples else []
    sam = load_sam(args)
    weights = ("**random (seed 0): the masks check the pipeline and mean nothing**" if args.random_weights
               else f"`{describe_weights(args)}`")
    demo = SamDemo(sam, weights=weights)
    app = build_app(demo, examples=examples, video=video, video_examples=video_examples)
    print(f"RepViT-SAM demo on http://{args.host}:{args.port} (Ctrl+C stops it)", flush=True)
    try:
        launch(app, host=args.host, port=args.port, share=args.share,
               allowed_paths=([args.examples] if examples else []) + [str(Path(c).parent) for c in video_examples])
    finally:
        demo.close()  # the mask PNGs and their temporary folder
        if video is not None:
            video.close()
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
    v = p.add_argument_group("video tab (EdgeTAM, needs pip install 'repvit-pytorch[edgetam]')")
    v.add_argument("--video", metavar="WEIGHTS", help="add the video tab with these EdgeTAM weights: a checkpoint "
                                                      "file, edgetam (the official release) or random")
    v.add_argument("--video-examples", metavar="DIR", help="clips to offer: the video files in DIR, or DIR itself "
                                                           "when it is a folder of frames")
    grammar.add(v, "--max-frames", default=60, help="cut clips at this many frames")
    grammar.add_deprecated(v, "--video-max-frames", "--max-frames", dest="max_frames", type=int)
    grammar.add(p, "--threads")
    p.set_defaults(func=grammar.with_threads(run_demo))
