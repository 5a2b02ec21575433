"""A corrupted or tampered adapter promoted by hand, at the command and behind its back.

``selfdistill adapters promote`` checks the files before it announces anything; events written
straight onto ``adapter-events`` (bypassing the command) reach the serve worker, which checks
them again. Either way the adapter is refused, the old one keeps serving, and the refusal is
visible on the worker's ``/metrics``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from adapters.files import WEIGHTS_FILE, adapter_digest, served_name
from adapters.registry import Registry
from daemon.engines.base import ChatRequest
from daemon.engines.transformers_engine import TransformersEngine
from daemon.learning.promote import promote
from daemon.operating.config import render_toml
from daemon.operating.observe import MetricsConfig, observability
from daemon.serving.worker import ServeWorker
from streams.broker import free_port
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import AdapterEvent, ResponseMessage
from streams.topics import TopicsConfig
from tests.conftest import cli, committed_total, read_topic, wait_for
from tests.test_learning_loop import _events, _register_adapters
from tests.test_learning_loop import _settings as loop_settings
from tests.test_serve import _produce, _start


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The worker's /metrics over HTTP, as Prometheus reads it."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _refused(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return metrics[("selfdistill_adapter_swaps_total", (("result", "refused"),))]


def test_tampered_corrupt_or_escaping_adapters_are_refused_while_the_old_one_serves(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
) -> None:
    settings = loop_settings(kafka, topics, tmp_path, tiny_model_dir)
    settings.serve.extra_candidates, settings.serve.max_tokens = 1, 6
    settings.serve.group_id = settings.serve.transactional_id = f"serve-{topics.prompts}"
    settings.metrics = MetricsConfig(serve_port=free_port())
    config = tmp_path / "selfdistill.toml"
    config.write_text(render_toml(settings, comments=False))
    registry = Registry(settings.adapters.path(settings.data_dir))
    v1, v2, v3 = _register_adapters(registry, tiny_model_dir, seeds=(1, 2, 3))
    # v3 is corrupt but consistent: garbage weights, registered with the garbage's digest.
    (registry.root / v3 / WEIGHTS_FILE).write_bytes(b"\x07" * 100)
    corrupt_sha = adapter_digest(registry.root / v3)
    promote(settings, registry, v1, actor="test")
    v2_sha = registry.require(v2).sha256

    worker = ServeWorker(settings, tiny_engine)
    with observability(settings.metrics, "serve", worker.loop.ready.is_set) as port:
        assert port is not None
        t = _start(worker)
        try:
            wait_for(lambda: worker.router.active == v1 and worker.loop.ready.is_set(), 60)
            on_v1 = served_name(v1, registry.require(v1).sha256)  # what the engine knows
            q = ChatRequest([{"role": "user", "content": "Hi"}], max_tokens=6, adapter=on_v1)
            before = tiny_engine.generate([q])[0].completions[0].text
            refused_before = _refused(_scrape(port))

            # v2's weights change on disk after training: the command refuses, announces nothing.
            weights = registry.root / v2 / WEIGHTS_FILE
            weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
            r = cli("-c", str(config), "adapters", "promote", v2)
            assert r.returncode == 1 and "sha256 mismatch" in r.stderr, r.stderr
            assert registry.active_version() == v1
            assert [e.version for e in _events(kafka, topics.adapter_events)] == [v1]

            # The same and worse, written straight onto adapter-events.
            corrupt = registry.root / "tiny-sd-v0901"
            shutil.copytree(registry.root / v3, corrupt)
            injected = [
                AdapterEvent(action="promote", version=v2, path=v2, sha256=v2_sha),  # tampered
                AdapterEvent(action="promote", version=v2, path=v2),  # tampered, no digest
                AdapterEvent(action="promote", version=v3, path=v3, sha256=corrupt_sha),
                AdapterEvent(action="promote", version="tiny-sd-v0901", sha256=corrupt_sha),
                AdapterEvent(action="promote", version="tiny-sd-v0902", path="../../etc"),
                AdapterEvent(action="promote", version="tiny-sd-v0903", path="missing"),
            ]
            events = Producer(kafka)
            for ev in injected:
                events.send(topics.adapter_events, ev, key="adapters")
            events.flush()
            events.close()
            wait_for(lambda: _refused(_scrape(port)) >= refused_before + len(injected), 60)

            # The old adapter kept serving throughout, untouched.
            _produce(kafka, topics.prompts, ["after"])
            group = settings.serve.group_id
            wait_for(lambda: committed_total(kafka, group, topics.prompts) == 1, 60)
            metrics = _scrape(port)
        finally:
            worker.stop()
            t.join(30)
    registry.close()

    refused = _refused(metrics) - refused_before
    assert refused == len(injected)
    assert metrics[("selfdistill_active_adapter_info", (("version", v1),))] == 1.0
    assert worker.router.active == v1
    assert tiny_engine.adapters() == [on_v1]  # nothing half-loaded stays behind
    assert tiny_engine.generate([q])[0].completions[0].text == before
    [answer] = [
        ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.responses)
    ]
    assert answer.id == "after" and answer.adapter == v1
    print(
        f"\nrefused at the command: 1 (exit 1, sha256 mismatch, nothing published); injected "
        f"onto adapter-events: {len(injected)}, refused by the worker: {refused:.0f} "
        f"(/metrics selfdistill_adapter_swaps_total{{result=refused}}); serving {v1} "
        f"throughout, response after them on {answer.adapter}"
    )
