"""The adapter router and its follower survive their engine.

A real tiny transformers engine with real PEFT adapters, wrapped so a test can make its
adapter calls fail (an HTTP blip on a remote engine) or stall (an unload in progress).
"""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client import REGISTRY

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
        self.load_gate: threading.Event | None = None  # set: loads wait for it (a slow server)
        self.loading = threading.Event()

    def generate(self, requests):  # type: ignore[no-untyped-def]
        return self.engine.generate(requests)

    def load_adapter(self, name: str, path: str) -> None:
        self.loading.set()
        if self.load_gate is not None:
            self.load_gate.wait(300)
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
    applied: list[tuple[str, bool, bool]] = []
    events = Producer(kafka)
    with follow_adapter_events(
        kafka,
        topics.adapter_events,
        router,
        on_apply=lambda ev, res: applied.append((ev.version, res.ok, res.passing)),
        retry_s=0.05,
        retry_max_s=0.2,
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
        # The engine could not be asked: a passing failure, so the follower tries the same
        # event again with backoff (no new event is sent) until the engine answers.
        wait_for(lambda: router.active == v3, 60)
        assert follower.healthy() and follower.retry is None
        v4 = _register_adapters(registry, tiny_model_dir, seeds=(4,))[0]
        events.send(topics.adapter_events, _event(registry, v4), key="adapters")
        events.flush()
        wait_for(lambda: router.active == v4, 60)  # still following
    assert not follower.healthy()  # stopped
    assert applied[:2] == [(v1, True, False), (v2, True, False)]
    tries = applied[2:-1]
    assert tries and set(tries[:-1]) == {(v3, False, True)}  # passing, while the old served
    assert tries[-1] == (v3, True, False) and applied[-1] == (v4, True, False)
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
        with router.use() as route:
            assert route.version == v1
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
    name = router.route.name
    assert name is not None and name.startswith(v1) and name in tiny_engine.adapters()
    out = tiny_engine.generate(
        [ChatRequest([{"role": "user", "content": "hi"}], max_tokens=4, adapter=name)]
    )
    assert out[0].adapter == name
    registry.close()


def test_a_batch_that_starts_during_a_slow_swap_waits_only_up_to_the_bound(
    tiny_model_dir: Path, tiny_engine: TransformersEngine, tmp_path: Path
) -> None:
    """A slow /v1/load_lora_adapter on a shared server must not stall production: a batch
    that starts during the swap runs on the adapter already loaded once serve.swap_wait_s
    (the router's default) has passed, while the swap goes on and ends on its own."""
    registry = Registry(tmp_path / "adapters")
    v1, v2 = _register_adapters(registry, tiny_model_dir, seeds=(1, 2))
    engine = Blinking(tiny_engine)
    router = AdapterRouter(engine, registry.root)  # type: ignore[arg-type]
    assert router.apply(_event(registry, v1)).ok
    bound_before = REGISTRY.get_sample_value("selfdistill_swap_waits_total", {"outcome": "bound"})
    engine.load_gate, engine.loading = threading.Event(), threading.Event()
    swapped: list = []
    swap = threading.Thread(target=lambda: swapped.append(router.apply(_event(registry, v2))))
    swap.start()
    assert engine.loading.wait(60)  # the load of v2 is under way, and stalls there

    ran_on: list[tuple[str | None, bool]] = []

    def batch() -> None:
        with router.use() as route:  # what the batch runs on, and whether the load was over
            ran_on.append((route.version, engine.load_gate.is_set()))  # type: ignore[union-attr]

    b = threading.Thread(target=batch)
    b.start()
    b.join(120)  # a fail-safe far beyond the bound: the load is released only after it
    engine.load_gate.set()
    b.join(60)
    swap.join(120)
    # The batch ran on v1 while the load of v2 still stalled: it did not wait for the swap.
    assert ran_on == [(v1, False)]
    bound = REGISTRY.get_sample_value("selfdistill_swap_waits_total", {"outcome": "bound"})
    assert bound == (bound_before or 0) + 1  # and it was counted
    # The swap went on and took over once the load finished.
    assert swapped and swapped[0].ok and router.active == v2
    registry.close()
