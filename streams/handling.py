"""Running a worker's handler: on a thread of its own, contained when it fails, stopped
on a signal.

A handler that raises on a batch may be failing because of one record in it (a poison
message) or because of something outside every record (an engine out of memory, a bug, a
model server that refuses the deployment's key). Retrying the whole batch forever stalls
the partition behind the poison; dead-lettering the whole batch throws good records away.
:func:`isolate` does neither, by one rule: **a record is at fault only when it is shown to
be** — it fails alone while the dependency is shown healthy, because other records of its
batch succeed or because the worker's probe (a small request to its engine) succeeds.

* The batch gets its retries. Then, if the probe fails, nothing is split or blamed: the
  worker is at fault (:class:`WorkerAtFault`), and the loop waits and says so, as for an
  unavailable engine.
* Otherwise the batch is split in halves, recursively, down to the records that fail on
  their own. A batch of ``b`` records with one poison costs about ``2·log2(b)`` extra calls.
* When no record of the batch succeeded and the records failed the same way (two or more,
  one exception type; refusals the dependency put down to a record, such as a prompt too
  long for the model, do not count), that is the worker's fault too, whatever a small probe
  says: an engine that runs out of memory on real prompts may still answer a one-token probe.
* A record that failed alone is dead-lettered when another record of the batch succeeded
  (after its failures: one that failed before gets one more try), or when the probe
  succeeds after its failures; a loop without a probe has no dependency to blame, so there
  its own failures are enough (the old rule, for plain handlers).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

from streams.deadletter import DeadLetter
from streams.records import BatchResult, Record

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Record[Any])


class Spent(Exception):
    """A part's tries are used up (or its error is the record's fault): split it, or blame it."""

    def __init__(
        self, cause: BaseException, *, record_fault: bool = False, healthy: bool = False
    ) -> None:
        super().__init__(repr(cause))
        self.cause = cause
        #: The dependency itself said the record is at fault (the engine refused the prompt):
        #: evidence enough, and proof the dependency answers.
        self.record_fault = record_fault
        #: The probe succeeded after the last failure: no need to ask it again.
        self.healthy = healthy or record_fault


class WorkerAtFault(Exception):
    """Nothing shows a record at fault: every record failed the same way, or the probe
    failed too. The loop waits (backoff, ``/readyz`` 503, the dependency gauge) and redoes
    the batch; nothing is dead-lettered."""

    def __init__(self, cause: BaseException, why: str) -> None:
        super().__init__(f"{why}: {type(cause).__name__}: {cause}")
        self.cause = cause
        self.why = why


@dataclass
class _Search:
    """What the split has seen: parts that succeeded, and records that failed alone."""

    succeeded: int = 0
    tried: int = 0  # parts tried so far: orders the failures and the successes
    last_success: int = -1  # the ``tried`` count of the latest part that succeeded
    #: (record, cause, when): the records that failed alone, and at which try.
    failed: list[tuple[Any, BaseException, int]] = field(default_factory=list)
    #: The exception types of failures the dependency did not put down to the record.
    unexplained: list[type[BaseException]] = field(default_factory=list)


def isolate(
    batch: list[R],
    attempt: Callable[[list[R], int], BatchResult],
    max_attempts: int,
    at_fault: Callable[[R, BaseException], DeadLetter],
    probe: Callable[[], BaseException | None] | None = None,
) -> tuple[BatchResult, list[DeadLetter]]:
    """The batch's result, and dead letters for the records shown to fail by themselves.

    ``attempt(part, tries)`` runs the handler on ``part`` up to ``tries`` times and raises
    :class:`Spent` when they are used up. The whole batch gets ``max_attempts``; once it is
    split, a half gets one try (the batch already had its retries) and a single record gets
    ``max_attempts`` again before it is called at fault, so one flaky failure cannot
    dead-letter a good record. ``probe()`` returns None when the worker's dependency is
    healthy, else what failed (no probe: no dependency, always healthy). Raises
    :class:`WorkerAtFault` when no record is shown at fault (module docstring).
    """
    probe = probe or (lambda: None)
    if not batch:
        return BatchResult(), []
    try:
        return attempt(batch, max_attempts), []
    except Spent as spent:
        if not spent.healthy and (down := probe()) is not None:
            raise WorkerAtFault(down, "the probe fails as well") from spent.cause
        if len(batch) == 1:
            return BatchResult(), [at_fault(batch[0], spent.cause)]
        log.warning(
            "a batch of %d failed %d time(s) (%r); splitting it to isolate the records at fault",
            len(batch),
            max_attempts,
            spent.cause,
        )
    search = _Search()
    merged = _split(batch, attempt, max_attempts, search)
    if search.unexplained and not search.succeeded:
        if len(search.unexplained) > 1 and len(set(search.unexplained)) == 1:
            cause = next(c for _, c, _ in search.failed if type(c) is search.unexplained[0])
            n = len(search.unexplained)
            raise WorkerAtFault(
                cause, f"{n} of {len(batch)} records fail the same way, none succeeds"
            )
        if (down := probe()) is not None:
            raise WorkerAtFault(down, "no record succeeds and the probe fails")
    dead = []
    for rec, cause, when in search.failed:
        if when < search.last_success:
            # It failed before the others showed the dependency well (a fault that ended
            # mid-split): one more try now, and blamed only if it fails again.
            try:
                merged.extend(attempt([rec], 1))
                continue
            except Spent as again:
                cause = again.cause
        dead.append(at_fault(rec, cause))
    return merged, dead


def _split(
    batch: list[R],
    attempt: Callable[[list[R], int], BatchResult],
    max_attempts: int,
    search: _Search,
) -> BatchResult:
    merged = BatchResult()
    mid = len(batch) // 2
    for part in (batch[:mid], batch[mid:]):
        search.tried += 1
        try:
            merged.extend(attempt(part, max_attempts if len(part) == 1 else 1))
            search.succeeded += 1
            search.last_success = search.tried
        except Spent as spent:
            if len(part) == 1:
                search.failed.append((part[0], spent.cause, search.tried))
                if not spent.record_fault:
                    search.unexplained.append(type(spent.cause))
                continue
            merged.extend(_split(part, attempt, max_attempts, search))
    return merged


class HandlerThread:
    """One daemon thread that runs handler calls, one at a time.

    Not a ``ThreadPoolExecutor``: its threads are joined when the interpreter exits, so a
    handler stuck in a generation would hold a stopping worker past any deadline. A batch
    abandoned on stop is simply left running here while the process exits.
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue()
        self._running = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        fut: Future[Any] = Future()
        self._jobs.put((fn, fut))
        return fut

    @property
    def busy(self) -> bool:
        return self._running

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            self._running = True
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)
            finally:
                self._running = False

    def shutdown(self) -> None:
        self._jobs.put(None)


@contextlib.contextmanager
def stop_on_signals(
    enabled: bool, stopping: Callable[[], bool], stop: Callable[[], None], timeout_s: float
) -> Iterator[None]:
    """SIGTERM/SIGINT ask the loop to stop (within ``timeout_s``); a second one means now."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, _frame: object) -> None:
        if stopping():  # second signal: the operator means it
            raise KeyboardInterrupt
        log.info(
            "%s received; stopping within %.0fs (an unfinished batch is redelivered)",
            signal.Signals(signum).name,
            timeout_s,
        )
        stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
