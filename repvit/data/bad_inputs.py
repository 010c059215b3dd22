"""What a dataset check found wrong, kept whole: every bad input with its reason, so a run can
either refuse with one error that lists them all (grouped by reason) or skip them and say what
it skipped (counts by reason and the first few files).

Datasets (COCO/VOC detection data, SAM's COCO evaluation, segmentation folders) check everything
when they are built, before a training step or an evaluation starts, and record each problem
here with a short reason ("missing image", "negative width", ...) and a sentence saying exactly
what is wrong. ``read_image_size`` is the image check they share: a full decode.

Commands that run on image files given by name (``repvit predict``, ``detect predict``, ``segment
predict``) check them the same way before the first is used (``check_image_files``): a bad file
stops the command with one error naming every bad file, or with ``--skip-bad`` is left out and
counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Type, Union

from PIL import Image

# Error messages list at most this many files per reason (the counts stay exact; the whole list is
# on the error's ``bad_inputs``).
LIST_PER_REASON = 50
SKIP_BAD_HINT = ("fix these, or pass --skip-bad (skip_bad=True) to leave them out and use the rest "
                 "(what is skipped is then counted and listed in the log)")


@dataclass(frozen=True)
class BadInput:
    reason: str                         # short and countable: "missing image", "negative width", ...
    file: str                           # the file to fix (an image, a label or an annotation file)
    detail: str                         # what exactly is wrong
    annotation: Optional[int] = None    # the annotation's id, where the problem is one annotation

    def where(self) -> str:
        return self.file if self.annotation is None else f"{self.file}, annotation {self.annotation}"


class BadInputs:
    """An ordered record of bad inputs; ``summary()`` for a log, ``raise_if_any()`` to refuse."""

    def __init__(self, source: str = ""):
        self.source = source
        self.entries: list[BadInput] = []

    def add(self, reason: str, file: str, detail: str, annotation: Optional[int] = None) -> None:
        self.entries.append(BadInput(reason, str(file), detail, annotation))

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[BadInput]:
        return iter(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def by_reason(self) -> dict[str, list[BadInput]]:
        """Entries grouped by reason, reasons in the order first met."""
        groups: dict[str, list[BadInput]] = {}
        for entry in self.entries:
            groups.setdefault(entry.reason, []).append(entry)
        return groups

    def counts(self) -> dict[str, int]:
        return {reason: len(group) for reason, group in self.by_reason().items()}

    def summary(self, files: int = 3) -> str:
        """What was skipped, for the run's log: one line per reason with its count and first files."""
        if not self.entries:
            return f"{self.source}: no bad input" if self.source else "no bad input"
        lines = [f"skipped {len(self.entries)} bad input{'s' if len(self.entries) != 1 else ''}"
                 + (f" in {self.source}" if self.source else "") + ":"]
        for reason, group in self.by_reason().items():
            shown = ", ".join(e.where() for e in group[:files])
            more = f", ... ({len(group) - files} more)" if len(group) > files else ""
            lines.append(f"  {reason}: {len(group)} ({shown}{more})")
        return "\n".join(lines)

    def error_message(self, fix: str) -> str:
        """Every bad input, grouped by reason, then what to do."""
        lines = [f"{self.source + ': ' if self.source else ''}{len(self.entries)} bad input"
                 f"{'s' if len(self.entries) != 1 else ''} ({', '.join(f'{n} {r}' for r, n in self.counts().items())})"
                 ":"]
        for reason, group in self.by_reason().items():
            lines.append(f"  {reason} ({len(group)}):")
            lines += [f"    {e.where()}: {e.detail}" for e in group[:LIST_PER_REASON]]
            if len(group) > LIST_PER_REASON:
                lines.append(f"    ... and {len(group) - LIST_PER_REASON} more")
        lines.append(fix)
        return "\n".join(lines)

    def raise_if_any(self, error: Type[Exception], fix: str) -> None:
        """Raise ``error`` listing every bad input (and carrying them as ``bad_inputs``) if there is one."""
        if self.entries:
            exc = error(self.error_message(fix))
            exc.bad_inputs = self
            raise exc


class BadImagesError(ValueError):
    """Image files that do not decode; the message lists them all, ``bad_inputs`` holds them."""


def check_image_files(paths: Sequence[Union[str, Path]], *, skip_bad: bool = False, source: str = "",
                      fix: str = SKIP_BAD_HINT) -> tuple[list[Path], BadInputs]:
    """``(good, bad)``: the files of ``paths`` that decode whole (``read_image_size``), in order, and the
    others with their reasons. Without ``skip_bad`` one bad file refuses them all before any is used
    (``BadImagesError`` listing every bad file, then ``fix``); with it the bad ones are left out, and
    nothing left is an error too."""
    bad = BadInputs(source)
    good = []
    for path in map(Path, paths):
        size, reason, detail = read_image_size(path)
        if size is None:
            bad.add(reason, str(path), detail)
        else:
            good.append(path)
    if not skip_bad:
        bad.raise_if_any(BadImagesError, fix)
    if not good:
        raise BadImagesError(f"{source or 'the images'}: no readable image\n{bad.summary()}")
    return good, bad


def read_image_size(path: Path) -> tuple[Optional[tuple[int, int]], str, str]:
    """``((width, height), "", "")`` once the whole file decodes, else ``(None, reason, detail)``.

    JPEGs decode at 1/8 scale (libjpeg's DCT scaling), several times faster, yet every byte is
    still read, so a truncated file is caught.
    """
    try:
        with Image.open(path) as im:
            size = im.size
            im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except FileNotFoundError:
        return None, "missing image", "image file not found"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:   # PIL's for broken files
        if "truncated" in str(err):
            return None, "truncated image", f"the file ends early: {err}"
        return None, "unreadable image", f"unreadable image ({err})"
    return size, "", ""
