"""The ``repvit`` command line. Each command lives in ``repvit/commands/`` (a module, or a folder
for a group with actions) and defines ``register(subparsers)``; this module discovers and
dispatches them, and turns bad input and missing optional packages into one-line errors."""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import traceback
from typing import Optional, Sequence

from . import commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repvit", description="RepViT models. Classifiers: train, eval, predict, export, bench. Detectors and "
                                   "segmenters: detect, segment (train, eval, predict, export). Segment anything: "
                                   "sam (RepViT-SAM). Objects through videos: track (EdgeTAM). Also info (the "
                                   "variants), weights (official files), roadmap, demo.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


# Actions of a command whose first argument is otherwise a path (``repvit track VIDEO``): registered as a
# hidden command of their own, reached by their two-word spelling.
ACTIONS = {("track", "eval"): "track-eval"}


def route(argv: Sequence[str]) -> list:
    argv = list(argv)
    return [ACTIONS[tuple(argv[:2])], *argv[2:]] if tuple(argv[:2]) in ACTIONS else argv


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(route(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ImportError as err:
        hint = missing_extra(err, args.command)
        if hint is None or os.environ.get("REPVIT_DEBUG"):
            raise
        print(f"{_command_name(args)}: error: {hint}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:  # CheckpointError is a ValueError
        if os.environ.get("REPVIT_DEBUG"):
            raise
        print(f"{_command_name(args)}: error: {err}{_foreign_origin(err)}", file=sys.stderr)
        return 2


# Optional packages -> the extra of pyproject.toml that installs them (pycocotools is in both
# `dense` and `sam`: the command decides which one to name).
EXTRAS = {
    "segment_anything": "sam", "pycocotools": "dense", "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx",
    "coremltools": "coreml", "executorch": "executorch", "gradio": "sam-demo", "gradio_client": "sam-demo",
    "tensorboard": "tensorboard", "openvino": "deploy", "nncf": "deploy",
    "litert_torch": "litert", "ai_edge_litert": "litert",
    "sam2": "edgetam", "hydra": "edgetam", "iopath": "edgetam", "av": "video",
}
COMMAND_EXTRA = {"sam": {"pycocotools": "sam"}}


def missing_extra(err: ImportError, command: Optional[str]) -> Optional[str]:
    """One line naming the pip extra that installs the missing package, or None for an import error
    that no extra fixes (a bug, which keeps its traceback). Our own ``require_*`` helpers already
    word such a line (it names ``pip install``); it is passed on as it is."""
    name = (getattr(err, "name", None) or "").split(".")[0]
    if name in EXTRAS:
        extra = COMMAND_EXTRA.get(command or "", {}).get(name, EXTRAS[name])
        return f"this needs the optional package {name}, which is not installed: pip install 'repvit-pytorch[{extra}]'"
    message = str(err).strip()
    if "pip install" in message and "\n" not in message:
        return message
    return None


def _command_name(args: argparse.Namespace) -> str:
    action = next((v for k, v in vars(args).items() if k.endswith("_command") or k == "sam_action"), None)
    command = next((" ".join(words) for words, name in ACTIONS.items() if name == args.command), args.command)
    return " ".join(["repvit"] + [str(p) for p in (command, action) if p])


def _foreign_origin(err: BaseException) -> str:
    """Where an error raised outside this package came from: our own messages say what to do,
    a library's bare message (e.g. from PIL inside a transform) needs its location to be useful."""
    frames = traceback.extract_tb(err.__traceback__)
    package_dir = os.path.dirname(os.path.abspath(__file__))
    if not frames or os.path.abspath(frames[-1].filename).startswith(package_dir + os.sep):
        return ""
    last = frames[-1]
    return (f"\n  raised by {last.filename}:{last.lineno} ({last.name}), not by repvit; "
            "run with REPVIT_DEBUG=1 for the full traceback")


if __name__ == "__main__":
    raise SystemExit(main())
