"""``repvit track FOLDER_OF_VIDEOS``: many videos, each tracked into a folder of its own, shared across
``torchrun`` ranks.

SOURCE is a folder whose video files and frame sub-folders are the videos (``repvit.data.stream.
list_videos``). Each video's prompts come from ``--prompts DIR`` (``DIR/<video>.json``, the JSON of a
single run's ``--prompts``) and/or ``--mask DIR`` (``DIR/<video>.png``: an index mask on the first frame
tracked, or on ``--frame``, each non-zero value an object; a 0/255 mask is object 1, DAVIS palette
PNGs work as they are). Every video goes to ``OUTPUT/<video>/`` (masks/, overlay.mp4, track.json, as a
single run writes them), first under ``OUTPUT/.<video>.partial`` and renamed once the video was tracked
to its end, so a folder under a final name is always whole. A rerun skips complete videos (``--overwrite``
redoes them). Under torchrun each rank tracks its share (videos dealt in turn), one line per video;
rank 0 writes ``OUTPUT/videos.json`` (or ``--report``) with every video's outcome. A video that fails
is recorded and the others go on; the run then exits 1.
"""
from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from pathlib import Path

from . import _grammar as grammar
from . import _tracking as tracking


def video_prompts(args, videos: list) -> dict:
    """``{video name: [LivePrompt]}`` from ``--prompts DIR`` and ``--mask DIR``; every video must have some."""
    if args.point or args.box:
        raise ValueError(f"{args.source} is a folder of videos: --point/--box would prompt every video at the same "
                         "place; give --prompts DIR (DIR/<video>.json) or --mask DIR (DIR/<video>.png)")
    prompts_dir = Path(args.prompts) if args.prompts else None
    masks = args.mask or []
    if len(masks) > 1 or (masks and not Path(masks[0]).is_dir()) or (prompts_dir and not prompts_dir.is_dir()):
        raise ValueError(f"{args.source} is a folder of videos: --prompts and --mask name folders holding "
                         "<video>.json and <video>.png, one per video")
    mask_dir = Path(masks[0]) if masks else None
    if prompts_dir is None and mask_dir is None:
        raise ValueError(f"{args.source} is a folder of videos: give each its prompts with --prompts DIR "
                         "(DIR/<video>.json) or first-frame masks with --mask DIR (DIR/<video>.png)")
    found, missing = {}, []
    for name, _ in videos:
        prompts = []
        if prompts_dir is not None and (prompts_dir / f"{name}.json").is_file():
            prompts += tracking.read_track_prompts(prompts_dir / f"{name}.json")
        if mask_dir is not None and (mask_dir / f"{name}.png").is_file():
            prompts += _index_mask_prompts(mask_dir / f"{name}.png", args.frame,
                                           taken={p.object_id for p in prompts})
        if prompts:
            found[name] = prompts
        else:
            missing.append(name)
    if missing:
        where = " or ".join(f"{d}/<video>.{ext}" for d, ext in ((prompts_dir, "json"), (mask_dir, "png")) if d)
        raise ValueError(f"no prompts for {len(missing)} of {len(videos)} videos ({', '.join(missing[:8])}"
                         f"{', ...' if len(missing) > 8 else ''}): expected {where}")
    if args.every > 1:
        off = sorted({p.frame for ps in found.values() for p in ps if p.frame is not None and p.frame % args.every})
        if off:
            raise ValueError(f"--every {args.every}: prompts on frame(s) {off} would never be tracked")
    return found


def _index_mask_prompts(path: Path, frame, taken: set) -> list:
    import numpy as np
    from ..data.davis import VOID, read_annotation
    from ..edgetam.live import LivePrompt
    try:
        index = read_annotation(path)
    except (OSError, ValueError) as err:
        raise ValueError(f"--mask {path}: not a readable mask image ({err})") from None
    objects = [int(v) for v in np.unique(index) if v not in (0, VOID)]
    clash = sorted(set(objects) & taken)
    if clash:
        raise ValueError(f"{path}: object(s) {clash} also have prompts in the --prompts file; number them apart")
    return [LivePrompt(obj, frame, [], None, index == obj, f"{path}#{obj}") for obj in objects]


