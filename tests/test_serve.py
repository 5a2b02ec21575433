"""The serve worker through the real broker: answers, candidates, hot-swap, restart.

Refused adapters (tampered, corrupt, escaping): tests/reliability/test_adapters.py.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from adapters.files import adapter_digest, served_name
from daemon.engines.base import ChatRequest
from daemon.engines.hotswap import AdapterRouter
from daemon.engines.transformers_engine import TransformersEngine
from daemon.operating.config import Settings
from daemon.serving.worker import ServeWorker
from streams.adapter_events import AdapterEventFollower
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import AdapterEvent, CandidatesMessage, PromptMessage, ResponseMessage
from streams.topics import TopicsConfig
from tests.conftest import committed_total, read_topic, wait_for


def _settings(
    kafka: KafkaSettings, topics: TopicsConfig, registry: Path, tmp: Path, **serve
) -> Settings:
    serve = {
        "extra_candidates": 2,
        "max_tokens": 6,
        "temperature": 0.8,
        "seed": 3,
        "transactional_id": f"serve-{topics.prompts}",
        "group_id": f"serve-{topics.prompts}",
        **serve,
    }
    return Settings(
        data_dir=tmp,
        kafka=kafka.model_dump(),
        topics=topics.model_dump(),
        adapters={"registry_dir": str(registry)},
        serve=serve,
    )


def _served(registry: Path, version: str) -> str:
    """The name an engine knows ``version`` by: the version and its weights' digest."""
    return served_name(version, adapter_digest(registry / version))


def _produce(kafka: KafkaSettings, topic: str, ids: list[str]) -> None:
    p = Producer(kafka)
    for pid in ids:
        p.send(topic, PromptMessage(id=pid, prompt=f"Question {pid}: what is 3 + 4?"), key=pid)
    p.flush()
    p.close()


def _event(
    registry: Path, version: str, action: str = "promote", sha: str | None = None
) -> AdapterEvent:
    if version == "base":
        return AdapterEvent(action=action, version="base")
    path = registry / version
    return AdapterEvent(
        action=action,
        version=version,
        path=version,
        sha256=sha if sha is not None else adapter_digest(path),
    )


def _start(worker: ServeWorker) -> threading.Thread:
    t = threading.Thread(target=worker.run, kwargs={"handle_signals": False}, daemon=True)
    t.start()
    return t


def test_each_prompt_gets_one_answer_and_its_candidates(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    registry_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
) -> None:
    settings = _settings(kafka, topics, registry_dir, tmp_path)
    ids = [f"s{i}" for i in range(7)]
    _produce(kafka, topics.prompts, ids)
    worker = ServeWorker(settings, tiny_engine)
    t = _start(worker)
    wait_for(lambda: committed_total(kafka, settings.serve.group_id, topics.prompts) == 7, 120)
    worker.stop()
    t.join(30)

    responses = [
        ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.responses)
    ]
    candidates = {
        c.id: c
        for c in (
            CandidatesMessage.model_validate_json(r.value)
            for r in read_topic(kafka, topics.candidates)
        )
    }
    assert sorted(r.id for r in responses) == sorted(ids)  # exactly one response each
    assert sorted(candidates) == sorted(ids)
    for resp in responses:
        cand = candidates[resp.id]
        assert len(cand.samples) == 3  # the answer + 2 extra candidates
        assert cand.samples[cand.answer_index].text == resp.text  # the answer is one of them
        assert cand.sampling.n == 3 and cand.sampling.temperature == 0.8
        assert cand.messages[-1].content.startswith(f"Question {resp.id}")
        assert resp.adapter is None and cand.adapter is None
        assert resp.completion_tokens == cand.samples[cand.answer_index].completion_tokens
        assert resp.prompt_tokens > 0 and resp.latency_s > 0


