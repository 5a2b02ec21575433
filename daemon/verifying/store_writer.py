"""The store writer: the one process that turns ``verdicts`` into the SQLite store.

Verify workers on any number of machines publish each prompt's outcome to ``verdicts`` in
a Kafka transaction with their consumed offsets; this writer reads it (``read_committed``:
an aborted verdict is never seen) and applies each batch in ONE SQLite transaction that
also saves, per partition, the next offset to apply (the store's ``positions`` table).
Where it resumes is therefore decided by the store, not by Kafka: on start, and whenever
the group gives it a partition, it seeks to those positions; a verdict below them is
already in the store and is skipped; a store file that was lost starts with no positions
and replays the topic from its beginning (``rebuild`` does the same into a fresh file).
Rows are keyed by content as well, so a verdict applied twice changes nothing either way.

One writer per store file: the writer holds an OS lock on ``<store>.writer.lock`` and a
second one on the same file refuses to start. It runs inside ``selfdistill train`` by
default (``store.writer_in_train``), or alone as ``selfdistill store``.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from daemon.verifying.metrics import (
    SAMPLES_ACCEPTED,
    STORE_LAST_WRITE,
    STORE_PROMPTS,
    STORE_SAMPLES,
    STORE_VERDICTS,
    STORE_WRITER_UP,
)
from daemon.verifying.store import Store, StoreConfig
from daemon.verifying.store_schema import read_positions
from streams.consumer import Record
from streams.schemas import VerdictMessage

if TYPE_CHECKING:
    from streams.connection import KafkaSettings
    from streams.topics import TopicsConfig

log = logging.getLogger(__name__)


class StoreWriterSettings(Protocol):
    """What the store writer reads of the daemon's settings (``Settings`` is one)."""

    @property
    def kafka(self) -> KafkaSettings: ...
    @property
    def topics(self) -> TopicsConfig: ...
    @property
    def store(self) -> StoreConfig: ...
    @property
    def data_dir(self) -> Path: ...


class WriterBusy(RuntimeError):
    """Another store writer holds this store file."""


@dataclass
class Applied:
    """What one batch did: verdicts applied, skipped as already stored, samples accepted."""

    applied: int = 0
    already: int = 0
    accepted: int = 0
    resets: list[int] = field(default_factory=list)  # partitions whose log restarted


def verdict_reader(kafka: KafkaSettings, batch_size: int) -> KafkaSettings:
    """The Kafka settings the writer reads verdicts with. Its own batch size (``store.
    batch_size``): a batch costs one fsync and one commit, and unlike a judge batch it is
    fast. A verdict carries the candidates message it judged and every judge output, so it
    may outgrow the largest record the workers accept (``kafka.max_message_bytes``); it is
    accepted up to what verify may write (``kafka.output_limit``: twice that unless
    ``kafka.max_output_bytes`` says more), and dead-lettered as oversize beyond."""
    limit = max(2 * kafka.max_message_bytes, kafka.output_limit)
    return kafka.model_copy(update={"max_message_bytes": limit, "batch_size": batch_size})


def apply_verdicts(
    store: Store,
    topic: str,
    batch: list[Record[VerdictMessage]],
    highwater: Callable[[int], int | None] | None = None,
) -> Applied:
    """Apply a batch of verdicts and their positions in one SQLite transaction.

    A verdict below the saved position of its partition is already in the store. Unless
    the log restarted below that position (``highwater`` of the partition under it: a
    memory-only broker that lost its log, a re-created topic): then the saved position
    belongs to a log that no longer exists, and the verdict is applied (its content keys
    make it a no-op if it is, after all, already stored).
    """
    done = Applied()
    with store.transaction() as db:
        saved = read_positions(db, topic)
        moved: dict[int, int] = {}
        todo: list[VerdictMessage] = []
        for rec in batch:
            nxt = saved.get(rec.partition)
            if nxt is not None and rec.offset < nxt:
                high = highwater(rec.partition) if highwater is not None else None
                if high is None or high >= nxt:
                    done.already += 1
                    continue
                log.error(
                    "%s[%d] restarted below the store's position %d (high watermark %d): "
                    "the broker lost the log; applying from offset %d",
                    topic,
                    rec.partition,
                    nxt,
                    high,
                    rec.offset,
                )
                done.resets.append(rec.partition)
            if rec.value.id != rec.value.candidates.id:  # decode checks it; a copy may not
                raise ValueError(
                    f"verdict {rec.value.id!r} recorded with message {rec.value.candidates.id!r}"
                )
            todo.append(rec.value)
            saved[rec.partition] = moved[rec.partition] = rec.offset + 1
        # The verdict's own candidates: the cascade's fields, no conversion needed.
        results = store.record_many(
            db, [(v.outcomes, v.candidates, v.policy, v.judged_at) for v in todo]
        )
        done.applied = len(results)
        done.accepted = sum(len(r.accepted) for r in results)
        for partition, nxt in moved.items():
            store.save_position(db, topic, partition, nxt)
    return done


