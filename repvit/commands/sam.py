"""``repvit sam ACTION``: RepViT-SAM (segment anything with a RepViT encoder).

Each action lives in ``repvit/commands/_sam_<action>.py`` with ``register(actions)``; this module
only gathers them, so the CLI never imports segment-anything or the demo's web stack until an
action runs.
"""
from __future__ import annotations

import importlib
import pkgutil

from .. import commands


def register(subparsers) -> None:
    p = subparsers.add_parser("sam", help="segment anything with RepViT-SAM: predict, everything, eval, export, "
                                          "distill, demo")
    actions = p.add_subparsers(dest="sam_action", metavar="ACTION")
    names = sorted(i.name for i in pkgutil.iter_modules(commands.__path__) if i.name.startswith("_sam_"))
    for name in names:
        module = importlib.import_module(f"{commands.__name__}.{name}")
        if hasattr(module, "register"):  # shared helpers such as _sam_common have none
            module.register(actions)
    p.set_defaults(func=lambda args: p.print_help() or 2)
