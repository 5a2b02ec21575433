"""Running a worker's handler: on a thread of its own, contained when it fails, stopped
on a signal.

A handler that raises on a batch may be failing because of one record in it (a poison
message) or because of something outside every record. Retrying the whole batch forever
stalls the partition behind the poison; dead-lettering the whole batch throws good records
away. :func:`isolate` does neither: the batch gets its retries, then it is split in halves,
recursively, and only records that fail on their own are dead-lettered. A batch of ``b``
records with one poison costs about ``2·log2(b)`` extra handler calls.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from streams.deadletter import DeadLetter
from streams.records import BatchResult, Record

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Record[Any])


class Spent(Exception):
    """A part's tries are used up (or its error is the record's fault): split it, or blame it."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause


def isolate(
    batch: list[R],
    attempt: Callable[[list[R], int], BatchResult],
    max_attempts: int,
    at_fault: Callable[[R, BaseException], DeadLetter],
) -> tuple[BatchResult, list[DeadLetter]]:
    """The batch's result, and dead letters for the records that fail by themselves.

    ``attempt(part, tries)`` runs the handler on ``part`` up to ``tries`` times and raises
    :class:`Spent` when they are used up. The whole batch gets ``max_attempts``; once it is
    split, a half gets one try (the batch already had its retries) and a single record gets
    ``max_attempts`` again before it is called at fault, so one flaky failure cannot
    dead-letter a good record.
    """
    if not batch:
        return BatchResult(), []
    try:
        return attempt(batch, max_attempts), []
    except Spent as spent:
        if len(batch) == 1:
            return BatchResult(), [at_fault(batch[0], spent.cause)]
        log.warning(
            "a batch of %d failed %d time(s) (%r); splitting it to isolate the records at fault",
            len(batch),
            max_attempts,
            spent.cause,
        )
    return _split(batch, attempt, max_attempts, at_fault)


def _split(
    batch: list[R],
    attempt: Callable[[list[R], int], BatchResult],
    max_attempts: int,
    at_fault: Callable[[R, BaseException], DeadLetter],
) -> tuple[BatchResult, list[DeadLetter]]:
    merged, failed = BatchResult(), []
    mid = len(batch) // 2
    for part in (batch[:mid], batch[mid:]):
        try:
            merged.extend(attempt(part, max_attempts if len(part) == 1 else 1))
        except Spent as spent:
            if len(part) == 1:
                failed.append(at_fault(part[0], spent.cause))
                continue
            res, dls = _split(part, attempt, max_attempts, at_fault)
            merged.extend(res)
            failed.extend(dls)
    return merged, failed


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
