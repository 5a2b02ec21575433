"""The adapter fleet: what the registry says is what every replica serves.

The shipped topology, in real processes: two ``selfdistill serve`` replicas with the
``openai`` engine share one model server (``selfdistill serve --http --no-worker`` on the tiny
model, the stand-in for a shared vLLM), all on the embedded broker. What must hold:

* both replicas load the promoted adapter on the one server; the second load finds it
  there and is a success, not a refused swap, and ``adapters promote --wait`` sees both
  confirm on ``adapter-status``; ``adapters list`` shows how many replicas serve each version;
* no replica unloads an adapter on the shared server (the other may still route to it);
* the server restarts mid-stream and forgets its adapters: the next batch on the adapter gets
  a 404, the replica loads the adapter again and answers; every prompt is answered once;
* ``rollback --wait`` returns when every live replica confirms; a replica that stopped is
  not waited for; a replica started later restores the current adapter from the log;
* a state topic with two partitions is a clear start-up error of ``selfdistill serve``.

And in one process, against the project's OpenAI-compatible server in a thread:

* a swap refused for a passing reason (the server answers 503 to the first loads, as one
  restarting does) is tried again until the replica serves the promoted adapter, with no
  new promotion, each attempt on adapter-status;
* two registries (staging and production) that both made ``tiny-sd-v0001`` with different
  weights share one server, and each replica generates with its own weights;
* ``adapters reconcile`` names a live replica that serves something other than the registry
  says, with its error, exits 1, and once the cause is fixed re-announces and converges.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from adapters.files import WEIGHTS_FILE, served_name
from adapters.registry import Registry
from daemon.engines.base import ChatRequest
from daemon.engines.hotswap import AdapterRouter
from daemon.engines.openai_engine import OpenAIEngine
from daemon.engines.transformers_engine import TransformersEngine
from daemon.learning.promote import promote
from daemon.operating.config import Settings, render_toml
from daemon.serving.openai_server import build_server
from daemon.serving.worker import ServeWorker
from streams.adapter_status import read_statuses
from streams.broker import free_port
from streams.connection import KafkaSettings
from streams.schemas import AdapterEvent, AdapterStatus, ResponseMessage
from streams.topics import TopicsConfig
from tests.conftest import cli, read_topic, start_cli, wait_for
from tests.test_learning_loop import _register_adapters
from tests.test_learning_loop import _settings as loop_settings
from tests.test_serve import _produce
from tests.test_serve import _settings as serve_settings
from tests.test_serve import _start as start_worker


def _server_config(tmp_path: Path, registry: Path, model_dir: Path, port: int) -> Path:
    settings = Settings(
        data_dir=tmp_path / "server",
        model={"path": str(model_dir), "name": "tiny"},
        engine={"torch_threads": 1},
        adapters={"registry_dir": str(registry)},
        serve={"http": {"port": port}},
        metrics={"enabled": False},
    )
    config = tmp_path / "server.toml"
    config.write_text(render_toml(settings, comments=False))
    return config


def _replica_config(
    kafka: KafkaSettings, topics: TopicsConfig, tmp_path: Path, registry: Path, port: int
) -> Path:
    settings = Settings(
        data_dir=tmp_path / "replicas",
        kafka={**kafka.model_dump(), "batch_size": 4},
        topics=topics.model_dump(),
        model={"path": "tiny", "name": "tiny"},
        engine={"kind": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "timeout_s": 120},
        adapters={"registry_dir": str(registry)},
        serve={
            "extra_candidates": 1,
            "max_tokens": 4,
            "group_id": f"serve-{topics.prompts}",
            "status_heartbeat_s": 2,
        },
        metrics={"enabled": False},
    )
    config = tmp_path / "replicas.toml"
    config.write_text(render_toml(settings, comments=False))
    return config


def _start_server(config: Path, port: int, log: Path) -> subprocess.Popen[str]:
    proc = start_cli("-c", str(config), "serve", "--http", "--no-worker", stderr=log)

    def up() -> bool:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 120, every=0.3)
    return proc


def _start_replica(config: Path, name: str, log: Path) -> subprocess.Popen[str]:
    env = {
        "SELFDISTILL_SERVE__TRANSACTIONAL_ID": f"tx-{name}",
        "SELFDISTILL_SERVE__REPLICA_ID": name,
    }
    return start_cli("-c", str(config), "serve", env=env, stderr=log)


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _statuses(kafka: KafkaSettings, topics: TopicsConfig) -> dict[str, tuple[str, bool, str]]:
    return {
        r.name: (r.status.serving, r.status.ok, r.status.state)
        for r in read_statuses(kafka, topics.adapter_status)
    }


def _served(port: int) -> list[str]:
    cards = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).json()["data"]
    return sorted(c["id"] for c in cards if c.get("parent"))


def _name(registry: Registry, version: str) -> str:
    """The name the model server knows ``version`` by (version + digest)."""
    return served_name(version, registry.require(version).sha256)


def _responses(kafka: KafkaSettings, topic: str) -> list[ResponseMessage]:
    return [ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topic)]


def test_two_replicas_on_one_shared_server_stay_in_step_through_its_restart(
    kafka: KafkaSettings, topics: TopicsConfig, tiny_model_dir: Path, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "adapters")
    v1, v2 = _register_adapters(registry, tiny_model_dir, seeds=(1, 2))
    port = free_port()
    server_cfg = _server_config(tmp_path, registry.root, tiny_model_dir, port)
    config = _replica_config(kafka, topics, tmp_path, registry.root, port)
    logs = tmp_path / "logs"
    logs.mkdir()
    server = _start_server(server_cfg, port, logs / "server.log")
    a = _start_replica(config, "replica-a", logs / "a.log")
    b = _start_replica(config, "replica-b", logs / "b.log")
    c: subprocess.Popen[str] | None = None
    try:
        wait_for(
            lambda: (
                _statuses(kafka, topics)
                == {"replica-a": ("base", True, "serving"), "replica-b": ("base", True, "serving")}
            ),
            120,
            every=0.5,
        )

        # Both replicas load v1 on the one server: one loads it, the other finds it loaded.
        r = cli("-c", str(config), "adapters", "promote", v1, "--wait", "90")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "all 2 live replica(s) serve" in r.stdout
        assert _statuses(kafka, topics) == {
            "replica-a": (v1, True, "serving"),
            "replica-b": (v1, True, "serving"),
        }
        listing = cli("-c", str(config), "adapters", "list")
        row = next(line for line in listing.stdout.splitlines() if line.startswith(f"* {v1}"))
        assert "2 serving" in row, listing.stdout

        ids = [f"p{i}-{uuid.uuid4().hex[:4]}" for i in range(12)]
        _produce(kafka, topics.prompts, ids[:6])
        wait_for(lambda: len(_responses(kafka, topics.responses)) >= 6, 120, every=0.5)

        # The shared server restarts and forgets v1; prompts keep coming meanwhile.
        _stop(server)
        _produce(kafka, topics.prompts, ids[6:])
        time.sleep(2)
        # The new server starts with no adapter; a replica retrying its batch may load v1
        # again within milliseconds of it answering, so "forgotten" is read from the
        # replicas' logs below, not raced for here.
        server = _start_server(server_cfg, port, logs / "server.log")
        wait_for(lambda: len(_responses(kafka, topics.responses)) >= 12, 180, every=0.5)
        responses = _responses(kafka, topics.responses)
        assert Counter(m.id for m in responses) == Counter(ids)  # each answered once
        assert {m.adapter for m in responses} == {v1}  # all on v1, before and after
        assert _served(port) == [_name(registry, v1)]  # loaded again by a replica
        restored = (logs / "a.log").read_text() + (logs / "b.log").read_text()
        assert "had forgotten adapter" in restored

        # v2, then back to v1: nobody unloads on the shared server, both confirm each step.
        r = cli("-c", str(config), "adapters", "promote", v2, "--wait", "90")
        assert r.returncode == 0 and "all 2 live" in r.stdout, r.stdout + r.stderr
        r = cli("-c", str(config), "adapters", "rollback", "--wait", "90")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"rollback {v1}" in r.stdout and "all 2 live" in r.stdout
        assert _served(port) == [_name(registry, v1), _name(registry, v2)]

        # A replica stops (and says so); a new one starts late and restores v1 from the log.
        _stop(b)
        assert _statuses(kafka, topics)["replica-b"][2] == "stopped"
        c = _start_replica(config, "replica-c", logs / "c.log")
        wait_for(lambda: _statuses(kafka, topics).get("replica-c") == (v1, True, "serving"), 120)
        r = cli("-c", str(config), "adapters", "rollback", "base", "--wait", "90")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "all 2 live replica(s) serve base" in r.stdout  # a and c; b is not awaited
        for log in ("a.log", "b.log", "c.log"):
            assert "keeps serving" not in (logs / log).read_text()  # no refused swap
    finally:
        for proc in (a, b, c, server):
            if proc is not None:
                _stop(proc)
        registry.close()


def test_a_state_topic_with_two_partitions_stops_serve_at_start_up(
    kafka: KafkaSettings, topics: TopicsConfig, tmp_path: Path
) -> None:
    wrong = topics.model_copy(
        update={"adapter_events": f"adapter-events-2p-{uuid.uuid4().hex[:6]}"}
    )
    admin = KafkaAdminClient(**kafka.client_kwargs("test-admin"))
    admin.create_topics([NewTopic(wrong.adapter_events, 2, 1)])
    admin.close()
    config = _replica_config(kafka, wrong, tmp_path, tmp_path / "adapters", free_port())
    r = cli("-c", str(config), "serve", timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"topic {wrong.adapter_events} has 2 partitions; it must have exactly 1" in r.stderr


# ------------------------------------------------------------------ in one process
TOKEN = "fleet-admin-token"
Q = [{"role": "user", "content": "Name three colours."}]


@contextmanager
def _model_server(
    engine: TransformersEngine, registry_dir: Path, load_503s: int = 0
) -> Iterator[tuple[str, list[int]]]:
    """The project's OpenAI-compatible server on ``engine``, in a thread; its first
    ``load_503s`` calls of /v1/load_lora_adapter are answered 503 (as by a server that is
    restarting, or a proxy in front of it). Yields the base URL and the 503s still to come."""
    from fastapi.responses import JSONResponse

    port = free_port()
    server = build_server(
        engine, port=port, registry_dir=registry_dir, admin_token=TOKEN, log_level="warning"
    )
    left = [load_503s]

    @server.config.app.middleware("http")
    async def restarting(request, call_next):  # type: ignore[no-untyped-def]
        if request.url.path == "/v1/load_lora_adapter" and left[0] > 0:
            left[0] -= 1
            body = {"error": {"message": "the server is restarting", "code": 503}}
            return JSONResponse(body, status_code=503)
        return await call_next(request)

    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_for(lambda: server.started, 30, what="the model server's start")
    try:
        yield f"http://127.0.0.1:{port}/v1", left
    finally:
        server.should_exit = True
        thread.join(10)


def _listed(url: str) -> list[str]:
    """The adapters the server at ``url`` lists (``/v1/models`` cards with a parent)."""
    cards = httpx.get(f"{url}/models", timeout=10).json()["data"]
    return sorted(c["id"] for c in cards if c.get("parent"))


def _client(url: str) -> OpenAIEngine:
    return OpenAIEngine(url, model="tiny-llama", api_key=TOKEN, timeout_s=60, backoff_s=0.05)


def _event(registry: Registry, version: str) -> AdapterEvent:
    rec = registry.require(version)
    return AdapterEvent(action="promote", version=version, path=rec.path, sha256=rec.sha256)


def _greedy(engine: object, adapter: str) -> str:
    request = ChatRequest(Q, max_tokens=8, adapter=adapter)
    return engine.generate([request])[0].completions[0].text  # type: ignore[attr-defined]


def test_a_swap_refused_while_the_server_restarts_is_retried_until_it_serves(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path / "adapters")
    (v1,) = _register_adapters(registry, tiny_model_dir, seeds=(1,))
    settings = serve_settings(
        kafka,
        topics,
        registry.root,
        tmp_path / "var",
        extra_candidates=0,
        max_tokens=4,
        replica_id="replica-r",
        status_heartbeat_s=1,
        swap_retry_s=0.2,
        swap_retry_max_s=1.0,
    )
    with _model_server(tiny_engine, registry.root, load_503s=3) as (url, left):
        worker = ServeWorker(settings, _client(url))
        t = start_worker(worker)
        try:
            wait_for(lambda: worker.loop.ready.is_set(), 60, what="serve ready")
            promote(settings, registry, v1, actor="test")  # one promotion, and no other
            wait_for(lambda: worker.router.active == v1, 120, what=f"the replica on {v1}")
            assert left == [0]  # it got there through the three 503s
            _produce(kafka, topics.prompts, ["after"])
            wait_for(lambda: read_topic(kafka, topics.responses) != [], 60, what="an answer")
        finally:
            worker.stop()
            t.join(30)
        assert _listed(url) == [_name(registry, v1)]
    [answer] = [
        ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.responses)
    ]
    assert answer.adapter == v1
    # Every attempt was on adapter-status: three passing refusals while base served, then v1.
    history = [
        AdapterStatus.model_validate_json(r.value) for r in read_topic(kafka, topics.adapter_status)
    ]
    swaps = [(h.serving, h.requested, h.ok, h.retrying, h.attempts) for h in history if h.requested]
    swaps = [x for i, x in enumerate(swaps) if i == 0 or x != swaps[i - 1]]  # heartbeats repeat
    assert swaps == [
        ("base", v1, False, True, 1),
        ("base", v1, False, True, 2),
        ("base", v1, False, True, 3),
        (v1, v1, True, False, 1),
    ], swaps
    assert all("503" in (h.error or "") for h in history if h.retrying)
    registry.close()


def test_two_registries_sharing_one_server_each_serve_their_own_weights(
    tiny_model_dir: Path, tiny_engine: TransformersEngine, tmp_path: Path
) -> None:
    """Staging and production (or a registry re-created from scratch) both make
    tiny-sd-v0001, with other weights, and load them onto one shared model server."""
    shared = tmp_path / "shared"
    staging, production = Registry(shared / "staging"), Registry(shared / "production")
    (a,) = _register_adapters(staging, tiny_model_dir, seeds=(1,))
    (b,) = _register_adapters(production, tiny_model_dir, seeds=(2,))
    assert a == b == "tiny-sd-v0001"
    # What each set of weights answers, straight from the engine under private names.
    tiny_engine.load_adapter("ref-staging", str(staging.root / a))
    tiny_engine.load_adapter("ref-production", str(production.root / b))
    expected = {
        "staging": _greedy(tiny_engine, "ref-staging"),
        "production": _greedy(tiny_engine, "ref-production"),
    }
    tiny_engine.unload_adapter("ref-staging")
    tiny_engine.unload_adapter("ref-production")
    assert expected["staging"] != expected["production"]  # the weights can be told apart

    with _model_server(tiny_engine, shared) as (url, _left):
        got, names = {}, {}
        for who, registry in (("staging", staging), ("production", production)):
            client = _client(url)
            router = AdapterRouter(client, registry.root)
            result = router.apply(_event(registry, a))
            assert result.ok and router.active == a, result.error
            with router.use() as route:
                assert route.version == a and route.name is not None
                got[who], names[who] = _greedy(client, route.name), route.name
            client.close()
        assert _listed(url) == sorted(names.values())
    assert names["staging"] != names["production"]  # neither took the other's as loaded
    assert got == expected  # each generated with its own weights
    staging.close()
    production.close()


def test_reconcile_names_a_drifting_replica_and_repairs_it_once_fixed(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
) -> None:
    settings = loop_settings(kafka, topics, tmp_path, tiny_model_dir)
    config = tmp_path / "selfdistill.toml"
    config.write_text(render_toml(settings, comments=False))
    registry = Registry(settings.adapters.path(settings.data_dir))
    (v1,) = _register_adapters(registry, tiny_model_dir, seeds=(1,))
    # The replica reads its own copy of the registry (shared storage on another host), and
    # its copy of v1 is damaged: it refuses v1 for good (sha256 mismatch).
    mirror = tmp_path / "replica-adapters"
    shutil.copytree(registry.root / v1, mirror / v1)
    weights = mirror / v1 / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    replica = serve_settings(
        kafka,
        topics,
        mirror,
        tmp_path / "replica",
        extra_candidates=0,
        replica_id="replica-m",
        status_heartbeat_s=1,
    )
    worker = ServeWorker(replica, tiny_engine)
    t = start_worker(worker)
    try:
        wait_for(lambda: worker.loop.ready.is_set(), 60, what="serve ready")
        promote(settings, registry, v1, actor="test")

        def refused() -> bool:
            return any(r.refused == v1 for r in read_statuses(kafka, topics.adapter_status))

        wait_for(refused, 60, what=f"the replica's refusal of {v1}")
        r = cli("-c", str(config), "adapters", "reconcile", "--wait", "30")
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"agree: {v1}" in r.stdout  # registry and adapter-events do...
        assert f"re-announced {v1}" in r.stdout  # ...it was given another try, and refused:
        assert f"replica-m: serves base, not {v1} (refused: sha256 mismatch" in r.stdout
        assert "1 live replica(s) drift from the registry" in r.stderr
        assert worker.router.active is None

        # The copy is repaired; reconcile announces v1 again and the replica converges.
        shutil.rmtree(mirror / v1)
        shutil.copytree(registry.root / v1, mirror / v1)
        r = cli("-c", str(config), "adapters", "reconcile", "--wait", "60")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"all 1 live replica(s) serve {v1}" in r.stdout
        assert worker.router.active == v1
        # Nothing drifts: a third reconcile announces nothing.
        events = len(read_topic(kafka, topics.adapter_events))
        r = cli("-c", str(config), "adapters", "reconcile", "--wait", "0")
        assert r.returncode == 0 and "re-announced" not in r.stdout, r.stdout + r.stderr
        assert len(read_topic(kafka, topics.adapter_events)) == events
    finally:
        worker.stop()
        t.join(30)
        registry.close()
