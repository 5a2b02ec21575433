"""Following ``adapter-events``: every promotion and rollback, applied as it arrives.

Every replica follows ``adapter-events`` from the beginning without a consumer group:
each must see every event, and the newest one says what should be active. An event that
does not decode goes to ``adapter-events.dlq`` with its reason, like a bad message on any
other topic; since every replica reads the whole log, each replica that meets it (at start-up
too) dead-letters it, and the copies share one source offset.

What an event does is the target's business (the workers' adapter router): this module only
reads, decodes, dead-letters and hands events over, and tells ``on_apply`` (the replica's
``adapter-status`` reporter) what came of each. Nothing the target raises stops the follower:
an engine blip while a swap lists or unloads adapters is logged, counted and the follower
goes on; ``healthy()`` (part of the worker's ``/readyz``) says whether it is still following.

An outcome that says ``passing`` (the target could not reach its engine: a server restarting,
a 5xx, a timeout) is not final: the follower applies the same event again after a backoff
(``retry_s``, doubling up to ``retry_max_s``), and again, until an attempt succeeds or fails
for good, or a newer event arrives and supersedes it. Every attempt goes to ``on_apply``, so
adapter-status shows a replica that is still trying, not one that gave up. Otherwise every
replica would stay on the old adapter, while the registry says promoted, until the next
promotion.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from kafka import KafkaConsumer, TopicPartition

from streams.connection import KafkaSettings, connect
from streams.deadletter import DeadLetter
from streams.metrics import DLQ_MESSAGES, FOLLOWER_ERRORS, LOG_RESETS
from streams.producer import Producer
from streams.schemas import BASE_VERSION, AdapterEvent, DecodeError, decode

log = logging.getLogger(__name__)

WHO = "adapter-events follower"  # the worker named in its dead letters


def at_end(consumer: KafkaConsumer, tp: TopicPartition) -> bool:
    """True once ``consumer`` has read everything ``tp`` held at its last fetch.

    The high watermark comes with every fetch response (an empty one too), so this is exact
    on any broker; ListOffsets is not asked because the embedded broker answers it with the
    base offset of the last batch, not the end of the log.
    """
    high = consumer.highwater(tp)
    return high is not None and consumer.position(tp) >= high


def read_to_end(
    consumer: KafkaConsumer, tp: TopicPartition, timeout_s: float, poll_ms: int = 200
) -> Iterator[Any]:
    """Every record of ``tp`` from the consumer's position to the end of the log.

    Raises ``TimeoutError`` when the end is not reached within ``timeout_s`` (a broker that
    answers no fetch): an incomplete history must not pass for the whole one.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        for recs in consumer.poll(timeout_ms=poll_ms).values():
            yield from recs
        if at_end(consumer, tp):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tp.topic}: the end of the log was not reached in {timeout_s}s")


class EventTarget(Protocol):
    """What the follower applies events to: the engine's adapter router. ``apply`` returns
    an outcome; one with a true ``passing`` attribute is applied again later (see above)."""

    @property
    def active(self) -> str | None: ...

    def apply(self, event: AdapterEvent) -> Any: ...