@dataclass
class StoreHandler:
    """The writer loop's handler: apply a batch, then count it."""

    store: Store
    topic: str
    highwater: Callable[[int], int | None] | None = None

    def __post_init__(self) -> None:
        self._sized_at = 0.0
        self.totals = Applied()

    def __call__(self, batch: list[Record[VerdictMessage]]) -> None:
        done = apply_verdicts(self.store, self.topic, batch, self.highwater)
        STORE_VERDICTS.labels("applied").inc(done.applied)
        STORE_VERDICTS.labels("already").inc(done.already)
        SAMPLES_ACCEPTED.inc(done.accepted)
        STORE_LAST_WRITE.set(time.time())
        self.totals.applied += done.applied
        self.totals.already += done.already
        self.totals.accepted += done.accepted
        self.report_size()

    def report_size(self, every_s: float = 10.0) -> None:
        """Store size for the dashboard's growth panel; counted at most every ``every_s``."""
        now = time.monotonic()
        if now - self._sized_at < every_s:
            return
        self._sized_at = now
        counts = self.store.counts()
        STORE_PROMPTS.set(counts["prompts"])
        for split in ("train", "heldout"):
            STORE_SAMPLES.labels(split).set(counts[f"accepted_{split}"])


def _lock(path: Path) -> IO[bytes]:
    lock_path = path.with_name(path.name + ".writer.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fh = lock_path.open("ab")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise WriterBusy(
            f"another store writer holds {lock_path}: one writer per store (turn "
            "store.writer_in_train off where `selfdistill store` runs)"
        ) from None
    return fh


class StoreWriter:
    """The writer's parts: the store (locked for this process), its handler, the loop."""

    def __init__(self, settings: StoreWriterSettings, store_path: Path | None = None) -> None:
        from kafka import TopicPartition

        from streams.consumer import ConsumerLoop

        self.settings = settings
        path = store_path or settings.store.path_in(settings.data_dir)
        self._lockfile = _lock(path)
        try:
            self.store = Store(
                path,
                heldout_fraction=settings.store.heldout_fraction,
                busy_timeout_s=settings.store.busy_timeout_s,
            )
        except BaseException:
            self._lockfile.close()
            raise
        topic = settings.topics.verdicts
        self.handler = StoreHandler(self.store, topic)
        self.loop: ConsumerLoop[VerdictMessage] = ConsumerLoop(
            verdict_reader(settings.kafka, settings.store.batch_size),
            topic=topic,
            group_id=settings.store.group_id,
            schema=VerdictMessage,
            handler=self.handler,
            dlq_topic=settings.topics.dlq(topic),
            name="store",
            # A store that cannot be written (full disk, read-only, locked) is waited for:
            # never the verdict's fault, and nothing is committed meanwhile.
            unavailable=(sqlite3.OperationalError,),
            positions=lambda: self.store.positions(topic),
        )

        def highwater(partition: int) -> int | None:
            consumer = self.loop.consumer
            return consumer.highwater(TopicPartition(topic, partition)) if consumer else None

        self.handler.highwater = highwater

    def is_ready(self) -> bool:
        return self.loop.is_ready()

    def run(
        self,
        *,
        max_idle_s: float | None = None,
        handle_signals: bool = True,
        topics_ready: bool = False,
    ) -> None:
        from streams.topics import prepare_topics

        try:
            if not topics_ready:
                prepare_topics(self.settings.kafka, self.settings.topics)
            STORE_WRITER_UP.set(1)
            self.handler.report_size(every_s=0)
            self.loop.run(max_idle_s=max_idle_s, handle_signals=handle_signals)
        finally:
            STORE_WRITER_UP.set(0)
            try:
                self.handler.report_size(every_s=0)
            except Exception as exc:
                log.debug("store size at exit: %r", exc)
            self.close()

    def stop(self) -> None:
        self.loop.request_stop()

    def close(self) -> None:
        if self.loop.busy:  # an abandoned batch still holds the connection: leave it
            return
        self.store.close()
        self._lockfile.close()


