"""Who goes first on a shared in-process engine: a swap, then production answers, then
judging and evaluation.

In ``selfdistill up`` and the demo, serve, verify and the gate's evaluation share one
``TransformersEngine`` and so one model: only one generation runs at a time. Without an
order, a production prompt waits behind a judge round (several candidates × votes) and a
promotion waits behind whatever batch holds the model. So the engine's lock is a
``PriorityLock``: the most urgent waiter gets the model next, and a long generation steps
aside between two decoding steps (``yield_to_urgent``) when someone more urgent waits,
then carries on where it was. The caller says how urgent it is with ``priority(level)``
around its engine calls; code that says nothing is production traffic (``SERVE``).

Levels are ints, lower first: ``SWAP`` (the load and canary of a hot-swap, a rollback),
``SERVE`` (serve worker, the OpenAI-compatible server), ``BACKGROUND`` (verify's judge
calls, the gate's and ``eval``'s evaluations, quality sampling).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

SWAP = 0
SERVE = 1
BACKGROUND = 2
NAMES = {SWAP: "swap", SERVE: "serve", BACKGROUND: "background"}

_level: ContextVar[int] = ContextVar("selfdistill_engine_priority", default=SERVE)


@contextlib.contextmanager
def priority(level: int) -> Iterator[None]:
    """Engine calls made in this block (this thread) wait and yield at ``level``."""
    token = _level.set(level)
    try:
        yield
    finally:
        _level.reset(token)


def current() -> int:
    return _level.get()


class PriorityLock:
    """A reentrant lock granted to the most urgent waiter, first come first served within a
    level. The holder of the outermost acquisition may step aside for a more urgent waiter
    (``yield_to_urgent``) and queue again with its original ticket, so it resumes before
    anyone of its own level who came later.

    Serving first must not mean judging never: under steady production traffic a serve
    batch always waits, and verify would not get one judge round in (the store would stop
    growing while the dashboard says verify is up). So a waiter below ``SERVE`` that has
    waited ``starve_s`` counts as ``SERVE``: it goes in turn with production batches (it came
    before the later ones) and, once it holds the engine, production does not push it aside
    until its chunk is done. Background work thus gets at least one chunk per ``starve_s``
    however busy serving is, and a swap still goes first of all.
    """

    def __init__(self, starve_s: float = 10.0) -> None:
        self.starve_s = starve_s
        self._cond = threading.Condition(threading.Lock())
        self._tickets = itertools.count()
        self._waiting: dict[tuple[int, int], float] = {}  # (level, ticket) -> queued at
        self._granted: tuple[int, int] | None = None  # the waiter the last release chose
        self._owner: int | None = None
        self._depth = 0
        self._held: tuple[int, int] = (SERVE, 0)  # the holder's ticket (its level as granted)
        self._held_at = 0.0  # when the holder first queued (kept across a step aside)
        self.yields = 0  # how often a holder stepped aside (for tests and the bench)
        self.aged = 0  # how often a starved background waiter was let in before serve

    def acquire(self, level: int | None = None) -> None:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
                return
            ticket = (current() if level is None else level, next(self._tickets))
            self._wait_turn(ticket, time.monotonic())
            self._owner, self._depth = me, 1

    def release(self) -> None:
        with self._cond:
            if self._owner != threading.get_ident():
                raise RuntimeError("release of a PriorityLock this thread does not hold")
            self._depth -= 1
            if self._depth == 0:
                self._hand_on()

    @contextlib.contextmanager
    def hold(self, level: int | None = None) -> Iterator[None]:
        self.acquire(level)
        try:
            yield
        finally:
            self.release()

    def _effective(self, ticket: tuple[int, int], queued_at: float, now: float) -> int:
        level = ticket[0]
        return SERVE if level > SERVE and now - queued_at >= self.starve_s else level

    def urgent_waiting(self) -> bool:
        """Someone more urgent than the holder waits (no lock taken: it is asked between
        two decoding steps, and a stale answer only moves a step aside by one step)."""
        if not self._waiting:
            return False
        now, held = time.monotonic(), self._held[0]
        return any(self._effective(t, at, now) < held for t, at in tuple(self._waiting.items()))

    def yield_to_urgent(
        self,
        before: Callable[[], None] | None = None,
        after: Callable[[], None] | None = None,
    ) -> bool:
        """Step aside if someone more urgent waits; True when the holder did.

        ``before`` runs just before the lock is released and ``after`` once it is held again
        (the engine saves and restores its routing and random state there). A nested
        holder (``depth > 1``: a caller that asked for the model across several calls)
        never steps aside.
        """
        if not self.urgent_waiting():
            return False
        me = threading.get_ident()
        with self._cond:
            if self._owner != me or self._depth != 1 or not self.urgent_waiting():
                return False
            if before is not None:
                before()
            held, held_at = self._held, self._held_at
            self._hand_on()
            self.yields += 1
            self._wait_turn(held, held_at)
            self._owner, self._depth = me, 1
        if after is not None:
            after()
        return True

    def _hand_on(self) -> None:
        """Free the lock and choose who has it next, once, here (holds _cond): each waiter
        judging for itself at a different instant could, with aging, each defer to the
        other, and nobody would take it."""
        self._owner, self._depth = None, 0
        if self._waiting:
            now = time.monotonic()
            self._granted = min(
                self._waiting, key=lambda t: (self._effective(t, self._waiting[t], now), t[1])
            )
            self._cond.notify_all()

    def _wait_turn(self, ticket: tuple[int, int], queued_at: float) -> None:
        """Wait until the lock is free and ``ticket`` is chosen for it (holds _cond)."""
        if self._owner is None and self._granted is None and not self._waiting:
            self._take(ticket, queued_at, time.monotonic())
            return
        self._waiting[ticket] = queued_at
        while self._granted != ticket:
            self._cond.wait()
        del self._waiting[ticket]
        self._granted = None
        self._take(ticket, queued_at, time.monotonic())

    def _take(self, ticket: tuple[int, int], queued_at: float, now: float) -> None:
        level = self._effective(ticket, queued_at, now)
        if level != ticket[0]:
            self.aged += 1
        self._held, self._held_at = (level, ticket[1]), queued_at
