"""The OpenAI-compatible API is bounded: no single caller can take the engine from the others.

Issue 19, point 3: ``max_tokens``, ``n`` and the prompt's length have upper bounds (400
naming the parameter, the value and the limit); chat needs a token whenever the server is
bound beyond loopback; a full queue answers 429 at once; ``/healthz`` and ``/readyz`` answer
while every engine thread is held.

Issue 28, point 8: a body is bounded before it is parsed. Over ``max_body_bytes`` by its
``Content-Length``, 413 comes at once (even without a token: one header is all it takes);
a chunked body is cut off at the limit while it streams; without a token, 401 comes before a
byte of the body is read. Driven over raw sockets, with bodies that never finish: an answer
at all proves the server did not wait to read them whole. The engine here is a thin fake, because what is under
test is the HTTP layer: its generate and adapters block on a gate, as a busy real engine's
lock would.
"""

from __future__ import annotations

import json
import socket
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
BOUNDS = {
    "max_tokens": 64,
    "max_n": 2,
    "max_prompt_chars": 100,
    "max_queue": 3,
    "max_body_bytes": 2048,
}
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
        self.calls = 0

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        with self._lock:
            self.inside += 1
            self.calls += 1
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


# ------------------------------------------------------------------ the body's size
LIMIT = BOUNDS["max_body_bytes"]
#: How long a raw socket waits for an answer: a net under a test that would otherwise hang
#: (a server that waited for the rest of a body that never comes), not a time bound.
ANSWER_S = 30.0


def post_raw(root: str, headers: dict[str, str], parts: list[bytes]) -> tuple[int, dict, dict]:
    """POST /v1/chat/completions over a raw socket: ``headers``, then ``parts`` as they are
    (chunk framing included, the body left unfinished if they say so); returns the status,
    the response headers and the JSON body, read without waiting for the request to end."""
    host, port = root.removeprefix("http://").split(":")
    lines = ["POST /v1/chat/completions HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    with socket.create_connection((host, int(port)), timeout=ANSWER_S) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for part in parts:
            sock.sendall(part)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"the server closed without answering: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode().split("\r\n")
        got = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
        while len(body) < int(got["content-length"]):
            chunk = sock.recv(65536)
            assert chunk, "the server closed in the middle of its answer"
            body += chunk
    return int(status_line.split()[1]), got, json.loads(body)


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def body_of(size: int) -> bytes:
    """A valid chat request of exactly ``size`` bytes (JSON padded with spaces)."""
    data = json.dumps(chat()).encode()
    assert len(data) <= size
    return data + b" " * (size - len(data))


def assert_413(status: int, headers: dict, body: dict) -> None:
    assert status == 413, body
    message = body["error"]["message"]
    assert "serve.http.max_body_bytes" in message and str(LIMIT) in message, message
    assert headers.get("connection") == "close"  # no more of that body is read


def test_a_body_declared_over_the_limit_is_413_before_any_of_it_is_read(
    open_engine: GatedEngine, tmp_path: Path
) -> None:
    """Ten gigabytes declared, a hundred bytes sent: the answer comes from the headers alone,
    and before the token check (a caller without one gets 413 too: no body work either way)."""
    with running(open_engine, tmp_path, api_token=API) as root:
        declared = {"Content-Type": "application/json", "Content-Length": str(10**10)}
        for auth in ({"Authorization": f"Bearer {API}"}, {}):
            status, headers, body = post_raw(root, {**declared, **auth}, [b"{" * 100])
            assert_413(status, headers, body)
            assert "10000000000 bytes" in body["error"]["message"]
        assert open_engine.calls == 0


def test_a_chunked_body_is_cut_off_at_the_limit_while_it_streams(
    open_engine: GatedEngine, tmp_path: Path
) -> None:
    """No Content-Length to go by: the body is counted as it comes and refused once past the
    limit, though its end never comes (so it was never buffered whole)."""
    with running(open_engine, tmp_path, api_token=API) as root:
        headers = {
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
            "Authorization": f"Bearer {API}",
        }
        parts = [chunk(b" " * 1024) for _ in range(3)]  # 3 KiB of 2, no final chunk
        assert_413(*post_raw(root, headers, parts))
        assert open_engine.calls == 0


def test_without_a_token_no_byte_of_the_body_is_read(
    open_engine: GatedEngine, tmp_path: Path
) -> None:
    """The token is checked before the body is read: a caller without one gets 401 for a
    body that is neither finished nor JSON (parsed, it would be 400; awaited, no answer)."""
    with running(open_engine, tmp_path, api_token=API) as root:
        headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        status, _, body = post_raw(root, headers, [chunk(b"not json {")])
        assert status == 401, body
        status, _, body = post_raw(root, {**headers, "Content-Length": "500"}, [b"not json"])
        assert status == 401, body  # within the limit, unfinished, unread
        assert open_engine.calls == 0


def test_a_body_at_the_limit_is_served_declared_or_chunked(
    open_engine: GatedEngine, tmp_path: Path
) -> None:
    with running(open_engine, tmp_path, api_token=API) as root:
        auth = {"Content-Type": "application/json", "Authorization": f"Bearer {API}"}
        data = body_of(LIMIT)
        status, _, body = post_raw(root, {**auth, "Content-Length": str(LIMIT)}, [data])
        assert status == 200, body
        half = LIMIT // 2
        chunked = {**auth, "Transfer-Encoding": "chunked"}
        parts = [chunk(data[:half]), chunk(data[half:]), b"0\r\n\r\n"]
        status, _, body = post_raw(root, chunked, parts)
        assert status == 200, body
        assert body["choices"][0]["message"]["content"] == "ok"
        # One byte more is refused, however it comes.
        over = data + b" "
        status, headers, body = post_raw(root, {**auth, "Content-Length": str(LIMIT + 1)}, [over])
        assert_413(status, headers, body)
        parts = [chunk(over[:half]), chunk(over[half:]), b"0\r\n\r\n"]
        assert_413(*post_raw(root, chunked, parts))
        assert open_engine.calls == 2
