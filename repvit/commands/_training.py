"""What every training command does with a run's outcome (shared by ``train``, ``detect train``,
``segment train`` and ``sam distill``): exit 0 when done, 3 with one line when the loss became
non-finite, and the shell's 128 + signal (130 Ctrl-C, 143 SIGTERM) when a signal stopped the run
after saving."""
from __future__ import annotations

import signal
import sys
from typing import Callable


def run_training(command: str, train: Callable[[], dict]) -> int:
    from ..engine.signals import NonFiniteLossError
    try:
        summary = train()
    except NonFiniteLossError as err:
        print(f"{command}: {err}", file=sys.stderr)
        return 3
    if summary.get("interrupted"):
        return 128 + int(summary.get("signal") or signal.SIGINT)
    return 0
