"""The OpenAI-compatible API is bounded: no single caller can take the engine from the others.

Issue 19, point 3: ``max_tokens``, ``n`` and the prompt's length have upper bounds (400
naming the parameter, the value and the limit); chat needs a token whenever the server is
bound beyond loopback; a full queue answers 429 at once; ``/healthz`` and ``/readyz`` answer
while every engine thread is held. The engine here is a thin fake, because what is under
test is the HTTP layer: its generate and adapters block on a gate, as a busy real engine's
lock would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from daemon.engines.base import ChatRequest, ChatResult, Completion
from daemon.serving.openai_server import build_server
from streams.broker import free_port

BASE = "base-model"
ADMIN = "admin-token-for-tests"
API = "api-token-for-tests"
BOUNDS = {"max_tokens": 64, "max_n": 2, "max_prompt_chars": 100, "max_queue": 3}
#: Generous: "answers while the engine is busy", not a performance threshold.
PROMPT_S = 5.0


class GatedEngine:
    """generate (and, with ``block_adapters``, adapters) wait for ``gate``."""

    def __init__(self, *, block_adapters: bool = False) -> None:
        self.model_name = BASE
        self.gate = threading.Event()
        self.block_adapters = block_adapters
        self._lock = threading.Lock()
        self.inside = 0

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        with self._lock:
            self.inside += 1
        try:
            assert self.gate.wait(60), "the test never opened the gate"
        finally:
            with self._lock:
                self.inside -= 1
        return [ChatResult([Completion("ok", 1, "stop")] * r.n, prompt_tokens=1) for r in requests]

    def load_adapter(self, name: str, path: str) -> None:  # pragma: no cover - unused
        raise NotImplementedError

    def unload_adapter(self, name: str) -> None:  # pragma: no cover - unused
        raise NotImplementedError

    def adapters(self) -> list[str]:
        if self.block_adapters:
            self.gate.wait(60)
        return []

    def close(self) -> None:
        self.gate.set()


def chat(**extra: object) -> dict[str, object]:
    return {"model": BASE, "messages": [{"role": "user", "content": "hi"}], **extra}


def limits() -> object:
    """The bounds under test (imported here: a checkout without them fails test by test)."""
    from daemon.serving.limits import ApiLimits

    return ApiLimits(**BOUNDS)


@contextmanager
def running(engine: GatedEngine, registry: Path, **kw: object) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 over ``engine``; yields its root URL."""
    port = free_port()
    server = build_server(
        engine,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        registry_dir=registry,
        admin_token=ADMIN,
        limits=limits(),
        log_level="warning",
        **kw,  # type: ignore[arg-type]
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        engine.gate.set()
        server.should_exit = True
        thread.join(10)


def client(engine: GatedEngine, registry: Path, host: str, **kw: object) -> TestClient:
    """The app ``build_server`` would serve on ``host`` (not bound: binding 0.0.0.0 in a test
    would expose it), driven in-process."""
    server = build_server(
        engine,  # type: ignore[arg-type]
        host=host,
        port=free_port(),
        registry_dir=registry,
        admin_token=ADMIN,
        limits=limits(),
        **kw,  # type: ignore[arg-type]
    )
    return TestClient(server.config.app)


@pytest.fixture
def open_engine() -> GatedEngine:
    engine = GatedEngine()
    engine.gate.set()  # answers at once
    return engine


# ------------------------------------------------------------------ per-request bounds
@pytest.mark.parametrize(
    ("extra", "param", "value", "limit"),
    [
        ({"max_tokens": 65}, "max_tokens", "65", "64"),
        ({"max_completion_tokens": 100000}, "max_completion_tokens", "100000", "64"),
        ({"n": 3}, "n", "3", "2"),
        ({"messages": [{"role": "user", "content": "x" * 101}]}, "messages", "101", "100"),
    ],
)
def test_a_request_beyond_a_bound_is_400_naming_parameter_value_and_limit(
    open_engine: GatedEngine, tmp_path: Path, extra: dict, param: str, value: str, limit: str
) -> None:
    with client(open_engine, tmp_path, "127.0.0.1") as c:
        r = c.post("/v1/chat/completions", json=chat(**extra))
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == param
        for word in (param, value, limit):
            assert word in error["message"], error["message"]
        # At the bound itself the request is served.
        ok = chat(max_tokens=64, n=2, messages=[{"role": "user", "content": "x" * 100}])
        assert c.post("/v1/chat/completions", json=ok).status_code == 200


# ------------------------------------------------------------------ tokens
def test_chat_and_models_need_a_token_when_bound_beyond_loopback(
    open_engine: GatedEngine, tmp_path: Path
) -> None:
    with client(open_engine, tmp_path, "0.0.0.0") as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}):
            r = c.post("/v1/chat/completions", json=chat(), headers=headers)
            assert r.status_code == 401, r.text
            assert r.headers["www-authenticate"] == "Bearer"
            assert c.get("/v1/models", headers=headers).status_code == 401
        auth = {"Authorization": f"Bearer {ADMIN}"}
        assert c.post("/v1/chat/completions", json=chat(), headers=auth).status_code == 200
        assert c.get("/v1/models", headers=auth).status_code == 200
        # Probes stay open: a load balancer has no token.
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200


