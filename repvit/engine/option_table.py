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


def add_options(parser: argparse.ArgumentParser, *, options, suppress_defaults: bool = True) -> None:
    """Add every training flag. With ``suppress_defaults`` only flags actually given appear in
    the parsed namespace, which is how config files and flags are layered."""
    parser.add_argument("-c", "--config", default=argparse.SUPPRESS if suppress_defaults else None,
                        help="YAML file of option defaults (flags given here override it)")
    for flags, kwargs in options:
        kwargs = dict(kwargs)
        default = kwargs.get("default")
        if kwargs.get("help") not in (None, argparse.SUPPRESS) and default not in (None, False, []):
            shown = " ".join(f"{v:g}" for v in default) if isinstance(default, list) else default
            kwargs["help"] += f" [{shown}]"
        if suppress_defaults:
            kwargs["default"] = argparse.SUPPRESS
        parser.add_argument(*flags, dest=flags[0].lstrip("-").replace("-", "_"), **kwargs)


# Option names that changed, old -> new: a config file (a saved config.yaml of an older run, say) that
# uses the old name still loads, with a note on stderr.
RENAMED = {"skip_bad_images": "skip_bad"}


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
