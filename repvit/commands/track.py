"""``repvit track SOURCE``: follow objects through a video, a camera or a stream with EdgeTAM, frame by frame.

SOURCE is a folder of frames (read one at a time), a video file (decoded as it goes), an RTSP/HTTP URL,
``-`` (raw RGB frames on stdin, ``--stdin-size WxH``), or ``--camera N``. The tracker is the streaming
one (``repvit.edgetam.stream_torch`` or, with ``--runtime onnxruntime|openvino``, ``onnx_stream`` over
the exported graphs): memory stays flat whatever the length. Written under ``--output`` as frames come:
``masks/obj<K>/<frame>.png`` (0/255 at the frame's size), ``overlay.mp4`` (every object drawn; PNG
frames in ``overlay/`` without PyAV) and, when the run ends for any reason, ``track.json`` (source,
prompts, runtime, threads, frames done/dropped/skipped, why it stopped, latency and peak memory).
``repvit track eval`` is the DAVIS protocol (``track_eval.py``).
"""
from __future__ import annotations

import argparse
import shutil
import signal
import threading
from pathlib import Path

from . import _grammar as grammar
from . import _tracking as tracking
from ._tracking import EXTRA, read_track_prompts
from ._weights import add_edgetam_weights_options
RUNTIMES = ("torch", "onnxruntime", "openvino")
OUR_OUTPUTS = ("masks", "overlay.mp4", "overlay", "track.json")


def prompts_from_args(args) -> list:
    import numpy as np
    from PIL import Image
    from ..data.prompts import parse_box, parse_point
    from ..edgetam.live import LivePrompt
    points = [parse_point(p) for p in args.point or []]
    boxes = [parse_box(b) for b in args.box or []]
    prompts = read_track_prompts(args.prompts) if args.prompts else []
    if len(boxes) > 1 and points:
        raise ValueError("several --box with --point is ambiguous: one --box with points is one object, several "
                         "boxes are several objects; put mixed prompts in a --prompts JSON file")
    next_id = max((p.object_id for p in prompts), default=0) + 1
    if len(boxes) > 1:
        prompts += [LivePrompt(next_id + k, args.frame, [], b) for k, b in enumerate(boxes)]
        next_id += len(boxes)
    elif points or boxes:
        prompts.append(LivePrompt(next_id, args.frame, points, boxes[0] if boxes else None))
        next_id += 1
    for k, path in enumerate(args.mask or []):
        try:
            with Image.open(path) as image:
                mask = np.asarray(image.convert("L")) > 0
        except (OSError, ValueError) as err:
            raise ValueError(f"--mask {path}: not a readable image ({err})") from None
        prompts.append(LivePrompt(next_id + k, args.frame, [], None, mask, str(path)))
    if not prompts:
        raise ValueError("give a prompt: --point X,Y[,LABEL] (repeatable), --box X0,Y0,X1,Y1, --mask MASK.png, or "
                         "--prompts FILE.json")
    if args.every > 1:
        off = [p for p in prompts if p.frame is not None and p.frame % args.every]
        if off:
            raise ValueError(f"--every {args.every} tracks frames 0, {args.every}, {2 * args.every}, ...; prompts on "
                             f"frame(s) {sorted({p.frame for p in off})} would never be tracked")
    return prompts