class WriterThread:
    """The writer beside another worker (train, up): a daemon thread that outlives a broker
    or disk outage by starting the writer again, with backoff, until ``stop``."""

    def __init__(self, settings: StoreWriterSettings, *, max_idle_s: float | None = None) -> None:
        self.settings = settings
        self.max_idle_s = max_idle_s
        self.writer: StoreWriter | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="store-writer", daemon=True)

    def start(self) -> WriterThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        delay = 1.0
        while not self._stop.is_set():
            try:
                self.writer = StoreWriter(self.settings)
                if self._stop.is_set():
                    self.writer.close()
                    return
                self.writer.run(max_idle_s=self.max_idle_s, handle_signals=False)
                self.error = None
                if self.max_idle_s is not None:
                    return
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("store writer stopped (%s); starting it again in %.0fs", exc, delay)
            self._stop.wait(delay)
            delay = min(delay * 2, 30.0)

    def healthy(self) -> bool:
        writer = self.writer
        return writer is not None and writer.is_ready()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self.writer is not None:
            self.writer.stop()
        self._thread.join(timeout_s)

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)


@dataclass
class Rebuilt:
    """What ``rebuild`` read and wrote."""

    path: Path
    verdicts: int = 0
    undecodable: int = 0
    snapshots: int = 0
    counts: dict[str, int] = field(default_factory=dict)


def rebuild(
    settings: StoreWriterSettings,
    out: Path,
    *,
    timeout_s: float = 600.0,
    snapshots_from: Path | None = None,
) -> Rebuilt:
    """Replay ``verdicts`` from its beginning into a fresh store at ``out``.

    The result has the rows the live writer wrote from the same log (the same keys, the
    same timestamps: they come from the verdicts), and its positions, so it can replace
    the live file. ``out`` must not exist: a rebuild never writes into a store in use.
    A verdict that does not decode is counted and skipped (the live writer dead-lettered it).
    The trainer's snapshots are not in ``verdicts``: ``snapshots_from`` (the old store,
    when it is still readable) copies them over; without them the trainer counts every
    accepted sample as new once (it logs why).
    """
    from streams.consumer import Record
    from streams.replay import replay
    from streams.schemas import DecodeError, decode

    if out.exists():
        raise FileExistsError(f"{out} exists: rebuild writes a fresh file (choose another --out)")
    topic = settings.topics.verdicts
    max_bytes = verdict_reader(settings.kafka, settings.store.batch_size).max_message_bytes
    result = Rebuilt(out)
    with Store(out, heldout_fraction=settings.store.heldout_fraction) as store:
        for raws in replay(settings.kafka, topic, "store-rebuild", timeout_s):
            batch = []
            for r in raws:
                try:
                    value = decode(VerdictMessage, r.value, max_bytes)
                except DecodeError:
                    result.undecodable += 1
                    continue
                key = r.key.decode("utf-8", "replace") if r.key is not None else None
                batch.append(Record(r.topic, r.partition, r.offset, key, value))
            if batch:
                result.verdicts += apply_verdicts(store, topic, batch).applied
        if snapshots_from is not None:
            result.snapshots = store.copy_snapshots(snapshots_from)
        result.counts = store.counts()
    return result
