"""The option tables every training command shares the machinery of: flags from a table of
``(flags, argparse kwargs)`` rows, a YAML config file checked against the same table (names, types,
choices), and the resolved options as plain data. Resolution order, lowest to highest: the table's
defaults, the ``-c/--config`` file, then flags on the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from . import grammar
from .grammar import row

# The loop options every task of the engine shares (``repvit detect train``, ``repvit segment train``,
# ``repvit sam distill``), each a row of the grammar. The defaults are the dense tasks' CPU-sized ones;
# a task's own table replaces a default with ``with_defaults``.
LOOP: list = [
    row("--model", default="repvit_m0_9", help="RepViT variant of the backbone"),
    row("--backbone"),
    row("--pretrained", help="initialise the backbone from official ImageNet weights instead"),
    row("--output", default="runs/dense", help="folder for checkpoints, logs and curves"),
    row("--overwrite", help="start over even if --output holds a run"),
    row("--resume"),
    row("--epochs", default=12),
    row("--batch-size", default=4, help="images per process and step"),
    row("--lr", default=2e-4, help="the peak learning rate of AdamW"),
    row("--weight-decay", default=0.05),
    row("--schedule", default="step", choices=["step", "poly", "cosine", "none"]),
    row("--milestones", default=[8, 11]),
    row("--power"),
    row("--min-lr", default=0.0, help="the learning rate the poly and cosine decay end at (mmcv's min_lr; "
                                      "ADE20K recipe: 1e-6)"),
    row("--warmup-iters", default=500),
    row("--warmup-ratio", help="the warm-up starts at this fraction of --lr (COCO recipe: 1e-6)"),
    row("--clip-grad", default=0.0),
    row("--clip-mode", default="norm"),
    row("--norm-eval"),
    row("--frozen-stages"),
    row("--sync-bn", default=True),
    row("--workers", default=2),
    row("--threads"),
    row("--device"),
    row("--seed", help="random seed (data order, augmentation, initial weights)"),
    row("--dist-timeout"),
    row("--skip-bad", help="skip (and count) bad annotations/images instead of stopping"),
    row("--eval-interval"),
    row("--log-interval", default=10),
    row("--stop-after-epoch"),
]


def with_defaults(table: list, **defaults) -> list:
    """``table`` with other defaults for some of its options (``warmup_iters=200``)."""
    out = []
    for flags, kwargs in table:
        name = flags[0].lstrip("-").replace("-", "_")
        out.append((flags, {**kwargs, "default": defaults.pop(name)}) if name in defaults else (flags, kwargs))
    if defaults:
        raise ValueError(f"no such options in the table: {', '.join(defaults)}")
    return out


def add_options(parser: argparse.ArgumentParser, *, options, suppress_defaults: bool = True) -> None:
    """Add every training flag. With ``suppress_defaults`` only flags actually given appear in
    the parsed namespace, which is how config files and flags are layered. A row taken from the
    grammar (``grammar.row``) marks its option with that row."""
    grammar.add(parser, "--config", help="YAML file of option defaults (flags given here override it)",
                default=argparse.SUPPRESS if suppress_defaults else None)
    for flags, kwargs in options:
        kwargs = dict(kwargs)
        shared = kwargs.pop("grammar", None)
        default = kwargs.get("default")
        if kwargs.get("help") not in (None, argparse.SUPPRESS) and default not in (None, False, []):
            shown = " ".join(f"{v:g}" for v in default) if isinstance(default, list) else default
            kwargs["help"] += f" [{shown}]"
        if suppress_defaults:
            kwargs["default"] = argparse.SUPPRESS
        action = parser.add_argument(*flags, dest=flags[0].lstrip("-").replace("-", "_"), **kwargs)
        if shared is not None:
            action.grammar = shared


# Option names that changed, old -> new: a config file (a saved config.yaml of an older run, say) that
# uses the old name still loads, with a note on stderr.
RENAMED = {"skip_bad_images": "skip_bad", "sched": "schedule"}


def load_config_file(path, options) -> dict:
    """Read a YAML mapping of option names to values, checking names, types and choices."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must be a mapping of option: value, not {type(data).__name__}")
    specs = {flags[0].lstrip("-").replace("-", "_"): kw for flags, kw in options}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in RENAMED and RENAMED[name] in specs:
            print(f"config file {str(path)!r}: {key} is deprecated, read as {RENAMED[name]}", file=sys.stderr)
            name = RENAMED[name]
        if name == "config":
            continue  # a saved resolved config names the file it came from; nothing to apply
        if name not in specs:
            close = [k for k in specs if k.startswith(name[:4])]
            raise ValueError(f"config file {str(path)!r}: unknown option {key!r}"
                             + (f" (did you mean {', '.join(close[:3])}?)" if close else "")
                             + "; see the command's --help for the names")
        out[name] = _coerce(name, value, specs[name], path)
    return out


def _coerce(name: str, value: Any, spec: dict, path: Path) -> Any:
    where = f"config file {str(path)!r}, option {name}"
    if value is None:
        return None
    action = spec.get("action")
    if action in ("store_true", argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return value
    kind = spec.get("type", str)
    try:
        if spec.get("nargs"):
            if isinstance(value, (int, float)) and spec["nargs"] == "+":
                value = [value]   # one value where a list may hold one
            counted = isinstance(spec["nargs"], int)
            if not isinstance(value, (list, tuple)) or (len(value) != spec["nargs"] if counted else not value):
                raise ValueError
            value = [kind(v) for v in value]
        elif isinstance(value, (list, dict)) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        else:
            value = kind(value)  # YAML reads 2e-3 as a string; this makes it the float it means
    except (TypeError, ValueError):
        kinds = {int: "an integer", float: "a number", str: "a string"}
        shape = ((f"a list of {spec['nargs']} numbers" if isinstance(spec["nargs"], int) else "a list of numbers")
                 if spec.get("nargs")
                 else kinds.get(kind) or getattr(kind, "describe", kind.__name__))
        raise ValueError(f"{where}: expected {shape}, got {value!r}") from None
    if spec.get("choices") and value not in spec["choices"]:
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(spec['choices'])}")
    return value


def dump(cfg: argparse.Namespace) -> dict:
    """The resolved options as plain data (what ``config.yaml`` and checkpoints store)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(vars(cfg).items()) if not k.startswith("_")}


def save(cfg: argparse.Namespace, path, command: str = "repvit train") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# Resolved options of this run; `{command} -c config.yaml` repeats it.\n"
    path.write_text(header + yaml.safe_dump(dump(cfg), sort_keys=True))
    return path
