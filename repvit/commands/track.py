"""``repvit track VIDEO``: follow objects through a video with EdgeTAM (RepViT-M1 image encoder).

Writes, under ``--output``: ``masks/obj<K>/<frame>.png`` (one 0/255 mask per frame and object, at
the video's size), ``overlay.mp4`` (the frames with every object's mask drawn; PNG frames in
``overlay/`` when PyAV is missing) and ``track.json`` (prompts, per-frame timings, areas).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ..progress_bar import Progress
from . import _grammar as grammar
from ._weights import EDGETAM_RELEASE as RELEASE, edgetam_weights

EXTRA = "pip install 'repvit-pytorch[edgetam]'"


def read_track_prompts(path) -> list:
    """A JSON list of ``{"object": K, "frame": N, "points": [[x, y, label]], "box": [x0, y0, x1, y1]}``
    (object defaults to 1, frame to 0); several entries for an object on other frames are corrections."""
    from ..data.prompts import read_prompt_entries
    from ..edgetam.tracking import TrackPrompt
    prompts = []
    for i, entry in enumerate(read_prompt_entries(path, extra_keys=("object", "frame"))):
        try:
            object_id, frame = int(entry.get("object", 1)), int(entry.get("frame", 0))
        except (TypeError, ValueError) as err:
            raise ValueError(f"prompt {i} of {str(path)!r}: 'object' and 'frame' are whole numbers ({err})") from None
        prompts.append(TrackPrompt(object_id, frame, entry["points"], entry["box"]))
    return prompts


def prompts_from_args(args) -> list:
    from ..edgetam.tracking import TrackPrompt
    from ..data.prompts import parse_box, parse_point
    points = [parse_point(p) for p in args.point or []]
    boxes = [parse_box(b) for b in args.box or []]
    prompts = read_track_prompts(args.prompts) if args.prompts else []
    if len(boxes) > 1 and points:
        raise ValueError("several --box with --point is ambiguous: one --box with points is one object, several "
                         "boxes are several objects; put mixed prompts in a --prompts JSON file")
    first_id = max((p.object_id for p in prompts), default=0) + 1
    if len(boxes) > 1:
        prompts += [TrackPrompt(first_id + k, args.frame, [], b) for k, b in enumerate(boxes)]
    elif points or boxes:
        prompts.append(TrackPrompt(first_id, args.frame, points, boxes[0] if boxes else None))
    if not prompts:
        raise ValueError("give a prompt: --point X,Y[,LABEL] (repeatable), --box X0,Y0,X1,Y1, or --prompts FILE.json")
    return prompts


def load_predictor(args):
    try:
        from ..edgetam import build_video_predictor
    except ImportError as err:
        raise ImportError(f"repvit track needs Meta's sam2 package: {EXTRA} ({err})") from None
    pretrained, device = edgetam_weights(args)
    return build_video_predictor(args.checkpoint, pretrained=pretrained, fused=not args.unfused,
                                 device=str(device)), device


def run_track(args: argparse.Namespace) -> int:
    import numpy as np
    from PIL import Image
    from ..data.video import DEFAULT_FPS, open_frames, require_av, write_video
    from ..edgetam.tracking import track
    from ..engine.timing import resolve_threads, torch_threads
    from ..data.images import overlay
    prompts = prompts_from_args(args)       # bad prompts fail before anything loads
    out = Path(args.output)
    threads = resolve_threads(args.threads)[0]
    with tempfile.TemporaryDirectory(prefix="repvit-track-") as work, torch_threads(threads):
        frames = open_frames(args.video, work, max_frames=args.max_frames)
        for prompt in prompts:
            prompt.check(len(frames), *frames.size)
        predictor, device = load_predictor(args)
        bar = Progress(len(frames), desc="tracking", unit="frame", enabled=not args.quiet)
        try:
            tracks = track(predictor, frames.folder, prompts, num_frames=len(frames), size=frames.size,
                           on_frame=lambda frame, masks: bar.update(1))
        finally:
            bar.close()
        for obj in tracks.object_ids:
            (out / "masks" / f"obj{obj}").mkdir(parents=True, exist_ok=True)
        for frame in sorted(tracks.masks):
            for obj, mask in tracks.masks[frame].items():
                Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"obj{obj}" / f"{frame:05d}.png")
        drawn = (overlay(frames.frame(f), [tracks.masks[f][o] for o in tracks.object_ids])
                 for f in range(len(frames)))
        fps = args.fps or frames.fps or DEFAULT_FPS
        try:
            require_av()
            overlay_path = write_video(drawn, out / "overlay.mp4", fps=fps)
        except ImportError as err:
            overlay_path = out / "overlay"
            overlay_path.mkdir(parents=True, exist_ok=True)
            for f, image in enumerate(drawn):
                Image.fromarray(image).save(overlay_path / f"{f:05d}.png")
            print(f"note: {err}; wrote the overlay as PNG frames in {overlay_path}", file=sys.stderr)
    prompted = sorted({p.frame for p in prompts})
    summary = tracks.summary(prompted)
    record = {"video": str(args.video), "frames": len(frames), "size": list(frames.size), "fps": fps,
              "objects": tracks.object_ids, "prompts": [p.as_dict() for p in prompts],
              "weights": args.checkpoint or (RELEASE if args.pretrained else "random (seed 0)"),
              "fused": not args.unfused, "device": str(device), "threads": threads,
              "setup_seconds": round(tracks.setup_seconds, 4), "latency": summary,
              "seconds_per_frame": [round(tracks.seconds[f], 5) for f in sorted(tracks.seconds)],
              "areas": {str(k): v for k, v in tracks.areas().items()},
              "masks": str(out / "masks"), "overlay": str(overlay_path)}
    report = grammar.write_report(args.report or out / "track.json", record)
    speed = (f"{summary['mean_ms']:.0f} ms a frame ({summary['frames_per_second']:.2f} frames/s)"
             if summary.get("frames") else "no propagated frames")
    print(f"{args.video}: {len(tracks.object_ids)} object(s) through {len(frames)} frames, {speed} on {device} "
          f"with {threads} thread(s) -> {out / 'masks'}, {overlay_path}, {report}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "track", help="follow objects through a video (EdgeTAM: SAM 2 with a RepViT-M1 encoder)",
        description="Prompt objects with points and/or boxes on any frame, then track them through the whole "
                    "video (forward from the first prompted frame, and backward to frame 0). VIDEO is a folder of "
                    "frames (JPEG, or PNG/BMP/WebP re-encoded) or a video file (.mp4, .mov, ... through PyAV). "
                    "All --point options and one --box form one object; several --box are several objects; "
                    "--prompts FILE.json holds any objects on any frames "
                    "([{\"object\": 1, \"frame\": 0, \"points\": [[x, y, 1]], \"box\": [x0, y0, x1, y1]}]). "
                    f"Needs {EXTRA}.")
    p.add_argument("video", metavar="VIDEO", help="a folder of frames or a video file")
    grammar.add(p, "--point", action="append")
    grammar.add(p, "--box", action="append")
    p.add_argument("--frame", type=int, default=0, help="the frame --point/--box are on [0]")
    p.add_argument("--prompts", metavar="FILE.json", help="objects and corrections on any frames (see above)")
    p.add_argument("--max-frames", type=int, default=None, help="track only the first N frames")
    p.add_argument("--fps", type=float, default=None, help="frame rate of overlay.mp4 (default: the video's, or "
                                                           "24 for a frame folder)")
    grammar.add(p, "--output", default="track-out", help="folder for masks/, overlay.mp4 and track.json")
    grammar.add_report(p, help="write the timings JSON here instead of OUTPUT/track.json")
    g = p.add_mutually_exclusive_group()
    grammar.add(g, "--checkpoint", help="EdgeTAM weights: the official edgetam.pt or a file written by this library")
    grammar.add(g, "--pretrained", help=f"official weights: {RELEASE} (downloaded once into the torch hub cache)")
    g.add_argument("--random-weights", action="store_true",
                   help="deterministic random weights (seed 0): checks the pipeline, the masks mean nothing")
    grammar.add(p, "--unfused", help="keep the RepViT trunk's BatchNorms and branches (for comparison)")
    grammar.add(p, "--device")
    grammar.add(p, "--threads")
    grammar.add(p, "--quiet")
    p.set_defaults(func=run_track)
