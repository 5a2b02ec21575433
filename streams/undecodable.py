"""Records the client cannot decode: find the run of offsets, so the loop can step over it.

kafka-python decompresses a fetched batch inside ``poll()``. A batch it cannot decode (a
codec it has no library for, an unknown codec id, a corrupt or truncated compressed payload)
makes ``poll()`` raise, without saying which partition, and leaves the position where it
was: polled again, the same fetch fails again, forever. The broker accepted those records,
so they are not going to change; what the loop can do is find them, say exactly which
offsets it gives up, and move on.

Which partition: each assigned partition is fetched alone (the others paused) at its
position. Where the undecodable run ends: the broker answers a fetch at any offset inside a
batch with the whole batch, so "a fetch at ``o`` raises" holds for every ``o`` in the bad
batch (and in any bad batches right after it) and for none past them; an exponential then
binary search over ``o`` finds the first good offset in a few fetches. Nothing past that
offset is skipped, and a record that is merely invalid (decodes but does not validate) is
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
    """Drop the fetched data a failed ``poll()`` leaves behind, or the next poll spins forever.

    kafka-python 3.0.12 keeps the partition's records whose decoding raised as "next in line";
    their iterator is exhausted, ``take()`` returns nothing and never drains them, and
    ``fetched_records`` loops on them at 100% CPU without returning (the "busy loop inside
    poll()" seen with lz4 batches and no lz4 library). Draining them is what the client does
    itself for data it will not return. This reaches into the client's fetcher, so it is
    guarded: on another client version it does nothing.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    part = getattr(fetcher, "_next_partition_records", None)
    if part is None:
        return
    with contextlib.suppress(Exception):
        part.drain()
    fetcher._next_partition_records = None  # type: ignore[union-attr]


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
                    return False
                if polled.get(tp):
                    return True
                high = c.highwater(tp)
                if high is not None and offset >= high:
                    return True
            return True  # nothing came back in time: nothing there to fail on
        finally:
            c.seek(tp, offset)
            if others:
                c.resume(*others)

    def find(self, tp: TopicPartition, first: int) -> Undecodable | None:
        """The undecodable run starting at ``first``, or None when ``first`` decodes."""
        if self.decodes(tp, first):
            return None
        error = self.error
        bad, step = first, 1  # invariant: a fetch at `bad` fails
        good = None
        high = self.consumer.highwater(tp)
        while good is None:
            probe = bad + step
            if high is not None and probe >= high:
                good = high
                break
            if self.decodes(tp, probe):
                good = probe
            else:
                bad, step = probe, step * 2
        while good - bad > 1:  # binary search for the first offset that decodes
            mid = (bad + good) // 2
            if self.decodes(tp, mid):
                good = mid
            else:
                bad = mid
        return Undecodable(tp, first, good, error)


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
