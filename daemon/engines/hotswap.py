"""Adapter hot-swap in serve: which adapter new requests go to, and how it changes safely.

A swap loads the new adapter *beside* the old one under its immutable version name,
checks its files (inside the registry, safetensors only, sha256 as recorded; an event that
carries no digest is refused), runs a canary generation on it, and only then routes new
requests to it. Requests already running hold the name they started with (``use()``), so
they finish on the old adapter, and an adapter is never unloaded while a request uses it. Any failure leaves the old adapter serving and
is reported (log, ``selfdistill_adapter_swaps_total{result="refused"|"failed"}``).

Every replica follows ``adapter-events`` from the beginning without a consumer group:
each must see every event, and the newest one says what should be active. An event that
does not decode goes to ``adapter-events.dlq`` with its reason, like a bad message on any
other topic; since every replica reads the whole log, each replica that meets it (at start-up
too) dead-letters it, and the copies share one source offset.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from adapters.files import AdapterFileError, verify_adapter
from adapters.registry import BASE
from daemon.engines.base import ChatRequest, Engine, EngineError
from daemon.metrics import ACTIVE_ADAPTER, ADAPTER_SWAPS, ADAPTERS_LOADED, SWAP_SECONDS
from streams.connection import KafkaSettings, connect
from streams.deadletter import DeadLetter
from streams.metrics import DLQ_MESSAGES, LOG_RESETS
from streams.producer import Producer
from streams.schemas import AdapterEvent, DecodeError, decode

log = logging.getLogger(__name__)

WHO = "adapter-events follower"  # the worker named in its dead letters


@dataclass(frozen=True)
class SwapResult:
    ok: bool
    version: str | None  # what is active after the attempt (None: the base model)
    requested: str
    seconds: float = 0.0
    error: str | None = None


class AdapterRouter:
    """Holds the active adapter name and performs verified swaps."""

    def __init__(
        self,
        engine: Engine,
        registry_dir: Path,
        *,
        canary: ChatRequest | None = None,
        keep_loaded: int = 2,
    ) -> None:
        self.engine = engine
        self.registry_dir = registry_dir
        self.canary = canary or ChatRequest(
            [{"role": "user", "content": "Reply with the single word OK."}], max_tokens=8
        )
        self.keep_loaded = max(1, keep_loaded)
        self._active: str | None = None
        self._in_use: Counter[str] = Counter()
        self._loaded: list[str] = []  # oldest first; what this router loaded
        self._lock = threading.Lock()  # guards _active, _in_use, _loaded
        self._swap_lock = threading.Lock()  # one swap at a time
        self._settled = threading.Event()  # cleared while a swap is under way
        self._settled.set()
        self.swap_wait_s = 600.0  # longest a new batch waits for a swap to finish
        ACTIVE_ADAPTER.info({"version": BASE})

    @property
    def active(self) -> str | None:
        return self._active

    @contextlib.contextmanager
    def use(self) -> Iterator[str | None]:
        """The adapter for one request or batch; it stays loaded until the block ends.

        A batch that starts while a swap is under way waits for it, so the first batch after
        a promotion already runs on the new adapter instead of queueing one more on the old.
        """
        self._settled.wait(self.swap_wait_s)
        with self._lock:
            name = self._active
            if name is not None:
                self._in_use[name] += 1
        try:
            yield name
        finally:
            if name is not None:
                with self._lock:
                    self._in_use[name] -= 1
                    stale = name != self._active and self._in_use[name] == 0
                if stale:  # the common case (still active) costs no engine call per batch
                    self._evict()

    def apply(self, event: AdapterEvent) -> SwapResult:
        """Make ``event.version`` active, or explain why not while the old one keeps serving."""
        started = time.monotonic()
        target = None if event.version == BASE else event.version
        with self._swap_lock:
            if target == self._active:
                return SwapResult(True, target, event.version, 0.0)
            self._settled.clear()  # new batches wait for the outcome
            try:
                return self._swap(event, target, started)
            finally:
                self._settled.set()
                self._evict()

    def _swap(self, event: AdapterEvent, target: str | None, started: float) -> SwapResult:
        # Load and canary back to back while holding the engine: no serve batch may slip in
        # between and make the canary (and so the swap) wait a whole batch.
        exclusive = getattr(self.engine, "exclusive", contextlib.nullcontext)
        try:
            with exclusive():
                if target is not None and target not in self.engine.adapters():
                    if event.sha256 is None:  # a hand-made event: nothing to check files against
                        raise AdapterFileError(f"the event for {target} carries no sha256")
                    path = verify_adapter(self.registry_dir, event.path or target, event.sha256)
                    self.engine.load_adapter(target, str(path))
                    with self._lock:
                        self._loaded.append(target)
                    ADAPTERS_LOADED.set(len(self.engine.adapters()))
                    try:
                        self._run_canary(target)
                    except Exception:
                        self._unload(target)
                        raise
        except (AdapterFileError, EngineError) as exc:
            ADAPTER_SWAPS.labels("refused").inc()
            log.error(
                "adapter %s refused; %s keeps serving: %s", event.version, self._active or BASE, exc
            )
            return SwapResult(False, self._active, event.version, error=str(exc))
        except Exception as exc:  # anything unexpected is a failed swap, never a crash
            ADAPTER_SWAPS.labels("failed").inc()
            log.exception(
                "swap to %s failed; %s keeps serving", event.version, self._active or BASE
            )
            return SwapResult(False, self._active, event.version, error=repr(exc))
        with self._lock:
            previous, self._active = self._active, target
        seconds = time.monotonic() - started
        ADAPTER_SWAPS.labels("ok").inc()
        SWAP_SECONDS.observe(seconds)
        ACTIVE_ADAPTER.info({"version": target or BASE})
        log.info(
            "%s: now serving %s (was %s; %.2fs)",
            event.action,
            target or BASE,
            previous or BASE,
            seconds,
        )
        return SwapResult(True, target, event.version, seconds)

    def _run_canary(self, name: str) -> None:
        """A real generation on the new adapter; empty output or an error refuses it."""
        result = self.engine.generate([replace(self.canary, adapter=name)])[0]
        if not result.completions or not result.completions[0].text.strip():
            raise EngineError(f"canary generation on {name} returned no text")

    def _evict(self) -> None:
        """Unload adapters beyond ``keep_loaded`` that are neither active nor in use."""
        with self._lock:
            keep = set(self._loaded[-self.keep_loaded :]) | {self._active}
            victims = [a for a in self._loaded if a not in keep and self._in_use[a] == 0]
        for name in victims:
            self._unload(name)

    def _unload(self, name: str) -> None:
        with self._lock:
            if name in self._loaded:
                self._loaded.remove(name)
        try:
            self.engine.unload_adapter(name)
        except EngineError as exc:
            log.warning("unloading %s: %s", name, exc)
        ADAPTERS_LOADED.set(len(self.engine.adapters()))


class AdapterEventFollower:
    """Reads ``adapter-events`` (no consumer group) and applies each event to the router.

    Events that do not decode are dead-lettered to ``dlq_topic`` (when given) and counted.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        router: AdapterRouter,
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

    def catch_up(self, quiet_s: float = 1.0, timeout_s: float = 30.0) -> SwapResult | None:
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
            self.router.active or BASE,
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
    kafka: KafkaSettings, topic: str, router: AdapterRouter, dlq_topic: str | None = None
) -> Iterator[None]:
    """Restore the newest adapter from history, then apply promotions until the block ends."""
    follower = AdapterEventFollower(kafka, topic, router, dlq_topic)
    try:
        restored = follower.catch_up()
        if restored is not None:
            log.info("restored from %s: %s", topic, restored.version or BASE)
        follower.start()
        yield
    finally:
        follower.stop()
