"""Following ``adapter-events``: every promotion and rollback, applied as it arrives.

Every replica follows ``adapter-events`` from the beginning without a consumer group:
each must see every event, and the newest one says what should be active. An event that
does not decode goes to ``adapter-events.dlq`` with its reason, like a bad message on any
other topic; since every replica reads the whole log, each replica that meets it (at start-up
too) dead-letters it, and the copies share one source offset.

What an event does is the target's business (the workers' adapter router): this module only reads, decodes, dead-letters and hands events over.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any, Protocol

from kafka import KafkaConsumer, TopicPartition

from streams.connection import KafkaSettings, connect
from streams.deadletter import DeadLetter
from streams.metrics import DLQ_MESSAGES, LOG_RESETS
from streams.producer import Producer
from streams.schemas import BASE_VERSION, AdapterEvent, DecodeError, decode

log = logging.getLogger(__name__)

WHO = "adapter-events follower"  # the worker named in its dead letters


class EventTarget(Protocol):
    """What the follower applies events to: the engine's adapter router."""

    @property
    def active(self) -> str | None: ...

    def apply(self, event: AdapterEvent) -> Any: ...


class AdapterEventFollower:
    """Reads ``adapter-events`` (no consumer group) and applies each event to the router.

    Events that do not decode are dead-lettered to ``dlq_topic`` (when given) and counted.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        router: EventTarget,
        dlq_topic: str | None = None,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.router = router
        self.dlq_topic = dlq_topic
        self.bad = 0
        self._dlq: Producer | None = None  # made when the first bad event arrives
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        kw = kafka.reader_kwargs("adapter-events")
        self.consumer = connect(lambda: KafkaConsumer(**kw), kafka, "adapter-events reader")
        self._tp = TopicPartition(topic, 0)
        self._next = 0  # offset of the next event to read
        self.consumer.assign([self._tp])
        self.consumer.seek_to_beginning(self._tp)

    def _read(self, timeout_ms: int) -> list[AdapterEvent]:
        events, dead = [], []
        for recs in self.consumer.poll(timeout_ms=timeout_ms).values():
            for r in recs:
                self._next = r.offset + 1
                try:
                    events.append(decode(AdapterEvent, r.value, self.kafka.max_message_bytes))
                except DecodeError as exc:
                    self.bad += 1
                    log.error("bad adapter event at offset %d, not applied: %s", r.offset, exc)
                    where = (r.topic, r.partition, r.offset)
                    dead.append(DeadLetter(*where, exc.reason, exc.detail, r.key, r.value, WHO))
        if dead and self.dlq_topic:
            self._dead_letter(dead)
        return events

    def _dead_letter(self, dead: list[DeadLetter]) -> None:
        """Keep bad events on the DLQ. Best effort: the follower commits no offsets that a
        failure could hold back, so a DLQ that cannot be written is logged, not retried."""
        assert self.dlq_topic is not None
        try:
            if self._dlq is None:
                self._dlq = Producer(self.kafka, name="adapter-events-dlq")
            for dl in dead:
                self._dlq.send_dead_letter(self.dlq_topic, dl)
            self._dlq.flush()
        except Exception as exc:
            log.error("could not dead-letter %d adapter event(s): %r", len(dead), exc)
            return
        for dl in dead:
            DLQ_MESSAGES.labels(dl.source_topic, dl.reason).inc()

    def catch_up(self, quiet_s: float = 1.0, timeout_s: float = 30.0) -> Any:
        """Replay history and apply only its last event (the state to restore after a restart).

        The end of the log is taken to be reached after ``quiet_s`` without records:
        ListOffsets answers wrongly on the embedded broker, so it is not asked.
        """
        last: AdapterEvent | None = None
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < quiet_s:
            events = self._read(200)
            if events:
                last = events[-1]
                quiet_since = time.monotonic()
        return None if last is None else self.router.apply(last)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="adapter-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._log_lost():
                self.catch_up()  # what the new log holds; only its newest event counts
                continue
            for event in self._read(500):
                self.router.apply(event)

    def _log_lost(self) -> bool:
        """True (and reported) when the log now ends before what this replica has read.

        A broker that restarts with memory-only storage (the embedded one), or a re-created
        topic, starts ``adapter-events`` again from offset 0; a reader positioned further on
        would wait there and skip every promotion published meanwhile, silently. It re-reads
        from the start instead and says what was lost. (A reader that first looks only after
        the new log has grown past its position cannot tell: promotions are rare enough that
        this needs as many of them, right after the restart, as the log held before.)
        """
        high = self.consumer.highwater(self._tp)
        if high is None or high >= self._next:
            return False
        LOG_RESETS.labels(self.topic).inc()
        log.error(
            "%s: the broker lost its log (it now ends at offset %d; this replica had read %d "
            "events): the promotion history is gone, so a replica that starts now serves the "
            "base model until the active adapter is promoted again. Re-reading it from the "
            "start; %s stays active here",
            self.topic,
            high,
            self._next,
            self.router.active or BASE_VERSION,
        )
        self.consumer.seek_to_beginning(self._tp)
        self._next = 0
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(Exception):
            self.consumer.close(autocommit=False)
        if self._dlq is not None:
            with contextlib.suppress(Exception):
                self._dlq.close()


@contextlib.contextmanager
def follow_adapter_events(
    kafka: KafkaSettings, topic: str, router: EventTarget, dlq_topic: str | None = None
) -> Iterator[None]:
    """Restore the newest adapter from history, then apply promotions until the block ends."""
    follower = AdapterEventFollower(kafka, topic, router, dlq_topic)
    try:
        restored = follower.catch_up()
        if restored is not None:
            log.info("restored from %s: %s", topic, router.active or BASE_VERSION)
        follower.start()
        yield
    finally:
        follower.stop()
