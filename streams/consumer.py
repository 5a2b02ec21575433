"""The worker loop: read a batch, let the handler make its effect durable, then commit.

This is where every offset of the daemon is committed. The rules it keeps:

* **Commit after the effect.** An offset (last processed + 1) is committed only after the
  handler returned and every output and dead letter of the batch was acknowledged. A crash
  anywhere before that redelivers the batch; handlers make their effects idempotent
  (SQLite keys) or run in ``transactional`` mode, where outputs and offsets commit in one
  Kafka transaction and a crash leaves no visible output at all.
* **Slow handlers do not cost group membership.** The handler runs on a worker thread while
  this thread pauses every assigned partition and keeps polling. Polls return nothing but
  keep ``max_poll_interval_ms`` honest and let rebalances proceed, so a judge batch that
  takes ten minutes on a CPU does not get the member evicted and the batch run twice.
* **Rebalances commit what was processed.** Offsets whose effect is durable but whose commit
  failed are committed by the rebalance listener before the partitions are given up.
* **Bad messages never stop the loop.** Anything that does not decode or validate goes to
  ``<topic>.dlq`` with its reason, in the same commit as the batch it came in.
* **SIGTERM drains.** The in-flight batch finishes and commits, then the consumer leaves
  the group and the producer flushes.
* **A broker that comes back empty is survived and its loss reported.** kafka-python
  reconnects with backoff and rejoins the group; a failed transaction gets a fresh
  transactional producer (a restarted broker has forgotten the old one's id); a batch whose
  partitions were lost (evicted) while it ran is not committed but redelivered, so stale
  offsets never land on a re-created log. A partition whose records restart below the offset
  this group had committed has lost its log (a memory-only broker restarted, the topic was
  re-created): the loop logs it at ERROR with the offsets and counts it
  (``selfdistill_log_resets_total``, ``selfdistill_records_lost_total``), instead of letting
  the client's ``auto_offset_reset`` carry on silently.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata
from pydantic import BaseModel

from streams.connection import KafkaSettings, connect
from streams.deadletter import DeadLetter
from streams.metrics import (
    BATCH_SECONDS,
    CONSUMER_LAG,
    DLQ_MESSAGES,
    HANDLER_FAILURES,
    LOG_RESETS,
    MESSAGES_CONSUMED,
    OFFSET_COMMITS,
    RECORDS_LOST,
)
from streams.producer import Producer
from streams.schemas import DecodeError, decode

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


@dataclass(slots=True)
class Record(Generic[M]):
    """A validated message and where it came from."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: M
    timestamp_ms: int = 0


@dataclass(frozen=True)
class Output:
    """A message the handler wants produced as part of its batch's effect."""

    topic: str
    value: BaseModel | bytes
    key: str | None = None
    headers: list[tuple[str, bytes]] | None = None


@dataclass
class BatchResult:
    """What a handler returns: messages to produce, and records it refuses (dead-lettered)."""

    outputs: list[Output] = field(default_factory=list)
    rejected: list[tuple[Record[Any], str]] = field(default_factory=list)


Handler = Callable[[list[Record[M]]], BatchResult | None]


@dataclass
class LoopStats:
    consumed: int = 0
    processed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    handler_failures: int = 0
    log_resets: int = 0
    records_lost: int = 0


