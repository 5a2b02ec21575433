"""Who gets the shared engine first: a swap, then serve, then judging; and a generation that
steps aside mid-way finishes with the very tokens it would have produced alone."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters.files import adapter_digest
from daemon.engines import transformers_engine
from daemon.engines.base import ChatRequest, ChatResult, EngineError
from daemon.engines.hotswap import AdapterRouter
from daemon.engines.priority import BACKGROUND, SERVE, SWAP, PriorityLock, priority
from daemon.engines.transformers_engine import TransformersEngine
from streams.schemas import AdapterEvent

Q = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
LONG = ChatRequest(Q, n=2, temperature=0.9, top_p=0.95, max_tokens=160, seed=3)
SHORT = ChatRequest(
    [{"role": "user", "content": "Say OK."}], temperature=0.9, max_tokens=8, seed=11
)


def _queue(lock: PriorityLock, order: list[str], name: str, level: int) -> threading.Thread:
    """A thread that takes ``lock`` at ``level`` and notes ``name``; returns once it waits."""

    def run() -> None:
        with lock.hold(level):
            order.append(name)

    t = threading.Thread(target=run)
    queued = len(lock._waiting)
    t.start()
    while len(lock._waiting) == queued:  # queued, in this arrival order
        time.sleep(0.001)
    return t


def test_the_lock_goes_to_the_most_urgent_waiter_first_come_first_served_within_a_level() -> None:
    lock = PriorityLock()
    order: list[str] = []
    lock.acquire(SERVE)
    threads = [
        _queue(lock, order, "judge-1", BACKGROUND),
        _queue(lock, order, "serve-1", SERVE),
        _queue(lock, order, "judge-2", BACKGROUND),
        _queue(lock, order, "swap", SWAP),
        _queue(lock, order, "serve-2", SERVE),
    ]
    assert lock.urgent_waiting()  # a swap waits, and the holder is serving
    lock.release()
    for t in threads:
        t.join(10)
    assert order == ["swap", "serve-1", "serve-2", "judge-1", "judge-2"]


def test_a_holder_steps_aside_only_for_someone_more_urgent_and_resumes_before_its_peers() -> None:
    lock = PriorityLock()
    order: list[str] = []
    lock.acquire(BACKGROUND)
    peer = _queue(lock, order, "peer", BACKGROUND)
    assert not lock.yield_to_urgent()  # an equal waits its turn
    urgent = _queue(lock, order, "serve", SERVE)
    assert lock.yield_to_urgent(after=lambda: order.append("holder resumed"))
    order.append("holder done")
    lock.release()
    peer.join(10)
    urgent.join(10)
    assert order == ["serve", "holder resumed", "holder done", "peer"]
    assert lock.yields == 1


def test_judging_that_waited_long_goes_in_turn_with_serving_and_is_not_pushed_aside() -> None:
    lock = PriorityLock(starve_s=0.3)
    order: list[str] = []
    lock.acquire(SERVE)  # production keeps the engine busy
    judge_held, first_check, checked, second_check = (threading.Event() for _ in range(4))
    seen: dict[str, bool] = {}

    def judge() -> None:
        with lock.hold(BACKGROUND):
            order.append("judge")
            judge_held.set()
            first_check.wait(10)
            seen["yield to serve"] = lock.yield_to_urgent()
            checked.set()
            second_check.wait(10)
            seen["yield to swap"] = lock.yield_to_urgent(
                after=lambda: order.append("judge resumed")
            )

    early = _queue(lock, order, "serve-early", SERVE)  # came before the judge
    judging = threading.Thread(target=judge)
    queued = len(lock._waiting)
    judging.start()
    while len(lock._waiting) == queued:
        time.sleep(0.001)
    assert not lock.urgent_waiting()  # serve holds; nobody waiting outranks it yet
    time.sleep(0.4)  # the judge has now waited longer than starve_s
    late = _queue(lock, order, "serve-late", SERVE)  # came after the judge
    lock.release()
    assert judge_held.wait(10)
    assert order == ["serve-early", "judge"]  # after serve that came earlier, before later
    assert lock.aged == 1
    assert not lock.urgent_waiting()  # serve waits, but does not push the starved judge aside
    first_check.set()
    assert checked.wait(10)
    swap = _queue(lock, order, "swap", SWAP)
    second_check.set()  # a swap still goes first of all
    for t in (judging, early, late, swap):
        t.join(10)
    assert seen == {"yield to serve": False, "yield to swap": True}
    assert order == ["serve-early", "judge", "swap", "judge resumed", "serve-late"]


def test_without_waiting_long_judging_stays_behind_every_serve_batch() -> None:
    lock = PriorityLock(starve_s=60.0)
    order: list[str] = []
    lock.acquire(SERVE)
    threads = [_queue(lock, order, "judge", BACKGROUND)]
    threads += [_queue(lock, order, f"serve-{i}", SERVE) for i in range(3)]
    lock.release()
    for t in threads:
        t.join(10)
    assert order == ["serve-0", "serve-1", "serve-2", "judge"] and lock.aged == 0


# ------------------------------------------------------------ on the real engine
@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[TransformersEngine]:
    e = TransformersEngine(tiny_model_dir, name="tiny-llama")
    yield e
    e.close()


def _tokens(result: ChatResult) -> list[tuple[str, int, str]]:
    return [(c.text, c.tokens, c.finish_reason) for c in result.completions]


class Paused:
    """Runs ``request`` in a thread whose generation stops at decoding step ``at`` until
    ``ready()`` says the competitor is queued for the model; counts the thread's steps."""

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        engine: TransformersEngine,
        request: ChatRequest,
        level: int,
        at: int = 5,
        name: str = "paused",
    ) -> None:
        self.steps = 0
        self.at_step = threading.Event()
        self.result: list[ChatResult] = []
        self.ready: Callable[[], bool] = lambda: True
        step = transformers_engine._StepAside.__call__
        me: list[int] = []

        def counted(criterion: Any, input_ids: Any, scores: Any, **kw: Any) -> Any:
            if me and threading.get_ident() == me[0]:
                self.steps += 1
                if self.steps == at:
                    self.at_step.set()
                    deadline = time.monotonic() + 30
                    while not self.ready() and time.monotonic() < deadline:
                        time.sleep(0.001)
            return step(criterion, input_ids, scores, **kw)

        monkeypatch.setattr(transformers_engine._StepAside, "__call__", counted)

        def run() -> None:
            me.append(threading.get_ident())
            with priority(level):
                self.result = engine.generate([request])

        self.thread = threading.Thread(target=run, name=name, daemon=True)

    def start(self, ready: Callable[[], bool]) -> Paused:
        self.ready = ready
        self.thread.start()
        assert self.at_step.wait(60), "the generation never reached its decoding steps"
        return self

    def join(self) -> ChatResult:
        self.thread.join(120)
        assert not self.thread.is_alive()
        return self.result[0]