def test_adapters_switch_under_a_continuous_stream_with_no_failed_request(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    registry_dir: Path,
    tiny_adapters: dict[str, Path],
    tiny_engine: TransformersEngine,
    tmp_path: Path,
) -> None:
    settings = _settings(kafka, topics, registry_dir, tmp_path, extra_candidates=1)
    worker = ServeWorker(settings, tiny_engine)
    t = _start(worker)
    wait_for(worker.loop.ready.is_set, 60)
    v1, v2 = sorted(tiny_adapters)
    events = Producer(kafka)
    ids: list[str] = []
    stop_stream = threading.Event()

    def stream() -> None:  # prompts keep arriving while adapters change
        i = 0
        while not stop_stream.is_set():
            pid = f"c{i:03d}"
            _produce(kafka, topics.prompts, [pid])
            ids.append(pid)
            i += 1
            time.sleep(0.05)

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    for version in (v1, v2, "base"):
        time.sleep(1.0)
        events.send(
            topics.adapter_events,
            _event(registry_dir, version, "promote" if version != "base" else "rollback"),
        )
        events.flush()
        wait_for(lambda v=version: worker.router.active == (None if v == "base" else v), 30)
    time.sleep(1.0)
    stop_stream.set()
    streamer.join(10)
    wait_for(
        lambda: committed_total(kafka, settings.serve.group_id, topics.prompts) == len(ids), 120
    )
    worker.stop()
    t.join(30)

    responses = [
        ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.responses)
    ]
    assert sorted(r.id for r in responses) == sorted(ids)  # nothing failed, dropped or doubled
    assert worker.loop.stats.handler_failures == 0
    # In the order they were served (prompts spread over partitions are not served in the
    # order they were produced).
    served_by = [r.adapter for r in sorted(responses, key=lambda r: r.created_at)]
    assert {None, v1, v2} <= set(served_by)  # traffic really ran on each
    # Adapters change in promotion order: base, then v1, then v2, then base again.
    changes = [a for i, a in enumerate(served_by) if i == 0 or a != served_by[i - 1]]
    assert changes == [None, v1, v2, None], changes


def test_in_flight_work_finishes_on_the_adapter_it_started_with(
    registry_dir: Path,
    tiny_adapters: dict[str, Path],
    tiny_engine: TransformersEngine,
) -> None:
    router = AdapterRouter(tiny_engine, registry_dir, keep_loaded=1)
    v1, v2 = sorted(tiny_adapters)
    router.apply(_event(registry_dir, v1))
    with router.use() as route:
        assert route.version == v1 and route.name == _served(registry_dir, v1)
        assert router.apply(_event(registry_dir, v2)).ok
        # v1 is no longer active and beyond keep_loaded, but in use: it stays loaded.
        assert route.name in tiny_engine.adapters()
        q = ChatRequest([{"role": "user", "content": "Hi"}], max_tokens=4, adapter=route.name)
        assert tiny_engine.generate([q])[0].adapter == route.name
    assert tiny_engine.adapters() == [_served(registry_dir, v2)]  # released, then evicted


def test_a_restarted_replica_restores_the_last_promotion(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    registry_dir: Path,
    tiny_adapters: dict[str, Path],
    tiny_engine: TransformersEngine,
) -> None:
    v1, v2 = sorted(tiny_adapters)
    p = Producer(kafka)
    for ev in (
        _event(registry_dir, v1),
        _event(registry_dir, v2),
        _event(registry_dir, v1, "rollback"),
    ):
        p.send(topics.adapter_events, ev)
    p.send(topics.adapter_events, b"not an event")
    p.flush()
    router = AdapterRouter(tiny_engine, registry_dir)
    follower = AdapterEventFollower(kafka, topics.adapter_events, router)
    try:
        result = follower.catch_up()
    finally:
        follower.stop()
    assert result is not None and result.ok
    assert router.active == v1  # the rollback, the newest event
    assert tiny_engine.adapters() == [_served(registry_dir, v1)]  # only the final state
    assert follower.bad == 1


