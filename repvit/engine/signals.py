"""How a training run stops: a non-finite loss is an error naming where it happened; Ctrl-C or
SIGTERM asks the run to save at the next step boundary (a second signal stops at once)."""
from __future__ import annotations

import signal
import threading
from typing import Optional


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


class StopSignal:
    """First Ctrl-C (or SIGTERM) asks the run to save and stop at the next step boundary; a
    second one stops immediately."""

    def __init__(self, log=print):
        self.requested = False
        self.signum: Optional[int] = None  # the first stop signal received
        self.log = log
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum
        self.log(f"{signal.Signals(signum).name} received: saving a checkpoint at the end of this step, then "
                 "stopping (send it again to stop at once without saving)")


def leave_stop_signals_to_main(worker_id: int) -> None:
    """``worker_init_fn`` of training loaders: Ctrl-C, and SIGTERM from `timeout`, `docker stop` or a
    cluster's preemption, reach the whole process group; a worker killed by one would crash the main
    process before it could save. The main process decides how to stop and shuts its workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
