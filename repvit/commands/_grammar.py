"""The command grammar: every option that more than one command offers, with its one meaning.

``SHARED`` is the table ``docs/cli.md`` is generated from (``python -m repvit.commands._grammar``
prints it) and ``tests/test_cli_grammar.py`` checks every parser of ``repvit`` against: wherever an
option of this table appears, it has these spellings, this metavar, type, nargs and (unless the
table says the default belongs to the command) this default. ``DEPRECATED`` lists the old
spellings that still work for one release: they are hidden from ``--help``, store into the new
option and say on stderr, once, what to write instead.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Optional

from ..engine.timing import threads_option

PER_COMMAND = "per command"   # a default each command chooses (stated in its --help)


@dataclass(frozen=True)
class Shared:
    flags: tuple             # every spelling, the long one first
    metavar: Optional[str]   # None: an on/off flag
    meaning: str
    default: Any = None
    type: Any = None         # None: the string as given
    nargs: Any = None
    choices: Any = None


SHARED: tuple = (
    Shared(("--config", "-c"), "CONFIG", "YAML file of option defaults; flags on the command line override it "
                                         "(training commands)", default=PER_COMMAND),
    Shared(("--pretrained",), "NAME[:TAG]", "official weights by release name (`repvit weights` lists them), "
                                            "e.g. repvit_m1_1, repvit_m1_1:dist_300e, repvit_sam"),
    Shared(("--checkpoint",), "PATH", "a weights file: saved by this library, or an official/timm layout the "
                                      "command reads"),
    Shared(("--model",), "NAME", "a RepViT variant, e.g. repvit_m0_9 (`repvit info` lists them)",
           default=PER_COMMAND),
    Shared(("--device",), "DEVICE", "auto, cpu, cuda or cuda:N; auto is the first GPU when one is visible, "
                                    "else the CPU", default="auto"),
    Shared(("--output", "-o"), "PATH", "what the command writes: a file or a folder as the command's kind "
                                       "(an explicit file name is used as given)", default=PER_COMMAND),
    Shared(("--report",), "PATH", "write the command's results as a JSON report to this file"),
    Shared(("--json",), None, "print JSON on stdout instead of text"),
    Shared(("--data",), "PATH", "the input data: a dataset root, a folder or an annotation file"),
    Shared(("--images",), "PATH", "input images only (files or folders), never labels or outputs", nargs="+"),
    Shared(("--num-real",), "N", "real images an export is checked on (from --images, or photos shipped with "
                                 "matplotlib)", default=PER_COMMAND, type=int),
    Shared(("--annotations",), "PATH", "a COCO instances JSON file (overrides what --data finds)"),
    Shared(("--threads",), "N|auto", "CPU threads for torch per process: a count, or auto (the cores idle "
                                     "when the command starts)", default="auto", type=threads_option),
    Shared(("--batch-size", "-b"), "N", "images (or prompts) per step", default=PER_COMMAND, type=int),
    Shared(("--workers", "-j"), "N", "data-loading worker processes", default=PER_COMMAND, type=int),
    Shared(("--seed",), "N", "random seed", default=0, type=int),
    Shared(("--img-size",), "N", "input resolution (square side, pixels)", default=PER_COMMAND, type=int),
    Shared(("--point",), "X,Y[,LABEL]", "a point prompt in pixels of the original image; LABEL 1 (default) is on "
                                        "the object, 0 background; repeatable"),
    Shared(("--box",), "X0,Y0,X1,Y1", "a box prompt in pixels of the original image; repeatable"),
    Shared(("--int8",), None, "also write an INT8 copy (<name>-int8 beside the float file), calibrated on "
                              "--calib-images and kept only if it stays close to the float model on real images"),
    Shared(("--calib-images",), "PATH", "a folder of real (training) images to calibrate INT8 ranges on"),
    Shared(("--calib-count",), "N", "calibration images taken from --calib-images", default=PER_COMMAND, type=int),
    Shared(("--int8-weights",), "ENCODING", "INT8 weights of ONNX Runtime and OpenVINO: int7 (7-bit range) never "
                                            "saturates in their x86 kernels and is about as fast as int8; int8 is "
                                            "for CPUs with VNNI and ARM (on x86 without VNNI, e.g. AMD Zen 3, the "
                                            "kernels saturate: -1.1 top-1 points measured with ONNX Runtime); "
                                            "uint8 (ONNX Runtime only) never saturates either, slower",
           default="int7",
           choices=("int7", "uint8", "int8")),
    Shared(("--ema",), None, "use the EMA weights stored in the checkpoint"),
    Shared(("--unfused",), None, "run the training-form model (default: fused)"),
    Shared(("--skip-bad",), None, "skip (and count, by reason) bad inputs instead of stopping"),
    Shared(("--overwrite",), None, "start over even if --output holds a run"),
    Shared(("--quiet",), None, "no progress bar"),
)

BY_FLAG = {flag: opt for opt in SHARED for flag in opt.flags}

# Old spelling -> the grammar's. Each works for one release, hidden from --help, with a message.
DEPRECATED = {
    "--output-dir DIR (sam export)": "--output DIR",
    "--coco DIR (sam eval)": "--data DIR",
    "-w FILE (sam actions)": "--checkpoint FILE",
    "--json FILE (commands that wrote a JSON file)": "--report FILE",
    "--json - (bench)": "--json",
    "--pretrained, no name (sam actions)": "--pretrained repvit_sam",
    "--pretrained, no name (sam distill, or pretrained: true in YAML)": "--pretrained NAME, e.g. repvit_m2_3",
    "--unfused (sam export)": "nothing: the exported encoder is always the fused one",
    "--point center|farthest (sam eval; --point is a prompt X,Y elsewhere)": "--point-at center|farthest",
    "--skip-bad-images (train, eval; skip_bad_images: in YAML)": "--skip-bad",
    "--max-images N (sam export)": "--num-real N",
}



def warn_once(action, message: str) -> None:
    if not getattr(action, "_warned", False):
        action._warned = True
        print(message, file=sys.stderr)


class Deprecated(argparse.Action):
    """An old spelling of a grammar option: stores into the new option's ``dest`` and says so once."""

    def __init__(self, option_strings, dest, *, replacement: str, message: Optional[str] = None, nargs=None,
                 **kwargs):
        kwargs.update(help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)
        self.replacement, self.message = replacement, message

    def __call__(self, parser, namespace, values, option_string=None):
        warn_once(self, f"{option_string} is deprecated: " + (self.message or f"use {self.replacement}"))
        setattr(namespace, self.dest, True if self.nargs == 0 else values)


