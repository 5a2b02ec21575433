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
"""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from adapters.registry import Registry
from daemon.operating.config import Settings, render_toml
from streams.adapter_status import read_statuses
from streams.broker import free_port
from streams.connection import KafkaSettings
from streams.schemas import ResponseMessage
from streams.topics import TopicsConfig
from tests.conftest import cli, read_topic, start_cli, wait_for
from tests.test_learning_loop import _register_adapters
from tests.test_serve import _produce


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
        assert _served(port) == [v1]  # loaded again by a replica
        restored = (logs / "a.log").read_text() + (logs / "b.log").read_text()
        assert "had forgotten adapter" in restored

        # v2, then back to v1: nobody unloads on the shared server, both confirm each step.
        r = cli("-c", str(config), "adapters", "promote", v2, "--wait", "90")
        assert r.returncode == 0 and "all 2 live" in r.stdout, r.stdout + r.stderr
        r = cli("-c", str(config), "adapters", "rollback", "--wait", "90")
        assert r.returncode == 0, r.stdout + r.stderr
        assert f"rollback {v1}" in r.stdout and "all 2 live" in r.stdout
        assert _served(port) == [v1, v2]

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
