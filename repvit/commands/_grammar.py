"""The command line's side of the option grammar (``repvit.engine.grammar``, where every shared option
has its one spelling and meaning): the grammar's names re-exported for the commands, plus what only
commands need (``--report`` and its writer, command groups, the images a command is given, ``--threads``
applied around a run). ``python -m repvit.commands._grammar`` prints the tables of docs/cli.md.
"""
from __future__ import annotations

import sys

from ..engine.grammar import (BY_FLAG, DEPRECATED, ONOFF, PER_COMMAND, SHARED, Deprecated,  # noqa: F401
                              FlagOrDeprecatedFile, NameOrBare, Retired, Shared, add, add_deprecated, add_retired,
                              deprecated_table,
                              markdown_table, row, warn_once)


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


if __name__ == "__main__":
    print(markdown_table() + "\n\n" + deprecated_table())
