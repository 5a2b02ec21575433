"""Whose fault it is: a model server misconfigured the ordinary ways, seen by real workers.

A real ``selfdistill serve`` (and ``verify``) process against the stand-in OpenAI server of
``test_serve_faults``, which here rotates its API key, stops serving the configured model
name, breaks on real requests while still answering a one-token probe, and fails every
time on one prompt only. What must hold, phase by phase:

* a 401 or a 404 for the base model is the deployment's fault: nothing is dead-lettered,
  nothing committed, ``/readyz`` answers 503 naming the cause in words an operator acts
  on, the ``selfdistill_dependency_unavailable`` gauge is 1; once fixed, every prompt is
  answered once. The start-up check says so before any prompt arrives;
* an error of a kind the worker does not know, on every record, is the worker's fault
  (the same: it waits and says so), not 8 dead letters;
* a prompt on which the server fails every time (HTTP 500) while probes succeed is
  isolated after bounded tries (dead-lettered, ``handler-error``), not resent forever.

Before this rule the 401 and the 404 dead-lettered every prompt (``EngineRejected``) with
``/readyz`` at 200, the unknown error dead-lettered the batch, and the 500 stalled the
partition forever.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import httpx

from streams.connection import KafkaSettings
from streams.deadletter import DeadLetter
from streams.producer import Producer
from streams.schemas import PromptMessage
from streams.topics import TopicsConfig
from tests.conftest import cli, committed_total, read_topic, start_cli, wait_for
from tests.reliability.test_serve_faults import (
    FakeEngine,
    _config,
    _metric,
    _responses,
    fake_engine,  # noqa: F401  (the fixture)
)


def _readyz(port: int) -> tuple[int, dict]:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        return r.status_code, r.json()
    except (httpx.HTTPError, ValueError):
        return 0, {}


def _waiting_on(port: int, words: str) -> bool:
    code, body = _readyz(port)
    return code == 503 and words in str(body.get("waiting_on", ""))


def _send(kafka: KafkaSettings, topic: str, prompts: dict[str, str]) -> None:
    """One partition, one record batch: the prompts arrive as one batch."""
    p = Producer(kafka, linger_ms=500)
    for pid, text in prompts.items():
        p.send(topic, PromptMessage(id=pid, prompt=text), key=pid, partition=0)
    p.flush()
    p.close()


def _dead(kafka: KafkaSettings, topic: str) -> list[DeadLetter]:
    return [DeadLetter.from_record(r.headers, r.key, r.value) for r in read_topic(kafka, topic)]


def test_a_misconfigured_model_server_is_waited_for_and_only_a_record_shown_at_fault_is_dropped(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tmp_path: Path,
    fake_engine: tuple[FakeEngine, int],  # noqa: F811
) -> None:
    state, engine_port = fake_engine
    state.api_key = "key-2"  # rotated on the server; the deployment still sends key-1
    config, settings = _config(kafka, topics, tmp_path, engine_port, max_handler_attempts=2)
    group, port = settings.serve.group_id, settings.metrics.serve_port
    dlq = topics.dlq(topics.prompts)
    log = tmp_path / "serve.log"
    env = {"SELFDISTILL_ENGINE__API_KEY": "key-1"}  # secrets come from the environment
    proc = start_cli("-c", str(config), "serve", env=env, stderr=log)
    answered: list[str] = []

    def phase(prefix: str, n: int = 4, **extra: str) -> list[str]:
        ids = [f"{prefix}{i}" for i in range(n)]
        _send(kafka, topics.prompts, {**{i: f"{i}: hello" for i in ids}, **extra})
        return ids

    try:
        # 1. A rotated API key: said at start, before any prompt; then nothing is lost.
        wait_for(lambda: _waiting_on(port, "refuses the API key"), 60, what="the 401 on /readyz")
        assert "engine.api_key" in _readyz(port)[1]["waiting_on"]
        assert _metric(port, "selfdistill_dependency_unavailable") == 1
        answered += phase("a")
        time.sleep(4)  # tries and backoffs' worth
        assert committed_total(kafka, group, topics.prompts) == 0
        assert _dead(kafka, dlq) == []
        state.api_key = "key-1"  # the operator puts the old key back on the server
        wait_for(lambda: committed_total(kafka, group, topics.prompts) == 4, 90, what="a*")
        wait_for(lambda: _readyz(port)[0] == 200, 30, what="ready again")
        assert _metric(port, "selfdistill_dependency_unavailable") == 0

        # 2. The server stops serving `fake` (a --served-model-name that differs).
        state.served = ["other-model"]
        answered += phase("b")
        wait_for(
            lambda: _waiting_on(port, "does not serve `fake`; it serves ['other-model']"),
            60,
            what="the 404 on /readyz",
        )
        assert committed_total(kafka, group, topics.prompts) == 4
        state.served = ["fake"]
        wait_for(lambda: committed_total(kafka, group, topics.prompts) == 8, 90, what="b*")

        # 3. Real requests break (no choices) while a one-token probe still works: every
        # record fails the same way, so the worker is at fault, not the 4 records.
        state.broken = True
        answered += phase("c")
        wait_for(lambda: _waiting_on(port, "fail the same way"), 90, what="waiting on c*")
        assert _dead(kafka, dlq) == []
        state.broken = False
        wait_for(lambda: committed_total(kafka, group, topics.prompts) == 12, 90, what="c*")
        wait_for(lambda: _readyz(port)[0] == 200, 30, what="ready again")

        # 4. One prompt on which the server fails every time, probes succeeding: isolated
        # after bounded tries, its batch mates answered once.
        state.stuck = "STUCK"
        answered += phase("d", stuck="STUCK: hello")
        wait_for(lambda: committed_total(kafka, group, topics.prompts) == 17, 120, what="d*")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert _responses(kafka, topics.responses) == Counter(answered)
    dead = _dead(kafka, dlq)
    assert [(d.reason, json.loads(d.value)["id"]) for d in dead] == [("handler-error", "stuck")]
    assert "HTTP 500" in dead[0].detail and "EngineCore died" in dead[0].detail
    # Bounded: the engine's own retries (3) per handler try, a handful of tries in all.
    assert state.seen["STUCK: hello"] <= 3 * 8, state.seen["STUCK: hello"]


def test_verify_names_a_model_server_it_cannot_use_at_start(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tmp_path: Path,
    fake_engine: tuple[FakeEngine, int],  # noqa: F811
) -> None:
    """No candidate needed: verify's /readyz says what is wrong as soon as it runs, and
    says it is well again once the server accepts it."""
    state, engine_port = fake_engine
    state.api_key = "needed"
    config, settings = _config(kafka, topics, tmp_path, engine_port)
    port = settings.metrics.verify_port
    log = tmp_path / "verify.log"
    proc = start_cli("-c", str(config), "verify", stderr=log)
    try:
        wait_for(lambda: _waiting_on(port, "refuses the API key"), 90, what="the 401")
        assert "engine.api_key is not set" in _readyz(port)[1]["waiting_on"]
        assert _metric(port, "selfdistill_dependency_unavailable") == 1
        shown = cli("-c", str(config), "status", "--json")
        verify = json.loads(shown.stdout)["workers"]["verify"]
        assert verify["state"] == "not ready" and "refuses the API key" in verify["waiting_on"]
        screen = " ".join(cli("-c", str(config), "status").stdout.split())
        assert "waiting: EngineMisconfigured: the model server refuses" in screen, screen
        state.api_key = None
        wait_for(lambda: _readyz(port)[0] == 200, 90, what="ready once the key is not needed")
        assert _metric(port, "selfdistill_dependency_unavailable") == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    assert proc.returncode == 0, log.read_text()[-3000:]
    assert "refuses the API key" in log.read_text()
