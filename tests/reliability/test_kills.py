"""SIGKILL at random points, again and again, of the real worker processes.

A seeded random schedule (``SEED``; printed, so a failure can be replayed) kills the real
``selfdistill serve``, ``selfdistill verify`` and ``selfdistill store`` processes while they work through a stream
of prompts, and ``selfdistill train --once`` while it trains; each is restarted after every
kill. What must hold afterwards is what README "What the workers guarantee" promises: every
produced prompt has exactly one response (``read_committed``), the store holds each prompt
once and at most one accepted sample per prompt, no adapter directory is ever partial, and
the registry agrees with the directory.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from adapters.files import adapter_digest, check_adapter_files
from adapters.registry import STAGING_PREFIX, Registry
from daemon.operating.config import Settings, render_toml
from streams.connection import KafkaSettings
from streams.schemas import CandidatesMessage, ResponseMessage
from streams.topics import TopicsConfig
from tests.conftest import cli, committed_total, read_topic, start_cli, wait_for
from tests.test_learning_loop import RIGHT, _accept
from tests.test_learning_loop import _settings as loop_settings
from tests.test_serve import _produce
from tests.test_verify import _counts as store_counts

SEED = 20240607
KILLS = 3  # per worker
CHUNK = 6  # prompts produced before each round of kills
VOTES = 1


class _Verdicts:
    """How many prompts have a committed verdict: verify's progress, read as the store writer
    reads it (``read_committed``; offsets count transaction markers too, so they cannot)."""

    def __init__(self, kafka: KafkaSettings, topic: str) -> None:
        self.consumer = KafkaConsumer(
            **kafka.client_kwargs("test-verdicts"),
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        tps = [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic))]
        self.consumer.assign(tps)
        self.consumer.seek_to_beginning(*tps)
        self.ids: set[bytes] = set()

    def __call__(self) -> int:
        for recs in self.consumer.poll(timeout_ms=50).values():
            self.ids.update(r.key for r in recs)
        return len(self.ids)


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_serve_and_verify_killed_at_random_points_lose_and_duplicate_nothing(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    yes_model_dir: Path,
    tmp_path: Path,
) -> None:
    """The pipeline prompts → serve → candidates → verify → verdicts → store writer → store,
    each worker killed 3 times.

    A kill comes when the worker has finished a random number of the current round's prompts
    (so mid-run, not during start-up) and lands wherever it is then: in the next batch, between
    the store writer's SQLite commit and its offset commit, or idle: serve's and verify's
    transactions must leave no second response or verdict, the writer's replays must change
    nothing in the store.
    """
    rng = random.Random(SEED)
    serve_group, verify_group = f"serve-{topics.prompts}", f"verify-{topics.candidates}"
    settings = Settings(
        data_dir=tmp_path,
        kafka={
            **kafka.model_dump(),
            "batch_size": 2,
            # A SIGKILLed member holds its partitions until its session expires, and its
            # replacement waits that long: short sessions keep nine kills quick.
            "session_timeout_ms": 3000,
            "heartbeat_interval_ms": 500,
        },
        topics=topics.model_dump(),
        model={"path": str(tiny_model_dir)},
        serve={
            "extra_candidates": 2,
            "max_tokens": 16,
            "temperature": 0.9,
            "group_id": serve_group,
            "transactional_id": f"tx-{topics.prompts}",
        },
        verify={
            "votes": VOTES,
            "judge_max_tokens": 6,
            "infer_max_tokens": 6,
            "seed": 0,
            "group_id": verify_group,
            "transactional_id": f"tx-{topics.candidates}",
        },
        store={"group_id": f"store-{topics.verdicts}"},
        metrics={"enabled": False},
    )
    config = tmp_path / "selfdistill.toml"
    config.write_text(render_toml(settings, comments=False))
    db = settings.store.path_in(tmp_path)
    env = {"serve": {}, "verify": {"SELFDISTILL_MODEL__PATH": str(yes_model_dir)}, "store": {}}
    progress = {  # what each worker has finished: committed prompts, judged ones, stored ones
        "serve": lambda: committed_total(kafka, serve_group, topics.prompts),
        "verify": _Verdicts(kafka, topics.verdicts),
        "store": lambda: store_counts(db).get("prompts", 0),
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    started_n = Counter[str]()

    def start(w: str) -> subprocess.Popen[str]:
        started_n[w] += 1
        log = logs / f"{w}-{started_n[w]}.log"
        proc = start_cli("-c", str(config), w, env=env[w], stderr=log)
        proc.log = log  # type: ignore[attr-defined]
        return proc

    def up(proc: subprocess.Popen[str]) -> bool:
        return "partitions assigned" in proc.log.read_text()  # type: ignore[attr-defined]

    procs = {w: start(w) for w in env}
    ids: list[str] = []
    kills: list[str] = []
    started = time.monotonic()
    try:
        for round_ in range(KILLS):
            marks = {w: progress[w]() for w in procs}
            chunk = [f"k{round_}-{i}" for i in range(CHUNK)]
            _produce(kafka, topics.prompts, chunk)
            ids += chunk
            # Each dies at a random point of this round: once it has finished a random number
            # of the new prompts, whatever it is doing then (the next batch, mostly).
            targets = {w: marks[w] + rng.randint(1, CHUNK - 1) for w in procs}
            deadline = time.monotonic() + 180
            while targets and time.monotonic() < deadline:
                for w in [w for w in targets if progress[w]() >= targets[w]]:
                    _kill(procs[w])
                    kills.append(f"{w}@{progress[w]()}/{len(ids)}")
                    procs[w] = start(w)
                    del targets[w]
                time.sleep(0.02)
            assert not targets, f"no progress to {targets}"
        wait_for(lambda: progress["serve"]() == len(ids), 180)
        wait_for(lambda: progress["verify"]() == len(ids), 180)
        wait_for(lambda: progress["store"]() == len(ids), 180)
        # A replacement started after the work was done is still starting: a SIGTERM then
        # would end it before it installs its handler.
        wait_for(lambda: all(up(p) for p in procs.values()), 120)
    finally:
        progress["verify"].consumer.close()  # type: ignore[attr-defined]
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for p in procs.values():
            p.communicate(timeout=60)
        errs = {w: p.log.read_text() for w, p in procs.items()}  # type: ignore[attr-defined]
    for w, p in procs.items():
        assert p.returncode == 0, errs[w][-2000:]

    responses = Counter(
        ResponseMessage.model_validate_json(r.value).id for r in read_topic(kafka, topics.responses)
    )
    candidates = {
        m.id: m
        for m in (
            CandidatesMessage.model_validate_json(r.value)
            for r in read_topic(kafka, topics.candidates)
        )
    }
    duplicated = sorted(pid for pid, n in responses.items() if n > 1)
    assert duplicated == [] and sorted(responses) == sorted(ids)  # exactly one response each
    assert sorted(candidates) == sorted(ids)

    counts = store_counts(db)
    with sqlite3.connect(db) as con:
        stored = dict(con.execute("SELECT prompt_id, COUNT(*) FROM candidates GROUP BY prompt_id"))
        twice_accepted = con.execute(
            "SELECT prompt_id FROM accepted GROUP BY prompt_id HAVING COUNT(*) > 1"
        ).fetchall()
        flagged = con.execute("SELECT COUNT(*) FROM candidates WHERE accepted = 1").fetchone()[0]
        votes_per_accepted = set(
            con.execute(
                "SELECT COUNT(v.id) FROM accepted a JOIN votes v ON v.candidate_id = a.id "
                "GROUP BY a.id"
            ).fetchall()
        )
    assert counts["prompts"] == len(ids)
    # Every sample of every prompt is stored once: nothing lost, nothing added by redelivery.
    assert stored == {pid: len({s.text for s in m.samples}) for pid, m in candidates.items()}
    assert twice_accepted == [] and flagged == counts["accepted"]
    assert votes_per_accepted <= {(1 + 3 * VOTES,)}  # no vote recorded twice
    print(
        f"\nkills (seed {SEED}; worker@finished/produced): {', '.join(kills)}\n"
        f"prompts {len(ids)}, responses {sum(responses.values())}, duplicated responses "
        f"{len(duplicated)}; store: prompts {counts['prompts']}, candidates {counts['candidates']}"
        f", accepted {counts['accepted']}, prompts accepted twice {len(twice_accepted)}; "
        f"{time.monotonic() - started:.0f}s"
    )


def test_training_killed_at_random_points_leaves_no_partial_adapter_and_is_retried(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    """``train --once`` killed 3 times at random moments (loading, snapshotting, training),
    each killed run recovered by the next one; then a run that is left alone finishes.

    After every kill, any adapter directory in sight must be complete (directories appear by
    an atomic rename of an fsynced staging directory) and every registered adapter must match
    its digest; at the end, the registry and the directory agree exactly and no version name
    was used twice.
    """
    rng = random.Random(SEED)
    settings = loop_settings(kafka, topics, tmp_path, tiny_model_dir)
    _accept(settings, RIGHT, 0, 24, seed=1)
    slow = settings.model_copy(deep=True)
    slow.train.lora.max_steps = None
    slow.train.lora.epochs = 100_000  # still training whenever it is killed
    config = tmp_path / "slow.toml"
    config.write_text(render_toml(slow, comments=False))
    root = settings.adapters.path(settings.data_dir)

    def visible() -> list[Path]:
        return sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith("."))

    def reserved() -> int:  # runs that reserved a version name, whatever became of them
        try:
            with sqlite3.connect(f"file:{root / 'registry.db'}?mode=ro", uri=True) as con:
                return con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            return 0

    seen: list[str] = []
    for i in range(KILLS):
        before = reserved()
        proc = start_cli("-c", str(config), "train", "--once")
        try:
            wait_for(lambda b=before: reserved() > b, 120, every=0.05)  # this run has begun
            # One kill in each third of the first 4 s: snapshotting and loading, then training.
            after = rng.uniform(i, i + 1) * 4.0 / KILLS
            time.sleep(after)
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            _kill(proc)
        finally:
            proc.kill()
        staging = [p.name for p in root.glob(f"{STAGING_PREFIX}*")] if root.exists() else []
        registry = Registry(root)
        try:
            runs = {r["version"]: r["state"] for r in registry.runs()}
            for d in visible():  # whole or absent, never partial
                check_adapter_files(d)
                rec = registry.get(d.name)
                assert rec is None or rec.sha256 == adapter_digest(d)
            assert registry.list() == []  # the slow runs never got to register anything
        finally:
            registry.close()
        seen.append(f"+{after:.1f}s: runs {runs}, staging left {len(staging)}")

    config.write_text(render_toml(settings, comments=False))
    r = cli("-c", str(config), "train", "--once", timeout=300)
    assert r.returncode == 0, r.stderr
    registry = Registry(root)
    runs = {x["version"]: x["state"] for x in registry.runs()}
    (adapter,) = registry.list()
    crashed = sorted(v for v, state in runs.items() if state == "crashed")
    assert runs == {**dict.fromkeys(crashed, "crashed"), adapter.version: "done"}
    assert crashed and "crashed" in r.stdout  # the last kill was recovered by this run
    assert adapter.version not in crashed  # a dead run's name is never reused
    assert adapter.sample_count > 20  # the crashed runs' samples were retried
    assert not list(root.glob(f"{STAGING_PREFIX}*"))
    assert [p.name for p in visible()] == [adapter.version]
    assert adapter.sha256 == adapter_digest(root / adapter.version)
    registry.close()
    print(
        f"\ntraining kills (seed {SEED}): {'; '.join(seen)}\n"
        f"then: {len(crashed)} run(s) recovered as crashed, adapter {adapter.version} trained on "
        f"{adapter.sample_count} samples, partial adapters 0, staging left 0"
    )