class _Rebalance(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO loop: must await, never block (that would stop heartbeats)."""

    def __init__(self, loop: ConsumerLoop[Any]) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        pending = self.loop._take_processed(revoked)
        if pending and self.loop.consumer is not None:
            try:
                await self.loop.consumer.commit_async(pending)
                self.loop.stats.commits += 1
                log.info("committed %s before giving up partitions", _fmt(pending))
            except Exception as exc:
                log.warning("commit before rebalance failed (%r); records will be redelivered", exc)
        if revoked:
            log.info("partitions revoked: %s", sorted(f"{t.topic}[{t.partition}]" for t in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(f"{t.topic}[{t.partition}]" for t in assigned))

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # Evicted: the commit would be refused. The new owner redoes the batch; handlers
        # are idempotent (or transactional), so that costs time, not correctness.
        self.loop._take_processed(lost)
        self.loop._losses += 1  # an in-flight batch must not commit its (stale) offsets
        log.warning("partitions lost (evicted from group): %s", sorted(map(str, lost)))


def _fmt(offsets: dict[TopicPartition, OffsetAndMetadata]) -> str:
    return ", ".join(
        f"{tp.topic}[{tp.partition}]@{om.offset}" for tp, om in sorted(offsets.items())
    )


class ConsumerLoop(Generic[M]):
    """Consume ``topic`` as part of ``group_id`` and hand validated batches to ``handler``.

    ``transactional_id`` switches to read-process-write transactions: the handler's outputs,
    dead letters and the input offsets commit atomically (readers use ``read_committed``).

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
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.group_id = group_id
        self.schema = schema
        self.handler = handler
        self.dlq_topic = dlq_topic
        self.transactional_id = transactional_id
        self.name = name
        self.keepalive_s = min(keepalive_s, kafka.max_poll_interval_ms / 4000)
        self.retry_backoff_max_s = retry_backoff_max_s
        self.stats = LoopStats()
        self.consumer: KafkaConsumer | None = None
        self.producer: Producer | None = None
        self._stop = threading.Event()
        self._processed: dict[TopicPartition, OffsetAndMetadata] = {}
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-handler")
        self.ready = threading.Event()  # set once the group has assigned partitions
        self._next_offset: dict[TopicPartition, int] = {}  # for the lag gauge
        self._lag_at = 0.0
        # What this loop knows of each partition's log, to notice when a broker loses it:
        # the last offset it committed (acknowledged) and the highest high watermark seen.
        self._committed: dict[TopicPartition, int] = {}
        self._high: dict[TopicPartition, int] = {}
        self._losses = 0  # partitions-lost events (evictions), counted by the listener
        LOG_RESETS.labels(topic)  # the series exist at 0 from the start, for alerts
        RECORDS_LOST.labels(topic)

    # ----------------------------------------------------------------- control
    def request_stop(self) -> None:
        """Finish the in-flight batch, commit it, then leave. Safe from any thread or signal."""
        self._stop.set()

    @contextlib.contextmanager
    def _signals(self, enabled: bool) -> Iterator[None]:
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(signum: int, _frame: object) -> None:
            if self._stop.is_set():  # second signal: the operator means it
                raise KeyboardInterrupt
            log.info(
                "%s received; finishing the in-flight batch, then stopping",
                signal.Signals(signum).name,
            )
            self._stop.set()

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # -------------------------------------------------------------------- run
    def run(self, *, max_idle_s: float | None = None, handle_signals: bool = True) -> LoopStats:
        """Run until ``request_stop()``, a signal, or ``max_idle_s`` without records."""
        kw = self.kafka.consumer_kwargs(self.group_id, self.name)
        self.consumer = connect(lambda: KafkaConsumer(**kw), self.kafka, f"{self.name} consumer")
        self.producer = self._new_producer()
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
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
        try:
            with self._signals(handle_signals):
                while not self._stop.is_set():
                    polled = self.consumer.poll(timeout_ms=500, max_records=self.kafka.batch_size)
                    if not self.ready.is_set() and self.consumer.assignment():
                        self.ready.set()
                        last_record = time.monotonic()  # idle time counts from joining
                    if polled:
                        last_record = time.monotonic()
                        self._process(polled)
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
        self._executor.shutdown(wait=True)
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                self._report_lag(force=True)  # the last word, not a throttled stale one
            with contextlib.suppress(Exception):
                pending = self._take_processed(None)
                if pending:
                    self.consumer.commit(pending)
            with contextlib.suppress(Exception):
                self.consumer.close(autocommit=False)
        if self.producer is not None:
            with contextlib.suppress(Exception):
                self.producer.close()
        log.info("%s stopped: %s", self.name, self.stats)

    # ------------------------------------------------------------- one batch
    def _process(self, polled: dict[TopicPartition, list[Any]]) -> None:
        by_partition: dict[TopicPartition, list[Record[M]]] = {}
        dead: list[DeadLetter] = []
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        max_bytes, schema, count = self.kafka.max_message_bytes, self.schema, 0
        losses = self._losses
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
            offsets[tp] = OffsetAndMetadata(raws[-1].offset + 1, "", -1)
            self._next_offset[tp] = raws[-1].offset + 1
            count += len(raws)
        MESSAGES_CONSUMED.labels(self.topic).inc(count)
        self.stats.consumed += count

        attempt = 0
        while True:
            owned = self.consumer.assignment() if self.consumer else set()
            mine = [rec for tp, recs in by_partition.items() if tp in owned for rec in recs]
            if not owned.intersection(offsets):
                log.info("batch's partitions were reassigned; the new owner will process it")
                return
            try:
                started = time.monotonic()
                result = self._run_handler(mine) if mine else BatchResult()
                BATCH_SECONDS.labels(self.topic).observe(time.monotonic() - started)
                if self._losses != losses:
                    log.warning(
                        "%s: partitions were lost while a batch of %d ran; not committing it, "
                        "it is redelivered from the committed offsets",
                        self.name,
                        len(mine),
                    )
                    return
                rejected = [
                    self._dead_letter_record(rec, reason) for rec, reason in result.rejected
                ]
                self._finish(result.outputs, dead + rejected, offsets)
                self.stats.batches += 1
                self.stats.processed += len(mine)
                return
            except Exception as exc:
                attempt += 1
                self.stats.handler_failures += 1
                HANDLER_FAILURES.labels(self.topic).inc()
                delay = min(self.retry_backoff_max_s, 0.5 * 2 ** (attempt - 1))
                log.error(
                    "%s: batch of %d from %s failed (attempt %d): %r; offsets not committed, "
                    "retrying in %.1fs",
                    self.name,
                    len(mine),
                    self.topic,
                    attempt,
                    exc,
                    delay,
                    exc_info=attempt == 1,
                )
                if self._stop.is_set():
                    log.warning("stopping with a failed batch uncommitted; it will be redelivered")
                    return
                self._sleep_polling(delay)
                if self._stop.is_set():
                    return

    def _run_handler(self, batch: list[Record[M]]) -> BatchResult:
        fut = self._executor.submit(self.handler, batch)
        self._wait_polling(fut)
        return fut.result() or BatchResult()

    def _wait_polling(self, fut: Future[Any]) -> None:
        """Keep the consumer a live group member while the handler works.

        After the first ``keepalive_s`` it stays inside short polls (partitions paused) rather
        than polling now and then: kafka-python completes a group (re)join only while a poll
        waits for it, and sends a join that finished between polls again, so a member that
        must rejoin during a long batch (a rebalance, a restarted broker) would otherwise not
        get back in until the batch ends.
        """
        assert self.consumer is not None
        done, _ = wait([fut], timeout=self.keepalive_s)
        while not done:
            self._keepalive_poll(timeout_ms=50)
            done = fut.done()
        self._resume_paused()

    def _sleep_polling(self, seconds: float) -> None:
        assert self.consumer is not None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self._stop.is_set():
            self._keepalive_poll(
                timeout_ms=int(min(self.keepalive_s, deadline - time.monotonic()) * 1000)
            )
        self._resume_paused()

    def _resume_paused(self) -> None:
        assert self.consumer is not None
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)

    def _keepalive_poll(self, timeout_ms: int = 0) -> None:
        assert self.consumer is not None
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(*assigned)
        stray = self.consumer.poll(timeout_ms=max(timeout_ms, 0))
        for tp, recs in stray.items():  # defensive: never skip a record we did not process
            self.consumer.seek(tp, recs[0].offset)

    def _finish(
        self,
        outputs: list[Output],
        dead: list[DeadLetter],
        offsets: dict[TopicPartition, OffsetAndMetadata],
    ) -> None:
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
            self._committed.update((tp, om.offset) for tp, om in commit.items())
        else:
            assert self.producer is not None
            self._send(outputs, dead)
            if outputs or dead:
                self.producer.flush()  # raises: nothing committed while an output may be lost
            self._count_dead(dead)
            with self._lock:  # durable now: pending until committed (here or by the listener)
                self._processed.update(offsets)
                commit = {tp: om for tp, om in self._processed.items() if tp in owned}
            try:
                self.consumer.commit(commit)
            except Exception as exc:
                # The effect is durable; the offsets stay pending and are committed by the
                # next batch or by the rebalance listener. Redelivery repeats idempotent work.
                self.stats.commit_failures += 1
                log.warning("offset commit failed (%r); will retry with the next commit", exc)
                return
            self._committed.update((tp, om.offset) for tp, om in commit.items())
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
        """Report a partition whose log restarted below the offset this group committed.

        On a healthy broker a group is redelivered from its committed offset, never below it:
        records that come back below it mean the broker lost the log and the group's offsets
        (the embedded broker keeps everything in memory; a re-created topic does the same),
        and the client has quietly started again from ``auto_offset_reset``. What the loop
        knew was there and had not finished (up to the highest high watermark it saw) is lost
        with it; outputs already produced may be gone too. Say so, loudly and in numbers.
        """
        assert self.consumer is not None
        committed = self._committed.get(tp, 0)
        seen = max(self._high.get(tp, 0), committed)
        if first_offset < committed:
            lost = seen - committed
            self.stats.log_resets += 1
            self.stats.records_lost += lost
            LOG_RESETS.labels(tp.topic).inc()
            RECORDS_LOST.labels(tp.topic).inc(lost)
            log.error(
                "%s[%d]: the broker lost this partition's log (records restart at offset %d, "
                "below offset %d that group %s had committed; was the broker restarted with "
                "memory-only storage, or the topic re-created?): %d record(s) past it, up to "
                "the high watermark %d it had seen, were not committed as processed and are "
                "lost; outputs of the earlier ones may be gone from the broker too",
                tp.topic,
                tp.partition,
                first_offset,
                committed,
                self.group_id,
                lost,
                seen,
            )
            self._committed.pop(tp, None)
            seen = 0
        high = self.consumer.highwater(tp)
        self._high[tp] = max(seen, high or 0)

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

    def _dead_letter_record(self, rec: Record[Any], detail: str) -> DeadLetter:
        key = rec.key.encode() if rec.key is not None else None
        value = rec.value.model_dump_json().encode()
        return DeadLetter(
            rec.topic, rec.partition, rec.offset, "handler_rejected", detail, key, value, self.name
        )
