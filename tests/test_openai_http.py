"""The OpenAI-compatible server and the HTTP engine, over real HTTP on a tiny real model.

A real uvicorn server runs in a background thread on a free port, in front of a real
TransformersEngine; it is reached with the official ``openai`` client, with raw ``httpx``
where the wire format itself is the point, and with our ``OpenAIEngine``.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from daemon.engines.base import (
    AdapterLoadError,
    AdapterMissing,
    ChatRequest,
    ChatResult,
    EngineError,
)
from daemon.engines.openai_engine import OpenAIEngine, split_evenly
from daemon.engines.transformers_engine import TransformersEngine
from daemon.serving.openai_server import build_server, run_server
from streams.broker import free_port

TOKEN = "test-admin-token"
Q = [{"role": "user", "content": "What is 2 + 2?"}]
BASE = "tiny-llama"


@dataclass
class Served:
    url: str  # ends in /v1, as the openai client expects
    root: str  # scheme://host:port
    app: Any  # the FastAPI app, for tests that change its state

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key="unused", max_retries=0, timeout=60)

    def engine(self, **kw: object) -> OpenAIEngine:
        kw.setdefault("api_key", TOKEN)
        return OpenAIEngine(self.url, model=BASE, timeout_s=60, **kw)  # type: ignore[arg-type]


def _start(engine: object, registry_dir: Path) -> Iterator[Served]:
    return _start_on(free_port(), engine, registry_dir)


def _start_on(port: int, engine: object, registry_dir: Path) -> Iterator[Served]:
    """A generator: the first ``next`` starts the server, ``close()`` stops it."""
    server = build_server(
        engine,  # type: ignore[arg-type]
        host="127.0.0.1",
        port=port,
        registry_dir=registry_dir,
        admin_token=TOKEN,
        log_level="warning",
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the OpenAI server did not start")
        time.sleep(0.02)
    root = f"http://127.0.0.1:{port}"
    try:
        yield Served(url=f"{root}/v1", root=root, app=server.config.app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def served(tiny_engine: TransformersEngine, registry_dir: Path) -> Iterator[Served]:
    yield from _start(tiny_engine, registry_dir)


def _direct(engine: TransformersEngine, r: ChatRequest) -> ChatResult:
    """The engine's own answer to ``r`` alone (not batched with others: padding differs)."""
    return engine.generate([r])[0]


# ------------------------------------------------------------------ openai client
def test_models_list_with_the_openai_client(served: Served) -> None:
    models = served.client().models.list().data
    assert [m.id for m in models] == [BASE]
    assert models[0].object == "model"


def test_chat_completion_n3_matches_the_engine_and_reports_usage(
    served: Served, tiny_engine: TransformersEngine
) -> None:
    resp = served.client().chat.completions.create(
        model=BASE, messages=Q, n=3, temperature=1.0, top_p=0.9, max_tokens=8, seed=11
    )
    assert resp.object == "chat.completion"
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert all(c.message.role == "assistant" for c in resp.choices)
    assert all(c.finish_reason in ("stop", "length") for c in resp.choices)
    assert all(c.logprobs is None for c in resp.choices)  # not asked for
    # The same request straight to the engine (same seed) gives the same samples and counts,
    # so n, temperature, top_p, max_tokens and seed all reached the engine.
    want = _direct(
        tiny_engine,
        ChatRequest(Q, n=3, temperature=1.0, top_p=0.9, max_tokens=8, seed=11),
    )
    assert [c.message.content for c in resp.choices] == [c.text for c in want.completions]
    assert len({c.message.content for c in resp.choices}) > 1  # sampled, not copies
    assert resp.usage is not None
    assert resp.usage.prompt_tokens == want.prompt_tokens > 0
    assert resp.usage.completion_tokens == want.completion_tokens > 0
    assert resp.usage.total_tokens == want.prompt_tokens + want.completion_tokens


