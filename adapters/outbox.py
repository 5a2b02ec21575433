"""The promotion outbox: one source of truth for what should serve, whatever crashes when.

A promotion or rollback has two sides: the event on ``adapter-events`` (what replicas act
on) and the registry row (what ``rollback`` and the operator reason from). They live in
different systems, so no transaction spans them. The outbox orders them instead:

1. **intent**: the announcement is written to the registry's ``outbox`` table (``pending``);
2. **publish**: the event goes to ``adapter-events`` and the broker acknowledges it;
3. **done**: one registry transaction applies the promotion and marks the intent ``done``.

A crash after 1 or 2 leaves a ``pending`` intent, and the next promotion, rollback, training
cycle or ``selfdistill adapters reconcile`` completes it first (``daemon/learning/promote.py``
publishes it again if the topic does not show it: replicas treat a repeat as a no-op).
A publish that fails is reported as *unknown*: the broker may have the event even though
the producer saw an error, so the intent stays pending and the registry is not changed.
An operator who would rather drop it than push it to the fleet *abandons* it
(:func:`abandon`; ``selfdistill adapters reconcile --abandon`` undoes a published one first).

All of it runs under :func:`promotion_lock`, an OS file lock in the registry directory, so
the trainer and an operator never interleave their steps (and a dead holder releases it).

This module knows nothing of Kafka: it stores intents as the event's JSON.
"""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Iterator
from dataclasses import dataclass

from adapters.registry import Registry, RegistryError

LOCK_FILE = ".promote.lock"


@dataclass(frozen=True)
class Intent:
    """One announcement the registry has promised to make."""

    id: int
    action: str  # promote | rollback
    version: str
    event: str  # the event exactly as published (JSON)
    actor: str | None
    reason: str | None
    at: float


class PromotionBusy(RegistryError):
    """Another promotion or rollback held the lock for longer than we waited."""


@contextlib.contextmanager
def promotion_lock(registry: Registry, timeout_s: float = 120.0) -> Iterator[None]:
    """Serialise promotions and rollbacks across processes (trainer, CLI, another host)."""
    fh = registry.db_path.with_name(LOCK_FILE).open("a+")  # beside the database it guards
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PromotionBusy(
                        f"another promotion or rollback has held {LOCK_FILE} for over "
                        f"{timeout_s:.0f}s"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        fh.close()  # closing releases the lock


def record(
    registry: Registry, action: str, version: str, event: str, actor: str, reason: str | None
) -> Intent:
    """Step 1: promise the announcement (durable before anything is published)."""
    at = time.time()
    with registry.transaction() as db:
        cur = db.execute(
            "INSERT INTO outbox (at, action, version, event, actor, reason, state) "
            "VALUES (?, ?, ?, ?, ?, ?, 'pending')",
            (at, action, version, event, actor, reason),
        )
        return Intent(int(cur.lastrowid or 0), action, version, event, actor, reason, at)


def pending(registry: Registry) -> list[Intent]:
    """Announcements promised and not known to be done, oldest first."""
    try:
        rows = registry.rows(
            "SELECT id, action, version, event, actor, reason, at FROM outbox "
            "WHERE state = 'pending' ORDER BY id"
        )
    except Exception as exc:  # a read-only registry written before the table existed
        if "no such table" in str(exc):
            return []
        raise
    return [Intent(*row) for row in rows]


def complete(registry: Registry, intent: Intent) -> str:
    """Step 3: apply the announced state and mark the intent done, in one transaction.

    Returns what was active before. An intent whose target is already active (applied by
    an earlier attempt that died before marking it) is only marked done.
    """
    with registry.transaction() as db:
        previous = registry.active_in(db)
        if previous != intent.version:
            registry.activate_in(
                db, intent.version, intent.action, intent.actor or "other", intent.reason
            )
        db.execute(
            "UPDATE outbox SET state = 'done', done_at = ? WHERE id = ?", (time.time(), intent.id)
        )
        return previous


def abandon(registry: Registry, intents: list[Intent], *, actor: str, active: str) -> None:
    """Mark ``intents`` abandoned (the registry keeps ``active``), recorded in its history.

    The caller has made sure that the fleet is told ``active`` if an intent's event had
    reached it (``daemon/learning/promote.py``).
    """
    now = time.time()
    with registry.transaction() as db:
        for intent in intents:
            db.execute(
                "UPDATE outbox SET state = 'abandoned', done_at = ? "
                "WHERE id = ? AND state = 'pending'",
                (now, intent.id),
            )
            db.execute(
                "INSERT INTO events (at, action, version, previous, actor, reason) "
                "VALUES (?, 'abandon', ?, ?, ?, ?)",
                (now, intent.version, active, actor, f"pending {intent.action} abandoned"),
            )
