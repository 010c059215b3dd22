"""The option grammar of every ``repvit`` command: one spelling, one meaning, one default per knob.

``SHARED`` holds every option that more than one command (or option table) offers, each row with
what it means. Commands add a row with ``add(parser, flag)``; the option tables of the training
commands (``repvit.engine.option_table.LOOP``, the classification table, SAM distillation's) take a
row with ``row(flag)``. Both mark the option with its row, so ``tests/test_cli_grammar.py`` can tell
an option taken from here from one re-declared by hand, and can check that no spelling means two
things. ``docs/cli.md`` prints the table (``python -m repvit.commands._grammar``).

A default is the row's wherever the option appears, except where the row says ``per command``:
then the meaning is the same and the value is a recipe's (each command's ``--help`` states it), or
the row gives the reason the value differs. ``DEPRECATED`` lists the old spellings that work for
one release: hidden from ``--help``, stored into the new option, with one line on stderr.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Optional

from .distributed import DEFAULT_TIMEOUT_MINUTES, timeout_minutes
from .timing import threads_option

PER_COMMAND = "per command"   # a default each command chooses (stated in its --help)
ONOFF = "on/off"              # the kind of an option that is --flag / --no-flag (argparse.BooleanOptionalAction)


@dataclass(frozen=True)
class Shared:
    flags: tuple             # every spelling, the long one first
    metavar: Any             # None: a flag; ONOFF: --flag / --no-flag
    meaning: str
    default: Any = None
    type: Any = None         # None: the string as given
    nargs: Any = None
    choices: Any = None      # None: the command's own choices (if any)
    why: str = ""            # why the default is per command, where the value is not just a recipe's


def _row(flags, metavar, meaning, **kw) -> Shared:
    return Shared(tuple(flags), metavar, meaning, **kw)


SHARED: tuple = (
    # -- what the command reads -------------------------------------------------------------------------
    _row(("--config", "-c"), "CONFIG", "YAML file of option defaults; flags on the command line override it "
                                       "(training commands)", default=PER_COMMAND),
    _row(("--pretrained",), "NAME[:TAG]", "official weights by release name (`repvit weights` lists them), "
                                          "e.g. repvit_m1_1, repvit_m1_1:dist_300e, repvit_sam"),
    _row(("--checkpoint",), "PATH", "a weights file: saved by this library, or an official/timm layout the "
                                    "command reads"),
    _row(("--random-weights",), None, "deterministic random weights (seed 0): checks the pipeline, the results "
                                      "mean nothing"),
    _row(("--model",), "NAME", "a RepViT variant, e.g. repvit_m0_9 (`repvit info` lists them)",
         default=PER_COMMAND),
    _row(("--family",), "NAME", "which promptable model answers the prompts: repvit_sam (RepViT-M2.3 encoder, "
                                "segment-anything's decoder) or edgetam (RepViT-M1 EdgeTAM in image mode)",
         default="repvit_sam"),
    _row(("--backbone",), "PATH", "initialise the backbone from this classification checkpoint (ours, official, "
                                  "timm), e.g. the best.pth of `repvit train`"),
    _row(("--teacher",), "NAME", "the network distilled from: an architecture name the command lists (or, in "
                                 "`repvit train`, one of our checkpoints)", default=PER_COMMAND),
    _row(("--teacher-checkpoint",), "FILE", "weights of --teacher (nothing is downloaded)"),
    _row(("--data",), "PATH", "the input data: a dataset root, a folder or an annotation file"),
    _row(("--val",), "PATH", "the validation data: a folder held out (instead of splitting --data)"),
    _row(("--val-fraction",), "SHARE", "share of --data held out for validation", default=PER_COMMAND, type=float),
    _row(("--val-split",), "SPLIT", "which part of --data validates, in the forms the command lists (repvit "
                                    "train: a folder name under --data; segment: folders, sequence:P[,Q] or none)",
         default=PER_COMMAND),
    _row(("--images",), "PATH", "input images only (files or folders), never labels or outputs", nargs="+"),
    _row(("--annotations",), "PATH", "a COCO instances JSON file (overrides what --data finds)"),
    _row(("--num-classes",), "N", "number of classes of the model", default=PER_COMMAND, type=int),
    _row(("--ignore-index",), "N", "label value that is not scored", default=PER_COMMAND, type=int),
    _row(("--max-images",), "N", "use at most N images of the input (quick runs); default every one",
         type=int),
    _row(("--max-frames",), "N", "use at most N frames of a video", default=PER_COMMAND, type=int,
         why="`repvit track` streams frames in constant memory (default: all); the `repvit sam demo` video tab "
             "holds a clip's frames in memory (default: 60)"),
    _row(("--prompts",), "FILE.json", "a prompt file: a JSON list of objects {\"points\": [[x, y, label]], "
                                      "\"box\": [x0, y0, x1, y1], \"object\": K, \"frame\": N}; object (default 1) "
                                      "and frame (default: the first) matter where frames are tracked, on an "
                                      "image every entry is one object and frame is 0 or absent"),
    _row(("--point",), "X,Y[,LABEL]", "a point prompt in pixels of the original image; LABEL 1 (default) is on "
                                      "the object, 0 background; repeatable"),
    _row(("--box",), "X0,Y0,X1,Y1", "a box prompt in pixels of the original image; repeatable"),
    # -- where it runs ----------------------------------------------------------------------------------
    _row(("--device",), "DEVICE", "auto, cpu, cuda or cuda:N; auto is the first GPU when one is visible, "
                                  "else the CPU", default="auto"),
    _row(("--threads",), "N|auto", "CPU threads for torch per process: a count, or auto (the cores idle when "
                                   "the command starts)", default="auto", type=threads_option),
    _row(("--workers", "-j"), "N", "data-loading worker processes per rank", default=PER_COMMAND, type=int),
    _row(("--seed",), "N", "random seed", default=0, type=int),
    _row(("--dist-timeout",), "MINUTES", "under torchrun, how long a rank waits for the others at a collective "
                                         "before the run fails", default=DEFAULT_TIMEOUT_MINUTES,
         type=timeout_minutes),
    _row(("--runtime",), "NAME", "what runs the model: torch, or an exported graph on the runtime named",
         default="torch"),
    _row(("--export-dir",), "DIR", "the folder of a model's exported graphs: used when it holds them for these "
                                   "weights, else they are exported there first"),
    _row(("--channels-last",), None, "run the model in the channels_last memory format"),
    # -- what it writes -----------------------------------------------------------------------------------
    _row(("--output", "-o"), "PATH", "what the command writes: a file or a folder as the command's kind "
                                     "(an explicit file name is used as given)", default=PER_COMMAND),
    _row(("--overwrite",), None, "replace what --output already holds (a run, outputs) instead of continuing "
                                 "or skipping it"),
    _row(("--resume",), "PATH|auto", "continue a run: the PATH of its last.pth, or auto (OUTPUT/last.pth when "
                                     "it exists)"),
    _row(("--report",), "PATH", "write the command's results as a JSON report to this file"),
    _row(("--json",), None, "print JSON on stdout instead of text"),
    _row(("--quiet",), None, "no progress output (bar or lines), only the results"),
    # -- the model's form and size ------------------------------------------------------------------------
    _row(("--img-size",), "N", "input resolution (square side, pixels)", default=PER_COMMAND, type=int),
    _row(("--batch-size", "-b"), "N", "images (or prompts) per step", default=PER_COMMAND, type=int),
    _row(("--ema",), None, "use the EMA weights stored in the checkpoint"),
    _row(("--unfused",), None, "run the training-form model: BatchNorms and branches kept (default: fused)"),
    _row(("--skip-bad",), None, "skip (and count, by reason) bad inputs instead of stopping"),
    # -- export -------------------------------------------------------------------------------------------
    _row(("--format",), "FORMAT", "the export format (onnx, openvino, litert, executorch, coreml, torchscript: "
                                  "those the command lists); `repvit sam export` takes several, comma-separated",
         default=PER_COMMAND,
         why="one file (repvit export, segment export): onnx; `repvit sam export` writes a folder: every format "
             "whose package is installed"),
    _row(("--opset",), "N", "ONNX opset (default: the exporter's, 18)", type=int),
    _row(("--coreml-precision",), "PRECISION", "Core ML compute precision", default="float16",
         choices=("float16", "float32")),
    _row(("--fixed-batch",), "N", "the batch size fixed in an exported program (ExecuTorch)", default=1, type=int),
    _row(("--num-real",), "N", "real images an export is checked on (from --images, or photos shipped with "
                               "matplotlib)", default=PER_COMMAND, type=int),
    _row(("--tol",), "DIFF", "largest allowed |reference - candidate| output difference", default=PER_COMMAND,
         type=float),
    _row(("--int8",), None, "also write an INT8 copy (<name>-int8 beside the float file), calibrated on "
                            "--calib-images and kept only if it stays close to the float model on real images"),
    _row(("--calib-images",), "PATH", "a folder of real (training) images to calibrate INT8 ranges on"),
    _row(("--calib-count",), "N", "calibration images taken from --calib-images", default=PER_COMMAND, type=int),
    _row(("--int8-weights",), "ENCODING", "INT8 weights of ONNX Runtime and OpenVINO: int7 (7-bit range) never "
                                          "saturates in their x86 kernels and is about as fast as int8; int8 is "
                                          "for CPUs with VNNI and ARM (on x86 without VNNI, e.g. AMD Zen 3, the "
                                          "kernels saturate: -1.1 top-1 points measured with ONNX Runtime); "
                                          "uint8 (ONNX Runtime only) never saturates either, slower",
         default="int7", choices=("int7", "uint8", "int8")),
    # -- timing -------------------------------------------------------------------------------------------
    _row(("--warmup",), "N", "untimed calls per model before timing", default=PER_COMMAND, type=int),
    _row(("--repeats",), "N", "timed calls per model, the median reported (`repvit bench`: per interleaved "
                              "round)", default=PER_COMMAND, type=int),
    # -- training: the loop -------------------------------------------------------------------------------
    _row(("--epochs",), "N", "passes over the training data", default=PER_COMMAND, type=int),
    _row(("--lr",), "LR", "the peak learning rate (after warm-up)", default=PER_COMMAND, type=float),
    _row(("--weight-decay",), "WD", "weight decay (never applied to norms and biases)", default=PER_COMMAND,
         type=float),
    _row(("--schedule",), "NAME", "the learning-rate decay after warm-up (the command lists its choices)",
         default=PER_COMMAND),
    _row(("--milestones",), "EPOCH", "epochs at which --schedule step multiplies the lr by 0.1", default=PER_COMMAND,
         type=int, nargs="+"),
    _row(("--power",), "P", "power of --schedule poly", default=0.9, type=float),
    _row(("--min-lr",), "LR", "the learning rate the decay ends at", default=PER_COMMAND, type=float),
    _row(("--warmup-epochs",), "EPOCHS", "linear warm-up length in epochs (stepped per iteration)",
         default=PER_COMMAND, type=float),
    _row(("--warmup-iters",), "ITERS", "linear warm-up length in iterations (capped at half the run)",
         default=PER_COMMAND, type=int),
    _row(("--warmup-ratio",), "R", "the warm-up starts at this fraction of --lr", default=0.001, type=float),
    _row(("--clip-grad",), "MAX", "gradient-clipping threshold, read as --clip-mode says; 0 turns clipping off",
         default=PER_COMMAND, type=float,
         why="repvit train: 0.02 with --clip-mode agc (the paper's recipe); the dense tasks and sam distill: 0, "
             "off (their official recipes clip nothing)"),
    _row(("--clip-mode",), "MODE", "how --clip-grad clips: norm (the global gradient norm), value (each gradient "
                                   "entry) or agc (adaptive, relative to each weight's norm)",
         default=PER_COMMAND, choices=("norm", "value", "agc"),
         why="repvit train: agc (the paper's recipe); elsewhere norm"),
    _row(("--sync-bn",), ONOFF, "SyncBatchNorm across processes under torchrun, where BatchNorm statistics "
                                "are trained", default=PER_COMMAND,
         why="off in repvit train: 256 images per GPU give each rank steady statistics (the paper's recipe "
             "does not sync); on in the dense tasks and sam distill: 2-8 images per GPU do not (the "
             "mmdet/mmseg recipes sync)"),
    _row(("--norm-eval",), ONOFF, "keep the backbone's BatchNorm statistics frozen (the official dense recipes)",
         default=True),
    _row(("--frozen-stages",), "N", "-1 none, 0 the stem, N the stem and N stages", default=-1, type=int),
    _row(("--eval-interval",), "N", "validate every N epochs (and after the last)", default=1, type=int),
    _row(("--log-interval",), "N", "steps between log lines when not on a terminal", default=PER_COMMAND,
         type=int),
    _row(("--stop-after-epoch",), "N", argparse.SUPPRESS, type=int),   # test hook: SIGKILL after this epoch's save
)



def spellings(opt: Shared) -> tuple:
    """Every spelling of row ``opt`` on a command line (an on/off option's --no-X too)."""
    return opt.flags + ((f"--no-{opt.flags[0][2:]}",) if opt.metavar == ONOFF else ())


BY_FLAG = {flag: opt for opt in SHARED for flag in spellings(opt)}

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
    "--point center|farthest (sam eval; refused: --point is a prompt X,Y elsewhere)": "--point-at center|farthest",
    "--skip-bad-images (train, eval; skip_bad_images: in YAML)": "--skip-bad",
    "--max-images N (sam export; refused: --max-images is the input's image count elsewhere)": "--num-real N",
    "--sched NAME (train; sched: in YAML)": "--schedule NAME",
    "--scale MIN MAX (segment train; --scale is the crop area in train)": "--ratio-range MIN MAX",
    "--model NAME (sam predict, the model family)": "--family NAME",
    "--formats LIST (sam export)": "--format LIST",
    "--batch-size N (export, the ExecuTorch program's batch)": "--fixed-batch N",
    "--limit N (sam eval)": "--max-images N",
    "--video-max-frames N (sam demo)": "--max-frames N",
    "--runs N (roadmap)": "--repeats N",
    "--iters N (bench)": "--repeats N",
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


class Retired(argparse.Action):
    """An old spelling that meant something else in one command than the spelling means everywhere else:
    refused with the spelling to write instead, so that no spelling is read with two meanings."""

    def __init__(self, option_strings, dest, *, replacement: str, meaning: str, nargs=None, **kwargs):
        kwargs.update(help=argparse.SUPPRESS, default=argparse.SUPPRESS)
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)
        self.replacement, self.meaning = replacement, meaning

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} {values} is no longer read by {parser.prog}: write {self.replacement} "
                     f"({option_string} is {self.meaning} in every command)")


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


