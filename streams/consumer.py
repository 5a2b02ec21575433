"""The worker loop: read a batch, let the handler make its effect durable, then commit.

This is where every offset of the daemon is committed. The rules it keeps:

* **Commit after the effect.** An offset (last processed + 1) is committed only after the
  handler returned and every output and dead letter of the batch was acknowledged. A crash
  anywhere before that redelivers the batch; handlers make their effects idempotent
  (SQLite keys) or run in ``transactional`` mode, where outputs and offsets commit in one
  Kafka transaction and a crash leaves no visible output at all.
* **Only the owner commits, and only what it owned throughout.** A batch during which any
  of its partitions was revoked or lost (a rebalance, an eviction) is discarded whole: none
  of its outputs is sent, none of its offsets committed; the partitions kept are rewound and
  the new owner redoes the rest. So "no second response" holds by design on any broker, not
  by the broker refusing a stale group generation (KIP-447; the embedded one does not check
  it), and an old owner never commits an offset behind the new owner's.
* **Slow handlers do not cost group membership.** The handler runs on a worker thread while
  this thread pauses every assigned partition and keeps polling (:mod:`streams.keepalive`).
* **Bad messages never stop the loop.** Anything that does not decode or validate goes to
  ``<topic>.dlq`` with its reason, in the same commit as the batch it came in. A batch the
  client cannot even decompress is stepped over with its offsets logged and dead-lettered
  (:mod:`streams.undecodable`); so is an input whose output is too large to write
  (:mod:`streams.outputs`).
* **A record is blamed only when it is shown at fault** (:mod:`streams.handling`). A
  failing batch is retried ``max_handler_attempts`` times, then split until the records
  failing on their own are isolated: those are dead-lettered (``handler-error``), the rest
  commit, but only when the dependency is shown healthy meanwhile (another record of the
  batch succeeds, or the worker's ``probe`` does). When the probe fails too, or every record
  fails the same way, the worker is at fault: it waits and redoes the batch, dead-lettering
  nothing. A ``record_faults`` exception (the engine refused the prompt) skips the retries;
  an ``unavailable`` one (the engine is down) is waited for and never counted against a
  record, unless the probe succeeds meanwhile (the engine fails on this batch only: a 5xx
  or a timeout on one prompt), when it counts as an ordinary failure and is isolated after
  the bounded tries. Waiting is reported: :meth:`ConsumerLoop.is_ready` false,
  ``waiting_on`` in the operator's words, a gauge.
* **SIGTERM stops within ``shutdown_timeout_s``.** The in-flight batch may finish and
  commit within that time; if it cannot, it is abandoned uncommitted (the handler runs on a
  daemon thread, which the process does not wait for) and redelivered to the next owner.
* **A broker that comes back empty is survived and its loss reported.** Clients reconnect
  and rejoin; a failed transaction gets a fresh transactional producer (a restarted broker
  forgot the old id); a partition whose records restart below this group's committed offset
  lost its log, and :mod:`streams.log_loss` says so at ERROR, with the offsets and counters.
* **A fenced producer stops the worker.** Another process took over its transactional id;
  fighting it (each retry's fresh producer fences the other in turn) would stall both.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Generic, TypeVar

from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata
from pydantic import BaseModel

from streams import keepalive
from streams.connection import KafkaSettings, connect
from streams.deadletter import DeadLetter
from streams.handling import HandlerThread, Spent, WorkerAtFault, isolate, stop_on_signals
from streams.log_loss import LogWatch
from streams.metrics import (
    BATCH_SECONDS,
    CONSUMER_LAG,
    DLQ_MESSAGES,
    HANDLER_FAILURES,
    HANDLER_ISOLATED,
    LOG_RESETS,
    MESSAGES_CONSUMED,
    OFFSET_COMMITS,
    RECORDS_LOST,
    UNDECODABLE_BATCHES,
)
from streams.outputs import OUTPUT_TOO_LARGE, fit_outputs
from streams.producer import Producer, ProducerFenced, is_fenced
from streams.rebalance import Rebalance, void_batch
from streams.records import BatchResult, Handler, LoopStats, Output, Record
from streams.schemas import DecodeError, decode
from streams.undecodable import clear_failed_fetch, find_undecodable, is_decode_failure
from streams.waiting import Waiting, describe

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

#: The dead-letter reason of a record the handler failed on by itself (after retries).
HANDLER_ERROR = "handler-error"


class _Abandoned(Exception):
    """The batch is given up uncommitted: a stop ran out of time, or it lost a partition."""


class ConsumerLoop(Generic[M]):
    """Consume ``topic`` as part of ``group_id`` and hand validated batches to ``handler``.

    ``transactional_id`` switches to read-process-write transactions: the handler's outputs,
    dead letters and the input offsets commit atomically (readers use ``read_committed``).

    ``positions``: where the handler's effect ends, ``{partition: next offset}``, kept by
    the handler itself (the store writer keeps it in SQLite with the rows). Given, an
    assigned or rewound partition starts there (at its beginning when absent), never at
    the group's committed offset, which is then informational only.

    ``unavailable``: exception types that mean a dependency is down (never the record's
    fault: wait, do not dead-letter). ``record_faults``: exception types that are the
    record's fault (isolate it at once, no retries). Anything else is retried
    ``kafka.max_handler_attempts`` times before the batch is split.

    ``probe``: a small request to the handler's dependency (the engine), raising when it is
    not healthy. It is asked at start (so ``/readyz`` names a misconfigured dependency
    before any record arrives), while waiting (to notice it is back without traffic), and
    before a record is blamed (:mod:`streams.handling`). Without one, a record that fails
    alone is blamed after its tries, and an unavailable dependency is waited for however
    long it takes.

    The handler always runs on one dedicated thread (never the caller's), one batch at a
    time. Thread-bound resources such as a ``sqlite3`` connection must be opened on that
    thread (lazily, inside the handler) or with ``check_same_thread=False``.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        topic: str,
        group_id: str,
        schema: type[M],
        handler: Handler[M],
        dlq_topic: str,
        transactional_id: str | None = None,
        name: str = "worker",
        keepalive_s: float = 1.0,
        retry_backoff_max_s: float = 30.0,
        unavailable: tuple[type[BaseException], ...] = (),
        record_faults: tuple[type[BaseException], ...] = (),
        positions: Callable[[], dict[int, int]] | None = None,
        probe: Callable[[], object] | None = None,
    ) -> None:
        self.kafka = kafka
        self.probe = probe
        self.positions = positions
        self.topic = topic
        self.group_id = group_id
        self.schema = schema
        self.handler = handler
        self.dlq_topic = dlq_topic
        self.transactional_id = transactional_id
        self.name = name
        self.keepalive_s = min(keepalive_s, kafka.max_poll_interval_ms / 4000)
        self.retry_backoff_max_s = retry_backoff_max_s
        self.unavailable = unavailable
        self.record_faults = record_faults
        self.stats = LoopStats()
        self.consumer: KafkaConsumer | None = None
        self.producer: Producer | None = None
        self._stop = threading.Event()
        self._stop_at: float | None = None
        self._processed: dict[TopicPartition, OffsetAndMetadata] = {}
        self._lock = threading.Lock()
        self._handler = HandlerThread(f"{name}-handler")
        self.ready = threading.Event()  # set once the group has assigned partitions
        self.waiting = Waiting(topic, name)
        #: A newer process took over this loop's transactional id; ``run`` then raises.
        self.fenced = False
        self._next_offset: dict[TopicPartition, int] = {}  # for the lag gauge
        self._lag_at = 0.0
        self._log = LogWatch(group_id)  # to notice a broker that lost a partition's log
        # How often each partition was revoked or lost: a batch compares before and after.
        self._revocations: Counter[TopicPartition] = Counter()
        for metric in (LOG_RESETS, RECORDS_LOST, HANDLER_ISOLATED, UNDECODABLE_BATCHES):
            metric.labels(topic)  # the series exist at 0 from the start, for alerts

    # ----------------------------------------------------------------- control
    def request_stop(self) -> None:
        """Stop within ``kafka.shutdown_timeout_s``. Safe from any thread or signal."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        self._stop.set()

    @property
    def waiting_on(self) -> str | None:
        """Why the loop is waiting instead of working, in the operator's words, or None."""
        return self.waiting.cause

    @property
    def busy(self) -> bool:
        """A handler call is still running (after a stop: a batch that was abandoned)."""
        return self._handler.busy

    def is_ready(self) -> bool:
        """Readiness: in the group, not stopping, and not waiting for an unavailable engine."""
        return self.ready.is_set() and self.waiting_on is None and not self._stop.is_set()

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """``is_ready``, and what the loop waits on when it does (for ``/readyz``)."""
        waiting = self.waiting_on
        return self.is_ready(), ({"waiting_on": waiting} if waiting else {})

    def seek_owned(self, partitions: set[TopicPartition]) -> set[TopicPartition]:
        """Move ``partitions`` to the handler's own positions; returns those it moved."""
        if self.positions is None or self.consumer is None:
            return set()
        try:
            saved = self.positions()
        except Exception as exc:  # the handler's retry path re-checks every offset anyway
            log.error("%s: reading its own positions failed (%r); not seeking", self.name, exc)
            return set()
        for tp in partitions:
            if tp.partition in saved:
                self.consumer.seek(tp, saved[tp.partition])
            else:
                self.consumer.seek_to_beginning(tp)
        log.info("%s: resuming %s at its own positions %s", self.name, self.topic, saved)
        return set(partitions)

    def _batch_deadline(self) -> float | None:
        """When an in-flight batch is abandoned: the stop's deadline less time to close."""
        if self._stop_at is None:
            return None
        budget = self.kafka.shutdown_timeout_s
        return self._stop_at + budget - min(5.0, budget / 4)

    # -------------------------------------------------------------------- run
    def run(self, *, max_idle_s: float | None = None, handle_signals: bool = True) -> LoopStats:
        """Run until ``request_stop()``, a signal, or ``max_idle_s`` without records."""
        kw = self.kafka.consumer_kwargs(self.group_id, self.name)
        self.consumer = connect(lambda: KafkaConsumer(**kw), self.kafka, f"{self.name} consumer")
        self.producer = self._new_producer()
        self.consumer.subscribe([self.topic], listener=Rebalance(self))
        # Everything alive now (imported modules, a loaded model, clients) lives as long as
        # the worker: move it out of the collector's way so full collections stop rescanning
        # it. Measured on consume: 0.84 -> ~0.9 of raw kafka-python (bench/streams.py).
        gc.freeze()
        log.info(
            "%s consuming %s as group %s%s",
            self.name,
            self.topic,
            self.group_id,
            " (transactional)" if self.transactional_id else "",
        )
        last_record = time.monotonic()
        poll_failures = 0
        try:
            if self.probe is not None:  # a misconfigured engine is named before any record
                self.waiting.probe_in_background(self.probe)
            with stop_on_signals(
                handle_signals, self._stop.is_set, self.request_stop, self.kafka.shutdown_timeout_s
            ):
                while not self._stop.is_set():
                    try:
                        polled = self.consumer.poll(
                            timeout_ms=500, max_records=self.kafka.batch_size
                        )
                        poll_failures = 0
                    except Exception as exc:
                        poll_failures += 1
                        self._poll_failed(exc, poll_failures)
                        continue
                    if not self.ready.is_set() and self.consumer.assignment():
                        self.ready.set()
                        last_record = time.monotonic()  # idle time counts from joining
                    if polled:
                        last_record = time.monotonic()
                        self._process(polled)
                    elif self.probe is not None and self.waiting.probe_due(
                        self._backoff(self.waiting.probe_failures)
                    ):
                        self.waiting.probe_in_background(self.probe)  # back without traffic?
                    elif (
                        max_idle_s is not None
                        and self.ready.is_set()
                        and time.monotonic() - last_record > max_idle_s
                    ):
                        log.info("%s idle for %.0fs; stopping", self.name, max_idle_s)
                        break
                    self._report_lag()
        finally:
            self._close()
        if self.fenced:
            raise ProducerFenced(
                f"{self.name}: transactional id {self.transactional_id!r} was taken over by "
                "another process; give each replica its own (serve.transactional_id)"
            )
        return self.stats

    def _new_producer(self) -> Producer:
        return Producer(
            self.kafka, transactional_id=self.transactional_id, name=f"{self.name}-producer"
        )

    def _report_lag(self, force: bool = False) -> None:
        """Records behind the high watermark, from fetch responses, at most once a second.

        Not ``end_offsets``: the embedded broker answers ListOffsets wrongly. A partition
        whose watermark or position is not known yet is left out rather than guessed.
        """
        now = time.monotonic()
        if (now - self._lag_at < 1.0 and not force) or self.consumer is None:
            return
        self._lag_at = now
        lag, known = 0, False
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            nxt = self._next_offset.get(tp)
            if high is not None and nxt is not None:
                lag += max(high - nxt, 0)
                known = True
        if known:
            CONSUMER_LAG.labels(self.topic).set(lag)

    def _close(self) -> None:
        self._handler.shutdown()  # never waits: an abandoned batch may still be running
        left = 10.0
        if self._stop_at is not None:
            left = max(1.0, self._stop_at + self.kafka.shutdown_timeout_s - time.monotonic())
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self._report_lag(force=True)  # the last word, not a throttled stale one
            with contextlib.suppress(Exception):
                pending = self._take_processed(None)
                if pending:
                    self.consumer.commit(pending)
            with contextlib.suppress(Exception):
                self.consumer.close(autocommit=False, timeout_ms=int(left / 2 * 1000))
        if self.producer is not None:
            with contextlib.suppress(Exception):
                self.producer.close(timeout_s=left / 2)
        self.waiting.clear()
        log.info("%s stopped: %s", self.name, self.stats)

    # -------------------------------------------------------- undecodable input
    def _poll_failed(self, exc: BaseException, failures: int) -> None:
        """``poll()`` raised: step over records the client cannot decode, never spin."""
        assert self.consumer is not None
        clear_failed_fetch(self.consumer)
        runs = find_undecodable(self.consumer) if is_decode_failure(exc) else []
        if not runs:
            delay = self._backoff(failures)
            log.error(
                "%s: poll failed (%d in a row): %r; retrying in %.1fs",
                self.name,
                failures,
                exc,
                delay,
                exc_info=failures == 1,
            )
            self._sleep_polling(delay)
            return
        for run in runs:
            run.report(self.dlq_topic)
            try:  # the dead letter and the offset past the run commit together
                self._finish([], [run.dead_letter(self.name)], run.commit_offsets())
            except Exception as exc:  # the next poll fails the same way and retries this
                log.error("%s: could not commit past the undecodable run: %r", self.name, exc)
                self._sleep_polling(1.0)
                continue
            self.stats.undecodable_runs += 1
            self.stats.records_skipped += run.count
            self.consumer.seek(run.tp, run.end)
            self._next_offset[run.tp] = run.end

    # ------------------------------------------------------------- one batch
    def _process(self, polled: dict[TopicPartition, list[Any]]) -> None:
        assert self.consumer is not None
        by_partition: dict[TopicPartition, list[Record[M]]] = {}
        dead: list[DeadLetter] = []
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        first: dict[TopicPartition, int] = {}
        max_bytes, schema, count = self.kafka.max_message_bytes, self.schema, 0
        for tp, raws in polled.items():
            self._check_log(tp, raws[0].offset)
            records: list[Record[M]] = []
            for r in raws:
                try:
                    value = decode(schema, r.value, max_bytes)
                except DecodeError as exc:
                    log.warning("%s[%d]@%d → DLQ (%s)", r.topic, r.partition, r.offset, exc)
                    dead.append(self._dead_letter(r, exc.reason, exc.detail))
                    continue
                key = r.key.decode("utf-8", "replace") if r.key is not None else None
                records.append(Record(r.topic, r.partition, r.offset, key, value, r.timestamp or 0))
            by_partition[tp] = records
            # Records of one partition arrive in offset order: commit after the last.
            first[tp] = raws[0].offset
            offsets[tp] = OffsetAndMetadata(raws[-1].offset + 1, "", -1)
            self._next_offset[tp] = raws[-1].offset + 1
            count += len(raws)
        MESSAGES_CONSUMED.labels(self.topic).inc(count)
        self.stats.consumed += count
        with self._lock:
            before = {tp: self._revocations[tp] for tp in offsets}
        if not set(offsets) <= self.consumer.assignment():
            void_batch(self, before, first, "its partitions were reassigned before it started")
            return
        batch = [rec for recs in by_partition.values() for rec in recs]
        attempt = 0
        while True:
            try:
                result, failed = self._handle(batch, before)
                rejected = [self._dead_letter_record(r, why) for r, why in result.rejected]
                # Raises OutputTooLarge (out of run, nothing committed) if it can blame no input.
                outputs, too_large = fit_outputs(result.outputs, self.kafka.output_limit)
                rejected += [self._dead_letter_record(r, w, OUTPUT_TOO_LARGE) for r, w in too_large]
                if self._revoked(before):
                    raise _Abandoned("a partition was revoked while it ran")
                try:
                    self._finish(outputs, dead + rejected + failed, offsets)
                    break
                except Exception as exc:
                    if is_fenced(exc):
                        self.fenced = True
                        self.request_stop()
                        log.error(
                            "%s: another process took over transactional id %r (fenced); this "
                            "one stops. Each replica needs its own id (serve.transactional_id)",
                            self.name,
                            self.transactional_id,
                        )
                        raise _Abandoned("fenced by a newer producer") from exc
                    # Not the records' fault as far as anyone can tell (a broker restarting):
                    # the whole batch is redone, however often it takes.
                    attempt += 1
                    self.stats.handler_failures += 1
                    HANDLER_FAILURES.labels(self.topic).inc()
                    delay = self._backoff(attempt)
                    log.error(
                        "%s: committing a batch of %d from %s failed (attempt %d): %r; "
                        "nothing committed, redoing it in %.1fs",
                        self.name,
                        len(batch),
                        self.topic,
                        attempt,
                        exc,
                        delay,
                        exc_info=attempt == 1,
                    )
                    self._sleep_polling(delay)
                    if self._stop.is_set():
                        raise _Abandoned("stopping with the batch uncommitted") from exc
            except _Abandoned as why:
                void_batch(self, before, first, str(why))
                return
        self.stats.batches += 1
        self.stats.processed += len(batch)

    def _backoff(self, attempt: int) -> float:
        """Seconds before try ``attempt + 1``: 0.5 s doubling, capped at retry_backoff_max_s."""
        return min(self.retry_backoff_max_s, 0.5 * 2 ** min(attempt - 1, 10))

    def _revoked(self, before: dict[TopicPartition, int]) -> bool:
        with self._lock:
            return any(self._revocations[tp] != n for tp, n in before.items())

    def _mark_revoked(self, partitions: set[TopicPartition]) -> None:
        with self._lock:
            self._revocations.update(partitions)

    def _handle(
        self, batch: list[Record[M]], before: dict[TopicPartition, int]
    ) -> tuple[BatchResult, list[DeadLetter]]:
        """The batch's result, retried, then split so only records shown at fault are
        dropped; while the worker is at fault instead, it waits and redoes the batch."""
        waits = 0
        while True:
            try:
                return isolate(
                    batch,
                    lambda part, tries: self._attempt(part, tries, before),
                    self.kafka.max_handler_attempts,
                    self._handler_error,
                    self._run_probe if self.probe is not None else None,
                )
            except WorkerAtFault as fault:
                waits += 1
                self.stats.unavailable_waits += 1
                self.waiting.down(str(fault))
                delay = self._backoff(waits)
                log.error(
                    "%s: not the records' fault (%s); nothing dead-lettered, offsets not "
                    "committed, the batch of %d is redone in %.1fs",
                    self.name,
                    self.waiting_on,
                    len(batch),
                    delay,
                )
                self._sleep_polling(delay)
                if self._stop.is_set():
                    raise _Abandoned("stopping with a failed batch") from fault
                if self._revoked(before):
                    raise _Abandoned("a partition was revoked while it waited") from fault

    # ------------------------------------------------------------ dependency
    def _run_probe(self) -> BaseException | None:
        """Ask the probe on the handler thread (this one keeps polling); what failed, or None."""
        assert self.probe is not None
        self.waiting.probed_at = time.monotonic()
        fut = self._handler.submit(self.probe)
        self._wait_polling(fut)
        return fut.exception()

    def _attempt(
        self, batch: list[Record[M]], attempts: int, before: dict[TopicPartition, int]
    ) -> BatchResult:
        """Run the handler up to ``attempts`` times; raise ``Spent`` when they are used up.

        An unavailable dependency does not use up attempts: it is waited for, however long.
        """
        failures = unavailable = 0
        while True:
            if self._revoked(before):
                raise _Abandoned("a partition was revoked while it ran")
            try:
                started = time.monotonic()
                result = self._run_handler(batch)
                BATCH_SECONDS.labels(self.topic).observe(time.monotonic() - started)
                self.waiting.back()
                return result
            except _Abandoned:
                raise
            except self.unavailable as exc:
                self.stats.handler_failures += 1  # a failed attempt all the same (alerts)
                HANDLER_FAILURES.labels(self.topic).inc()
                if self.probe is not None and self._run_probe() is None:
                    # The dependency answers a probe, yet fails on this batch: that is about
                    # the batch (a 5xx or a timeout on one prompt), so it uses up a try.
                    failures += 1
                    if failures >= attempts:
                        raise Spent(exc, healthy=True) from exc
                    delay = self._backoff(failures)
                    log.error(
                        "%s: the batch of %d fails (%s) while the probe succeeds (attempt %d "
                        "of %d); retrying in %.1fs",
                        self.name,
                        len(batch),
                        describe(exc),
                        failures,
                        attempts,
                        delay,
                    )
                else:
                    unavailable += 1
                    self.stats.unavailable_waits += 1
                    self.waiting.down(describe(exc))
                    delay = self._backoff(unavailable)
                    log.error(
                        "%s: a dependency is unavailable (%s); offsets not committed, nothing "
                        "dead-lettered, the batch of %d is retried in %.1fs",
                        self.name,
                        self.waiting_on,
                        len(batch),
                        delay,
                    )
            except Exception as exc:
                failures += 1
                self.stats.handler_failures += 1
                HANDLER_FAILURES.labels(self.topic).inc()
                record_fault = isinstance(exc, self.record_faults)
                if record_fault or failures >= attempts:
                    raise Spent(exc, record_fault=record_fault) from exc
                delay = self._backoff(failures)
                log.error(
                    "%s: batch of %d from %s failed (attempt %d of %d): %r; retrying in %.1fs",
                    self.name,
                    len(batch),
                    self.topic,
                    failures,
                    attempts,
                    exc,
                    delay,
                    exc_info=failures == 1,
                )
            self._sleep_polling(delay)
            if self._stop.is_set():
                raise _Abandoned("stopping with a failed batch")

    def _handler_error(self, rec: Record[Any], exc: BaseException) -> DeadLetter:
        self.stats.isolated += 1
        HANDLER_ISOLATED.labels(self.topic).inc()
        log.error(
            "%s[%d]@%d → DLQ: the handler fails on this record by itself: %r",
            rec.topic,
            rec.partition,
            rec.offset,
            exc,
        )
        return self._dead_letter_record(rec, f"{type(exc).__name__}: {exc}", HANDLER_ERROR)

    def _run_handler(self, batch: list[Record[M]]) -> BatchResult:
        fut = self._handler.submit(lambda: self.handler(batch))
        self._wait_polling(fut)
        return fut.result() or BatchResult()

    def _wait_polling(self, fut: Future[Any]) -> None:
        """Stay a live group member while the handler works (:mod:`streams.keepalive`); a
        stop that runs out of time abandons the batch."""
        assert self.consumer is not None
        keepalive.wait(self.consumer, fut, self.keepalive_s, self._check_deadline)

    def _check_deadline(self) -> None:
        deadline = self._batch_deadline()
        if deadline is not None and time.monotonic() > deadline:
            raise _Abandoned(
                f"stopping: still running {self.kafka.shutdown_timeout_s:g}s "
                "(kafka.shutdown_timeout_s) after the stop"
            )

    def _sleep_polling(self, seconds: float) -> None:
        assert self.consumer is not None
        keepalive.sleep(self.consumer, seconds, self.keepalive_s, self._stop.is_set)

    def _finish(
        self,
        outputs: list[Output],
        dead: list[DeadLetter],
        offsets: dict[TopicPartition, OffsetAndMetadata],
    ) -> None:
        """Make the batch's outputs and dead letters durable, then commit its offsets.

        Every output sent here belongs to a partition this member owned from the poll that
        fetched it until now (``_process`` voids a batch that lost one), so what commits is
        never another member's work.
        """
        assert self.consumer is not None
        owned = self.consumer.assignment()
        if self.transactional_id:
            # Outputs, dead letters and offsets commit together; until then the batch is not
            # processed (an aborted batch must be redone, never committed by the listener).
            with self._lock:
                commit = {
                    tp: om for tp, om in {**self._processed, **offsets}.items() if tp in owned
                }
            if self.producer is None:  # dropped after a failed transaction
                self.producer = self._new_producer()
            self.producer.begin()
            try:
                self._send(outputs, dead)
                self.producer.commit_transaction(commit, self.consumer.group_metadata())
            except Exception:
                self._discard_producer()
                raise
            self._count_dead(dead)
            self._log.committed.update((tp, om.offset) for tp, om in commit.items())
        else:
            assert self.producer is not None
            self._send(outputs, dead)
            if outputs or dead:
                self.producer.flush()  # raises: nothing committed while an output may be lost
            self._count_dead(dead)
            with self._lock:  # durable now: pending until committed (here or by the listener)
                self._processed.update((tp, om) for tp, om in offsets.items() if tp in owned)
                commit = {tp: om for tp, om in self._processed.items() if tp in owned}
            try:
                self.consumer.commit(commit)
            except Exception as exc:
                # The effect is durable; the offsets stay pending and are committed by the
                # next batch or by the rebalance listener. Redelivery repeats idempotent work.
                self.stats.commit_failures += 1
                log.warning("offset commit failed (%r); will retry with the next commit", exc)
                return
            self._log.committed.update((tp, om.offset) for tp, om in commit.items())
        with self._lock:  # only this thread adds offsets, so the committed ones are the newest
            for tp in commit:
                self._processed.pop(tp, None)
        self.stats.commits += 1
        OFFSET_COMMITS.labels(self.topic).inc()

    def _discard_producer(self, abort_timeout_s: float = 5.0) -> None:
        """Abort the failed transaction and drop the producer; the retry gets a fresh one.

        A fresh producer (its ``init_transactions`` fences this one) is the only way out of
        the state a broker that forgot this transactional id leaves (a restarted memory-only
        broker answers TransactionalIdNotFound forever). There, kafka-python's
        ``abort_transaction()``, which has no timeout, may never return: it gets a few
        seconds on a thread of its own.
        """
        producer, self.producer = self.producer, None
        if producer is None:
            return
        aborting = threading.Thread(target=producer.abort, name=f"{self.name}-abort", daemon=True)
        aborting.start()
        aborting.join(abort_timeout_s)
        if aborting.is_alive():
            log.warning("%s: abort_transaction() did not return; dropping the producer", self.name)
        with contextlib.suppress(Exception):
            producer.close(timeout_s=1.0)

    def _check_log(self, tp: TopicPartition, first_offset: int) -> None:
        """Report a partition whose log restarted below the offset this group committed."""
        assert self.consumer is not None
        lost = self._log.check(tp, first_offset, self.consumer.highwater(tp))
        if lost is not None:
            self.stats.log_resets += 1
            self.stats.records_lost += lost

    def _send(self, outputs: list[Output], dead: list[DeadLetter]) -> None:
        assert self.producer is not None
        for o in outputs:
            self.producer.send(o.topic, o.value, key=o.key, headers=o.headers)
        for dl in dead:
            self.producer.send_dead_letter(self.dlq_topic, dl)

    def _take_processed(
        self, partitions: set[TopicPartition] | None
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        with self._lock:
            if partitions is None:
                taken, self._processed = self._processed, {}
                return taken
            return {tp: self._processed.pop(tp) for tp in list(self._processed) if tp in partitions}

    def _count_dead(self, dead: list[DeadLetter]) -> None:
        for dl in dead:
            DLQ_MESSAGES.labels(dl.source_topic, dl.reason).inc()
        self.stats.dead_lettered += len(dead)

    def _dead_letter(self, r: Any, reason: str, detail: str) -> DeadLetter:
        return DeadLetter(r.topic, r.partition, r.offset, reason, detail, r.key, r.value, self.name)

    def _dead_letter_record(
        self, rec: Record[Any], detail: str, reason: str = "handler_rejected"
    ) -> DeadLetter:
        key = rec.key.encode() if rec.key is not None else None
        value = rec.value.model_dump_json().encode()
        return DeadLetter(
            rec.topic, rec.partition, rec.offset, reason, detail, key, value, self.name
        )
