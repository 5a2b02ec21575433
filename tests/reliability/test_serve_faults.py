"""A record's fault or the engine's: poison prompts, an engine that is down, a stop mid-batch.

The real ``selfdistill serve`` process talks to a real HTTP server speaking the OpenAI
protocol (a stand-in for vLLM, whose behaviour here is set per test): it answers 400 for a
prompt it refuses (the record's fault), 503 while "down" (the engine's fault), and can hold
a request forever (a batch that never ends). What must hold:

* a refused prompt is dead-lettered (``handler-error``, the engine's message in the
  headers) and the prompts batched with it are answered, each once;
* while the engine is down nothing is dead-lettered, ``/readyz`` answers 503 and the
  ``selfdistill_dependency_unavailable`` gauge is 1; when it is back, every prompt is
  answered and /readyz is 200 again;
* SIGTERM during a batch that never ends stops the process within ``shutdown_timeout_s``
  (well before the batch could end), with nothing committed; the next member answers it
  once.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from daemon.operating.config import Settings, render_toml
from streams.broker import free_port
from streams.connection import KafkaSettings
from streams.deadletter import DeadLetter
from streams.schemas import ResponseMessage
from streams.topics import TopicsConfig
from tests.conftest import committed_total, read_topic, start_cli, wait_for
from tests.test_serve import _produce


@dataclass
class FakeEngine:
    """What the stand-in server does; tests flip these while serve runs.

    ``api_key``: the bearer token it wants (vLLM's ``--api-key``), else 401. ``served``:
    the model names it serves (``--served-model-name``), else vLLM's 404 "The model `X`
    does not exist". ``broken``: answers real requests (n > 1) with no choices, while a
    one-token probe still works (as an engine short of memory may: an error of a kind the
    worker does not know). ``stuck``: a prompt text
    on which it answers 500 every time while serving everything else."""

    down: bool = False
    hang: bool = False
    api_key: str | None = None
    served: list[str] = field(default_factory=lambda: ["fake"])
    broken: bool = False
    stuck: str | None = None
    seen: Counter[str] = field(default_factory=Counter)
    released: threading.Event = field(default_factory=threading.Event)


def _app(state: FakeEngine) -> FastAPI:
    app = FastAPI()

    def refused(request: Request) -> JSONResponse | None:
        if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
            return JSONResponse({"error": "Unauthorized"}, status_code=401)  # as vLLM says it
        return None

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        if (no := refused(request)) is not None:
            return no
        cards = [{"id": m, "object": "model", "parent": None} for m in state.served]
        return JSONResponse({"object": "list", "data": cards})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> JSONResponse:
        import asyncio

        body = await request.json()
        text = " ".join(m["content"] for m in body["messages"])
        state.seen[text] += 1
        if state.hang:
            while not state.released.is_set():
                await asyncio.sleep(0.05)
        if (no := refused(request)) is not None:
            return no
        if state.down:
            return JSONResponse({"error": {"message": "engine overloaded"}}, status_code=503)
        if body["model"] not in state.served:
            return JSONResponse(
                {
                    "error": {
                        "message": f"The model `{body['model']}` does not exist.",
                        "type": "NotFoundError",
                        "code": 404,
                    }
                },
                status_code=404,
            )
        if state.stuck and state.stuck in text:
            return JSONResponse({"error": {"message": "EngineCore died"}}, status_code=500)
        if "POISON" in text:
            return JSONResponse(
                {"error": {"message": "This model's maximum context length is 8 tokens"}},
                status_code=400,
            )
        n = body.get("n", 1)
        n = 0 if state.broken and n > 1 else n  # a one-token probe (n = 1) still works
        return JSONResponse(
            {
                "choices": [
                    {"index": i, "message": {"content": f"answer {i}"}, "finish_reason": "stop"}
                    for i in range(n)
                ],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2 * n},
            }
        )

    return app


@pytest.fixture
def fake_engine() -> Iterator[tuple[FakeEngine, int]]:
    state = FakeEngine()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_app(state), host="127.0.0.1", port=port, log_level="warning")
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 20)
    yield state, port
    state.released.set()
    server.should_exit = True
    thread.join(10)


def _config(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tmp_path: Path,
    engine_port: int,
    **kafka_kw: object,
) -> tuple[Path, Settings]:
    settings = Settings(
        data_dir=tmp_path,
        kafka={**kafka.model_dump(), "batch_size": 8, **kafka_kw},
        topics=topics.model_dump(),
        model={"name": "fake", "path": "fake"},
        engine={
            "kind": "openai",
            "base_url": f"http://127.0.0.1:{engine_port}/v1",
            "timeout_s": 600,
        },
        serve={"extra_candidates": 1, "max_tokens": 8, "group_id": f"serve-{topics.prompts}"},
        metrics={"enabled": True, "serve_port": free_port(), "verify_port": free_port()},
    )
    config = tmp_path / "selfdistill.toml"
    config.write_text(render_toml(settings, comments=False))
    return config, settings


def _responses(kafka: KafkaSettings, topic: str) -> Counter[str]:
    return Counter(
        ResponseMessage.model_validate_json(r.value).id for r in read_topic(kafka, topic)
    )


def _metric(port: int, name: str) -> float | None:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_refused_prompt_is_isolated_and_an_engine_that_is_down_is_waited_for(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tmp_path: Path,
    fake_engine: tuple[FakeEngine, int],
) -> None:
    state, engine_port = fake_engine
    config, settings = _config(kafka, topics, tmp_path, engine_port, max_handler_attempts=2)
    group, port = settings.serve.group_id, settings.metrics.serve_port
    log = tmp_path / "serve.log"
    proc = start_cli("-c", str(config), "serve", stderr=log)

    def ready() -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code
        except httpx.HTTPError:
            return 0

    try:
        wait_for(lambda: ready() == 200, 60)
        # 1. A poison prompt among good ones, on one partition: only it is dead-lettered.
        good = [f"good-{i}" for i in range(7)]
        from streams.producer import Producer
        from streams.schemas import PromptMessage

        p = Producer(kafka)
        for pid in [*good[:3], "poison", *good[3:]]:
            text = "POISON pill" if pid == "poison" else f"{pid}: hello"
            p.send(topics.prompts, PromptMessage(id=pid, prompt=text), key=pid, partition=0)
        p.flush()
        wait_for(lambda: committed_total(kafka, group, topics.prompts) == 8, 60)
        assert _responses(kafka, topics.responses) == Counter(good)
        dead = [
            DeadLetter.from_record(r.headers, r.key, r.value)
            for r in read_topic(kafka, topics.dlq(topics.prompts))
        ]
        assert [(d.reason, d.offset) for d in dead] == [("handler-error", 3)]
        assert "EngineRejected" in dead[0].detail and "maximum context length" in dead[0].detail
        assert json.loads(dead[0].value)["id"] == "poison"  # the original record, replayable
        assert _metric(port, "selfdistill_handler_isolated_total") == 1

        # 2. The engine goes down: nothing is dead-lettered, the worker says it is not ready.
        state.down = True
        later = [f"later-{i}" for i in range(6)]
        _produce(kafka, topics.prompts, later)
        wait_for(lambda: ready() == 503, 60)
        assert _metric(port, "selfdistill_dependency_unavailable") == 1
        time.sleep(3)  # several retries' worth
        assert committed_total(kafka, group, topics.prompts) == 8
        assert len(read_topic(kafka, topics.dlq(topics.prompts))) == 1
        state.down = False
        wait_for(lambda: committed_total(kafka, group, topics.prompts) == 14, 90)
        wait_for(lambda: ready() == 200, 30)
        assert _metric(port, "selfdistill_dependency_unavailable") == 0
        assert _responses(kafka, topics.responses) == Counter(good + later)
        assert len(read_topic(kafka, topics.dlq(topics.prompts))) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "a dependency is unavailable" in log.read_text()


def test_sigterm_mid_batch_stops_within_the_shutdown_timeout_and_loses_nothing(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tmp_path: Path,
    fake_engine: tuple[FakeEngine, int],
) -> None:
    state, engine_port = fake_engine
    state.hang = True  # every request is held until released: the batch never ends
    timeout_s = 3.0
    config, settings = _config(kafka, topics, tmp_path, engine_port, shutdown_timeout_s=timeout_s)
    group = settings.serve.group_id
    log = tmp_path / "serve.log"
    proc = start_cli("-c", str(config), "serve", stderr=log)
    ids = [f"s{i}" for i in range(4)]
    try:
        _produce(kafka, topics.prompts, ids)
        # A batch is in flight, held by the engine (the start-up probe is held there too).
        wait_for(lambda: any("Question" in t for t in state.seen), 60, what="a held batch")
        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        took = time.monotonic() - stopped_at
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    assert "given up uncommitted" in text
    assert committed_total(kafka, group, topics.prompts) == 0  # nothing committed
    assert _responses(kafka, topics.responses) == Counter()
    # The batch would never have ended: the process left because of the timeout, not because
    # the batch finished (the engine still holds it).
    assert not state.released.is_set()

    state.hang = False
    state.released.set()
    proc = start_cli("-c", str(config), "serve", stderr=tmp_path / "serve2.log")
    try:
        wait_for(lambda: committed_total(kafka, group, topics.prompts) == len(ids), 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert _responses(kafka, topics.responses) == Counter(ids)
    print(f"\nSIGTERM mid-batch: exited after {took:.1f}s (shutdown_timeout_s={timeout_s:g})")