def test_logprobs_of_the_first_token_when_asked(
    served: Served, tiny_engine: TransformersEngine
) -> None:
    resp = served.client().chat.completions.create(
        model=BASE, messages=Q, max_tokens=4, temperature=0, logprobs=True, top_logprobs=3
    )
    lp = resp.choices[0].logprobs
    assert lp is not None and lp.content is not None and len(lp.content) == 1
    first = lp.content[0]
    want = _direct(tiny_engine, ChatRequest(Q, max_tokens=4, logprobs=3)).completions[0]
    assert want.top_logprobs is not None
    assert [t.token for t in first.top_logprobs] == list(want.top_logprobs)
    assert [t.logprob for t in first.top_logprobs] == pytest.approx(
        list(want.top_logprobs.values())
    )
    # Greedy: the generated token is the most likely one.
    assert (first.token, first.logprob) == (
        first.top_logprobs[0].token,
        first.top_logprobs[0].logprob,
    )


def test_unknown_model_is_an_openai_not_found_error(served: Served) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        served.client().chat.completions.create(model="no-such-model", messages=Q, max_tokens=2)
    assert "no-such-model" in str(err.value)
    assert err.value.body == {
        "message": "The model `no-such-model` does not exist.",
        "type": "NotFoundError",
        "param": None,
        "code": 404,
    }


def test_bad_requests_are_400_with_a_clear_message(served: Served) -> None:
    with pytest.raises(openai.BadRequestError, match="stream"):
        served.client().chat.completions.create(model=BASE, messages=Q, stream=True)
    cases = {
        "messages": {"model": BASE},
        "n": {"model": BASE, "messages": Q, "n": 0},
        "logprobs": {"model": BASE, "messages": Q, "top_logprobs": 2},
        "assistant": {
            "model": BASE,
            "messages": Q,
            "continue_final_message": True,
            "add_generation_prompt": False,
        },
    }
    for needle, body in cases.items():
        r = httpx.post(f"{served.url}/chat/completions", json=body, timeout=30)
        assert r.status_code == 400, (needle, r.text)
        error = r.json()["error"]
        assert needle in error["message"] and error["code"] == 400, (needle, error)


def test_continue_final_message_continues_the_assistant_turn(
    served: Served, tiny_engine: TransformersEngine
) -> None:
    msgs = [*Q, {"role": "assistant", "content": "The answer is"}]
    resp = served.client().chat.completions.create(
        model=BASE,
        messages=msgs,  # type: ignore[arg-type]
        max_tokens=6,
        temperature=0,
        extra_body={"add_generation_prompt": False, "continue_final_message": True},
    )
    want = _direct(tiny_engine, ChatRequest(msgs, max_tokens=6, continue_final=True))
    other = _direct(tiny_engine, ChatRequest(msgs, max_tokens=6))
    assert resp.choices[0].message.content == want.completions[0].text
    assert resp.usage is not None and resp.usage.prompt_tokens == want.prompt_tokens
    assert want.prompt_tokens != other.prompt_tokens  # the flag changes the prompt