class NameOrBare(argparse.Action):
    """``--pretrained NAME[:TAG]``, where a bare ``--pretrained`` (the old flag) still means ``bare``."""

    def __init__(self, option_strings, dest, *, bare: str, **kwargs):
        super().__init__(option_strings, dest, nargs="?", const=None, **kwargs)
        self.bare = bare

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:
            warn_once(self, f"{option_string} without a name is deprecated: use {option_string} {self.bare}")
            values = self.bare
        setattr(namespace, self.dest, values)


class FlagOrDeprecatedFile(argparse.Action):
    """``--json`` (the grammar's flag) in a command that once took ``--json FILE``: a bare ``--json``
    or the old ``--json -`` sets the flag; ``--json FILE`` still writes FILE, as ``--report FILE`` does."""

    def __init__(self, option_strings, dest, *, file_dest: str, **kwargs):
        kwargs.update(nargs="?", const=None, default=False)
        super().__init__(option_strings, dest, **kwargs)
        self.file_dest = file_dest

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None:
            setattr(namespace, self.dest, True)
        elif values == "-":
            warn_once(self, f"{option_string} - is deprecated: use {option_string}")
            setattr(namespace, self.dest, True)
        else:
            warn_once(self, f"{option_string} FILE is deprecated: use --report FILE")
            setattr(namespace, self.file_dest, values)


def add(parser, flag: str, *, help: Optional[str] = None, default: Any = None, **kwargs) -> argparse.Action:
    """Add the grammar's option ``flag`` to ``parser`` (its spellings, metavar, type and nargs from
    ``SHARED``); ``default`` only where the table leaves it to the command; ``help`` adds the
    command's own words to the grammar's meaning."""
    opt = BY_FLAG[flag]
    spec: dict = {"help": help or opt.meaning}
    if opt.metavar is None:
        spec["action"] = "store_true"
    else:
        spec.update(metavar=opt.metavar, default=opt.default if opt.default != PER_COMMAND else default)
        if opt.type is not None:
            spec["type"] = opt.type
        if opt.nargs is not None:
            spec["nargs"] = opt.nargs
        if opt.choices is not None:
            spec["choices"] = opt.choices
        if spec["default"] not in (None, False) and "[" not in spec["help"]:
            spec["help"] += f" [{spec['default']}]"
    spec.update(kwargs)
    return parser.add_argument(*opt.flags, **spec)