def run_track_videos(args: argparse.Namespace) -> int:
    from ..data.stream import list_videos
    from ..engine import distributed
    from ..engine.timing import resolve_threads, torch_threads
    if args.camera is not None:
        raise ValueError("give one source: a folder of videos, or --camera N")
    videos = list_videos(args.source)
    prompts = video_prompts(args, videos)              # bad prompts fail before any model loads
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output {out} is a file; name a folder")
    threads = resolve_threads(args.threads)[0]
    env = distributed.setup("cpu" if args.device in (None, "auto") else args.device)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        mine = [videos[i] for i in distributed.shard(range(len(videos)), env)]
        with torch_threads(threads):
            parts = distributed.each_rank(lambda: _track_share(args, mine, prompts, out, threads, stop, env), env)
    finally:
        signal.signal(signal.SIGTERM, previous)
        distributed.teardown(env)
    outcomes = {name: row for part in parts for name, row in part.items()}
    if not env.is_main:
        return _exit_code(outcomes)
    record = {"source": str(args.source), "videos": len(videos), "world_size": env.world_size,
              "threads_per_rank": threads, "output": str(out),
              "complete": sorted(n for n, r in outcomes.items() if r["status"] in ("tracked", "skipped")),
              "skipped_complete": sorted(n for n, r in outcomes.items() if r["status"] == "skipped"),
              "failed": sorted(n for n, r in outcomes.items() if r["status"] == "failed"),
              "stopped": sorted(n for n, r in outcomes.items() if r["status"] == "stopped"),
              "not_started": [n for n, _ in videos if n not in outcomes], "per_video": outcomes}
    report = grammar.write_report(args.report or out / "videos.json", record)
    print(f"{args.source}: {len(record['complete'])} of {len(videos)} videos complete "
          f"({len(record['skipped_complete'])} already were), {len(record['failed'])} failed, "
          f"{len(record['stopped']) + len(record['not_started'])} stopped or not started -> {out}, {report}")
    return _exit_code(outcomes)


def _exit_code(outcomes: dict) -> int:
    statuses = {row["status"] for row in outcomes.values()}
    return 1 if "failed" in statuses else 130 if "stopped" in statuses else 0


def _track_share(args, mine: list, prompts: dict, out: Path, threads: int, stop: threading.Event, env) -> dict:
    """Track this rank's videos; ``{name: outcome}`` with status tracked, skipped, failed or stopped."""
    outcomes: dict = {}
    todo = [(name, path) for name, path in mine if args.overwrite or not (out / name / "track.json").is_file()]
    for name in sorted({name for name, _ in mine} - {name for name, _ in todo}):
            outcomes[name] = {"status": "skipped", "rank": env.rank, "output": str(out / name)}
            print(f"[rank {env.rank}] {name}: complete in {out / name}, skipped (--overwrite redoes it)",
                  file=sys.stderr)
    # every rank makes its tracker, even with nothing to do: with exported graphs it is a collective step
    tracker = tracking.make_tracker_on_ranks(args, threads, env) if todo or env.distributed else None
    for name, path in todo:
        if stop.is_set():
            break
        final, partial = out / name, out / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            record, error = tracking.track_source(args, tracker[0], tracker[1], threads, str(path), prompts[name], partial,
                                         stop=stop, desc=name)
        except Exception as err:         # noqa: BLE001 - a video that cannot be opened: recorded, the others go on
            record, error = {"stop_reason": f"error: {type(err).__name__}: {err}", "frames_done": 0,
                             "objects": [], "latency": {}}, err
        row = {"rank": env.rank, "frames_done": record["frames_done"], "objects": record["objects"],
               "stop_reason": record["stop_reason"], "latency": record["latency"]}
        if error is None and record["stop_reason"].startswith(("end of stream", "max frames")):
            if final.exists():
                shutil.rmtree(final)
            partial.rename(final)
            _retarget(final / "track.json", partial, final)
            row.update(status="tracked", output=str(final))
        else:           # a user's stop ends the share; a video that broke is recorded and the next one goes on
            stopped = error is None and record["stop_reason"].startswith(("stopped", "interrupted"))
            row.update(status="stopped" if stopped else "failed", output=str(partial))
        outcomes[name] = row
        if row["status"] == "stopped":
            stop.set()                    # Ctrl-C or SIGTERM ends the share, not just this video
        latency = record["latency"]
        speed = f", median {latency['median_ms']:.0f} ms a frame" if latency.get("frames") else ""
        print(f"[rank {env.rank}] {name}: {len(row['objects'])} object(s) through {row['frames_done']} frames "
              f"({row['stop_reason']}){speed} -> {row['output']}", file=sys.stderr)
    return outcomes


def _retarget(report: Path, old: Path, new: Path) -> None:
    """The paths a video's track.json names, moved with its folder from the partial name to the final one."""
    import json
    record = json.loads(report.read_text())
    for key in ("masks", "overlay"):
        if isinstance(record.get(key), str) and record[key].startswith(str(old)):
            record[key] = str(new) + record[key][len(str(old)):]
    grammar.write_report(report, record)
