"""Waiting for an operator's stop (Ctrl-C or SIGTERM) in processes that have no loop of their own."""

from __future__ import annotations

import signal
import threading


def wait_for_stop_signal() -> int:
    """Block until SIGINT or SIGTERM; return the signal number. Call from the main thread."""
    got: list[int] = []
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        got.append(signum)
        done.set()

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    while not done.wait(0.5):
        pass
    return got[0]
