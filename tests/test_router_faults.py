"""The adapter router and its follower survive their engine.

A real tiny transformers engine with real PEFT adapters, wrapped so a test can make its
adapter calls fail (an HTTP blip on a remote engine) or stall (an unload in progress).
"""

from __future__ import annotations

import threading
from pathlib import Path

from adapters.registry import Registry
from daemon.engines.base import ChatRequest, EngineUnavailable
from daemon.engines.hotswap import AdapterRouter
from daemon.engines.transformers_engine import TransformersEngine
from streams.adapter_events import follow_adapter_events
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import AdapterEvent
from streams.topics import TopicsConfig
from tests.conftest import wait_for
from tests.test_learning_loop import _register_adapters


class Blinking:
    """The engine, with adapter listing and unloading that can fail or stall on demand."""

    def __init__(self, engine: TransformersEngine) -> None:
        self.engine = engine
        self.model_name = engine.model_name
        self.fail_listing = 0  # the next N adapters() calls raise
        self.fail_unload = False
        self.unload_gate: threading.Event | None = None  # set: unloads wait for it
        self.unloading = threading.Event()

    def generate(self, requests):  # type: ignore[no-untyped-def]
        return self.engine.generate(requests)

    def load_adapter(self, name: str, path: str) -> None:
        self.engine.load_adapter(name, path)

    def unload_adapter(self, name: str) -> None:
        self.unloading.set()
        if self.unload_gate is not None:
            self.unload_gate.wait(30)
        if self.fail_unload:  # the server went away: the listing after the unload fails too
            self.fail_listing = 1
            raise EngineUnavailable("POST /unload_lora_adapter: ConnectError")
        self.engine.unload_adapter(name)

    def adapters(self) -> list[str]:
        if self.fail_listing > 0:
            self.fail_listing -= 1
            raise EngineUnavailable("GET /models: ReadTimeout")
        return self.engine.adapters()

    def close(self) -> None:
        self.engine.close()


def _event(registry: Registry, version: str, action: str = "promote") -> AdapterEvent:
    rec = registry.require(version)
    return AdapterEvent(action=action, version=version, path=rec.path, sha256=rec.sha256)  # type: ignore[arg-type]


def test_an_engine_blip_while_evicting_does_not_stop_the_follower(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
) -> None:
    registry = Registry(tmp_path / "adapters")
    v1, v2, v3 = _register_adapters(registry, tiny_model_dir, seeds=(1, 2, 3))
    engine = Blinking(tiny_engine)
    router = AdapterRouter(engine, registry.root, keep_loaded=1)  # type: ignore[arg-type]
    applied: list[tuple[str, bool]] = []
    events = Producer(kafka)
    with follow_adapter_events(
        kafka,
        topics.adapter_events,
        router,
        on_apply=lambda ev, res: applied.append((ev.version, res.ok)),
    ) as follower:
        events.send(topics.adapter_events, _event(registry, v1), key="adapters")
        events.flush()
        wait_for(lambda: router.active == v1, 60)
        # v2 replaces v1, and evicting v1 fails: the unload, then the listing after it.
        engine.fail_unload, engine.fail_listing = True, 0
        events.send(topics.adapter_events, _event(registry, v2), key="adapters")
        events.flush()
        wait_for(lambda: router.active == v2, 60)
        engine.fail_unload, engine.fail_listing = False, 5  # every listing fails for a while
        events.send(topics.adapter_events, _event(registry, v3), key="adapters")
        events.flush()
        wait_for(lambda: len(applied) == 3, 60)
        assert applied[2] == (v3, False)  # refused: the engine could not be asked
        assert router.active == v2  # and the old adapter keeps serving
        engine.fail_listing = 0
        events.send(topics.adapter_events, _event(registry, v3), key="adapters")
        events.flush()
        wait_for(lambda: router.active == v3, 60)  # still following
        assert follower.healthy()
    assert not follower.healthy()  # stopped
    assert applied == [(v1, True), (v2, True), (v3, False), (v3, True)]
    events.close()
    registry.close()


def test_a_rollback_to_an_adapter_being_evicted_loads_it_again(
    tiny_model_dir: Path, tiny_engine: TransformersEngine, tmp_path: Path
) -> None:
    registry = Registry(tmp_path / "adapters")
    v1, v2 = _register_adapters(registry, tiny_model_dir, seeds=(1, 2))
    engine = Blinking(tiny_engine)
    router = AdapterRouter(engine, registry.root, keep_loaded=1)  # type: ignore[arg-type]
    assert router.apply(_event(registry, v1)).ok
    engine.unload_gate = threading.Event()
    batch_started, batch_may_end = threading.Event(), threading.Event()

    def batch_on_v1() -> None:  # a long batch still on v1 when v2 takes over
        with router.use() as name:
            assert name == v1
            batch_started.set()
            batch_may_end.wait(30)
        # leaving use(): v1 is stale now and is evicted (the unload stalls at the gate)

    t = threading.Thread(target=batch_on_v1, daemon=True)
    t.start()
    batch_started.wait(30)
    assert router.apply(_event(registry, v2)).ok  # v1 stays loaded: the batch uses it
    batch_may_end.set()
    engine.unloading.wait(30)  # the eviction of v1 is under way
    result: list = []
    rb = threading.Thread(
        target=lambda: result.append(router.apply(_event(registry, v1, "rollback"))), daemon=True
    )
    rb.start()
    rb.join(1.0)
    engine.unload_gate.set()  # the unload completes
    rb.join(60)
    t.join(30)
    assert result and result[0].ok, result
    assert router.active == v1
    # Not a ghost: the engine has v1 and answers on it.
    assert v1 in tiny_engine.adapters()
    out = tiny_engine.generate(
        [ChatRequest([{"role": "user", "content": "hi"}], max_tokens=4, adapter=v1)]
    )
    assert out[0].adapter == v1
    registry.close()
