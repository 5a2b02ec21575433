"""Records the client cannot decode: find the run of offsets, so the loop can step over it.

kafka-python decompresses a fetched batch inside ``poll()``. A batch it cannot decode (a
codec it has no library for, an unknown codec id, a corrupt or truncated compressed payload)
makes ``poll()`` raise, without saying which partition, and leaves the position where it
was: polled again, the same fetch fails again, forever. The broker accepted those records,
so they are not going to change; what the loop can do is find them, say exactly which
offsets it gives up, and move on.

Which partition: each assigned partition is fetched alone (the others paused) at its
position. Where the undecodable run ends: exactly where the bad batches end, never further.
Producers with different codecs interleave good and bad batches on one partition, so "a
fetch at ``o`` fails" is not monotone in ``o`` and no search between two failing probes may
assume what lies between them is bad. A failed fetch names its batch instead: the client's
record batch is on the exception's traceback (its header, read before decompressing, gives
``base_offset``..``last_offset``), so the loop steps over exactly that batch and probes the
offset right after it, one fetch per consecutive bad batch. Where the batch cannot be found
(another client version, the legacy message format), it steps one offset at a time: slower,
just as exact. A record that is merely invalid (decodes but does not validate) is
dead-lettered one by one by the loop as before.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CorruptRecordError, KafkaError, UnsupportedCodecError
from kafka.structs import OffsetAndMetadata

from streams.deadletter import DeadLetter
from streams.metrics import RECORDS_SKIPPED, UNDECODABLE_BATCHES

log = logging.getLogger(__name__)


def is_decode_failure(exc: BaseException) -> bool:
    """Whether an exception out of ``poll()`` can come from decoding a fetched batch.

    The two client errors for it, and anything that is not a client error at all (the codec
    libraries raise their own: ``zstd.ZstdError``, lz4's ``RuntimeError``, snappy's
    ``UncompressError``, ``struct.error`` for a truncated record). Other client errors
    (authorization, a fenced member) are not about records and must not skip any.
    """
    if isinstance(exc, (UnsupportedCodecError, CorruptRecordError)):
        return True
    return not isinstance(exc, KafkaError)


def clear_failed_fetch(consumer: KafkaConsumer) -> None:
    """Drop every record the client fetched but did not return; the next poll refetches.

    Positions are where the consumer returned records up to (or where a seek put them), so
    dropping what is buffered beyond them loses nothing. Two states of kafka-python 3.0.12
    that never clear themselves need it:

    * After a failed ``poll()``, the partition's records whose decoding raised stay "next in
      line": their iterator is exhausted, ``take()`` returns nothing and never drains them,
      and ``fetched_records`` loops on them at 100% CPU without returning (the "busy loop
      inside poll()" seen with lz4 batches and no lz4 library).
    * After a probe that paused some partitions: records fetched for a partition while it was
      paused are parked, and are put back in line only while the in-line slot is ``None``;
      a drained slot (another partition's fetch, fully read) is empty but not ``None``, so
      the parked partition is neither returned nor fetched again: it stalls for good (seen
      after stepping over a bad batch on one of three partitions).

    This reaches into the client's fetcher, so it is guarded: on another client version it
    does nothing.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    if fetcher is None:
        return
    with contextlib.suppress(Exception):
        part = fetcher._next_partition_records
        fetcher._next_partition_records = None
        if part is not None:
            with contextlib.suppress(Exception):
                part.drain()
        parked = fetcher._paused_partition_records
        for records in list(parked.values()):
            with contextlib.suppress(Exception):
                records.drain()
        parked.clear()
        fetcher._paused_completed_fetches.clear()


@dataclass(frozen=True)
class Undecodable:
    """A run of offsets ``[first, end)`` of one partition that could not be decoded."""

    tp: TopicPartition
    first: int
    end: int
    error: str

    @property
    def count(self) -> int:
        return self.end - self.first

    def report(self, dlq_topic: str) -> None:
        UNDECODABLE_BATCHES.labels(self.tp.topic).inc()
        RECORDS_SKIPPED.labels(self.tp.topic).inc(self.count)
        log.error(
            "%s[%d]: offsets %d..%d (%d record(s)) cannot be decoded by this client (%s); "
            "skipping them, a dead letter on %s says where",
            self.tp.topic,
            self.tp.partition,
            self.first,
            self.end - 1,
            self.count,
            self.error,
            dlq_topic,
        )

    def dead_letter(self, worker: str) -> DeadLetter:
        """Where the skipped run was; its bytes never decoded, so the value is empty."""
        detail = f"offsets {self.first}..{self.end - 1} could not be decoded: {self.error}"
        tp = self.tp
        return DeadLetter(
            tp.topic, tp.partition, self.first, "undecodable", detail, None, b"", worker
        )

    def commit_offsets(self) -> dict[TopicPartition, OffsetAndMetadata]:
        return {self.tp: OffsetAndMetadata(self.end, "", -1)}


class Prober:
    """Fetches one partition at a chosen offset and says whether the client can decode it."""

    def __init__(self, consumer: KafkaConsumer, wait_s: float = 2.0) -> None:
        self.consumer = consumer
        self.wait_s = wait_s
        self.error = ""
        self.batch_end: int | None = None  # after the batch the last failed probe named

    def decodes(self, tp: TopicPartition, offset: int) -> bool:
        """True when a fetch at ``offset`` yields records or nothing (end of the log)."""
        c = self.consumer
        others = [p for p in c.assignment() if p != tp]
        if others:
            c.pause(*others)
        c.resume(tp)
        c.seek(tp, offset)
        deadline = time.monotonic() + self.wait_s
        try:
            while time.monotonic() < deadline:
                try:
                    polled = c.poll(timeout_ms=100, max_records=1)
                except Exception as exc:
                    clear_failed_fetch(c)
                    if not is_decode_failure(exc):
                        raise
                    self.error = f"{type(exc).__name__}: {exc}"[:500]
                    self.batch_end = failed_batch_end(exc)
                    return False
                if polled.get(tp):
                    return True
                high = c.highwater(tp)
                if high is not None and offset >= high:
                    return True
            return True  # nothing came back in time: nothing there to fail on
        finally:
            clear_failed_fetch(c)  # what the probe fetched past `offset` is not returned
            c.seek(tp, offset)
            if others:
                c.resume(*others)

    def find(self, tp: TopicPartition, first: int) -> Undecodable | None:
        """The undecodable run starting at ``first``, or None when ``first`` decodes.

        The run is the consecutive bad batches from ``first``: each failed probe's batch is
        stepped over whole (one offset where the batch is unknown), and the first offset
        that decodes (or the end of the log) ends it.
        """
        end, error = first, ""
        while not self.decodes(tp, end):
            error = error or self.error
            after = self.batch_end
            end = after if after is not None and after > end else end + 1
        return Undecodable(tp, first, end, error) if end > first else None


def failed_batch_end(exc: BaseException) -> int | None:
    """The offset after the record batch whose decoding raised ``exc``, or None if unknown.

    kafka-python raises out of the batch's own code (``DefaultRecordBatch.__iter__`` and
    its decompression, or the fetcher's loop over batches with the batch in hand), so the
    innermost frame holding a batch (an object with integer ``base_offset`` and
    ``next_offset``, read from the uncompressed header) is the one that failed.
    """
    end = None
    tb = exc.__traceback__
    while tb is not None:
        frame_locals = tb.tb_frame.f_locals
        for name in ("batch", "self"):
            obj = frame_locals.get(name)
            with contextlib.suppress(Exception):
                base, nxt = obj.base_offset, obj.next_offset  # type: ignore[union-attr]
                if isinstance(base, int) and isinstance(nxt, int) and nxt > base >= 0:
                    end = nxt
        tb = tb.tb_next
    return end


def find_undecodable(consumer: KafkaConsumer) -> list[Undecodable]:
    """Every assigned partition whose next fetch cannot be decoded, with the run to skip.

    Positions are left where they were; the caller seeks past what it decides to skip.
    """
    prober = Prober(consumer)
    found: list[Undecodable] = []
    paused = set(consumer.paused())
    try:
        for tp in sorted(consumer.assignment()):
            position = consumer.position(tp)
            if position is None:
                continue
            run = prober.find(tp, position)
            consumer.seek(tp, position)
            if run is not None:
                found.append(run)
    finally:
        with contextlib.suppress(Exception):
            unpaused = [p for p in consumer.assignment() if p not in paused]
            if unpaused:
                consumer.resume(*unpaused)
    return found
