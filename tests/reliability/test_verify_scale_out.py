"""Verify on many processes, one store writer, everything killed: the store is exact and
rebuilding it from ``verdicts`` gives the same store.

Three ``selfdistill verify`` processes share one group (each its own transactional id, like
pods of a Deployment) while a seeded schedule (``SEED``, printed) SIGKILLs one of them and
starts its replacement, again and again, and twice SIGKILLs the one ``selfdistill store``.
What must hold afterwards is the issue's promise: every prompt has exactly one committed
verdict, the store holds every prompt once and no accepted sample twice, and
``selfdistill store rebuild`` replays ``verdicts`` into a file equal to the live store row
for row, positions included.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

from daemon.operating.config import Settings, render_toml
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import VerdictMessage
from streams.topics import TopicsConfig
from tests.conftest import candidates_message, cli, read_topic, start_cli, wait_for
from tests.test_verify import _counts as store_counts

SEED = 20261209  # its shuffle kills the store writer mid-stream (3rd and 5th), not first
VERIFY_KILLS = 4  # across 3 slots: some slot's replacement is killed in turn
STORE_KILLS = 2
PROMPTS = 17 * (VERIFY_KILLS + STORE_KILLS)
MEMBERS = 3
TABLES = ("prompts", "candidates", "votes", "accepted", "positions")


def store_rows(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the store's tables, in key order (a position's write time left out:
    it says when, not what)."""
    out = {}
    with sqlite3.connect(db) as con:
        for table in TABLES:
            cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
            cols = [c for c in cols if c != "updated_at"]
            rows = con.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
            out[table] = sorted(rows, key=repr)
    return out


def test_three_verify_processes_and_a_store_writer_killed_at_random_store_each_prompt_once(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    yes_model_dir: Path,
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)
    verify_group = f"verify-{topics.candidates}"
    settings = Settings(
        data_dir=tmp_path,
        kafka={
            **kafka.model_dump(),
            "batch_size": 6,
            "shutdown_timeout_s": 4,
            "max_poll_interval_ms": 15000,
            # A SIGKILLed member holds its partitions until its session expires: short
            # sessions keep a dozen kills within the suite's budget.
            "session_timeout_ms": 3000,
            "heartbeat_interval_ms": 500,
        },
        topics=topics.model_dump(),
        model={"path": str(yes_model_dir)},
        verify={
            "votes": 1,
            "judge_max_tokens": 8,
            "infer_max_tokens": 8,
            "seed": 0,
            "group_id": verify_group,
        },
        store={"group_id": f"store-{topics.verdicts}"},
        metrics={"enabled": False},
    )
    config = tmp_path / "selfdistill.toml"
    config.write_text(render_toml(settings, comments=False))
    db = settings.store.path_in(tmp_path)
    logs = tmp_path / "logs"
    logs.mkdir()
    started_n = Counter[str]()

    def start(kind: str, slot: int = 0) -> subprocess.Popen[str]:
        started_n[kind] += 1
        log = logs / f"{kind}-{slot}-{started_n[kind]}.log"
        # One transactional id per slot, reused by the replacement (which fences and aborts
        # whatever the killed one left open).
        env = {"SELFDISTILL_VERIFY__TRANSACTIONAL_ID": f"tx-{topics.candidates}-{slot}"}
        proc = start_cli("-c", str(config), kind, env=env, stderr=log)
        proc.log = log  # type: ignore[attr-defined]
        return proc

    def up(proc: subprocess.Popen[str]) -> bool:
        return "partitions assigned" in proc.log.read_text()  # type: ignore[attr-defined]

    ids = [f"s{i:03d}" for i in range(PROMPTS)]
    producer = Producer(kafka)

    def produce(chunk: list[str]) -> None:
        for pid in chunk:
            texts = [f"answer {pid} {k}" for k in range(2)]
            msg = candidates_message(pid, f"Question {pid}: what is 3 + 4?", texts)
            producer.send(topics.candidates, msg, key=pid)
        producer.flush()

    changes = ["verify"] * VERIFY_KILLS + ["store"] * STORE_KILLS
    rng.shuffle(changes)
    chunks = [ids[i :: len(changes)] for i in range(len(changes))]
    members = [start("verify", slot) for slot in range(MEMBERS)]
    writer = start("store")
    killed: list[subprocess.Popen[str]] = []
    log_lines: list[str] = []
    t0 = time.monotonic()
    try:
        wait_for(lambda: all(up(p) for p in [*members, writer]), 120)
        for chunk, kind in zip(chunks, changes, strict=True):
            produce(chunk)
            time.sleep(rng.uniform(0.3, 1.5))  # into their batches
            stored = store_counts(db).get("prompts", 0)
            if kind == "verify":
                slot = rng.randrange(MEMBERS)
                old = members[slot]
                old.send_signal(signal.SIGKILL)
                old.wait(30)
                members[slot] = new = start("verify", slot)
            else:
                old = writer
                old.send_signal(signal.SIGKILL)
                old.wait(30)
                writer = new = start("store")
            killed.append(old)
            log_lines.append(f"{kind} SIGKILL with {stored} stored")
            wait_for(lambda new=new: up(new), 120)
        wait_for(lambda: store_counts(db).get("prompts", 0) == PROMPTS, 240)
        time.sleep(1.0)  # a late duplicate would have had time to land
    finally:
        producer.close()
        for proc in [*members, writer]:
            proc.send_signal(signal.SIGTERM)
        for proc in [*members, writer, *killed]:
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    for proc in [*members, writer]:
        assert proc.returncode == 0, proc.log.read_text()[-3000:]  # type: ignore[attr-defined]
    assert all(p.returncode == -signal.SIGKILL for p in killed)

    records = read_topic(kafka, topics.verdicts)
    verdicts = Counter(VerdictMessage.model_validate_json(r.value).id for r in records)
    last = {r.partition: r.offset + 1 for r in sorted(records, key=lambda r: r.offset)}
    # Every prompt judged; a batch judged twice across a rebalance is possible on the
    # embedded broker (see test_rebalances.py), and the store must not show it.
    assert set(verdicts) == set(ids)
    with sqlite3.connect(db) as con:
        prompts = Counter(pid for (pid,) in con.execute("SELECT id FROM prompts"))
        accepted = Counter(pid for (pid,) in con.execute("SELECT prompt_id FROM accepted"))
        positions = dict(con.execute("SELECT partition, next_offset FROM positions"))
    assert prompts == Counter(ids)
    assert accepted == Counter(ids)  # the yes-judge accepts each prompt's first candidate once
    assert positions == last  # the store's own positions: past each partition's last verdict
    twice = sum(1 for n in verdicts.values() if n > 1)

    rebuilt = tmp_path / "rebuilt.db"
    res = cli("-c", str(config), "store", "rebuild", "--out", str(rebuilt), "--timeout", "60")
    assert res.returncode == 0, res.stderr
    # It reads every verdict on the topic, duplicates of a rebalance included, and the
    # store it builds still holds each prompt once.
    assert f"from {len(records)} verdicts: {PROMPTS} prompts" in res.stdout
    live, again = store_rows(db), store_rows(rebuilt)
    assert {t: len(r) for t, r in again.items()} == {t: len(r) for t, r in live.items()}
    assert again == live
    print(
        f"\nverify scale-out (seed {SEED}): {'; '.join(log_lines)}; {PROMPTS} prompts, "
        f"{sum(verdicts.values())} verdicts ({twice} judged twice), store {len(prompts)} prompts / "
        f"{sum(accepted.values())} accepted, rebuild equal ({len(live['votes'])} votes); "
        f"{time.monotonic() - t0:.0f}s"
    )
