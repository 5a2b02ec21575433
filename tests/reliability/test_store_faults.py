"""A full disk, then a read-only store, under the running store writer.

Both faults are SQLite's own, on the real store file: a connection capped with
``PRAGMA max_page_count`` at the file's current size fails the next write that needs a page
with SQLITE_FULL ("database or disk is full"), exactly as a full disk does; a connection
opened ``mode=ro`` fails every write with SQLITE_READONLY, whoever runs the tests (chmod does
not stop root). The writer's store is swapped for such a connection while verify keeps
publishing verdicts, then swapped back: while the fault lasts the writer must not commit a
single offset (to Kafka or to the store's positions) and must say so (ERROR log, ``selfdistill_handler_failures_total``); once the store
is writable again every prompt must be stored exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from daemon.engines.transformers_engine import TransformersEngine
from daemon.verifying.store import Store
from daemon.verifying.store_writer import StoreWriter
from daemon.verifying.worker import VerifyWorker
from streams.connection import KafkaSettings
from streams.schemas import CandidatesMessage
from streams.topics import TopicsConfig
from tests.conftest import committed_total, wait_for
from tests.test_serve import _start
from tests.test_verify import _counts as store_counts
from tests.test_verify import _messages, _produce
from tests.test_verify import _settings as verify_settings

BATCH = 3


def _full(db: Path) -> Store:
    """The store on a disk with no room left: no page beyond those the file has now."""
    store = Store(db)
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count = {pages}")
    return store


def _read_only(db: Path) -> Store:
    return Store(db, read_only=True)


def _bulky(msgs: list[CandidatesMessage]) -> list[CandidatesMessage]:
    """Candidates whose record needs new pages (their metadata alone is several pages)."""
    return [m.model_copy(update={"metadata": {"note": "x" * 20_000}}) for m in msgs]


def test_a_full_disk_or_read_only_store_stops_the_commits_and_loses_nothing(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    yes_model_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="streams.consumer")
    settings = verify_settings(kafka, topics, tmp_path, yes_model_dir)
    settings = settings.model_copy(
        update={"store": settings.store.model_copy(update={"group_id": f"store-{topics.verdicts}"})}
    )
    group, db = settings.store.group_id, settings.store.path_in(tmp_path)
    msgs = _messages(3 * BATCH)
    worker = VerifyWorker(settings, TransformersEngine(yes_model_dir))
    writer = StoreWriter(settings)
    healthy = writer.handler.store

    def failures() -> float:
        return (
            REGISTRY.get_sample_value(
                "selfdistill_handler_failures_total", {"topic": topics.verdicts}
            )
            or 0.0
        )

    threads = [_start(worker), _start(writer)]
    numbers = []
    try:
        _produce(kafka, topics.candidates, msgs[:BATCH])
        wait_for(lambda: committed_total(kafka, group, topics.verdicts) >= BATCH, 120)
        wait_for(lambda: store_counts(db).get("prompts") == BATCH, 60)
        faults: list[tuple[str, Callable[[Path], Store], list[CandidatesMessage], str]] = [
            ("full disk", _full, _bulky(msgs[BATCH : 2 * BATCH]), "database or disk is full"),
            ("read-only", _read_only, msgs[2 * BATCH :], "readonly database"),
        ]
        for name, faulty, batch, error in faults:
            done = committed_total(kafka, group, topics.verdicts)
            stored, positions = store_counts(db), healthy.positions(topics.verdicts)
            failed, mark = failures(), len(caplog.records)
            writer.handler.store = broken = faulty(db)
            _produce(kafka, topics.candidates, batch)
            wait_for(lambda f=failed: failures() >= f + 2, 120)  # retried, and failing again
            # Nothing committed, nothing half-written, and the operator is told why.
            assert committed_total(kafka, group, topics.verdicts) == done
            assert store_counts(db) == stored
            assert healthy.positions(topics.verdicts) == positions
            logged = [r.getMessage() for r in caplog.records[mark:]]
            assert any(error in m and "offsets not committed" in m for m in logged), logged
            numbers.append(
                f"{name}: {failures() - failed:.0f} failed attempts, committed stayed at {done}"
            )
            writer.handler.store = healthy  # room again / writable again
            wait_for(lambda s=stored["prompts"]: store_counts(db).get("prompts") == s + BATCH, 120)
            wait_for(lambda d=done: committed_total(kafka, group, topics.verdicts) > d, 60)
            broken.close()
    finally:
        worker.stop()
        writer.stop()
        for t in threads:
            t.join(30)

    counts = store_counts(db)
    with Store(db, read_only=True) as store:
        accepted = sorted(r["prompt_id"] for r in store.accepted_samples(None))
    assert counts["prompts"] == len(msgs) and counts["candidates"] == 3 * len(msgs)
    assert accepted == [m.id for m in msgs]  # each prompt's sample stored exactly once
    print(
        f"\n{'; '.join(numbers)}; afterwards: {len(msgs)} candidate groups produced, "
        f"{counts['prompts']} stored once each, accepted {counts['accepted']}, lost 0"
    )