def test_a_swap_goes_in_at_the_next_decoding_step_and_the_batch_in_flight_is_unchanged(
    monkeypatch: pytest.MonkeyPatch,
    engine: TransformersEngine,
    tiny_adapters: dict[str, Path],
    registry_dir: Path,
) -> None:
    alone = engine.generate([LONG])[0]  # the batch as it runs with nobody else
    assert alone.completions[0].tokens > 40  # long enough to be interrupted
    name, path = "tiny-sd-v0001", tiny_adapters["tiny-sd-v0001"]
    router = AdapterRouter(engine, registry_dir)
    event = AdapterEvent(
        action="promote", version=name, path=path.name, sha256=adapter_digest(path)
    )
    lock = engine._lock
    paused = Paused(monkeypatch, engine, LONG, SERVE).start(ready=lambda: bool(lock._waiting))

    result = router.apply(event)  # attach + canary, while the batch is at step 5
    steps_at_swap = paused.steps
    in_flight = paused.join()

    assert result.ok and router.active == name, result.error
    assert steps_at_swap < in_flight.completions[0].tokens  # the swap did not wait for it
    assert lock.yields >= 1
    # The first adapter wrapped the base model under the paused batch: it still ran on the
    # base, with its own random stream.
    assert _tokens(in_flight) == _tokens(alone)
    with router.use() as active:
        on_new = engine.generate([ChatRequest(Q, max_tokens=12, adapter=active.name)])[0]
    base = engine.generate([ChatRequest(Q, max_tokens=12)])[0]
    assert active.version == name and on_new.adapter == active.name
    assert on_new.completions[0].text != base.completions[0].text