def test_health_and_readiness(served: Served) -> None:
    assert httpx.get(f"{served.root}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{served.root}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "model": BASE, "adapters": []}


class _GatedEngine:
    """A real engine whose generate waits for a gate: shows whether the event loop is free."""

    def __init__(self, inner: TransformersEngine) -> None:
        self.inner = inner
        self.model_name = inner.model_name
        self.entered = threading.Event()
        self.gate = threading.Event()

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        self.entered.set()
        assert self.gate.wait(30)
        return self.inner.generate(requests)

    def load_adapter(self, name: str, path: str) -> None:
        self.inner.load_adapter(name, path)

    def unload_adapter(self, name: str) -> None:
        self.inner.unload_adapter(name)

    def adapters(self) -> list[str]:
        return self.inner.adapters()

    def close(self) -> None:
        self.inner.close()


def test_generation_runs_off_the_event_loop(
    tiny_engine: TransformersEngine, registry_dir: Path
) -> None:
    gated = _GatedEngine(tiny_engine)
    servers = _start(gated, registry_dir)
    served = next(servers)
    try:
        result: list[httpx.Response] = []
        body = {"model": BASE, "messages": Q, "max_tokens": 2}
        t = threading.Thread(
            target=lambda: result.append(
                httpx.post(f"{served.url}/chat/completions", json=body, timeout=60)
            )
        )
        t.start()
        assert gated.entered.wait(30)
        # generate is blocked; the server must still answer.
        assert httpx.get(f"{served.root}/healthz", timeout=5).status_code == 200
        gated.gate.set()
        t.join(30)
        assert result and result[0].status_code == 200
    finally:
        gated.gate.set()
        servers.close()


# ------------------------------------------------------------------ OpenAIEngine
def test_openai_engine_batch_equals_the_engines_own_output(
    served: Served, tiny_engine: TransformersEngine
) -> None:
    reqs = [
        ChatRequest(Q, max_tokens=8),
        ChatRequest([{"role": "user", "content": "Name a colour."}], max_tokens=6, logprobs=3),
        ChatRequest([{"role": "user", "content": "Say something long, please."}], max_tokens=7),
        ChatRequest(
            [*Q, {"role": "assistant", "content": "It is"}], max_tokens=5, continue_final=True
        ),
        ChatRequest(Q, n=2, temperature=0.8, max_tokens=8, seed=3),
    ]
    remote = served.engine(concurrency=4)
    try:
        got = remote.generate(reqs)
    finally:
        remote.close()
    want = [_direct(tiny_engine, r) for r in reqs]
    # Distinct answers (the tiny random model says little, so lengths differ too): a
    # shuffled order could not pass the comparisons below.
    assert len({(r.completions[0].text, r.prompt_tokens) for r in want[:4]}) == 4
    assert [[c.text for c in r.completions] for r in got] == [
        [c.text for c in r.completions] for r in want
    ]
    assert [r.prompt_tokens for r in got] == [r.prompt_tokens for r in want]
    assert [r.completion_tokens for r in got] == [r.completion_tokens for r in want]
    # n=1: the per-completion count is exact; n=2: only the sum is (split evenly).
    assert [r.completions[0].tokens for r in got[:4]] == [r.completions[0].tokens for r in want[:4]]
    assert [r.completions[0].finish_reason for r in got] == [
        r.completions[0].finish_reason for r in want
    ]
    top_got, top_want = got[1].completions[0].top_logprobs, want[1].completions[0].top_logprobs
    assert top_got is not None and top_want is not None
    assert list(top_got) == list(top_want)
    assert list(top_got.values()) == pytest.approx(list(top_want.values()))
    assert got[0].completions[0].top_logprobs is None


def test_split_evenly_keeps_the_sum() -> None:
    assert split_evenly(7, 3) == [3, 2, 2]
    assert split_evenly(0, 2) == [0, 0]


def test_openai_engine_adapter_lifecycle(
    served: Served, tiny_engine: TransformersEngine, tiny_adapters: dict[str, Path]
) -> None:
    name, path = "tiny-sd-v0001", tiny_adapters["tiny-sd-v0001"]
    remote = served.engine()
    try:
        assert remote.adapters() == []
        base = remote.generate([ChatRequest(Q, max_tokens=8)])[0].completions[0].text

        remote.load_adapter(name, str(path))
        assert remote.adapters() == [name]
        assert tiny_engine.adapters() == [name]  # really loaded in the serving engine
        cards = {m.id: m for m in served.client().models.list().data}
        assert set(cards) == {BASE, name}
        card = cards[name].model_dump()
        assert card["parent"] == BASE and card["root"] == str(path.resolve())

        tuned = remote.generate([ChatRequest(Q, max_tokens=8, adapter=name)])[0]
        assert tuned.adapter == name
        assert tuned.completions[0].text != base
        assert (
            tuned.completions[0].text
            == _direct(tiny_engine, ChatRequest(Q, max_tokens=8, adapter=name)).completions[0].text
        )

        # Replicas share the server: a name it already has counts as loaded (the server
        # itself refused the second load, as vLLM does), and nothing was loaded twice.
        remote.load_adapter(name, str(path))
        assert remote.adapters() == [name] and tiny_engine.adapters() == [name]
        raw = httpx.post(
            f"{served.url}/load_lora_adapter",
            json={"lora_name": name, "lora_path": str(path)},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
        )
        assert raw.status_code == 400 and "already loaded" in raw.text

        remote.unload_adapter(name)
        assert remote.adapters() == [] and tiny_engine.adapters() == []
        assert [m.id for m in served.client().models.list().data] == [BASE]
        with pytest.raises(AdapterMissing, match="404") as missing:
            remote.generate([ChatRequest(Q, max_tokens=2, adapter=name)])
        assert missing.value.adapter == name  # a worker can restore it and retry
        with pytest.raises(EngineError, match="404"):
            remote.unload_adapter(name)
    finally:
        remote.close()


def test_load_with_vllm_wire_format_answers_plain_text(
    served: Served, tiny_adapters: dict[str, Path]
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # A path relative to the registry is accepted too, as verify_adapter resolves it.
    body = {"lora_name": "tiny-sd-v0002", "lora_path": "tiny-sd-v0002"}
    r = httpx.post(f"{served.url}/load_lora_adapter", json=body, headers=auth)
    assert r.status_code == 200
    assert r.text == "Success: LoRA adapter 'tiny-sd-v0002' added successfully."
    assert r.headers["content-type"].startswith("text/plain")
    r = httpx.post(
        f"{served.url}/unload_lora_adapter", json={"lora_name": "tiny-sd-v0002"}, headers=auth
    )
    assert r.status_code == 200
    assert r.text == "Success: LoRA adapter 'tiny-sd-v0002' removed successfully."


def test_adapter_paths_outside_the_registry_are_refused(
    served: Served,
    tiny_engine: TransformersEngine,
    tiny_adapters: dict[str, Path],
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    remote = served.engine()
    try:
        with pytest.raises(AdapterLoadError, match="outside the adapter registry"):
            remote.load_adapter("escape", str(tiny_model_dir))
        with pytest.raises(AdapterLoadError, match="outside the adapter registry"):
            remote.load_adapter("escape", "../../etc")
        # A real adapter, copied outside the registry, is refused for where it is.
        outside = tmp_path / "copy"
        shutil.copytree(tiny_adapters["tiny-sd-v0001"], outside)
        with pytest.raises(AdapterLoadError, match="outside the adapter registry"):
            remote.load_adapter("escape", str(outside))
        assert tiny_engine.adapters() == []
    finally:
        remote.close()


def test_admin_endpoints_need_the_token(
    served: Served, tiny_engine: TransformersEngine, tiny_adapters: dict[str, Path]
) -> None:
    path = str(tiny_adapters["tiny-sd-v0001"])
    for engine in (served.engine(api_key="wrong-token"), served.engine(api_key=None)):
        try:
            with pytest.raises(AdapterLoadError, match="401"):
                engine.load_adapter("tiny-sd-v0001", path)
            # Reading stays open: the token guards changes only.
            assert engine.adapters() == []
        finally:
            engine.close()
    r = httpx.post(f"{served.url}/load_lora_adapter", json={"lora_name": "x", "lora_path": path})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == 401
    assert tiny_engine.adapters() == []
    r = httpx.post(f"{served.url}/unload_lora_adapter", json={"lora_name": "x"})
    assert r.status_code == 401


def test_openai_engine_retries_a_server_that_is_not_up_yet(
    tiny_engine: TransformersEngine, registry_dir: Path
) -> None:
    port = free_port()
    remote = OpenAIEngine(f"http://127.0.0.1:{port}/v1", model=BASE, retries=6, backoff_s=0.2)
    servers: Iterator[Served] | None = None
    try:
        got: list[Any] = []
        t = threading.Thread(
            target=lambda: got.append(remote.generate([ChatRequest(Q, max_tokens=3)]))
        )
        t.start()
        time.sleep(0.5)  # the first attempts are refused: nothing listens yet
        servers = _start_on(port, tiny_engine, registry_dir)
        next(servers)
        t.join(30)
        assert got, "generate gave up instead of retrying the refused connection"
        assert (
            got[0][0].completions[0].text
            == _direct(tiny_engine, ChatRequest(Q, max_tokens=3)).completions[0].text
        )
    finally:
        remote.close()
        if servers is not None:
            servers.close()


def test_openai_engine_retries_503_until_the_engine_is_back(
    served: Served, tiny_engine: TransformersEngine
) -> None:
    served.app.state.engine = None  # the server answers 503 while it has no engine
    assert httpx.get(f"{served.root}/readyz").status_code == 503
    remote = served.engine(retries=6, backoff_s=0.2)
    try:
        got: list[Any] = []
        t = threading.Thread(
            target=lambda: got.append(remote.generate([ChatRequest(Q, max_tokens=3)]))
        )
        t.start()
        time.sleep(0.5)
        served.app.state.engine = tiny_engine
        t.join(30)
        assert got and got[0][0].completions[0].text
    finally:
        remote.close()
    with pytest.raises(EngineError, match="503"):
        served.app.state.engine = None
        quick = served.engine(retries=2, backoff_s=0.01)
        try:
            quick.generate([ChatRequest(Q, max_tokens=3)])
        finally:
            quick.close()
    served.app.state.engine = tiny_engine


class _ForgetfulEngine(_GatedEngine):
    """Answers a load without loading: what a proxy, or vLLM before 0.7, could do."""

    def load_adapter(self, name: str, path: str) -> None:
        return None


def test_load_is_confirmed_in_the_model_list(
    tiny_engine: TransformersEngine, registry_dir: Path, tiny_adapters: dict[str, Path]
) -> None:
    servers = _start(_ForgetfulEngine(tiny_engine), registry_dir)
    served = next(servers)
    remote = served.engine()
    try:
        with pytest.raises(AdapterLoadError, match="does not list it"):
            remote.load_adapter("tiny-sd-v0001", str(tiny_adapters["tiny-sd-v0001"]))
    finally:
        remote.close()
        servers.close()


def test_openai_engine_gives_up_on_a_dead_server_with_engine_error() -> None:
    dead = OpenAIEngine(f"http://127.0.0.1:{free_port()}/v1", model=BASE, retries=3, backoff_s=0.01)
    try:
        t0 = time.monotonic()
        with pytest.raises(EngineError, match="ConnectError"):
            dead.generate([ChatRequest(Q, max_tokens=2)])
        assert time.monotonic() - t0 < 10
        with pytest.raises(AdapterLoadError):
            dead.load_adapter("a", "/x")
    finally:
        dead.close()


def test_exposed_host_without_token_is_refused(
    tiny_engine: TransformersEngine, registry_dir: Path
) -> None:
    with pytest.raises(ValueError, match="admin token"):
        run_server(tiny_engine, host="0.0.0.0", port=free_port(), registry_dir=registry_dir)
    with pytest.raises(ValueError, match="admin token"):
        run_server(tiny_engine, host="192.168.1.10", port=free_port(), registry_dir=registry_dir)
    # Loopback without a token, or exposed with one, is allowed (built, not run).
    for host, token in (("127.0.0.1", None), ("localhost", None), ("::1", None), ("0.0.0.0", "t")):
        build_server(
            tiny_engine, host=host, port=free_port(), registry_dir=registry_dir, admin_token=token
        )
