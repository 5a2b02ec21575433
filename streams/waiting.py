"""Why a worker waits instead of working, said once, where operators look.

A worker waits when its dependency is not usable: the engine is down, refuses the
deployment's credentials, does not serve the configured model, or the handler fails on
every record the same way (:mod:`streams.handling`). While it waits it dead-letters
nothing and commits nothing; what it waits on is the one thing an operator needs, so it is
kept here in words (``/readyz`` shows it, the log says it when it changes) and as the
``selfdistill_dependency_unavailable`` gauge (the alert). It ends at the first batch or
probe that succeeds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from streams.metrics import DEPENDENCY_FAILURES, DEPENDENCY_UNAVAILABLE

log = logging.getLogger(__name__)

#: Longest cause kept: /readyz bodies and log lines stay readable.
MAX_CAUSE = 500


def describe(exc: BaseException) -> str:
    """An exception as ``/readyz`` and the log show it: its type, then its message (the
    engines word theirs for the operator: "the model server refuses the API key ...")."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Waiting:
    """One consumer loop's waiting state: the cause, the gauge, and when to probe again."""

    def __init__(self, topic: str, name: str) -> None:
        self.topic = topic
        self.name = name
        self.cause: str | None = None
        self.probed_at = 0.0  # when the probe last ran (monotonic)
        self.probe_failures = 0  # in a row: the re-probe backs off like the retries
        self._probing: threading.Thread | None = None
        DEPENDENCY_UNAVAILABLE.labels(topic).set(0)

    def down(self, cause: str) -> None:
        """Waiting on ``cause`` (the caller logs it, with what it does next)."""
        DEPENDENCY_FAILURES.labels(self.topic).inc()
        DEPENDENCY_UNAVAILABLE.labels(self.topic).set(1)
        self.cause = cause[:MAX_CAUSE]

    def probe_failed(self, exc: BaseException) -> None:
        """A probe outside any batch failed: logged at ERROR when its cause is new."""
        self.probe_failures += 1
        cause = describe(exc)[:MAX_CAUSE]
        if cause != self.cause:
            log.error("%s: waiting, nothing dead-lettered: %s", self.name, cause)
        self.down(cause)

    def back(self) -> None:
        """A batch or a probe succeeded: whatever it waited on is over."""
        self.probe_failures = 0
        if self.cause is not None:
            log.info("%s: resuming; it waited on %s", self.name, self.cause)
            self.cause = None
        DEPENDENCY_UNAVAILABLE.labels(self.topic).set(0)

    def probe_due(self, backoff_s: float) -> bool:
        """Time to probe again while waiting with no batch to retry (``backoff_s`` apart)."""
        return self.cause is not None and time.monotonic() - self.probed_at >= backoff_s

    def probe_in_background(self, probe: Callable[[], object]) -> None:
        """Probe on a thread of its own (at start, and while waiting with nothing to retry):
        a server that hangs must not hold up consuming, nor a stop. One at a time."""
        if self._probing is not None and self._probing.is_alive():
            return
        self.probed_at = time.monotonic()

        def run() -> None:
            try:
                probe()
            except Exception as exc:
                self.probe_failed(exc)
            else:
                self.back()

        self._probing = threading.Thread(target=run, name=f"{self.name}-probe", daemon=True)
        self._probing.start()

    def clear(self) -> None:
        """The loop stopped: a stopped worker is not waiting on anything."""
        DEPENDENCY_UNAVAILABLE.labels(self.topic).set(0)
