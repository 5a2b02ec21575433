"""Every metric moves when its event happens, read the way Prometheus reads it: over /metrics.

One flow through the real parts (broker, tiny model, store, registry): serve answers prompts
(one malformed), verify judges the candidates with a judge that says yes, train trains and
gates an adapter, an operator promotes and rolls back, a serve router swaps to a good adapter
and refuses a tampered one. Metrics are process-global, so each check is a delta.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapters.files import adapter_digest
from adapters.registry import Registry
from daemon.engines.hotswap import AdapterRouter
from daemon.engines.transformers_engine import TransformersEngine
from daemon.learning.promote import promote, rollback
from daemon.learning.train import run_cycle
from daemon.operating.config import Settings
from daemon.operating.observe import MetricsConfig, observability
from daemon.serving.worker import ServeWorker
from daemon.verifying.worker import VerifyWorker
from streams.broker import free_port
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import AdapterEvent, PromptMessage
from streams.topics import TopicsConfig
from tests.conftest import committed_total, store_verdicts, wait_for
from tests.test_learning_loop import _register_adapters
from tests.test_serve import _start

Sample = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Sample:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: Sample = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(sample: Sample, name: str, **labels: str) -> float:
    """Sum over the series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lb), v in sample.items() if n == name and want <= lb)


def labelsets(sample: Sample, name: str) -> list[dict[str, str]]:
    return [dict(lb) for (n, lb) in sample if n == name]


@pytest.fixture
def port() -> Iterator[int]:
    cfg = MetricsConfig(verify_port=free_port())
    with observability(cfg, "verify") as p:
        assert p is not None
        yield p


def test_endpoints_answer_and_readiness_follows_the_worker(tmp_path: Path) -> None:
    ready = threading.Event()
    cfg = MetricsConfig(serve_port=free_port())
    with observability(cfg, "serve", ready.is_set) as p:
        base = f"http://127.0.0.1:{p}"
        health = httpx.get(f"{base}/healthz").json()
        assert health["status"] == "ok" and health["worker"] == "serve"
        assert httpx.get(f"{base}/readyz").status_code == 503
        ready.set()
        assert httpx.get(f"{base}/readyz").json() == {"ready": True, "worker": "serve"}
        sample = scrape(p)
        (info,) = labelsets(sample, "selfdistill_build_info")
        assert info["worker"] == "serve" and info["version"]
        names = {n for n, _ in sample}
        # Prometheus conventions: base units and suffixes
        assert "selfdistill_serve_latency_seconds_bucket" in names
        assert all(n.startswith(("selfdistill_", "process_", "python_")) for n in names)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/healthz", timeout=1)  # stopped with its worker


def test_a_taken_port_leaves_the_worker_running_without_endpoints() -> None:
    cfg = MetricsConfig(train_port=free_port())
    with observability(cfg, "train") as first, observability(cfg, "train") as second:
        assert first is not None and second is None


