"""The tracker ``repvit track`` and ``repvit track eval`` run, and one source tracked into one folder:
shared by the single-source command (``track.py``), the folder of videos (``_track_videos.py``) and the
DAVIS protocol (``track_eval.py``)."""
from __future__ import annotations

import hashlib
import sys
import threading
from pathlib import Path
from typing import Optional

from ..progress_bar import Progress
from . import _grammar as grammar
from ._weights import EDGETAM_RELEASE as RELEASE, edgetam_weights

EXTRA = "pip install 'repvit-pytorch[edgetam]'"


def read_track_prompts(path) -> list:
    """A JSON list of ``{"object": K, "frame": N, "points": [[x, y, label]], "box": [x0, y0, x1, y1]}``
    (object defaults to 1, frame to the first tracked); an object's entries on later frames correct it."""
    from ..data.prompts import read_prompt_entries
    from ..edgetam.live import LivePrompt
    prompts = []
    for i, entry in enumerate(read_prompt_entries(path, extra_keys=("object", "frame"))):
        try:
            object_id = int(entry.get("object", 1))
            frame = None if entry.get("frame") is None else int(entry["frame"])
        except (TypeError, ValueError) as err:
            raise ValueError(f"prompt {i} of {str(path)!r}: 'object' and 'frame' are whole numbers ({err})") from None
        prompts.append(LivePrompt(object_id, frame, entry["points"], entry["box"]))
    return prompts


def load_predictor(args):
    try:
        from ..edgetam import build_video_predictor
    except ImportError as err:
        raise ImportError(f"repvit track needs Meta's sam2 package: {EXTRA} ({err})") from None
    pretrained, device, seed = edgetam_weights(args)
    return build_video_predictor(args.checkpoint, pretrained=pretrained, fused=not args.unfused,
                                 device=str(device), seed=seed), device


def _weights_id(args) -> tuple[str, Path]:
    """A digest of the weights and the folder their exported graphs are cached in (beside the weights)."""
    if args.random_weights:
        return "random (seed 0)", Path.home() / ".cache" / "repvit" / "edgetam-random-seed0-onnx"
    if args.pretrained:
        from ..models.pretrained import fetch
        from ..models.releases import EDGETAM, find_release
        path = Path(fetch(find_release("edgetam", kind=EDGETAM)))
    else:
        path = Path(args.checkpoint)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}", path.with_name(f"{path.stem}-onnx")


def make_tracker(args, threads):
    """The streaming tracker ``--runtime`` names, with its description for track.json."""
    predictor, device = load_predictor(args)
    if args.runtime == "torch":
        from ..edgetam.stream_torch import TorchStreamingTracker
        tracker = TorchStreamingTracker(predictor)
        return tracker, {"runtime": "torch", "device": str(device), "fused": not args.unfused,
                         "hole_filling": tracker.fills_holes}
    from ..edgetam.export import cached_export
    from ..edgetam.onnx_stream import OnnxStreamingTracker
    if args.export_dir:
        folder = Path(args.export_dir)
        weights_id = _weights_id(args)[0]
    else:
        weights_id, folder = _weights_id(args)
    log = (lambda line: None) if args.quiet else (lambda line: print(f"  export: {line}", file=sys.stderr))
    try:
        folder = cached_export(predictor, folder, weights_id=weights_id, log=log)
    except PermissionError:
        folder = cached_export(predictor, Path.home() / ".cache" / "repvit" / folder.name, weights_id=weights_id,
                               log=log)
    return OnnxStreamingTracker(folder, threads=threads, runtime=args.runtime), {
        "runtime": args.runtime, "device": "cpu", "graphs": str(folder)}


def make_tracker_on_ranks(args, threads, env):
    """``make_tracker`` on every torchrun rank: with an exported runtime rank 0 exports (or finds) the graphs
    before the others read them, and an error there reaches every rank instead of leaving them waiting."""
    from ..engine import distributed
    if args.runtime == "torch" or not env.distributed:
        return make_tracker(args, threads)
    made: dict = {}

    def first():
        if env.is_main:
            made["tracker"] = make_tracker(args, threads)
    distributed.each_rank(first, env)
    return made.get("tracker") or make_tracker(args, threads)


def track_source(args, tracker, described: dict, threads: int, spec, prompts: list, out: Path, *,
                 stop: threading.Event, report=None, desc: str = "tracking") -> tuple[dict, Optional[BaseException]]:
    """Track one source into ``out`` (masks/, overlay.mp4, track.json or ``report``) with a tracker made
    by ``make_tracker``; returns the record written and the error that ended the run (not raised here)."""
    from ..data.images import overlay as draw
    from ..data.stream import LiveVideoWriter, open_source
    from ..edgetam.live import run_live
    # objects all prompted on a later frame of a file or folder: track forward from there, then backward
    seekable = args.camera is None and spec != "-" and "://" not in str(spec)
    first = None if any(p.frame is None for p in prompts) else min(p.frame for p in prompts)
    backward_from = first if first and seekable else None
    source = open_source(spec, every=args.every, max_frames=args.max_frames, size=args.stdin_size,
                         start=backward_from or 0)
    writer = None
    backward: dict = {}
    try:
        tracker.reset_state()
        fps = args.fps or source.fps or 24.0
        writer = LiveVideoWriter(out / "overlay.mp4", fps=fps)
        bar = Progress(args.max_frames, desc=desc, unit="frame", enabled=not args.quiet)
        try:
            record, error = run_live(tracker, source, prompts, out, overlay=writer, draw=draw, stop=stop,
                                     on_frame=lambda index, seconds: bar.update(1))
            if backward_from and error is None and not stop.is_set() and record["frames_done"]:
                # the frames before the prompts, from the prompted frame back to frame 0 (the file is read
                # again, backward, rather than held); the overlay shows the forward pass
                tracker.reset_state()
                with open_source(spec, every=args.every, start=backward_from, reverse=True) as behind:
                    backward, error = run_live(tracker, behind, [p for p in prompts if p.frame == backward_from],
                                               out, stop=stop, on_frame=lambda index, seconds: bar.update(1))
                record["frames_done"] += max(backward["frames_done"] - 1, 0)
                if backward["stop_reason"] != "end of stream":
                    record["stop_reason"] = f"backward pass: {backward['stop_reason']}"
        finally:
            bar.close()
    finally:
        overlay_path = writer.close() if writer is not None else None
        source.close()
    if backward:
        record["backward"] = {"from_frame": backward_from, "frames_done": backward["frames_done"],
                              "stop_reason": backward["stop_reason"], "latency": backward["latency"]}
    record = {"source": source.description, "live": source.live, "every": args.every, "max_frames": args.max_frames,
              **described, "threads": threads,
              "weights": args.checkpoint or (RELEASE if args.pretrained else "random (seed 0)"),
              "prompts": [p.as_dict() for p in prompts], **record, "masks": str(out / "masks"),
              "overlay": str(overlay_path) if overlay_path else None}
    record["report"] = str(grammar.write_report(report or out / "track.json", record))
    return record, error