def _trace(monkeypatch: pytest.MonkeyPatch, engine: TransformersEngine) -> list[str]:
    """Who held the model when: each chunk's start and end, noted under the engine's lock."""
    trace: list[str] = []
    inner = engine._generate

    def traced(reqs: list[ChatRequest]) -> list[ChatResult]:
        who = threading.current_thread().name
        trace.append(f"{who} start")
        try:
            return inner(reqs)
        finally:
            trace.append(f"{who} end")

    monkeypatch.setattr(engine, "_generate", traced)
    return trace


def _in_thread(
    engine: TransformersEngine, name: str, level: int, request: ChatRequest
) -> threading.Thread:
    def run() -> None:
        with priority(level):
            engine.generate([request])

    return threading.Thread(target=run, name=name, daemon=True)


def test_serve_goes_before_a_judge_round_that_holds_the_engine_not_the_other_way(
    monkeypatch: pytest.MonkeyPatch, engine: TransformersEngine
) -> None:
    judge_alone = engine.generate([LONG])[0]
    serve_alone = engine.generate([SHORT])[0]
    lock = engine._lock
    yields = lock.yields
    trace = _trace(monkeypatch, engine)

    judge = Paused(monkeypatch, engine, LONG, BACKGROUND, name="judge")
    judge.start(ready=lambda: bool(lock._waiting))
    served = engine.generate([SHORT])[0]  # production traffic: the default level
    judged = judge.join()
    # The serve request went in mid-way through the judge round, which then finished.
    assert trace == ["judge start", "MainThread start", "MainThread end", "judge end"]
    assert lock.yields == yields + 1
    assert _tokens(served) == _tokens(serve_alone) and _tokens(judged) == _tokens(judge_alone)

    # A judge round arriving during a serve batch waits for the whole batch.
    trace.clear()
    serving = Paused(monkeypatch, engine, LONG, SERVE, name="serve")
    serving.start(ready=lambda: bool(lock._waiting))
    late = _in_thread(engine, "judge", BACKGROUND, SHORT)
    late.start()
    served_long = serving.join()
    late.join(60)
    assert trace == ["serve start", "serve end", "judge start", "judge end"]
    assert lock.yields == yields + 1  # the serve batch did not step aside
    assert _tokens(served_long) == _tokens(judge_alone)


def test_an_adapter_under_a_running_generation_is_not_unloaded(
    monkeypatch: pytest.MonkeyPatch,
    engine: TransformersEngine,
    tiny_adapters: dict[str, Path],
) -> None:
    name = "tiny-sd-v0002"
    if name not in engine.adapters():
        engine.load_adapter(name, str(tiny_adapters[name]))
    request = ChatRequest(Q, max_tokens=60, adapter=name)
    alone = engine.generate([request])[0]
    lock = engine._lock
    running = Paused(monkeypatch, engine, request, BACKGROUND).start(
        ready=lambda: bool(lock._waiting)
    )
    errors: list[Exception] = []

    def unload() -> None:
        try:
            engine.unload_adapter(name)
        except EngineError as exc:
            errors.append(exc)

    t = threading.Thread(target=unload)
    t.start()
    t.join(60)
    result = running.join()
    assert errors and "in use" in str(errors[0])
    assert name in engine.adapters()
    assert _tokens(result) == _tokens(alone)
    engine.unload_adapter(name)  # once nothing runs on it
    assert name not in engine.adapters()


def test_the_configured_starvation_bound_reaches_the_engine_lock(tiny_model_dir: Path) -> None:
    from daemon.engines import EngineConfig, ModelConfig, make_engine

    e = make_engine(
        ModelConfig(path=str(tiny_model_dir), name="tiny-llama"),
        EngineConfig(background_starve_s=2.5),
    )
    try:
        assert isinstance(e, TransformersEngine) and e._lock.starve_s == 2.5
    finally:
        e.close()