def _prepare_output(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file; name a folder")
    previous = [name for name in OUR_OUTPUTS if (out / name).exists()]
    if previous and not overwrite:
        raise ValueError(f"--output {out} holds a previous run ({', '.join(previous)}): pass --overwrite to replace "
                         "it, or name another folder (two runs' masks are never mixed)")
    for name in previous:
        target = out / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def run_track(args: argparse.Namespace) -> int:
    from ..engine.timing import resolve_threads, torch_threads
    if (args.source is None) == (args.camera is None):
        raise ValueError("give one source: a frame folder, a video file, a URL or - (stdin), or --camera N")
    if args.camera is None and args.source != "-" and "://" not in str(args.source):
        from ..data.stream import list_videos
        if list_videos(args.source):       # a folder of videos: each tracked into its own folder, torchrun shares them
            from ._track_videos import run_track_videos
            return run_track_videos(args)
    prompts = prompts_from_args(args)           # bad prompts fail before anything loads
    out = Path(args.output)
    _prepare_output(out, args.overwrite)
    threads = resolve_threads(args.threads)[0]
    spec = args.source
    if args.camera is not None:
        spec = int(args.camera) if str(args.camera).isdigit() else str(args.camera)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with torch_threads(threads):
            tracker, described = tracking.make_tracker(args, threads)
            record, error = tracking.track_source(args, tracker, described, threads, spec, prompts, out, stop=stop,
                                         report=args.report)
    finally:
        signal.signal(signal.SIGTERM, previous)
    latency = record["latency"]
    speed = (f"median {latency['median_ms']:.0f} ms a frame, p99 {latency['p99_ms']:.0f} ms "
             f"({latency['frames_per_second']:.2f} frames/s)" if latency.get("frames") else "no tracked frames timed")
    print(f"{record['source']}: {len(record['objects'])} object(s) through {record['frames_done']} frames "
          f"({record['stop_reason']}), {speed} on {described['runtime']} with {threads} thread(s), peak "
          f"{latency['peak_rss_mb']:.0f} MB -> {out / 'masks'}, {record['report']}")
    if error is not None:
        raise error
    return 130 if record["stop_reason"].startswith(("interrupted", "stopped")) else 0


def _size(text: str) -> tuple:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
        if width > 0 and height > 0:
            return width, height
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 640x480")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "track", help="follow objects through a video, a camera or a stream (EdgeTAM: SAM 2 with a RepViT-M1 "
                      "encoder); `repvit track eval`: the DAVIS protocol",
        description="Prompt objects with points, boxes or masks on the first frame tracked (or any frame with "
                    "--prompts), then track them frame by frame in constant memory. SOURCE is a folder of frames, a "
                    "video file, an RTSP/HTTP URL or - (raw RGB frames on stdin, --stdin-size WxH); --camera N "
                    "reads a camera. All --point options and one --box form one object; several --box are several "
                    "objects; each --mask is an object; --prompts FILE.json holds objects and corrections on any "
                    "frames ([{\"object\": 1, \"frame\": 0, \"points\": [[x, y, 1]], \"box\": [x0, y0, x1, y1]}]). "
                    "Live sources drop frames when tracking is slower (the newest frame wins, the drops are "
                    "counted). A folder of videos (video files, frame sub-folders) tracks each into OUTPUT/<video>/, "
                    "prompted by --prompts DIR (DIR/<video>.json) and/or --mask DIR (DIR/<video>.png, an index "
                    "mask: each value an object); complete videos are skipped on a rerun, and under torchrun each "
                    "rank tracks its share. `repvit track eval --data DAVIS_ROOT` runs the DAVIS protocol. "
                    f"Needs {EXTRA}.")
    p.add_argument("source", metavar="SOURCE", nargs="?",
                   help="a frame folder, a video file, a URL, - (stdin), or a folder of videos")
    p.add_argument("--camera", metavar="N", help="a camera: its index (V4L2 /dev/videoN) or device path")
    p.add_argument("--stdin-size", metavar="WxH", type=_size, help="the size of raw RGB24 frames on stdin (SOURCE -)")
    grammar.add(p, "--point", action="append")
    grammar.add(p, "--box", action="append")
    p.add_argument("--mask", action="append", metavar="MASK.png", help="an object's mask on the prompted frame "
                   "(non-zero pixels; repeatable); for a folder of videos, a folder of "
                   "<video>.png index masks")
    p.add_argument("--frame", type=int, default=None,
                   help="the source frame --point/--box/--mask are on (default: the first frame tracked)")
    grammar.add(p, "--prompts", help="objects and corrections on any frames (see above); for a folder of videos, a "
                                     "folder of <video>.json")
    p.add_argument("--every", type=int, default=1, metavar="N", help="track every Nth frame of a file or folder [1]")
    grammar.add(p, "--max-frames", help="stop after N tracked frames")
    grammar.add(p, "--runtime", choices=RUNTIMES,
                help="the tracker: PyTorch, or the exported graphs on ONNX Runtime or OpenVINO (exported on first "
                        "use, checked, and cached beside the weights) [torch]")
    grammar.add(p, "--export-dir")
    p.add_argument("--fps", type=float, default=None, help="frame rate of overlay.mp4 (default: the source's, or 24)")
    grammar.add(p, "--output", default="track-out", help="folder for masks/, overlay.mp4 and track.json")
    grammar.add(p, "--overwrite", help="replace a previous run's outputs in --output")
    grammar.add_report(p, help="write the run's JSON here instead of OUTPUT/track.json")
    add_edgetam_weights_options(p)
    grammar.add(p, "--device")
    grammar.add(p, "--threads")
    grammar.add(p, "--quiet")
    p.set_defaults(func=run_track)