def test_every_worker_metric_moves_with_its_event(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    yes_model_dir: Path,
    tmp_path: Path,
    port: int,
) -> None:
    labeled = tmp_path / "labeled.jsonl"
    labeled.write_text(
        json.dumps({"id": "q1", "question": "Say hi.", "answer": "hi", "grader": "exact"}) + "\n"
    )
    settings = Settings(
        data_dir=tmp_path,
        kafka={**kafka.model_dump(), "batch_size": 4},
        topics=topics.model_dump(),
        model={"path": str(tiny_model_dir)},
        serve={
            "extra_candidates": 1,
            "max_tokens": 6,
            "temperature": 0.8,
            "transactional_id": f"serve-{topics.prompts}",
            "group_id": f"serve-{topics.prompts}",
        },
        verify={
            "votes": 1,
            "judge_max_tokens": 6,
            "infer_max_tokens": 6,
            "seed": 0,
            "policy": "all-valid",
            "group_id": f"verify-{topics.prompts}",
        },
        store={"heldout_fraction": 0.0},
        train={
            "min_new_samples": 1,
            "lora": {"r": 4, "alpha": 8, "max_steps": 3, "batch_size": 4, "max_length": 96},
            "eval": {"labeled_set": str(labeled), "max_tokens": 4, "heldout_max": 0},
        },
    )
    m0 = scrape(port)

    # ---- serve: 6 prompts and a malformed message
    producer = Producer(kafka)
    for i in range(6):
        producer.send(topics.prompts, PromptMessage(id=f"m{i}", prompt=f"What is {i} + 1?"))
    producer.send(topics.prompts, b"not json")
    producer.flush()
    producer.close()
    engine = TransformersEngine(tiny_model_dir)
    serve = ServeWorker(settings, engine)
    t = _start(serve)
    wait_for(lambda: committed_total(kafka, settings.serve.group_id, topics.prompts) == 7, 120)
    serve.stop()
    t.join(30)
    m1 = scrape(port)
    d = lambda name, **lb: value(m1, name, **lb) - value(m0, name, **lb)  # noqa: E731
    assert d("selfdistill_prompts_served_total") == 6
    assert d("selfdistill_candidates_generated_total") == 12
    assert d("selfdistill_generated_tokens_total") > 0
    assert d("selfdistill_prompt_tokens_total") > 0
    assert d("selfdistill_serve_latency_seconds_count") >= 1
    assert d("selfdistill_messages_consumed_total", topic=topics.prompts) == 7
    assert d("selfdistill_messages_produced_total", topic=topics.responses) == 6
    assert d("selfdistill_messages_produced_total", topic=topics.candidates) == 6
    assert d("selfdistill_dlq_messages_total", topic=topics.prompts, reason="invalid_json") == 1
    assert d("selfdistill_offset_commits_total", topic=topics.prompts) >= 1
    assert d("selfdistill_batch_seconds_count", topic=topics.prompts) >= 1
    assert value(m1, "selfdistill_consumer_lag_messages", topic=topics.prompts) == 0

    # ---- verify: a judge that says yes accepts every candidate
    judge = TransformersEngine(yes_model_dir)
    verify = VerifyWorker(settings, judge)
    t = _start(verify)
    wait_for(lambda: verify.loop.stats.processed >= 6, 120)
    verify.stop()
    t.join(30)
    judge.close()
    published = scrape(port)
    assert (
        value(published, "selfdistill_verdicts_published_total")
        - value(m1, "selfdistill_verdicts_published_total")
        == 6
    )
    assert value(published, "selfdistill_samples_accepted_total") == value(
        m1, "selfdistill_samples_accepted_total"
    )  # judged, not stored yet: the store writer counts what it stores
    # ---- the store writer: the verdicts into the store
    before_write = time.time()
    store_verdicts(settings)
    m2 = scrape(port)
    d = lambda name, **lb: value(m2, name, **lb) - value(m1, name, **lb)  # noqa: E731
    judged = d("selfdistill_candidates_judged_total")
    assert judged >= 6
    assert d("selfdistill_stage_results_total", stage="static", result="pass") == judged
    for stage in ("cycle", "factuality", "correctness"):
        assert d("selfdistill_stage_results_total", stage=stage) > 0
        assert d("selfdistill_judge_calls_total", stage=stage) > 0
        assert d("selfdistill_judge_tokens_total", stage=stage) > 0
        assert d("selfdistill_votes_total", stage=stage) > 0
    accepted = d("selfdistill_samples_accepted_total")
    assert accepted > 0
    assert d("selfdistill_votes_total", verdict="yes") > 0
    assert d("selfdistill_verify_batch_seconds_count") >= 1
    assert value(m2, "selfdistill_store_samples", split="train") == accepted
    assert value(m2, "selfdistill_store_prompts") == 6
    assert d("selfdistill_store_verdicts_total", outcome="applied") == 6
    assert d("selfdistill_store_verdicts_total", outcome="already") == 0
    assert value(m2, "selfdistill_store_last_write_timestamp_seconds") >= before_write
    assert value(m2, "selfdistill_store_writer_up") == 0  # it stopped when idle
    assert d("selfdistill_messages_consumed_total", topic=topics.verdicts) == 6

    # ---- train: a cycle that trains, scores and decides
    report = run_cycle(settings, engine=engine)
    assert report.version is not None
    m3 = scrape(port)
    d = lambda name, **lb: value(m3, name, **lb) - value(m2, name, **lb)  # noqa: E731
    assert d("selfdistill_training_runs_total", result=report.outcome) == 1
    assert d("selfdistill_training_seconds_count") == 1
    assert value(m3, "selfdistill_training_loss") == pytest.approx(report.training["final_loss"])
    assert value(m3, "selfdistill_training_tokens_per_second") > 0
    scored = {(x["version"], x["metric"]) for x in labelsets(m3, "selfdistill_eval_score")}
    assert (report.version, "labeled_pass@1") in scored and ("base", "labeled_pass@1") in scored
    decision = {"promoted": "promote", "rejected": "reject", "candidate": "held"}[report.outcome]
    assert d("selfdistill_gate_decisions_total", decision=decision) == 1
    assert run_cycle(settings, engine=engine).outcome == "skipped"
    assert value(scrape(port), "selfdistill_training_runs_total", result="skipped") == (
        value(m3, "selfdistill_training_runs_total", result="skipped") + 1
    )

    # ---- the operator promotes and rolls back; a replica swaps and refuses
    with Registry(settings.adapters.path(settings.data_dir)) as registry:
        (other,) = _register_adapters(registry, tiny_model_dir, seeds=(5,))
        promote(settings, registry, other, actor="cli")
        rollback(settings, registry, actor="cli")
    router = AdapterRouter(engine, settings.adapters.path(settings.data_dir))
    root = settings.adapters.path(settings.data_dir)
    good = AdapterEvent(
        action="promote", version=other, path=other, sha256=adapter_digest(root / other)
    )
    assert router.apply(good).ok
    bad = AdapterEvent(
        action="promote", version=report.version, path=report.version, sha256="0" * 64
    )
    assert not router.apply(bad).ok
    engine.close()
    m4 = scrape(port)
    d = lambda name, **lb: value(m4, name, **lb) - value(m3, name, **lb)  # noqa: E731
    assert d("selfdistill_adapter_events_total", action="promote", actor="cli") == 1
    assert d("selfdistill_adapter_events_total", action="rollback", actor="cli") == 1
    assert d("selfdistill_adapter_swaps_total", result="ok") == 1
    assert d("selfdistill_adapter_swaps_total", result="refused") == 1
    assert d("selfdistill_adapter_swap_seconds_count") == 1
    assert value(m4, "selfdistill_adapters_loaded") >= 1
    (active,) = labelsets(m4, "selfdistill_active_adapter_info")
    assert active["version"] == other  # the refused one did not replace it
