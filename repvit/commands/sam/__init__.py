"""``repvit sam ACTION``: RepViT-SAM (segment anything with a RepViT encoder).

One module per action (``predict`` also holds ``everything``: both segment one image and write the
same kinds of files); ``_common`` is what the actions share. The CLI imports neither
segment-anything nor the demo's web stack until an action runs.
"""
from __future__ import annotations

from . import demo, distill, eval, export, predict

ACTIONS = (predict, eval, export, distill, demo)   # predict registers `predict` and `everything`


def register(subparsers) -> None:
    p = subparsers.add_parser("sam", help="segment anything with RepViT-SAM: predict, everything, eval, export, "
                                          "distill, demo")
    actions = p.add_subparsers(dest="sam_action", metavar="ACTION")
    for module in ACTIONS:
        module.register(actions)
    p.set_defaults(func=lambda args: p.print_help() or 2)
