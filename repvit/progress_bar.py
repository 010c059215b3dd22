"""The project's one progress bar: a tqdm bar when a person watches a terminal, nothing otherwise.

Downloads, training epochs, ``sam eval`` images and ``sam predict --everything`` decoder batches
all draw through ``Progress``. A bar appears only when the stream is a terminal (logs and pipes
would fill with carriage returns), tqdm is installed (it comes with timm) and the caller has not
asked for quiet (``enabled=False``, the commands' ``--quiet``); otherwise every call does nothing,
and callers that want plain lines in a log (the training ``Reporter``) print those themselves.
The bar is drawn on first use, so a run that never reports shows nothing.

This module is the bottom layer: it imports nothing from ``repvit``.
"""
from __future__ import annotations

import sys
from typing import Optional


def is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:   # a closed stream
        return False


class Progress:
    """``update(n)`` / ``update_to(done, total)`` / ``set_postfix(text)`` / ``write(line)`` / ``close()``.

    ``tty`` overrides the terminal check (tests draw into a ``StringIO``); ``leave`` keeps the
    finished bar on screen; further keyword arguments go to tqdm (``unit_scale``, ``unit_divisor``...).
    """

    def __init__(self, total: Optional[int] = None, *, desc: Optional[str] = None, unit: str = "it",
                 enabled: bool = True, stream=None, tty: Optional[bool] = None, leave: bool = True,
                 initial: int = 0, **tqdm_options):
        self.stream = stream if stream is not None else sys.stderr
        self.shown = bool(enabled) and (is_terminal(self.stream) if tty is None else bool(tty))
        if self.shown:
            try:
                import tqdm  # noqa: F401
            except ImportError:   # no bar without tqdm
                self.shown = False
        self._options = dict(total=total, desc=desc, unit=unit, file=self.stream, leave=leave, initial=initial,
                             dynamic_ncols=True, **tqdm_options)
        self._bar = None
        self._postfix = None

    def _draw(self):
        if self._bar is None and self.shown:
            from tqdm import tqdm
            self._bar = tqdm(**self._options)
            if self._postfix:
                self._bar.set_postfix_str(self._postfix, refresh=False)
        return self._bar

    def update(self, n: int = 1) -> None:
        bar = self._draw()
        if bar is not None:
            bar.update(n)

    def update_to(self, done: int, total: Optional[int] = None) -> None:
        """Move to ``done`` of ``total`` (callbacks that report counts, not increments)."""
        if total is not None and self._bar is None:
            self._options["total"] = total
        bar = self._draw()
        if bar is not None:
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

    def set_postfix(self, text: str) -> None:
        """Text after the counts, shown with the next update."""
        if self._bar is None:
            self._postfix = text
        else:
            self._bar.set_postfix_str(text, refresh=False)

    def write(self, line: str, stream=None) -> bool:
        """Print ``line`` to ``stream`` (default: the bar's) without breaking a drawn bar; returns
        False, writing nothing, when no bar is drawn (the caller prints as usual)."""
        if self._bar is None:
            return False
        self._bar.write(line, file=stream if stream is not None else self.stream)
        return True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.refresh()   # updates are throttled: show the final count before closing
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
