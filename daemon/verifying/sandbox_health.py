"""Whether the execution stage can judge at all: the sandbox's availability, as the worker,
``/readyz``, ``selfdistill status`` and the alert see it.

The sandbox fails closed (``verify.sandbox.require``): where a required isolation property
is missing, every run is refused before the candidate's code starts. That must not look
like a stream of ordinary failed candidates. Each refusal is counted by what was missing,
the gauge ``selfdistill_sandbox_available`` drops to 0 (the ``SandboxUnavailable`` alert),
and the verify worker's ``/readyz`` answers 503 naming the stage and the missing
properties, which ``status`` shows.

The state comes from a probe (an empty run, so no candidate code is involved) when a worker
starts and every :data:`RECHECK_S` seconds after, and from every real run in between: a
refused run marks the stage unavailable at once, a run that got its properties marks it
available.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from daemon.verifying.metrics import SANDBOX_AVAILABLE, SANDBOX_REFUSED
from daemon.verifying.sandbox import SandboxConfig, SandboxResult
from daemon.verifying.sandbox_server import run_candidate

#: Seconds between probes while nothing else says how the sandbox is.
RECHECK_S = 60.0


@dataclass(frozen=True)
class SandboxHealth:
    """The stage's state: available, or the properties (or the failure) that stop it."""

    available: bool
    properties: tuple[str, ...]
    missing: tuple[str, ...]
    detail: str
    checked_at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "properties": list(self.properties),
            "missing": list(self.missing),
            "detail": self.detail,
        }


def health_of(result: SandboxResult) -> SandboxHealth:
    """What one run says of the sandbox: only a refusal (or a sandbox that could not start)
    says it is unavailable; a candidate that failed says nothing against it."""
    unavailable = result.reason == "unavailable" or (
        result.reason == "error" and not result.properties
    )
    return SandboxHealth(
        available=not unavailable,
        properties=result.properties,
        missing=result.missing,
        detail=result.detail if unavailable else "ok",
        checked_at=time.time(),
    )


def probe(config: SandboxConfig) -> SandboxHealth:
    """Run nothing (empty code, empty tests) in the sandbox and see whether it is allowed."""
    return health_of(run_candidate("", "", config))


@dataclass
class SandboxMonitor:
    """The process's view of its sandbox; thread-safe (the worker judges on one thread and
    ``/readyz`` asks on another)."""

    config: SandboxConfig
    recheck_s: float = RECHECK_S
    _health: SandboxHealth | None = None
    _probing: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def health(self) -> SandboxHealth:
        """The current state, probing first if it is unknown or old."""
        with self._lock:
            current = self._health
        if current is None or time.time() - current.checked_at > self.recheck_s:
            current = self._set(probe(self.config))
        return current

    def cached(self) -> SandboxHealth | None:
        """The last known state without waiting (for ``/readyz``); an old one starts a probe
        in the background, so a sandbox that came back is seen without a code candidate."""
        with self._lock:
            current = self._health
            old = current is not None and time.time() - current.checked_at > self.recheck_s
            if old and self._probing is None:
                self._probing = threading.Thread(target=self._probe, daemon=True)
                self._probing.start()
            return current

    def _probe(self) -> None:
        try:
            self._set(probe(self.config))
        finally:
            with self._lock:
                self._probing = None

    def observe(self, result: SandboxResult) -> None:
        """Learn from a real run; count a refusal by what it lacked."""
        health = self._set(health_of(result))
        if not health.available:
            why = ",".join(result.missing) or (
                "error" if result.reason == "error" else "unreachable"
            )
            SANDBOX_REFUSED.labels(why).inc()

    def _set(self, health: SandboxHealth) -> SandboxHealth:
        with self._lock:
            self._health = health
        SANDBOX_AVAILABLE.labels("execution").set(1 if health.available else 0)
        return health


_monitors: dict[str, SandboxMonitor] = {}
_monitors_lock = threading.Lock()


def monitor_for(config: SandboxConfig) -> SandboxMonitor:
    """One monitor per sandbox configuration in this process."""
    key = config.model_dump_json()
    with _monitors_lock:
        if key not in _monitors:
            _monitors[key] = SandboxMonitor(config)
        return _monitors[key]