def test_an_api_token_is_required_even_on_loopback_and_loopback_is_open_without_one(
    open_engine: GatedEngine, tmp_path: Path
) -> None:
    with client(open_engine, tmp_path, "127.0.0.1", api_token=API) as c:
        assert c.post("/v1/chat/completions", json=chat()).status_code == 401
        for token in (API, ADMIN):  # the admin token can do what the API token can
            auth = {"Authorization": f"Bearer {token}"}
            assert c.post("/v1/chat/completions", json=chat(), headers=auth).status_code == 200
        # The API token does not open the adapter endpoints.
        body = {"lora_name": "x", "lora_path": "x"}
        auth = {"Authorization": f"Bearer {API}"}
        assert c.post("/v1/load_lora_adapter", json=body, headers=auth).status_code == 401
    with client(open_engine, tmp_path, "127.0.0.1") as c:  # today's loopback behaviour
        assert c.post("/v1/chat/completions", json=chat()).status_code == 200


# ------------------------------------------------------------------ the queue
def test_a_full_queue_answers_429_at_once_and_probes_still_answer(tmp_path: Path) -> None:
    engine = GatedEngine()
    with running(engine, tmp_path) as root, ThreadPoolExecutor(BOUNDS["max_queue"]) as pool:
        url = f"{root}/v1/chat/completions"
        held = [pool.submit(httpx.post, url, json=chat(), timeout=60) for _ in range(3)]
        deadline = time.monotonic() + 20
        while engine.inside < BOUNDS["max_queue"]:  # every place in the queue is taken
            assert time.monotonic() < deadline, "the requests never reached the engine"
            time.sleep(0.02)
        with ThreadPoolExecutor(4) as burst:
            excess = [
                burst.submit(httpx.post, url, json=chat(), timeout=PROMPT_S) for _ in range(4)
            ]
            for f in excess:
                r = f.result()  # a request that waited for a thread would time out here
                assert r.status_code == 429, r.text
                assert r.headers["retry-after"] == "1"
                assert "serve.http.max_queue" in r.json()["error"]["message"]
        assert httpx.get(f"{root}/healthz", timeout=PROMPT_S).status_code == 200
        assert httpx.get(f"{root}/readyz", timeout=PROMPT_S).status_code == 200
        assert not any(f.done() for f in held)  # the engine was busy all along
        engine.gate.set()
        assert [f.result().status_code for f in held] == [200, 200, 200]
        # Places free again once the engine answered.
        assert httpx.post(url, json=chat(), timeout=30).status_code == 200


def test_readyz_never_waits_on_the_engine(tmp_path: Path) -> None:
    """Even an engine whose ``adapters()`` blocks (a lock held by a long generation, a
    remote server that does not answer) leaves /readyz answering from what it saw last."""
    engine = GatedEngine(block_adapters=True)
    with running(engine, tmp_path) as root, ThreadPoolExecutor(3) as pool:
        held = [
            pool.submit(httpx.post, f"{root}/v1/chat/completions", json=chat(), timeout=60)
            for _ in range(3)
        ]
        deadline = time.monotonic() + 20
        while engine.inside < 3:
            assert time.monotonic() < deadline, "the requests never reached the engine"
            time.sleep(0.02)
        for _ in range(3):  # the first starts a probe that blocks; none waits for it
            ready = httpx.get(f"{root}/readyz", timeout=PROMPT_S)
            assert ready.status_code == 200
            assert ready.json() == {"status": "ready", "model": BASE, "adapters": []}
            assert httpx.get(f"{root}/healthz", timeout=PROMPT_S).status_code == 200
        engine.gate.set()
        assert [f.result().status_code for f in held] == [200, 200, 200]
