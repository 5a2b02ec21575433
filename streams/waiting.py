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
import time

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
        DEPENDENCY_UNAVAILABLE.labels(topic).set(0)

    def down(self, cause: str) -> None:
        """Waiting on ``cause`` (logged at ERROR when it is new)."""
        cause = cause[:MAX_CAUSE]
        if cause != self.cause:
            log.error("%s: waiting, nothing dead-lettered: %s", self.name, cause)
        DEPENDENCY_FAILURES.labels(self.topic).inc()
        DEPENDENCY_UNAVAILABLE.labels(self.topic).set(1)
        self.cause = cause

    def probe_failed(self, exc: BaseException) -> None:
        self.probe_failures += 1
        self.down(describe(exc))

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

    def clear(self) -> None:
        """The loop stopped: a stopped worker is not waiting on anything."""
        DEPENDENCY_UNAVAILABLE.labels(self.topic).set(0)
