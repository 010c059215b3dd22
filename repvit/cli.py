"""The ``repvit`` command line. Each sub-command lives in ``repvit/commands/<name>.py`` and
defines ``register(subparsers)``; this module only discovers and dispatches them."""
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
    parser = argparse.ArgumentParser(prog="repvit", description="RepViT models: info, train, evaluate, export, benchmark")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{commands.__name__}.{info.name}").register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as err:  # CheckpointError is a ValueError
        if os.environ.get("REPVIT_DEBUG"):
            raise
        print(f"repvit {args.command}: error: {err}{_foreign_origin(err)}", file=sys.stderr)
        return 2


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