def _spec(opt: Shared, help: Optional[str], default: Any) -> dict:
    """argparse keyword arguments of row ``opt``: ``default`` only where the row leaves it to the command."""
    spec: dict = {"help": help or opt.meaning}
    if opt.metavar is None:
        return {**spec, "action": "store_true", "default": False}
    if opt.metavar == ONOFF:
        value = opt.default if opt.default != PER_COMMAND else default
        return {**spec, "action": argparse.BooleanOptionalAction, "default": value}
    spec.update(metavar=opt.metavar, default=opt.default if opt.default != PER_COMMAND else default)
    for key in ("type", "nargs", "choices"):
        if getattr(opt, key) is not None:
            spec[key] = getattr(opt, key)
    return spec


def add(parser, flag: str, *, help: Optional[str] = None, default: Any = None, **kwargs) -> argparse.Action:
    """Add the grammar's option ``flag`` to ``parser`` (its spellings, metavar, type and nargs from
    ``SHARED``); ``default`` only where the table leaves it to the command; ``help`` adds the
    command's own words to the grammar's meaning. The option is marked with its row (``.grammar``)."""
    opt = BY_FLAG[flag]
    spec = _spec(opt, help, default)
    if (spec.get("default") not in (None, False, argparse.SUPPRESS) and spec["help"] is not argparse.SUPPRESS
            and "[" not in spec["help"]):
        spec["help"] += f" [{spec['default']}]"
    spec.update(kwargs)
    action = parser.add_argument(*opt.flags, **spec)
    action.grammar = opt
    return action


