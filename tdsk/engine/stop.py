"""Stopping a run cleanly: SIGINT/SIGTERM set a flag the training loop checks between steps."""
from __future__ import annotations

import contextlib
import signal
import threading


from tdsk._logging import logger


class _StopFlag:
    """SIGINT/SIGTERM set a flag that the loop reads at each step (installed from the main thread only).

    After the first signal the previous handlers are back, so a second Ctrl-C aborts at once.
    """

    def __init__(self):
        self.signum = 0
        self._old: dict = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.signum = signum
        for sig, old in self._old.items():
            signal.signal(sig, old)
        logger.warning(f"{signal.Signals(signum).name} received: writing a checkpoint at the next step, then "
                       "stopping (send it again to abort without one)")

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)