@pytest.mark.slow
def test_serve_on_the_real_embedded_model(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    registry_dir: Path,
    embedded_model_dir: Path,
    tmp_path: Path,
) -> None:
    engine = TransformersEngine(embedded_model_dir)
    settings = _settings(
        kafka, topics, registry_dir, tmp_path, extra_candidates=1, max_tokens=12, temperature=0.0
    )
    p = Producer(kafka)
    p.send(
        topics.prompts, PromptMessage(id="fr", prompt="What is the capital of France?"), key="fr"
    )
    p.flush()
    worker = ServeWorker(settings, engine)
    t = _start(worker)
    try:
        wait_for(lambda: committed_total(kafka, settings.serve.group_id, topics.prompts) == 1, 120)
    finally:
        worker.stop()
        t.join(30)
        engine.close()
    [resp] = [
        ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.responses)
    ]
    assert "Paris" in resp.text
    [cand] = [
        CandidatesMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.candidates)
    ]
    assert len(cand.samples) == 2 and cand.samples[0].text == resp.text


def test_serve_http_cli_answers_openai_requests_and_stops_on_sigterm(tiny_model_dir: Path) -> None:
    import signal

    import httpx

    from streams.broker import free_port
    from tests.conftest import cli, start_cli

    port = free_port()
    proc = start_cli(
        "serve",
        "--http",
        "--no-worker",
        env={
            "SELFDISTILL_MODEL__PATH": str(tiny_model_dir),
            "SELFDISTILL_SERVE__HTTP__PORT": str(port),
        },
    )
    try:

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60)
        models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
        assert models["data"][0]["id"] == "tiny-llama"
        chat = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={
                "model": "tiny-llama",
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 3,
                "n": 2,
                "temperature": 0.5,
            },
        ).json()
        assert len(chat["choices"]) == 2 and chat["usage"]["completion_tokens"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        _, errs = proc.communicate(timeout=30)
    assert proc.returncode == 0, errs[-2000:]

    exposed = cli(
        "serve",
        "--http",
        "--no-worker",
        env={
            "SELFDISTILL_SERVE__HTTP__HOST": "0.0.0.0",
            "SELFDISTILL_MODEL__PATH": str(tiny_model_dir),
        },
    )
    assert exposed.returncode == 2
    assert "serve.http.admin_token is required" in exposed.stderr


def test_verified_answer_policy_returns_the_first_candidate_that_passes(
    registry_dir: Path, tmp_path: Path, tiny_engine: TransformersEngine
) -> None:
    """UQ-TTC: the cascade runs at answer time over the samples, in order."""
    from daemon.serving.worker import ServeConfig, ServeHandler
    from daemon.verifying.cascade import CascadeConfig
    from streams.consumer import Record
    from tests.judges import ScriptedJudge, is_infer, prompt_text

    samples = iter(["41", "42", "43"] * 10)

    def rule(r: ChatRequest) -> str:
        text = prompt_text(r)
        if "<<<" not in text:  # a serve request: the three samples, in order
            return next(samples)
        if is_infer(r):
            return "What is 40 + 2?"
        return "[[Y]]" if "compare two questions" in text or "<<<\n42\n>>>" in text else "[[N]]"

    router = AdapterRouter(tiny_engine, registry_dir)
    batch = [Record("prompts", 0, 0, "q", PromptMessage(id="q", prompt="What is 40 + 2?"))]
    topics = TopicsConfig()
    for policy, expected_index in (("first", 0), ("verified", 1)):
        engine = ScriptedJudge(rule)
        samples = iter(["41", "42", "43"] * 10)
        handler = ServeHandler(
            engine,
            router,
            ServeConfig(extra_candidates=2, answer_policy=policy),
            topics,
            cascade=CascadeConfig(votes=2),
        )
        result = handler(batch)
        response = next(o.value for o in result.outputs if o.topic == topics.responses)
        cands = next(o.value for o in result.outputs if o.topic == topics.candidates)
        assert [s.text for s in cands.samples] == ["41", "42", "43"]
        assert cands.answer_index == expected_index
        assert response.text == cands.samples[expected_index].text
