"""``adapter-status``: what each replica actually serves, as the replicas say it.

The registry says what *should* serve; this topic says what *does*. Every replica that
follows ``adapter-events`` writes one record under its own key (its replica id) after every
swap attempt: the version it now routes to, the version the event asked for, ok or refused
and why. It repeats its record on a heartbeat, so a reader can tell a live replica from one
that vanished, and writes ``state = "stopped"`` when it shuts down cleanly. The topic is
compacted, so it holds one current record per replica however long the fleet has run.

Readers (``selfdistill adapters list``, ``status``, ``adapters rollback --wait``) read the
whole topic to its end with :func:`read_statuses`. Publishing is best effort: a status that
cannot be sent is logged and counted, never allowed to stop serving.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from streams.adapter_events import read_log
from streams.connection import KafkaSettings
from streams.metrics import REPLICA_STATUS_FAILURES
from streams.producer import Producer
from streams.schemas import BASE_VERSION, AdapterStatus, DecodeError, decode

log = logging.getLogger(__name__)

#: A replica is live while its newest record is younger than this many heartbeats.
LIVE_HEARTBEATS = 3.0


class StatusReporter:
    """One replica's side of ``adapter-status``: a record per swap, plus a heartbeat."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        replica: str,
        *,
        role: str = "serve",
        heartbeat_s: float = 15.0,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.replica = replica
        self.role = role
        self.heartbeat_s = heartbeat_s
        self._status = AdapterStatus(
            replica=replica, role=role, serving=BASE_VERSION, heartbeat_s=heartbeat_s
        )
        self._producer: Producer | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def report(
        self,
        serving: str | None,
        requested: str | None,
        ok: bool,
        error: str | None = None,
        *,
        retrying: bool = False,
        attempts: int = 1,
    ) -> None:
        """Record the outcome of a swap attempt (``serving``: what is active after it;
        ``retrying``: it failed for a passing reason and will be tried again)."""
        self._status = self._status.model_copy(
            update={
                "serving": serving or BASE_VERSION,
                "requested": requested,
                "ok": ok,
                "error": error,
                "retrying": retrying and not ok,
                "attempts": max(1, attempts),
                "swapped_at": time.time(),
            }
        )
        self._send()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._beat, name="adapter-status", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._send()

    def _send(self, state: str = "serving") -> None:
        status = self._status.model_copy(update={"state": state, "at": time.time()})
        with self._lock:
            try:
                if self._producer is None:
                    self._producer = Producer(self.kafka, name=f"adapter-status-{self.role}")
                self._producer.send(self.topic, status, key=self.replica)
                self._producer.flush()
            except Exception as exc:
                REPLICA_STATUS_FAILURES.inc()
                log.warning("could not publish this replica's adapter status: %r", exc)

    def close(self) -> None:
        """Stop the heartbeat and say this replica stopped (so it is not awaited)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._send("stopped")
        if self._producer is not None:
            with contextlib.suppress(Exception):
                self._producer.close()


@dataclass(frozen=True)
class Replica:
    """One replica's newest record, as a reader sees it ``age_s`` seconds later."""

    status: AdapterStatus
    age_s: float

    @property
    def name(self) -> str:
        return self.status.replica

    @property
    def live(self) -> bool:
        return self.status.state == "serving" and self.age_s < LIVE_HEARTBEATS * max(
            self.status.heartbeat_s, 1.0
        )

    @property
    def refused(self) -> str | None:
        """The version it was asked to serve and refused for good, if its last swap failed
        for a reason that is not passing (one that is, it is still trying: ``retrying``)."""
        return None if self.status.retrying else self._unmet

    @property
    def retrying(self) -> str | None:
        """The version it is still trying to load (the engine was unavailable), if any."""
        return self._unmet if self.status.retrying else None

    @property
    def _unmet(self) -> str | None:
        """The version its last swap asked for and failed to make it serve, if any."""
        if self.status.ok or self.status.requested in (None, self.status.serving):
            return None
        return self.status.requested


def read_statuses(kafka: KafkaSettings, topic: str, timeout_s: float = 30.0) -> list[Replica]:
    """Every replica's newest record on ``topic``, read to the end of the log, by name.

    Records that do not decode are skipped with a warning (the topic has no dead-letter
    queue: only replicas write it, and a reader must not fail on one odd record).
    """
    newest: dict[str, AdapterStatus] = {}
    for rec in read_log(kafka, topic, "adapter-status", timeout_s):
        if rec.value is None:  # a tombstone: the replica was removed
            newest.pop((rec.key or b"").decode(errors="replace"), None)
            continue
        try:
            status = decode(AdapterStatus, rec.value, kafka.max_message_bytes)
        except DecodeError as exc:
            log.warning("%s: skipping an odd record at offset %d: %s", topic, rec.offset, exc)
            continue
        newest[status.replica] = status
    now = time.time()
    return [Replica(s, max(0.0, now - s.at)) for _, s in sorted(newest.items())]


def fleet_summary(replicas: Iterable[Replica]) -> dict[str, dict[str, list[str]]]:
    """Per version: which live replicas serve it, refused it, and are still trying it."""
    out: dict[str, dict[str, list[str]]] = {}

    def entry(version: str) -> dict[str, list[str]]:
        return out.setdefault(version, {"serving": [], "refused": [], "retrying": []})

    for r in replicas:
        if not r.live:
            continue
        entry(r.status.serving)["serving"].append(r.name)
        if r.refused is not None:
            entry(r.refused)["refused"].append(r.name)
        if r.retrying is not None:
            entry(r.retrying)["retrying"].append(r.name)
    return out


def drifting(replicas: Iterable[Replica], version: str) -> list[Replica]:
    """The live replicas that serve something other than ``version`` (what should serve)."""
    return [r for r in replicas if r.live and r.status.serving != version]


def wait_for_fleet(
    kafka: KafkaSettings,
    topic: str,
    version: str,
    timeout_s: float,
    *,
    since: float,
    every_s: float = 1.0,
) -> tuple[list[Replica], list[Replica]]:
    """Wait until every live replica serves ``version``; returns (confirmed, not confirmed).

    Live means a heartbeat was seen within ``LIVE_HEARTBEATS`` beats. A replica that refused
    ``version`` after ``since`` (the announcement) for good is final at once: it will not
    retry. One still retrying (its engine was unavailable) is waited for.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        replicas = [r for r in read_statuses(kafka, topic) if r.live]
        ok = [r for r in replicas if r.status.serving == version]
        pending = [r for r in replicas if r.status.serving != version]
        settled = all(r.refused == version and (r.status.swapped_at or 0) >= since for r in pending)
        if settled or time.monotonic() >= deadline:
            return ok, pending
        time.sleep(every_s)
