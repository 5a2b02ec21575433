"""The verify worker through the real broker, with a real (tiny) judge: it publishes each
prompt's outcome to ``verdicts``; the store writer puts them into a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

from daemon.engines.base import AdapterMissing
from daemon.engines.transformers_engine import TransformersEngine
from daemon.operating.config import Settings
from daemon.verifying.store import Store
from daemon.verifying.worker import VerifyWorker
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import CandidatesMessage, ChatMessage, Sample, SamplingParams, VerdictMessage
from streams.topics import TopicsConfig
from tests.conftest import cli, committed_total, read_topic, store_verdicts, wait_for

VOTES = 2
CALLS_PER_ACCEPTED = 1 + 3 * VOTES  # the inferred question + v votes in each of 3 stages


def _messages(n: int, samples: int = 3) -> list[CandidatesMessage]:
    return [
        CandidatesMessage(
            id=f"v{i:03d}",
            messages=[ChatMessage(role="user", content=f"What is {i} + 7?")],
            samples=[Sample(text=f"{i + 7 + k}", completion_tokens=2) for k in range(samples)],
            sampling=SamplingParams(n=samples, temperature=0.7),
            adapter=None,
            domain="arithmetic",
        )
        for i in range(n)
    ]


def _produce(kafka: KafkaSettings, topic: str, msgs: list[CandidatesMessage]) -> None:
    p = Producer(kafka)
    for m in msgs:
        p.send(topic, m, key=m.id)
    p.flush()
    p.close()


def _settings(kafka: KafkaSettings, topics: TopicsConfig, tmp: Path, model: Path) -> Settings:
    return Settings(
        data_dir=tmp,
        kafka={**kafka.model_dump(), "batch_size": 3},
        topics=topics.model_dump(),
        model={"path": str(model)},
        verify={
            "votes": VOTES,
            "judge_max_tokens": 8,
            "infer_max_tokens": 8,
            "seed": 0,
            "group_id": f"verify-{topics.candidates}",
        },
    )


def _counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        with Store(db, read_only=True) as s:
            return s.counts()
    except sqlite3.OperationalError:  # not created yet
        return {}


def test_candidates_flow_in_and_votes_and_samples_land_once(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    yes_model_dir: Path,
    tmp_path: Path,
) -> None:
    settings = _settings(kafka, topics, tmp_path, yes_model_dir)
    msgs = _messages(6)
    _produce(kafka, topics.candidates, msgs)
    _produce(kafka, topics.candidates, msgs[:2])  # produced twice upstream: same ids
    engine = TransformersEngine(yes_model_dir)
    worker = VerifyWorker(settings, engine)
    t = threading.Thread(target=worker.run, kwargs={"handle_signals": False}, daemon=True)
    t.start()
    wait_for(lambda: committed_total(kafka, settings.verify.group_id, topics.candidates) == 8, 120)
    worker.stop()
    t.join(30)

    db = settings.store.path_in(tmp_path)
    assert not db.exists()  # verify writes no SQLite: it publishes
    verdicts = [
        VerdictMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.verdicts)
    ]
    # One committed verdict per candidates record, keyed and carrying its whole outcome.
    assert sorted(v.id for v in verdicts) == sorted(m.id for m in [*msgs, *msgs[:2]])
    first = next(v for v in verdicts if v.id == msgs[0].id)
    assert first.candidates == msgs[0] and first.outcomes[0].accepted
    assert [s.stage for s in first.outcomes[0].stages] == ["cycle", "factuality", "correctness"]

    totals = store_verdicts(settings)
    assert totals.applied == 8 and totals.accepted == 6  # the redelivered two add nothing
    counts = _counts(db)
    assert counts["prompts"] == 6 and counts["candidates"] == 18
    assert counts["accepted"] == 6  # first-valid: the first candidate of each prompt, once
    assert counts["votes"] == 6 * CALLS_PER_ACCEPTED  # later candidates were never judged
    with Store(db, read_only=True) as store:
        rows = store.accepted_samples(split=None)
    assert sorted(r["prompt_id"] for r in rows) == [m.id for m in msgs]
    for r in rows:
        assert r["messages"][-1] == {
            "role": "assistant",
            "content": str(int(r["prompt_id"][1:]) + 7),
        }

    out = tmp_path / "export.jsonl"
    res = cli(
        "export", "--out", str(out), "--split", "all", env={"SELFDISTILL_DATA_DIR": str(tmp_path)}
    )
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 6 and all(x["messages"][-1]["role"] == "assistant" for x in lines)
    assert {x["prompt_id"] for x in lines} == {m.id for m in msgs}
    assert all(x["votes"] == 3 * VOTES for x in lines)


def test_the_active_adapter_judges_when_configured(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    yes_model_dir: Path,
    tmp_path: Path,
    tiny_model_dir: Path,
) -> None:
    from adapters.files import adapter_digest, served_name
    from daemon.engines.health import PROBE
    from streams.schemas import AdapterEvent
    from tests.models import build_adapter

    registry = tmp_path / "adapters"
    version = "yes-sd-v0001"
    build_adapter(tiny_model_dir, registry / version, seed=5, scale=0.001)  # nearly a no-op
    p = Producer(kafka)
    p.send(
        topics.adapter_events,
        AdapterEvent(
            action="promote",
            version=version,
            path=version,
            sha256=adapter_digest(registry / version),
        ),
    )
    p.flush()
    p.close()
    _produce(kafka, topics.candidates, _messages(2))
    settings = _settings(kafka, topics, tmp_path, yes_model_dir)
    settings = settings.model_copy(
        update={
            "verify": settings.verify.model_copy(update={"judge": "active"}),
            "adapters": settings.adapters.model_copy(update={"registry_dir": registry}),
        }
    )
    engine = TransformersEngine(yes_model_dir)
    used: list[str | None] = []
    real_generate = engine.generate

    forgot: list[str] = []

    name = served_name(version, adapter_digest(registry / version))  # what the engine knows

    def spy(requests):  # records which adapter each judge call ran on
        if list(requests) == [PROBE]:  # the worker's health probe (base model), not a judge
            return real_generate(requests)
        if used and not forgot:  # after the canary: the engine forgets the adapter once,
            forgot.append(name)  # as a shared server does when it restarts (HTTP 404)
            engine.unload_adapter(name)
            raise AdapterMissing(name, f"the server does not know adapter {name!r}")
        used.extend(r.adapter for r in requests)
        return real_generate(requests)

    engine.generate = spy  # type: ignore[method-assign]
    worker = VerifyWorker(settings, engine)
    t = threading.Thread(target=worker.run, kwargs={"handle_signals": False}, daemon=True)
    t.start()
    wait_for(lambda: committed_total(kafka, settings.verify.group_id, topics.candidates) == 2, 120)
    worker.stop()
    t.join(30)
    assert worker.router is not None and worker.router.active == version
    # Every generation ran on the promoted adapter: its canary, then every judge call; the
    # one that found it forgotten had the router load it again and judged on it.
    assert len(used) > 1 and set(used) == {name}
    assert forgot == [name] and name in engine.adapters()
    assert read_topic(kafka, topics.dlq(topics.candidates)) == []