@dataclass(frozen=True)
class _Retry:
    """An event whose last attempt failed for a passing reason, and when to try again."""

    event: AdapterEvent
    attempts: int
    due: float  # time.monotonic()


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
        on_apply: Callable[[AdapterEvent, Any], None] | None = None,
        *,
        retry_s: float = 1.0,
        retry_max_s: float = 60.0,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.router = router
        self.dlq_topic = dlq_topic
        self.on_apply = on_apply
        self.retry_s = retry_s
        self.retry_max_s = max(retry_s, retry_max_s)
        self.retry: _Retry | None = None  # the event to apply again, if its last try passed
        self.bad = 0
        self.last_error: str | None = None
        self.restored: Any = None  # what catch_up() applied at start-up (None: no history)
        self._alive_at = time.monotonic()  # when the loop last came round
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
        records = [r for recs in self.consumer.poll(timeout_ms=timeout_ms).values() for r in recs]
        return self._decode(records)

    def _decode(self, records: list[Any]) -> list[AdapterEvent]:
        events, dead = [], []
        for r in records:
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

    def catch_up(self, timeout_s: float = 60.0) -> Any:
        """Replay history to the end of the log and apply only its last event (the state to
        restore after a restart); ``None`` when the log holds no event.

        The end is the high watermark of the fetches themselves (``at_end``), not a pause in
        the records: a slow broker cannot make a replica start on an older adapter.
        """
        events = self._decode(list(read_to_end(self.consumer, self._tp, timeout_s)))
        return self._apply(events[-1]) if events else None

    def _apply(self, event: AdapterEvent, attempts: int = 1) -> Any:
        """Apply ``event``; a passing failure schedules it again (replacing any retry of an
        older event: the newest event is what should serve)."""
        self.retry = None  # this attempt replaces it (an older event's retry is superseded)
        result = self.router.apply(event)
        if getattr(result, "passing", False):
            delay = min(self.retry_max_s, self.retry_s * 2 ** (attempts - 1))
            self.retry = _Retry(event, attempts, time.monotonic() + delay)
            log.warning(
                "%s: %s not applied yet (attempt %d, a passing failure); trying again in %.1fs",
                self.topic,
                event.version,
                attempts,
                delay,
            )
        if self.on_apply is not None:
            self.on_apply(event, result)
        return result

    def _retry_due(self) -> None:
        retry = self.retry
        if retry is not None and time.monotonic() >= retry.due:
            self._apply(retry.event, retry.attempts + 1)

    def _poll_ms(self) -> int:
        """Poll no longer than until the next retry is due (at most 500 ms)."""
        if self.retry is None:
            return 500
        return max(10, min(500, int((self.retry.due - time.monotonic()) * 1000)))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="adapter-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            self._alive_at = time.monotonic()
            try:
                if self._log_lost():
                    self.catch_up()  # what the new log holds; only its newest event counts
                    continue
                for event in self._read(self._poll_ms()):
                    self._apply(event)  # a newer event supersedes a retry of an older one
                self._retry_due()
                failures = 0
                self.last_error = None
            except Exception as exc:  # an engine or broker blip: report it, keep following
                failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                FOLLOWER_ERRORS.inc()
                log.exception("%s: error while following (it goes on)", self.topic)
                self._stop.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))

    def healthy(self, stale_s: float = 120.0) -> bool:
        """Following: the thread runs, its last round raised nothing, and it came round
        within ``stale_s`` (a swap that hangs the engine longer makes the replica unready)."""
        return (
            self._thread is not None
            and self._thread.is_alive()
            and self.last_error is None
            and time.monotonic() - self._alive_at < stale_s
        )

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


def read_log(kafka: KafkaSettings, topic: str, who: str, timeout_s: float) -> list[Any]:
    """Every record of a single-partition state topic, from its beginning to its end, read
    by a short-lived consumer outside any group (the CLI, status, the promotion outbox)."""
    kw = kafka.reader_kwargs(who)
    consumer = connect(lambda: KafkaConsumer(**kw), kafka, f"{who} reader")
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        return list(read_to_end(consumer, tp, timeout_s))
    finally:
        with contextlib.suppress(Exception):
            consumer.close(autocommit=False)


def read_events(kafka: KafkaSettings, topic: str, timeout_s: float = 60.0) -> list[AdapterEvent]:
    """Every event on ``topic`` that decodes, oldest first, read to the end of the log."""
    events = []
    for r in read_log(kafka, topic, "adapter-events-check", timeout_s):
        with contextlib.suppress(DecodeError):
            events.append(decode(AdapterEvent, r.value, kafka.max_message_bytes))
    return events


def read_last_event(
    kafka: KafkaSettings, topic: str, timeout_s: float = 60.0
) -> AdapterEvent | None:
    """The newest event that decodes on ``topic``, read to the end of the log (what the
    promotion outbox reconciles the registry with); None for an empty history."""
    events = read_events(kafka, topic, timeout_s)
    return events[-1] if events else None


@contextlib.contextmanager
def follow_adapter_events(
    kafka: KafkaSettings,
    topic: str,
    router: EventTarget,
    dlq_topic: str | None = None,
    on_apply: Callable[[AdapterEvent, Any], None] | None = None,
    *,
    retry_s: float = 1.0,
    retry_max_s: float = 60.0,
) -> Iterator[AdapterEventFollower]:
    """Restore the newest adapter from history, then apply promotions until the block ends
    (retrying one that failed for a passing reason, see the module's docstring)."""
    follower = AdapterEventFollower(
        kafka, topic, router, dlq_topic, on_apply, retry_s=retry_s, retry_max_s=retry_max_s
    )
    try:
        restored = follower.restored = follower.catch_up()
        if restored is not None:
            log.info("restored from %s: %s", topic, router.active or BASE_VERSION)
        follower.start()
        yield follower
    finally:
        follower.stop()