def row(flag: str, *, help: Optional[str] = None, **kwargs) -> tuple:
    """The grammar's option ``flag`` as a row ``(flags, argparse kwargs)`` of an option table
    (``repvit.engine.option_table``); ``default`` only where the table leaves it to the command.
    The kwargs carry the row under ``grammar``, which ``option_table.add_options`` marks the option with."""
    opt = BY_FLAG[flag]
    default = kwargs.pop("default", None)
    if opt.default != PER_COMMAND and default is not None and default != opt.default:
        raise ValueError(f"{flag}: the grammar's default is {opt.default!r}, not {default!r}")
    spec = _spec(opt, help, default)
    spec.update(kwargs, grammar=opt)
    return opt.flags, spec


def add_deprecated(parser, old: str, new: str, *, dest: str, nargs=None, type=None, **kwargs) -> argparse.Action:
    """The old spelling ``old`` of ``new``: converted with ``new``'s ``type`` (and checked against its
    ``choices``), stored in its ``dest``."""
    return parser.add_argument(old, dest=dest, action=Deprecated, replacement=new, nargs=nargs, type=type, **kwargs)


def add_retired(parser, old: str, new: str, *, meaning: str) -> argparse.Action:
    """The old spelling ``old`` of ``new`` in this command, refused (``Retired``): ``old`` is ``meaning`` elsewhere."""
    return parser.add_argument(old, dest=f"retired_{old.lstrip('-').replace('-', '_')}", action=Retired,
                               replacement=new, meaning=meaning)


