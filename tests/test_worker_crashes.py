"""Worker processes killed and stopped for real: nothing lost, no effect duplicated."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import PromptMessage, ResponseMessage
from streams.topics import TopicsConfig
from tests.conftest import ROOT, committed_total, read_topic, wait_for


def _start(kafka: KafkaSettings, topic: str, group: str, db: Path, **env: str) -> subprocess.Popen:
    full = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "BOOTSTRAP": kafka.bootstrap_servers,
        "TOPIC": topic,
        "GROUP": group,
        "DB": str(db),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "tests.workers.sqlite_worker"],
        env=full,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError:  # table not created yet
        return []
    finally:
        con.close()


def _produce(kafka: KafkaSettings, topic: str, n: int) -> list[str]:
    p = Producer(kafka)
    ids = [f"q{i:03d}" for i in range(n)]
    for pid in ids:
        p.send(topic, PromptMessage(id=pid, prompt=f"prompt {pid}"), key=pid)
    p.flush()
    p.close()
    return ids


def test_sigkill_mid_batch_loses_nothing_and_duplicates_no_effect(
    kafka: KafkaSettings, topics: TopicsConfig, tmp_path: Path
) -> None:
    db = tmp_path / "effects.db"
    ids = _produce(kafka, topics.prompts, 24)
    first = _start(kafka, topics.prompts, "g-kill", db, BATCH="4", DELAY="0.05", CRASH_AFTER="6")
    assert first.wait(90) == -signal.SIGKILL  # it died after its 6th write, mid-batch
    assert committed_total(kafka, "g-kill", topics.prompts) < 6  # the batch was not committed

    second = _start(kafka, topics.prompts, "g-kill", db, BATCH="4", DELAY="0.05")
    try:
        wait_for(lambda: len(_rows(db, "SELECT id FROM effect")) == 24, timeout=90)
        wait_for(lambda: committed_total(kafka, "g-kill", topics.prompts) == 24, timeout=30)
    finally:
        second.send_signal(signal.SIGTERM)
        _out, errs = second.communicate(timeout=60)
    assert second.returncode == 0, errs[-2000:]

    effects = _rows(db, "SELECT id FROM effect ORDER BY id")
    assert [r[0] for r in effects] == ids  # every prompt's effect, once
    attempts = dict(_rows(db, "SELECT id, COUNT(*) FROM attempt GROUP BY id"))
    redelivered = [i for i, n in attempts.items() if n > 1]
    # The killed batch was redelivered (at-least-once) and the idempotent effect absorbed it.
    assert redelivered, "the crash should have forced a redelivery"
    assert all(n <= 2 for n in attempts.values())


def test_sigterm_drains_in_flight_batch_and_commits(
    kafka: KafkaSettings, topics: TopicsConfig, tmp_path: Path
) -> None:
    db = tmp_path / "effects.db"
    ids = _produce(kafka, topics.prompts, 12)
    worker = _start(kafka, topics.prompts, "g-term", db, BATCH="4", DELAY="0.5")
    # Stop it while a batch is in flight: some writes done, not a whole batch boundary.
    wait_for(lambda: len(_rows(db, "SELECT id FROM attempt")) >= 1, timeout=60, every=0.02)
    worker.send_signal(signal.SIGTERM)
    out, errs = worker.communicate(timeout=60)
    assert worker.returncode == 0, errs[-2000:]
    assert "STOPPED" in out
    done = len(_rows(db, "SELECT id FROM effect"))
    assert done >= 1 and done < 12
    # Everything it did was committed before it left: handled == committed.
    assert committed_total(kafka, "g-term", topics.prompts) == done

    rest = _start(kafka, topics.prompts, "g-term", db, BATCH="4", DELAY="0")
    try:
        wait_for(lambda: len(_rows(db, "SELECT id FROM effect")) == 12, timeout=60)
    finally:
        rest.send_signal(signal.SIGTERM)
        rest.communicate(timeout=60)
    attempts = dict(_rows(db, "SELECT id, COUNT(*) FROM attempt GROUP BY id"))
    assert sorted(attempts) == ids
    assert set(attempts.values()) == {1}  # a drained stop causes no redelivery at all


def test_sigkill_in_transactional_mode_yields_exactly_one_response(
    kafka: KafkaSettings, topics: TopicsConfig, tmp_path: Path
) -> None:
    db = tmp_path / "effects.db"
    ids = _produce(kafka, topics.prompts, 16)
    env = {
        "BATCH": "4",
        "DELAY": "0.05",
        "TRANSACTIONAL_ID": f"tx-{topics.prompts}",
        "OUT_TOPIC": topics.responses,
    }
    first = _start(kafka, topics.prompts, "g-txkill", db, CRASH_AFTER="6", **env)
    assert first.wait(90) == -signal.SIGKILL
    second = _start(kafka, topics.prompts, "g-txkill", db, **env)
    try:
        wait_for(lambda: committed_total(kafka, "g-txkill", topics.prompts) == 16, timeout=90)
    finally:
        second.send_signal(signal.SIGTERM)
        second.communicate(timeout=60)
    responses = [
        ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.responses)
    ]
    # The killed transaction's responses were never committed: one response per prompt.
    assert sorted(r.id for r in responses) == ids
    attempts = dict(_rows(db, "SELECT id, COUNT(*) FROM attempt GROUP BY id"))
    assert any(n > 1 for n in attempts.values())  # the crash really forced a redo