def add_deprecated(parser, old: str, new: str, *, dest: str, nargs=None, type=None) -> argparse.Action:
    """The old spelling ``old`` of ``new``: converted with ``new``'s ``type``, stored in its ``dest``."""
    return parser.add_argument(old, dest=dest, action=Deprecated, replacement=new, nargs=nargs, type=type)


def add_report(parser, *, help: Optional[str] = None) -> None:
    """``--report PATH``, and the old ``--json FILE`` as its deprecated spelling."""
    add(parser, "--report", help=help)
    add_deprecated(parser, "--json", "--report", dest="report")


def write_report(path, report, *, compact: bool = False):
    """Write a command's JSON report to ``path`` (folders made as needed) and return the path; what
    JSON cannot hold (paths, dtypes) is written as its string."""
    from pathlib import Path
    import json
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=None if compact else 2, default=str) + "\n")
    return path


def add_group(subparsers, name: str, help: str, actions, *, dest: str, required: bool = True):
    """A command group (``repvit detect ACTION``): one sub-parser per module of ``actions``."""
    parser = subparsers.add_parser(name, help=help)
    sub = parser.add_subparsers(dest=dest, metavar="ACTION", required=required)
    for module in actions:
        module.register(sub)
    return parser


def one_path(values, flag: str):
    """The single path of an option that takes several elsewhere (``--images``) where a command needs one."""
    if values is None or isinstance(values, str):
        return values
    if len(values) != 1:
        raise ValueError(f"{flag} takes one folder here, got {len(values)}: {' '.join(map(str, values))}")
    return values[0]


def image_source(values):
    """What ``--images`` names, for the functions that take a folder, a file or a list of files:
    None, the one path given, or every image file of the paths given (folders expanded)."""
    if not values or isinstance(values, str):
        return values or None
    if len(values) == 1:
        return values[0]
    from ..classification.eval_predict import expand_images
    return expand_images(values)


def input_images(paths, *, skip_bad: bool, what: str = "the images given") -> list:
    """The image files of the positional ``IMAGE`` arguments (folders expanded), each decoded before the
    first is used: a bad file stops the command with one error listing every bad file, or with
    ``--skip-bad`` is left out; what was skipped is counted by reason on stderr."""
    from ..classification.eval_predict import expand_images
    from ..data.bad_inputs import check_image_files
    good, bad = check_image_files(expand_images(paths), skip_bad=skip_bad, source=what)
    if bad:
        print(bad.summary(), file=sys.stderr)
    return good


def with_threads(run):
    """``run(args)`` with torch's CPU threads set by ``--threads`` (``args.threads``) while it runs; the
    count used is ``args.threads_used``."""
    import functools

    @functools.wraps(run)
    def wrapped(args):
        from ..engine.timing import resolve_threads, torch_threads
        with torch_threads(resolve_threads(args.threads)[0]) as used:
            args.threads_used = used
            return run(args)
    return wrapped


def markdown_table() -> str:
    """The shared options as the Markdown table in docs/cli.md."""
    rows = ["| option | meaning | default |", "|---|---|---|"]
    for opt in SHARED:
        spelling = ", ".join(f"`{f}`" for f in sorted(opt.flags, key=len)) + (f" `{opt.metavar}`" if opt.metavar else "")
        if opt.nargs == "+":
            spelling += " (one or more)"
        default = ("-" if opt.metavar is None or opt.default is None
                   else opt.default if opt.default == PER_COMMAND else f"`{opt.default}`")
        rows.append(f"| {spelling} | {opt.meaning} | {default} |".replace("N|auto", "N\\|auto"))
    return "\n".join(rows)


def deprecated_table() -> str:
    return "\n".join(["| old spelling | write instead |", "|---|---|"]
                     + [f"| `{old}` | `{new}` |" for old, new in DEPRECATED.items()])


if __name__ == "__main__":
    print(markdown_table() + "\n\n" + deprecated_table())