def markdown_table() -> str:
    """The shared options as the Markdown table in docs/cli.md."""
    rows = ["| option | meaning | default |", "|---|---|---|"]
    for opt in SHARED:
        if opt.meaning is argparse.SUPPRESS:
            continue
        flags = sorted(opt.flags, key=len)
        if opt.metavar == ONOFF:
            flags += [f"--no-{opt.flags[0][2:]}"]
        spelling = ", ".join(f"`{f}`" for f in flags) + (f" `{opt.metavar}`" if opt.metavar not in (None, ONOFF)
                                                         else "")
        if opt.nargs == "+":
            spelling += " (one or more)"
        default = ("-" if opt.metavar is None or opt.default is None
                   else opt.default if opt.default == PER_COMMAND else f"`{opt.default}`")
        if opt.why:
            default += f": {opt.why}"
        meaning = opt.meaning + (f" ({', '.join(opt.choices)})" if opt.choices and opt.default != PER_COMMAND
                                 and "int7" not in opt.meaning else "")
        rows.append(f"| {spelling} | {meaning} | {default} |".replace("N|auto", "N\\|auto")
                    .replace("PATH|auto", "PATH\\|auto"))
    return "\n".join(rows)


def deprecated_table() -> str:
    return "\n".join(["| old spelling | write instead |", "|---|---|"]
                     + [f"| `{old}` | `{new}` |" for old, new in DEPRECATED.items()])
