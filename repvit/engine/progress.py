"""What a person watching a run sees: a progress bar on a terminal, plain periodic lines in a log.

Only rank 0 reports. Every message also goes to ``OUTPUT/train.log``.
"""
from __future__ import annotations

import datetime
import sys
import time
from pathlib import Path
from typing import Optional

from ..progress_bar import Progress, is_terminal


class Reporter:
    def __init__(self, enabled: bool = True, log_file: Optional[Path] = None, interval: int = 50,
                 stream=None, bar_stream=None, tty: Optional[bool] = None):
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.bar_stream = bar_stream or sys.stderr
        self.log_file = log_file
        self.interval = max(1, interval)
        if tty is None:
            tty = is_terminal(self.bar_stream)
        self.tty = enabled and tty
        self._bar = None

    def set_log_file(self, path: Optional[Path]) -> None:
        self.log_file = path

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self._bar is None or not self._bar.write(message, self.stream):
            print(message, file=self.stream, flush=True)
        if self.log_file is not None:
            with open(self.log_file, "a") as f:
                f.write(message + "\n")

    # -- one epoch of steps ---------------------------------------------------------------------
    def start_epoch(self, epoch: int, epochs: int, total_steps: int, first_step: int = 0) -> None:
        self.epoch, self.epochs, self.total, self.first = epoch, epochs, total_steps, first_step
        self.t0 = time.perf_counter()
        self.images = 0
        if self.tty:
            self._bar = Progress(total_steps, initial=first_step, desc=f"epoch {epoch + 1}/{epochs}",
                                 stream=self.bar_stream, tty=True, leave=False)
            if not self._bar.shown:  # no bar without tqdm: plain lines instead
                self.tty, self._bar = False, None
            else:
                self._bar.update(0)  # drawn from the start of the epoch

    def step(self, step: int, loss: float, lr: float, batch_images: int) -> None:
        """``step`` is the 0-based index of the step just finished; ``batch_images`` counts all ranks."""
        if not self.enabled:
            return
        self.images += batch_images
        elapsed = time.perf_counter() - self.t0
        done = step + 1 - self.first
        rate = self.images / elapsed if elapsed > 0 else 0.0
        eta = elapsed / done * (self.total - step - 1) if done else 0.0
        if self._bar is not None:
            self._bar.set_postfix(f"loss {loss:.4f} lr {lr:.2e} {rate:.1f} img/s")
            self._bar.update(1)
        elif (step + 1) % self.interval == 0 or step + 1 == self.total:
            self.log(f"epoch {self.epoch + 1}/{self.epochs} step {step + 1}/{self.total} loss {loss:.4f} "
                     f"lr {lr:.3e} {rate:.1f} img/s eta {format_seconds(eta)}")

    def end_epoch(self) -> float:
        if self._bar is not None:
            self._bar.close()  # draws the final state (updates are throttled), then clears the bar
            self._bar = None
        return time.perf_counter() - self.t0


def format_seconds(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(round(seconds))))
