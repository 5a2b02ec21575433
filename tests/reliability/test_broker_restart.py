"""The broker killed and restarted under a running serve worker.

The embedded broker keeps everything in memory (DESIGN.md, measured facts): a restart brings
it back with no topics, no committed offsets, no transactional ids and no promotion history.
The worker must reconnect (kafka-python retries with backoff), rejoin its group, get a fresh
transactional producer and carry on with what is produced afterwards; what the restart
destroyed must be reported (ERROR log lines and the ``selfdistill_log_resets_total`` /
``selfdistill_records_lost_total`` counters), never dropped in silence.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from daemon.engines.base import ChatRequest, ChatResult
from daemon.engines.transformers_engine import TransformersEngine
from daemon.serving.worker import ServeWorker
from streams.broker import BrokerConfig, EmbeddedBroker, free_port
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import ResponseMessage
from streams.topics import TopicsConfig, ensure_topics
from tests.conftest import committed_total, read_topic, wait_for
from tests.test_serve import _event, _produce, _settings, _start

ANSWERED_FIRST = 2  # serve batches let through before the one held when the broker dies


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own, on a fixed port, so it can come back where it was."""
    b = EmbeddedBroker(BrokerConfig(port=free_port()), log_path=tmp_path / "tansu.log")
    b.start()
    yield b
    b.stop()


def _metric(name: str, topic: str) -> float:
    return REGISTRY.get_sample_value(name, {"topic": topic}) or 0.0


class _Gate:
    """Holds the engine's serve batches after the first few, so that a batch is in flight,
    and records are known but unprocessed, at the moment the broker dies."""

    def __init__(self, engine: TransformersEngine, n: int, let_through: int) -> None:
        self.generate, self.n, self.left = engine.generate, n, let_through
        self.held = threading.Event()
        self.opened = threading.Event()
        engine.generate = self  # type: ignore[method-assign]

    def __call__(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        if requests[0].n == self.n:  # a serve batch (canaries sample once)
            if self.left == 0:
                self.held.set()
                self.opened.wait(120)
            self.left -= 1
        return self.generate(requests)


def test_serve_survives_a_broker_restart_and_reports_what_was_lost(
    own_broker: EmbeddedBroker,
    registry_dir: Path,
    tiny_adapters: dict[str, Path],
    tiny_engine: TransformersEngine,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="streams")
    caplog.set_level(logging.INFO, logger="daemon")
    kafka = KafkaSettings(bootstrap_servers=own_broker.bootstrap, connect_timeout_s=30)
    kafka = kafka.model_copy(update={"batch_size": 2})
    # One partition: the worker has then seen the whole prompt log, so it can count the loss.
    topics = TopicsConfig(partitions=1)
    ensure_topics(kafka, topics)
    settings = _settings(kafka, topics, registry_dir, tmp_path)
    v1, v2 = sorted(tiny_adapters)
    events = Producer(kafka)
    events.send(topics.adapter_events, _event(registry_dir, v1))
    events.flush()
    events.close()
    before = [f"a{i}" for i in range(7)]
    _produce(kafka, topics.prompts, before)
    counters = {
        (name, topic): _metric(name, topic)
        for name in ("selfdistill_log_resets_total", "selfdistill_records_lost_total")
        for topic in (topics.prompts, topics.adapter_events)
    }

    gate = _Gate(tiny_engine, settings.serve.n, ANSWERED_FIRST)
    worker = ServeWorker(settings, tiny_engine)
    t = _start(worker)
    try:
        assert gate.held.wait(120)
        answered_before = sorted(
            ResponseMessage.model_validate_json(r.value).id
            for r in read_topic(kafka, topics.responses)
        )
        assert worker.router.active == v1

        own_broker.kill()  # a crash, not a shutdown
        down = time.monotonic()
        time.sleep(1.0)
        mark = len(caplog.records)
        own_broker.start()  # same port, nothing in it: what `selfdistill broker` restarts to
        ensure_topics(kafka, topics)
        # Rejoined the group, and the follower noticed its log is gone (it would not, were the
        # new log to grow past its old position first).
        for said in ("partitions assigned", f"{topics.adapter_events}: the broker lost"):
            try:
                wait_for(
                    lambda s=said: any(s in r.getMessage() for r in caplog.records[mark:]),
                    180,
                    what=f"a log line saying {said!r}",
                )
            except AssertionError as exc:  # say what the worker did say, and the broker
                said_since = [f"{r.name}: {r.getMessage()}"[:300] for r in caplog.records[mark:]]
                tansu = tmp_path / "tansu.log"
                broker_log = tansu.read_text(errors="replace")[-3000:] if tansu.exists() else "-"
                raise AssertionError(
                    f"{exc}; logged since the restart (last 40 of {len(said_since)}):\n"
                    + "\n".join(said_since[-40:])
                    + f"\nbroker log tail:\n{broker_log}"
                ) from None
        rejoined_s = time.monotonic() - down
        gate.opened.set()  # the batch held across the restart finishes now

        after = [f"b{i}" for i in range(4)]
        _produce(kafka, topics.prompts, after)
        events = Producer(kafka)
        events.send(topics.adapter_events, _event(registry_dir, v2))
        events.flush()
        events.close()
        wait_for(lambda: committed_total(kafka, settings.serve.group_id, topics.prompts) == 4, 120)
        wait_for(lambda: worker.router.active == v2, 60)
    finally:
        gate.opened.set()
        worker.stop()
        t.join(60)
    assert not t.is_alive()

    responses = [
        ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.responses)
    ]
    assert sorted(r.id for r in responses) == after  # carried on: one response each
    assert {r.adapter for r in responses} <= {v1, v2}  # the restored adapter kept serving
    delta = {k: _metric(*k) - v for k, v in counters.items()}
    lost = delta[("selfdistill_records_lost_total", topics.prompts)]
    # Every prompt produced before the restart was answered before it or reported lost.
    assert 0 < len(answered_before) < len(before)
    assert len(answered_before) + lost == len(before)
    assert delta[("selfdistill_log_resets_total", topics.prompts)] == 1
    assert delta[("selfdistill_log_resets_total", topics.adapter_events)] == 1
    errors = [r.getMessage() for r in caplog.records[mark:] if r.levelno == logging.ERROR]
    assert any(f"{topics.prompts}[0]: the broker lost" in e for e in errors), errors
    assert any(f"{topics.adapter_events}: the broker lost its log" in e for e in errors), errors
    print(
        f"\nbroker restart: prompts before {len(before)}, answered before "
        f"{len(answered_before)}, reported lost {lost:.0f} (1 batch in flight + unread), "
        f"log resets reported: prompts 1, adapter-events 1; rejoined {rejoined_s:.1f}s after "
        f"the broker went down; after: produced {len(after)}, answered {len(responses)}, "
        f"duplicates 0, failed batches retried {worker.loop.stats.handler_failures}, "
        f"adapter {worker.router.active} followed"
    )
