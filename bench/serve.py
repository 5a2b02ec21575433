"""Generation throughput of the serve worker against plain transformers, adapter swap latency
with a batch in flight, and serve latency while verify judges on the same engine.

One run, one model (the embedded SmolLM2-135M-Instruct, on the CPU), one engine instance,
one embedded broker, one ``ServeWorker``; three parts, in this order.

**1. Throughput.** The same prompts on two paths:

* **raw** — what a minimal hand-written batch generator does with transformers: chat template,
  left padding, ``model.generate`` on ``B`` prompts at a time with ``num_return_sequences=n``,
  ``do_sample`` with the serve temperature / top_p (``top_k=0``, as the engine), the same
  ``max_new_tokens`` and EOS ids, ``torch.manual_seed(seed)`` before each call (as the engine
  does with a fixed seed). Generated tokens are counted up to the first EOS. No Kafka.
* **selfdistill** — the real serve path: an embedded broker, a ``ServeWorker`` over a
  ``TransformersEngine`` sharing that same base model and tokenizer, ``kafka.batch_size = B``.
  Timed from the moment the worker's group is ready (the prompts are produced after
  ``loop.ready``) until every prompt's response is visible on ``responses`` to a
  ``read_committed`` reader (its batch's transaction committed). Tokens are summed from the
  ``candidates`` messages (``samples[i].completion_tokens``) and cross-checked against the
  ``selfdistill_generated_tokens_total`` counter.

With one partition (``--partitions 1``, the default) the worker's batches hold the same prompts
in the same order as the raw batches, so with the same seed both paths generate the very same
tokens; the report says whether they did. Each path is warmed up with one batch first; with
``--repeats`` the order of the paths alternates and the medians are compared.

**2. Swaps** (``--no-swap`` skips them). Real PEFT LoRA adapters (``tests.models.build_adapter``,
r=8 all-linear, small random weights, distinct seeds, inside the registry, sha256 recorded in
each event), applied by the worker's own adapter-event follower and router:

* *idle* (the baseline): with no prompt in the worker, one untimed warm-up promotion (the
  first wraps the base model in a ``PeftModel``), then ``--promotions`` promotions of fresh
  adapters and ``--rollbacks`` rollbacks, each an ``AdapterEvent`` on ``adapter-events``;
* *in flight*: a steady stream of prompts keeps the worker busy (one batch generating, about
  one more waiting); from its second batch on, each event is produced ``--event-at`` (1) s
  into a serve batch: ``--promotions`` promotions of further fresh adapters, then ``--rollbacks``
  rollbacks (``action="rollback"``), alternately to the newest other adapter the router
  still keeps loaded (``serve.adapters_kept_loaded``: no load, no canary) and to the base
  model (``adapters.registry.BASE``). The next event waits for the first response on the
  previous one's adapter.

Per swap: event (acknowledged by the broker) → ``router.active`` switched; event →
``router.apply`` called (Kafka delivery); ``router.apply``'s own seconds (``SwapResult``:
verify + attach + canary, or nothing for a loaded adapter or the base); event → the first
response on the new adapter visible on ``responses``; "one chunk": the engine time of the
serve batch that was generating when the event landed (first chunk taking the engine → its
``generate`` returning, from a timeline of the engine instance's wrapped methods, which
observe and change nothing); how often that batch stepped aside (``PriorityLock.yields``);
where the swap's seconds went (reading the adapter, waiting for the model, attaching, the
canary, unloading an evicted adapter) and whether the event fell in the batch's prefill (a
single forward pass over every sample's prompt: nothing steps aside inside it).
Ratios are in flight ÷ idle (the same kind of swap, the same run). By design the batch in
flight finishes on the adapter it started with, so the first response on the new one comes
from the next batch: the report says whether it did, and whether it came within one chunk's
time of the event. Every prompt the stream produced must get exactly one response, and none
may land on ``prompts.dlq``: the count of failed or missing requests (goal 0).

**3. Serve latency, serving first** (``--no-latency`` skips it). ``--latency-prompts`` single
prompts, each produced once the previous answer is visible (so each is one batch of one
prompt × n samples); latency = produced → its response visible to a ``read_committed``
reader. The same prompts (and, seeded, the same tokens) three times: (a) the engine
otherwise idle, half of the prompts before (b) and (c) and half after (a shared machine's
drift cancels); (b) while a ``VerifyWorker`` (as ``selfdistill up`` builds it: the same
engine instance, the frozen base judging) judges a backlog of ``--judge-backlog`` candidates
messages (``bench.verify``'s arithmetic candidates, reasoning judge) so that it is never
idle; (c) informational, as (b) with the cascade's ``BACKGROUND`` priority patched to
``SERVE`` (``daemon.verifying.cascade.BACKGROUND``): no priorities, what serving behind a
judge round costs. Reported: p50 / p95 (linear between ranks) and the ratios (b)/(a) and
(c)/(a), with how busy verify was and how often its generations stepped aside.

    PYTHONPATH=. .venv/bin/python -m bench.serve --json bench-serve.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from adapters.files import served_name
from adapters.registry import BASE
from bench.common import TARGET_RATIO, log, machine, now, quiet, result_row, write_result
from daemon.engines.priority import NAMES, SERVE
from daemon.engines.priority import current as priority_level
from streams.broker import BrokerConfig, EmbeddedBroker, free_port
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import AdapterEvent, CandidatesMessage, PromptMessage, ResponseMessage
from streams.topics import TopicsConfig, ensure_topics

QUESTIONS = [
    "What is the capital of France, and why is it famous?",
    "Explain in two sentences why the sky is blue.",
    "Give three tips for writing clear emails.",
    "What is 12 times 7? Show your working.",
    "Write a haiku about autumn leaves.",
    "Why do we have seasons on Earth?",
    "Name three uses of a paperclip besides holding paper.",
    "What is the difference between weather and climate?",
    "Describe how a bicycle works in simple terms.",
    "What are the primary colors, and how do they mix?",
    "How many legs does a spider have, and what are spiders called as a group?",
    "Suggest a name for a friendly robot and explain it.",
    "What does a bee do in a flower garden?",
    "Explain what a prime number is, with two examples.",
    "Why should we drink water every day?",
    "Summarize the story of Little Red Riding Hood in three sentences.",
]


# ---------------------------------------------------------------------- setup
def make_prompts(n: int, tag: str) -> list[PromptMessage]:
    out = []
    for i in range(n):
        q = QUESTIONS[i % len(QUESTIONS)]
        if i >= len(QUESTIONS):
            q = f"{q} (variant {i // len(QUESTIONS)})"
        out.append(PromptMessage(id=f"{tag}-{i:04d}", prompt=q))
    return out


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@dataclass
class Sampling:
    batch: int
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    seed: int


@dataclass
class PathSample:
    seconds: float
    tokens: int
    per_prompt: dict[str, int]  # prompt id (without its run tag) -> generated tokens, all n
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


# ------------------------------------------------------------------------ raw
def run_raw(
    model: Any, tokenizer: Any, eos_ids: list[int], prompts: list[PromptMessage], s: Sampling
) -> PathSample:
    """Plain transformers: B prompts per ``generate`` call, n samples each, no Kafka."""
    import torch

    assert tokenizer.padding_side == "left"
    eos = set(eos_ids)
    per_prompt: dict[str, int] = {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(prompts), s.batch):
            chunk = prompts[start : start + s.batch]
            texts = [
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": p.prompt}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for p in chunk
            ]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            torch.manual_seed(s.seed)
            out = model.generate(
                **enc,
                max_new_tokens=s.max_tokens,
                do_sample=True,
                temperature=s.temperature,
                top_p=s.top_p,
                top_k=0,
                num_return_sequences=s.n,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=eos_ids,
            )
            rows = out[:, enc["input_ids"].shape[1] :].tolist()
            for i, p in enumerate(chunk):
                count = 0
                for row in rows[i * s.n : (i + 1) * s.n]:
                    count += next((k for k, t in enumerate(row) if t in eos), len(row))
                per_prompt[strip_tag(p.id)] = count
    seconds = time.perf_counter() - t0
    return PathSample(seconds, sum(per_prompt.values()), per_prompt)


def strip_tag(pid: str) -> str:
    return pid.rsplit("-", 1)[-1]


# ---------------------------------------------------------------- the reader
class OutputReader:
    """Reads ``responses``, ``candidates`` and ``prompts.dlq`` (read_committed, no group) on its
    own thread, noting when each record became visible."""

    def __init__(self, settings: KafkaSettings, topics: TopicsConfig) -> None:
        self.topics = topics
        self.dlq = topics.dlq(topics.prompts)
        kw = settings.client_kwargs("bench-reader")
        kw.update(isolation_level="read_committed", enable_auto_commit=False, fetch_max_wait_ms=100)
        self.consumer = KafkaConsumer(**kw)
        tps = [
            TopicPartition(t, p)
            for t in (topics.responses, topics.candidates)
            for p in range(topics.partitions)
        ]
        tps.append(TopicPartition(self.dlq, 0))  # dead-letter topics have one partition
        self.consumer.assign(tps)
        for tp in tps:  # fresh topics: offset 0 (no ListOffsets round trip)
            self.consumer.seek(tp, 0)
        self.responses: dict[str, tuple[float, ResponseMessage]] = {}
        self.response_counts: Counter[str] = Counter()  # a second response would be a failure
        self.candidates: dict[str, CandidatesMessage] = {}
        self.dead_letters = 0  # records on prompts.dlq
        self.cond = threading.Condition()
        self._stop = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                polled = self.consumer.poll(timeout_ms=100)
                now = time.perf_counter()
                if not polled:
                    continue
                with self.cond:
                    for tp, recs in polled.items():
                        for r in recs:
                            if tp.topic == self.topics.responses:
                                msg = ResponseMessage.model_validate_json(r.value)
                                self.responses.setdefault(msg.id, (now, msg))
                                self.response_counts[msg.id] += 1
                            elif tp.topic == self.dlq:
                                self.dead_letters += 1
                            else:
                                cand = CandidatesMessage.model_validate_json(r.value)
                                self.candidates.setdefault(cand.id, cand)
                    self.cond.notify_all()
        except BaseException as exc:
            self.error = exc
            with self.cond:
                self.cond.notify_all()
        finally:
            self.consumer.close(autocommit=False)

    def wait_for(self, ids: list[str], timeout: float) -> float:
        """When the last of ``ids`` had its response and candidates visible."""

        def done() -> bool:
            return self.error is not None or all(
                i in self.responses and i in self.candidates for i in ids
            )

        with self.cond:
            if not self.cond.wait_for(done, timeout):
                got = sum(i in self.responses for i in ids)
                raise TimeoutError(f"{got} of {len(ids)} responses visible after {timeout:.0f} s")
            if self.error is not None:
                raise RuntimeError("the bench reader failed") from self.error
            return max(self.responses[i][0] for i in ids)

    def wait_answered(self, ids: list[str], timeout: float) -> int:
        """Wait (at most ``timeout``) until every one of ``ids`` has a response; how many do."""
        with self.cond:
            self.cond.wait_for(
                lambda: self.error is not None or all(i in self.responses for i in ids), timeout
            )
            if self.error is not None:
                raise RuntimeError("the bench reader failed") from self.error
            return sum(i in self.responses for i in ids)

    def answered(self, ids: list[str]) -> int:
        with self.cond:
            return sum(i in self.responses for i in ids)

    def response(self, pid: str) -> tuple[float, ResponseMessage]:
        with self.cond:
            return self.responses[pid]

    def duplicated(self, ids: list[str]) -> int:
        """How many of ``ids`` got more than one response."""
        with self.cond:
            return sum(self.response_counts[i] > 1 for i in ids)

    def first_on(self, adapter: str | None, since: float) -> tuple[float, ResponseMessage] | None:
        with self.cond:
            hits = [
                (t, m) for t, m in self.responses.values() if m.adapter == adapter and t >= since
            ]
        return min(hits, key=lambda h: h[0]) if hits else None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# ---------------------------------------------------------------------- serve
def run_serve(
    producer: Producer,
    reader: OutputReader,
    topics: TopicsConfig,
    prompts: list[PromptMessage],
    timeout: float,
) -> PathSample:
    """Produce the prompts to a ready worker; time until every response is visible."""
    ids = [p.id for p in prompts]
    tokens0 = metric("selfdistill_generated_tokens_total")
    gen0 = metric("selfdistill_serve_latency_seconds_sum")
    batches0 = metric("selfdistill_serve_latency_seconds_count")
    handler0 = metric("selfdistill_batch_seconds_sum", {"topic": topics.prompts})
    t0 = time.perf_counter()
    for p in prompts:
        producer.send(topics.prompts, p, key=p.id)
    producer.flush()
    produced = time.perf_counter() - t0
    done = reader.wait_for(ids, timeout)
    seconds = done - t0
    per_prompt = {
        strip_tag(i): sum(s.completion_tokens for s in reader.candidates[i].samples) for i in ids
    }
    counter = metric("selfdistill_generated_tokens_total") - tokens0
    gen = metric("selfdistill_serve_latency_seconds_sum") - gen0
    handler = metric("selfdistill_batch_seconds_sum", {"topic": topics.prompts}) - handler0
    return PathSample(
        seconds,
        sum(per_prompt.values()),
        per_prompt,
        extra={
            "produce_s": round(produced, 3),
            "engine_generate_s": round(gen, 3),
            "handler_s": round(handler, 3),
            "batches": int(metric("selfdistill_serve_latency_seconds_count") - batches0),
            "counter_tokens": int(counter),
        },
    )


# ---------------------------------------------------------------------- swap
SWAP_THREAD = "adapter-events"  # the follower's thread: swaps and their canaries


class Timeline:
    """Wraps the engine instance's generate / _generate / load_adapter / unload_adapter to note
    who held the engine when, and every serve batch (observation only: the wrapped methods run
    unchanged; ``close`` takes the wrappers off again)."""

    WRAPPED = (
        "generate",
        "_generate",
        "load_adapter",
        "unload_adapter",
        "_read_adapter",
        "_attach",
    )

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.spans: list[dict[str, Any]] = []
        # Every serve batch: its adapter, when its first chunk got the engine, when its
        # generate returned (None while it runs).
        self.batches: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._acquired: dict[int, float] = {}
        gen, inner = engine.generate, engine._generate
        load, unload = engine.load_adapter, engine.unload_adapter
        read, attach = engine._read_adapter, engine._attach

        def swapping() -> bool:
            return threading.current_thread().name == SWAP_THREAD

        def generate(requests: Any) -> Any:
            called = time.perf_counter()
            try:
                return gen(requests)
            finally:
                if not swapping():
                    with self._lock:
                        if self.batches and self.batches[-1]["ended"] is None:
                            self.batches[-1]["ended"] = time.perf_counter()
                what = "canary" if swapping() else f"batch on {requests[0].adapter or BASE}"
                self._span(what, called)

        def _generate(reqs: Any) -> Any:  # runs under the engine lock
            now = time.perf_counter()
            self._acquired.setdefault(threading.get_ident(), now)
            if not swapping():
                with self._lock:
                    if not self.batches or self.batches[-1]["ended"] is not None:
                        self.batches.append(
                            {
                                "adapter": reqs[0].adapter,
                                "started": now,
                                "first_step": None,
                                "ended": None,
                            }
                        )
            return inner(reqs)

        def load_adapter(name: str, path: str) -> None:
            called = time.perf_counter()
            try:
                load(name, path)
            finally:
                self._span(f"load_adapter {name}", called, started=None)

        def unload_adapter(name: str) -> None:
            called = time.perf_counter()
            try:
                unload(name)
            finally:
                self._span(f"unload_adapter {name}", called, started=None)

        def _read_adapter(name: str, path: Any) -> Any:  # no lock held: files, weights, checks
            called = time.perf_counter()
            try:
                return read(name, path)
            finally:
                self._span(f"read {name}", called, started=None)

        def _attach(name: str, config: Any, weights: Any) -> None:  # under the engine lock
            called = time.perf_counter()
            try:
                attach(name, config, weights)
            finally:
                self._span(f"attach {name}", called, started=None)

        engine.generate, engine._generate = generate, _generate
        engine.load_adapter, engine.unload_adapter = load_adapter, unload_adapter
        engine._read_adapter, engine._attach = _read_adapter, _attach

        urgent = engine._lock.urgent_waiting

        def urgent_waiting() -> bool:  # what a generation asks after every decoding step
            if not swapping():
                now = time.perf_counter()
                with self._lock:
                    last = self.batches[-1] if self.batches else None
                    if last is not None and last["ended"] is None and last["first_step"] is None:
                        last["first_step"] = now  # the prefill is over
            return urgent()

        engine._lock.urgent_waiting = urgent_waiting

    def close(self) -> None:
        """The class's methods again."""
        for name in self.WRAPPED:
            self.engine.__dict__.pop(name, None)
        self.engine._lock.__dict__.pop("urgent_waiting", None)

    def _span(self, what: str, called: float, started: float | None = -1.0) -> None:
        ended = time.perf_counter()
        if started is not None:
            started = self._acquired.pop(threading.get_ident(), called)
        with self._lock:
            self.spans.append({"what": what, "called": called, "started": started, "ended": ended})

    def count(self) -> int:
        with self._lock:
            return len(self.batches)

    def running(self) -> tuple[int, dict[str, Any]] | None:
        """The serve batch generating now (its index and record), if any."""
        with self._lock:
            if self.batches and self.batches[-1]["ended"] is None:
                return len(self.batches) - 1, dict(self.batches[-1])
        return None

    def batch(self, index: int) -> dict[str, Any]:
        with self._lock:
            return dict(self.batches[index])

    def first_batch_on(self, adapter: str | None, since: float) -> int | None:
        with self._lock:
            return next(
                (
                    i
                    for i, b in enumerate(self.batches)
                    if b["adapter"] == adapter and b["started"] >= since
                ),
                None,
            )

    def swap_parts(self, since: float, until: float) -> dict[str, float]:
        """Where a swap's seconds went between ``since`` and ``until``: reading the adapter
        (no lock), attaching it, waiting for and running the canary, unloading an evicted
        adapter; ``held`` = what held the model (attach + canary run + unload)."""
        with self._lock:
            spans = [x for x in self.spans if x["called"] >= since and x["ended"] <= until]
        parts = dict.fromkeys(
            ("read", "attach_wait", "attach", "canary_wait", "canary", "unload"), 0.0
        )
        read_end = None
        for x in spans:
            kind = x["what"].split(" ", 1)[0]
            if kind == "canary":
                got = x["started"] if x["started"] is not None else x["called"]
                parts["canary_wait"] += got - x["called"]
                parts["canary"] += x["ended"] - got
            elif kind in ("read", "attach"):
                parts[kind] += x["ended"] - x["called"]
                if kind == "read":
                    read_end = x["ended"]
                elif read_end is not None:  # load_adapter waited for the model in between
                    parts["attach_wait"] += max(0.0, x["called"] - read_end)
            elif kind == "unload_adapter":
                parts["unload"] += x["ended"] - x["called"]
        parts["held"] = parts["attach"] + parts["canary"] + parts["unload"]
        return {k: round(v, 3) for k, v in parts.items()}

    def relative(self, t0: float, since: float, until: float) -> list[dict[str, Any]]:
        """Spans that ended after ``since`` and began before ``until``, in s after ``t0``."""
        with self._lock:
            spans = [dict(x) for x in self.spans if x["ended"] >= since and x["called"] <= until]
        for x in spans:
            for k in ("called", "started", "ended"):
                if x[k] is not None:
                    x[k] = round(x[k] - t0, 2)
        return sorted(spans, key=lambda x: x["called"])


@dataclass
class Applied:
    """One ``router.apply`` call as the follower made it."""

    event: AdapterEvent
    result: Any  # SwapResult
    called: float
    returned: float  # after the router's eviction too


def target_of(event: AdapterEvent) -> str | None:
    return None if event.version == BASE else event.version


class SwapProbe:
    """The worker's swaps, observed: ``router.apply`` wrapped (what it returned, when), the
    engine's ``Timeline``, and a producer for the events. ``close`` undoes the wrapping."""

    def __init__(self, worker: Any) -> None:
        self.router = worker.router
        self.engine = worker.engine
        self.loop = worker.loop
        self.timeline = Timeline(worker.engine)
        self.applied: list[Applied] = []
        self._cond = threading.Condition()
        inner = self.router.apply

        def apply(ev: AdapterEvent) -> Any:
            called = time.perf_counter()
            result = inner(ev)
            with self._cond:
                self.applied.append(Applied(ev, result, called, time.perf_counter()))
                self._cond.notify_all()
            return result

        self.router.apply = apply
        self.topic = worker.settings.topics.adapter_events
        self.events = Producer(worker.settings.kafka, name="bench-events")

    def close(self) -> None:
        self.router.__dict__.pop("apply", None)  # the class's method again
        self.timeline.close()
        self.events.close()

    @property
    def yields(self) -> int:
        return self.engine._lock.yields

    def send(self, event: AdapterEvent) -> float:
        """Produce ``event``; the time the broker acknowledged it."""
        self.events.send(self.topic, event, key="adapters")
        self.events.flush()
        return time.perf_counter()

    def _applied(self, event: AdapterEvent) -> Applied | None:
        with self._cond:
            return next(
                (
                    a
                    for a in self.applied
                    if a.event.reason == event.reason and a.event.version == event.version
                ),
                None,
            )

    def wait(self, event: AdapterEvent, t_event: float, timeout: float) -> tuple[float, Applied]:
        """When ``router.active`` switched to the event's target, and what apply did."""
        target = target_of(event)
        t_active: float | None = None
        while time.perf_counter() - t_event < timeout:
            if t_active is None and self.router.active == target:
                t_active = time.perf_counter()
            got = self._applied(event)
            if got is not None:
                if not got.result.ok:
                    raise RuntimeError(f"the swap to {event.version} failed: {got.result.error}")
                # apply returned between two looks: the switch was at most one look ago
                return (t_active if t_active is not None else time.perf_counter()), got
            time.sleep(0.005)
        raise TimeoutError(f"router did not switch to {event.version} in {timeout:.0f} s")

    def swap(self, event: AdapterEvent, timeout: float) -> tuple[dict[str, Any], float]:
        """Produce ``event`` and wait for the switch; the swap's row and the event's time."""
        previous = self.router.active
        loaded = event.version == BASE or (
            event.sha256 is not None
            and served_name(event.version, event.sha256) in self.engine.adapters()
        )
        yields0 = self.yields
        t_event = self.send(event)
        t_active, got = self.wait(event, t_event, timeout)
        parts = self.timeline.swap_parts(t_event, got.returned)
        return {
            "action": event.action,
            "version": event.version,
            "from": previous or BASE,
            "was_loaded": loaded,
            "event_to_active_s": round(t_active - t_event, 3),
            "event_to_apply_s": round(got.called - t_event, 3),
            "router_apply_s": round(got.result.seconds, 3),
            "apply_wall_s": round(got.returned - got.called, 3),
            "stepped_aside": self.yields - yields0,
            "swap_held_engine_s": parts["held"],
            "parts_s": parts,
        }, t_event


def rollback_targets(versions: list[str], n: int, keep: int) -> list[str]:
    """Where ``n`` rollbacks go after ``versions`` were promoted in this order: alternately the
    newest other version the router still keeps loaded (the last ``keep``) and the base."""
    loaded = versions[-keep:]
    active = versions[-1] if versions else BASE
    out: list[str] = []
    for j in range(n):
        others = [v for v in reversed(loaded) if v != active]
        target = others[0] if j % 2 == 0 and others else BASE
        if target == active:
            target = others[0] if others else loaded[-1]
        out.append(target)
        active = target
    return out


def idle_swaps(
    probe: SwapProbe, warm: AdapterEvent, events: list[AdapterEvent], timeout: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The baseline: the same kinds of swap with no prompt in the worker."""
    warm_row, _ = probe.swap(warm, timeout)
    rows = []
    for ev in events:
        time.sleep(0.2)  # the follower back in its poll
        row, _ = probe.swap(ev, timeout)
        rows.append(row)
        log(f"  idle {ev.action} {ev.version}: event → active {row['event_to_active_s']:.2f} s")
    return warm_row, rows


def inflight_swaps(
    probe: SwapProbe,
    producer: Producer,
    reader: OutputReader,
    topics: TopicsConfig,
    events: list[AdapterEvent],
    batch: int,
    timeout: float,
    into: float = 1.0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Each event ``into`` seconds into a serve batch of a steady stream; time the switch and
    the first answer. Then every prompt the stream produced must have exactly one response."""
    timeline = probe.timeline
    stop = threading.Event()
    produced: list[str] = []
    lock = threading.Lock()
    stream_errors: list[BaseException] = []

    def stream() -> None:  # keep about two batches unanswered, so the worker never idles
        try:
            i = 0
            while not stop.is_set():
                with lock:
                    ids = list(produced)
                if len(ids) - reader.answered(ids) < 2 * batch:
                    p = PromptMessage(id=f"swap-{i:05d}", prompt=QUESTIONS[i % len(QUESTIONS)])
                    producer.send(topics.prompts, p, key=p.id)
                    producer.flush()
                    with lock:
                        produced.append(p.id)
                    i += 1
                else:
                    time.sleep(0.05)
        except BaseException as exc:
            stream_errors.append(exc)

    stats0 = replace(probe.loop.stats)
    dead0 = reader.dead_letters
    rows: list[dict[str, Any]] = []
    # The stream's first batch may be partial (the worker polled as the first prompts came):
    # the first event lands in the second.
    after = timeline.count()
    streamer = threading.Thread(target=stream, name="bench-stream", daemon=True)
    streamer.start()
    try:
        for event in events:
            deadline = time.monotonic() + timeout
            while True:
                run = timeline.running()
                if run is not None and run[0] > after:
                    break
                if stream_errors or time.monotonic() > deadline:
                    raise TimeoutError("the prompt stream did not reach the engine")
                time.sleep(0.01)
            idx, inflight = run
            time.sleep(max(0.0, inflight["started"] + into - time.perf_counter()))
            row, t_event = probe.swap(event, timeout)
            if event is events[-1]:
                # The prompts already waiting feed the first batch on the last target; no
                # more are produced, so the stream drains soon after.
                stop.set()
            target = target_of(event)
            first = None
            while time.perf_counter() - t_event < timeout:
                first = reader.first_on(target, t_event)
                if first is not None:
                    break
                time.sleep(0.01)
            if first is None:
                raise TimeoutError(f"no response from {event.version} in {timeout:.0f} s")
            new = timeline.first_batch_on(target, t_event)
            assert new is not None, "a response on the new adapter without its batch"
            inflight = timeline.batch(idx)
            first_batch = timeline.batch(new)
            ended = inflight["ended"] if inflight["ended"] is not None else first[0]
            row.update(
                event_into_batch_s=round(t_event - inflight["started"], 3),
                event_to_first_response_s=round(first[0] - t_event, 3),
                inflight_batch_s=round(ended - inflight["started"], 3),
                inflight_end_to_first_response_s=round(first[0] - ended, 3),
                first_batch_s=(
                    round(first_batch["ended"] - first_batch["started"], 3)
                    if first_batch["ended"] is not None
                    else None
                ),
                batches_on_old_after_event=new - idx - 1,
                inflight_prefill_s=(
                    round(inflight["first_step"] - inflight["started"], 3)
                    if inflight["first_step"] is not None
                    else None
                ),
                event_in_prefill=inflight["first_step"] is None or t_event < inflight["first_step"],
                first_response_id=first[1].id,
                timeline_s_after_event=timeline.relative(
                    t_event, inflight["started"] - 0.01, first[0]
                ),
            )
            rows.append(row)
            after = new
            log(
                f"  {event.action} {event.version} in flight: event → active "
                f"{row['event_to_active_s']:.2f} s, → first response "
                f"{row['event_to_first_response_s']:.2f} s (in-flight batch "
                f"{row['inflight_batch_s']:.2f} s, stepped aside {row['stepped_aside']}×)"
            )
    finally:
        stop.set()
        streamer.join(30)
    if stream_errors:
        raise stream_errors[0]
    with lock:
        ids = list(produced)
    answered = reader.wait_answered(ids, timeout)
    duplicated = reader.duplicated(ids)
    stats = probe.loop.stats
    dead = reader.dead_letters - dead0
    loop_dead = stats.dead_lettered - stats0.dead_lettered
    failures = {
        "produced": len(ids),
        "answered": answered,
        "missing": len(ids) - answered,
        "duplicated": duplicated,
        "dead_lettered": max(dead, loop_dead),
        "handler_failures": stats.handler_failures - stats0.handler_failures,
        "abandoned": stats.abandoned - stats0.abandoned,
    }
    failures["failed"] = failures["missing"] + duplicated + failures["dead_lettered"]
    return rows, failures


STAT_KEYS = (
    "event_to_active_s",
    "event_to_apply_s",
    "router_apply_s",
    "apply_wall_s",
    "stepped_aside",
    "event_into_batch_s",
    "event_to_first_response_s",
    "inflight_batch_s",
    "inflight_end_to_first_response_s",
    "first_batch_s",
    "swap_held_engine_s",
    "inflight_prefill_s",
)


def summarise_swaps(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and max of each measure; for swaps in flight, the chunk checks."""
    out: dict[str, Any] = {"n": len(rows)}
    if not rows:
        return out
    for key in STAT_KEYS:
        xs = [r[key] for r in rows if r.get(key) is not None]
        if xs:
            out[key] = {"median": round(statistics.median(xs), 3), "max": round(max(xs), 3)}
    if "event_to_first_response_s" in rows[0]:
        out["first_within_chunk"] = sum(
            r["event_to_first_response_s"] <= r["inflight_batch_s"] for r in rows
        )
        out["first_from_next_batch"] = sum(r["batches_on_old_after_event"] == 0 for r in rows)
        out["event_in_prefill"] = sum(bool(r["event_in_prefill"]) for r in rows)
        out["first_to_chunk_ratio"] = round(
            statistics.median(r["event_to_first_response_s"] / r["inflight_batch_s"] for r in rows),
            3,
        )
    return out


def measure_swaps(
    worker: Any,
    producer: Producer,
    reader: OutputReader,
    topics: TopicsConfig,
    plan: dict[str, Any],
    batch: int,
    timeout: float,
    into: float = 1.0,
) -> dict[str, Any]:
    """Idle swaps (the baseline), then the same kinds with a serve batch in flight."""
    probe = SwapProbe(worker)
    try:
        log("swaps, idle engine (the baseline)")
        warm, idle = idle_swaps(probe, plan["warm"], plan["idle"], timeout)
        log("swaps with a serve batch in flight, under a steady stream")
        inflight, failures = inflight_swaps(
            probe, producer, reader, topics, plan["in_flight"], batch, timeout, into
        )
    finally:
        probe.close()

    def split(rows: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            action: summarise_swaps([r for r in rows if r["action"] == action])
            for action in ("promote", "rollback")
        }

    promote = split(inflight)["promote"]
    return {
        "adapter": "LoRA r=8 all-linear (tests.models.build_adapter, scale 0.02)",
        "keep_loaded": plan["keep_loaded"],
        "event_into_batch_s": into,
        "warm_up": warm,
        "idle": {"swaps": idle, **split(idle)},
        "in_flight": {"swaps": inflight, **split(inflight)},
        "failures": failures,
        "goals": {
            "promote_active_median_under_1s": bool(
                promote["n"] and promote["event_to_active_s"]["median"] < 1.0
            ),
            "first_response_within_one_chunk": bool(
                inflight
                and all(r["event_to_first_response_s"] <= r["inflight_batch_s"] for r in inflight)
            ),
            "first_response_from_next_batch": bool(
                inflight and all(r["batches_on_old_after_event"] == 0 for r in inflight)
            ),
            "no_failed_requests": failures["failed"] == 0,
        },
    }


# ------------------------------------------------------------------- latency
SERVE_THREAD = "serve-handler"  # the ConsumerLoops' handler threads
JUDGE_THREAD = "verify-handler"
JUDGE_CANDIDATES = 3  # per candidates message (bench.verify's arithmetic pool)
JUDGE_VOTES = 2


def pct(xs: list[float], q: float) -> float:
    """The ``q`` quantile (0–1), linear between the closest ranks (numpy's default)."""
    ys = sorted(xs)
    pos = q * (len(ys) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ys) - 1)
    return ys[lo] + (ys[hi] - ys[lo]) * (pos - lo)


class EngineProbe:
    """Wraps the engine instance's ``generate`` to note each call's thread, priority level and
    time (observation only; ``close`` takes the wrapper off)."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.calls: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        gen = engine.generate

        def generate(requests: Any) -> Any:
            call = {
                "thread": threading.current_thread().name,
                "level": priority_level(),
                "called": time.perf_counter(),
                "ended": None,
            }
            with self._lock:
                self.calls.append(call)
            try:
                return gen(requests)
            finally:
                call["ended"] = time.perf_counter()

        engine.generate = generate

    def close(self) -> None:
        self.engine.__dict__.pop("generate", None)

    def wait_call(
        self, thread: str, since: float, timeout: float, level: int | None = None
    ) -> None:
        """Until ``thread`` has called the engine after ``since`` (at ``level``)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self._lock:
                if any(
                    c["thread"] == thread
                    and c["called"] >= since
                    and (level is None or c["level"] == level)
                    for c in self.calls
                ):
                    return
            time.sleep(0.02)
        raise TimeoutError(f"{thread} made no engine call in {timeout:.0f} s")

    def window(self, thread: str, t0: float, t1: float) -> dict[str, Any]:
        """``thread``'s engine calls that overlap [t0, t1]: how many, at which priority levels,
        and the share of the window it had one outstanding (waiting for the model or
        generating)."""
        with self._lock:
            calls = [dict(c) for c in self.calls if c["thread"] == thread]
        busy = 0.0
        for c in calls:
            end = c["ended"] if c["ended"] is not None else t1
            busy += max(0.0, min(end, t1) - max(c["called"], t0))
        overlap = [
            c for c in calls if c["called"] <= t1 and (c["ended"] is None or c["ended"] >= t0)
        ]
        return {
            "calls": len(overlap),
            "levels": dict(Counter(NAMES.get(c["level"], str(c["level"])) for c in overlap)),
            "outstanding_share": round(busy / (t1 - t0), 3) if t1 > t0 else 0.0,
        }


def trickle(
    producer: Producer,
    reader: OutputReader,
    topics: TopicsConfig,
    n: int,
    tag: str,
    timeout: float,
    start: int = 0,
) -> list[dict[str, Any]]:
    """``n`` single prompts (``QUESTIONS`` from ``start``), each produced once the previous
    answer is visible."""
    rows = []
    for i in range(start, start + n):
        p = PromptMessage(id=f"{tag}-{i:04d}", prompt=QUESTIONS[i % len(QUESTIONS)])
        t0 = time.perf_counter()
        producer.send(topics.prompts, p, key=p.id)
        producer.flush()
        visible = reader.wait_for([p.id], timeout)
        _, resp = reader.response(p.id)
        rows.append(
            {
                "latency_s": round(visible - t0, 3),
                "handler_s": round(resp.latency_s, 3),  # the serve handler's generate
                "tokens": sum(s.completion_tokens for s in reader.candidates[p.id].samples),
            }
        )
    return rows


class Judging:
    """A ``VerifyWorker`` on the serve worker's engine (as ``selfdistill up`` builds it: the
    same instance, the frozen base judging), with a backlog of candidates so it never idles."""

    def __init__(
        self,
        engine: Any,
        kafka_settings: KafkaSettings,
        data_dir: str,
        args: argparse.Namespace,
        timeout: float,
    ) -> None:
        from bench.verify import Knobs, make_messages
        from daemon.operating.config import Settings
        from daemon.verifying.worker import VerifyWorker

        self.knobs = Knobs(
            prompts=args.judge_backlog,
            candidates=JUDGE_CANDIDATES,
            votes=JUDGE_VOTES,
            max_tokens=args.judge_max_tokens,
            infer_max_tokens=32,
            temperature=0.6,
            top_p=0.95,
            seed=args.seed,
            fast_judge=False,
        )
        topics = TopicsConfig(
            candidates="bench-judge-candidates", verdicts="bench-judge-verdicts", partitions=1
        )
        ensure_topics(kafka_settings, topics)
        msgs = make_messages(
            args.judge_backlog, JUDGE_CANDIDATES, engine.tokenizer, "judge", self.knobs
        )
        producer = Producer(kafka_settings, name="bench-judge-candidates")
        try:
            for m in msgs:
                producer.send(topics.candidates, m, key=m.id)
            producer.flush()
        finally:
            producer.close()
        settings = Settings(
            data_dir=data_dir,
            kafka={
                **kafka_settings.model_dump(),
                "batch_size": args.judge_batch,
                "shutdown_timeout_s": 1.0,  # a batch still judging is left to finish (stop())
            },
            topics=topics.model_dump(),
            verify={
                **self.knobs.cascade().model_dump(),
                "group_id": "bench-judge",
                "transactional_id": f"bench-judge-{os.getpid()}",
            },
        )
        self.worker = VerifyWorker(settings, engine)
        self.errors: list[BaseException] = []

        def run() -> None:
            try:
                self.worker.run(handle_signals=False)
            except BaseException as exc:
                self.errors.append(exc)
                self.worker.loop.ready.set()

        self.thread = threading.Thread(target=run, name="bench-judge-worker", daemon=True)
        self.thread.start()
        if not self.worker.loop.ready.wait(timeout) or self.errors:
            raise RuntimeError("the verify worker did not join its group") from (
                self.errors[0] if self.errors else None
            )

    @property
    def judged(self) -> int:
        return self.worker.loop.stats.processed

    def stop(self, timeout: float) -> None:
        """Stop the loop, then let a batch it left judging finish: it holds the engine."""
        self.worker.stop()
        self.thread.join(timeout)
        deadline = time.monotonic() + timeout
        while self.worker.loop.busy and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.errors:
            raise self.errors[0]


def merge_windows(windows: list[tuple[dict[str, Any], float]]) -> dict[str, Any]:
    """``EngineProbe.window`` results of several stretches (each with its length) as one."""
    total = sum(d for _, d in windows) or 1.0
    levels: Counter[str] = Counter()
    for w, _ in windows:
        levels.update(w["levels"])
    return {
        "calls": sum(w["calls"] for w, _ in windows),
        "levels": dict(levels),
        "outstanding_share": round(sum(w["outstanding_share"] * d for w, d in windows) / total, 3),
    }


def merge_parts(parts: list[Any]) -> tuple[Any, ...]:
    """One condition measured in several stretches: its rows, windows and counts pooled."""
    rows = [r for p in parts for r in p[0]]
    lengths = [p[5] for p in parts]
    serve = merge_windows([(p[1], d) for p, d in zip(parts, lengths, strict=True)])
    judges = [(p[2], d) for p, d in zip(parts, lengths, strict=True) if p[2] is not None]
    judge = merge_windows(judges) if judges else None
    return rows, serve, judge, sum(p[3] for p in parts), sum(p[4] for p in parts)


def summarise_latency(
    rows: list[dict[str, Any]],
    serve: dict[str, Any],
    judge: dict[str, Any] | None,
    stepped: int,
    judged: int,
) -> dict[str, Any]:
    lat = [r["latency_s"] for r in rows]
    return {
        "p50_s": round(pct(lat, 0.5), 3),
        "p95_s": round(pct(lat, 0.95), 3),
        "max_s": round(max(lat), 3),
        "handler_p50_s": round(pct([r["handler_s"] for r in rows], 0.5), 3),
        "latencies_s": lat,
        "tokens": [r["tokens"] for r in rows],
        "serve": serve,
        "judge": judge,
        "judge_stepped_aside": stepped,
        "judged_prompts": judged,
    }


def measure_latency(
    engine: Any,
    producer: Producer,
    reader: OutputReader,
    topics: TopicsConfig,
    kafka_settings: KafkaSettings,
    data_dir: str,
    args: argparse.Namespace,
    serving: str | None,
) -> dict[str, Any]:
    """Serve latency of single prompts: idle engine, verify judging, verify without priorities."""
    import daemon.verifying.cascade as cascade

    timeout = args.timeout
    n = args.latency_prompts
    lock = engine._lock
    probe = EngineProbe(engine)
    conditions: dict[str, Any] = {}
    parts: dict[str, list[Any]] = {}  # condition -> [(rows, serve, judge, yields, judged, s)]

    def measure(name: str, judging: Judging | None, count: int, start: int = 0) -> None:
        if count < 1:
            return
        y0, j0 = lock.yields, judging.judged if judging else 0
        t0 = time.perf_counter()
        rows = trickle(producer, reader, topics, count, f"lat-{name}", timeout, start)
        t1 = time.perf_counter()
        parts.setdefault(name, []).append(
            (
                rows,
                probe.window(SERVE_THREAD, t0, t1),
                probe.window(JUDGE_THREAD, t0, t1) if judging else None,
                lock.yields - y0,
                (judging.judged - j0) if judging else 0,
                t1 - t0,
            )
        )
        c = conditions[name] = summarise_latency(*merge_parts(parts[name]))
        log(
            f"  {name}: p50 {c['p50_s']:.2f} s, p95 {c['p95_s']:.2f} s over {len(c['tokens'])} "
            f"(judge {c['judge']}, stepped aside {c['judge_stepped_aside']}×)"
        )

    try:
        trickle(producer, reader, topics, 1, "lat-warm", timeout)  # a batch of one: untimed
        # (a) half before and half after the others: a shared machine's drift cancels.
        measure("idle", None, n // 2)
        judging = Judging(engine, kafka_settings, data_dir, args, timeout)
        try:
            probe.wait_call(JUDGE_THREAD, 0.0, timeout)  # judging before the first prompt
            measure("judged", judging, n)
            if not args.no_neutral:
                saved = cascade.BACKGROUND
                cascade.BACKGROUND = SERVE  # the cascade's calls at serve level: no priority
                try:
                    probe.wait_call(JUDGE_THREAD, time.perf_counter(), timeout, level=SERVE)
                    measure("neutral", judging, n)
                finally:
                    cascade.BACKGROUND = saved
            backlog_left = args.judge_backlog - judging.judged
        finally:
            judging.stop(timeout)
        measure("idle", None, n - n // 2, n // 2)
    finally:
        probe.close()
    idle, judged = conditions["idle"], conditions["judged"]
    neutral = conditions.get("neutral")
    return {
        "prompts": n,
        "serving": serving or BASE,
        "judge": {
            "backlog": args.judge_backlog,
            "batch": args.judge_batch,
            "candidates": JUDGE_CANDIDATES,
            "votes": JUDGE_VOTES,
            "judge_max_tokens": args.judge_max_tokens,
            "infer_max_tokens": 32,
            "backlog_left": backlog_left,
        },
        **conditions,
        "ratio_p50": round(judged["p50_s"] / idle["p50_s"], 3),
        "ratio_p95": round(judged["p95_s"] / idle["p95_s"], 3),
        "neutral_ratio_p50": round(neutral["p50_s"] / idle["p50_s"], 3) if neutral else None,
        "neutral_ratio_p95": round(neutral["p95_s"] / idle["p95_s"], 3) if neutral else None,
        "same_tokens": all(
            c["tokens"] == idle["tokens"] for c in conditions.values() if c is not idle
        ),
    }


# ----------------------------------------------------------------------- main
def build_plan(
    model_dir: Path, registry: Path, promotions: int, rollbacks: int, keep: int
) -> dict[str, Any]:
    """The adapters (built into the registry, sha256 recorded) and the events of the swaps."""
    from adapters.files import adapter_digest
    from tests.models import build_adapter

    names = [f"{model_dir.name}-sd-v{i:04d}" for i in range(1, 2 * promotions + 2)]
    digests: dict[str, str] = {}
    t = time.perf_counter()
    for seed, name in enumerate(names, start=1):
        build_adapter(model_dir, registry / name, seed=seed, r=8, scale=0.02)
        digests[name] = adapter_digest(registry / name)
    log(f"{len(names)} adapters built in {time.perf_counter() - t:.1f} s")
    count = iter(range(10**6))

    def event(action: str, version: str, phase: str) -> AdapterEvent:
        reason = f"bench {phase} {next(count)}: {action} {version}"  # unique: how apply is found
        if version == BASE:
            return AdapterEvent(action="rollback", version=BASE, reason=reason)
        return AdapterEvent(
            action=action,  # type: ignore[arg-type]
            version=version,
            path=version,
            sha256=digests[version],
            reason=reason,
        )

    warm, idle, flight = names[0], names[1 : promotions + 1], names[promotions + 1 :]
    return {
        "keep_loaded": keep,
        "warm": event("promote", warm, "warm-up"),
        "idle": [event("promote", v, "idle") for v in idle]
        + [event("rollback", v, "idle") for v in rollback_targets([warm, *idle], rollbacks, keep)],
        "in_flight": [event("promote", v, "in-flight") for v in flight]
        + [event("rollback", v, "in-flight") for v in rollback_targets(flight, rollbacks, keep)],
    }


def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from daemon.engines.model_files import resolve_model_dir
    from daemon.engines.transformers_engine import TransformersEngine
    from daemon.operating.config import Settings
    from daemon.serving.worker import ServeConfig, ServeWorker

    s = Sampling(
        args.batch_size, args.candidates, args.max_tokens, args.temperature, args.top_p, args.seed
    )
    model_dir = resolve_model_dir("embedded")
    results: dict[str, Any] = {"model": model_dir.name, "model_dir": str(model_dir)}
    phases: dict[str, float] = {}
    results["phases_s"] = phases
    samples: dict[str, list[PathSample]] = {"raw": [], "selfdistill": []}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        registry = Path(tmp) / "adapters"
        registry.mkdir()
        plan = None
        if not args.no_swap:
            keep = ServeConfig().adapters_kept_loaded
            plan = build_plan(model_dir, registry, args.promotions, args.rollbacks, keep)
        engine = TransformersEngine(
            model_dir, device="cpu", max_batch_sequences=max(32, s.batch * s.n)
        )
        results["dtype"] = str(engine.base.dtype).removeprefix("torch.")
        with EmbeddedBroker(BrokerConfig(port=free_port())) as broker:
            kafka_settings = KafkaSettings(bootstrap_servers=broker.bootstrap, batch_size=s.batch)
            topics = TopicsConfig(partitions=args.partitions)
            ensure_topics(kafka_settings, topics)
            settings = Settings(
                data_dir=tmp,
                kafka=kafka_settings.model_dump(),
                topics=topics.model_dump(),
                adapters={"registry_dir": str(registry)},
                serve={
                    "extra_candidates": s.n - 1,
                    "temperature": s.temperature,
                    "top_p": s.top_p,
                    "max_tokens": s.max_tokens,
                    "seed": s.seed,
                    "group_id": "bench-serve",
                    "transactional_id": "bench-serve",
                },
            )
            worker = ServeWorker(settings, engine)
            errors: list[BaseException] = []

            def serve() -> None:
                try:
                    worker.run(handle_signals=False)
                except BaseException as exc:
                    errors.append(exc)
                    worker.loop.ready.set()

            thread = threading.Thread(target=serve, name="bench-serve-worker", daemon=True)
            t = time.perf_counter()
            thread.start()
            reader: OutputReader | None = None
            producer: Producer | None = None
            try:
                if not worker.loop.ready.wait(120) or errors:
                    raise RuntimeError("the serve worker did not join its group") from (
                        errors[0] if errors else None
                    )
                log(f"serve worker ready in {time.perf_counter() - t:.1f} s")
                reader = OutputReader(kafka_settings, topics)
                producer = Producer(kafka_settings, name="bench-prompts")
                timeout = args.timeout

                def raw(prompts: list[PromptMessage]) -> PathSample:
                    return run_raw(engine.base, engine.tokenizer, engine.eos_ids, prompts, s)

                def layer(prompts: list[PromptMessage]) -> PathSample:
                    assert producer is not None and reader is not None
                    return run_serve(producer, reader, topics, prompts, timeout)

                paths = {"raw": raw, "selfdistill": layer}
                t = time.perf_counter()
                # One batch each first: lazy initialisation, the handler thread's OpenMP team.
                run_raw(
                    engine.base,
                    engine.tokenizer,
                    engine.eos_ids,
                    make_prompts(s.batch, "warmraw"),
                    replace(s, max_tokens=8),
                )
                layer(make_prompts(s.batch, "warmselfdistill"))
                log("warmed up")
                for rep in range(args.repeats):
                    order = ["raw", "selfdistill"] if rep % 2 == 0 else ["selfdistill", "raw"]
                    for name in order:
                        sample = paths[name](make_prompts(args.prompts, f"r{rep}{name}"))
                        samples[name].append(sample)
                        log(
                            f"  rep {rep + 1}/{args.repeats} {name:11s} "
                            f"{sample.tokens_per_s:7.1f} tokens/s ({sample.tokens} tokens in "
                            f"{sample.seconds:.2f} s) {sample.extra or ''}"
                        )
                phases["throughput"] = round(time.perf_counter() - t, 1)
                if plan is not None:
                    t = time.perf_counter()
                    results["swaps"] = measure_swaps(
                        worker, producer, reader, topics, plan, s.batch, timeout, args.event_at
                    )
                    phases["swaps"] = round(time.perf_counter() - t, 1)
                    log(f"  swap goals {results['swaps']['goals']}")
                    log(f"  swap phase requests {results['swaps']['failures']}")
                if not args.no_latency:
                    t = time.perf_counter()
                    log("serve latency: single prompts, idle engine / verify judging beside")
                    results["latency"] = measure_latency(
                        engine,
                        producer,
                        reader,
                        topics,
                        kafka_settings,
                        str(Path(tmp) / "verify"),
                        args,
                        worker.router.active,
                    )
                    phases["latency"] = round(time.perf_counter() - t, 1)
                results["handler_failures"] = worker.loop.stats.handler_failures
                results["dead_lettered"] = worker.loop.stats.dead_lettered
            finally:
                worker.stop()
                thread.join(120)
                if thread.is_alive():
                    log("warning: the serve worker did not stop within 120 s")
                if producer is not None:
                    producer.close()
                if reader is not None:
                    reader.stop()
                engine.close()
            if errors:
                raise errors[0]

    raw_s, layer_s = samples["raw"], samples["selfdistill"]
    raw_tps = statistics.median(x.tokens_per_s for x in raw_s)
    layer_tps = statistics.median(x.tokens_per_s for x in layer_s)
    raw_pps = statistics.median(args.prompts / x.seconds for x in raw_s)
    layer_pps = statistics.median(args.prompts / x.seconds for x in layer_s)
    # The ratio is the median of the per-repeat ratios: each repeat runs the two paths back
    # to back, so a machine whose speed drifts (a shared 2-core box does) still compares
    # like with like; the alternating order cancels what drift remains within a pair.
    ratios = [b.tokens_per_s / a.tokens_per_s for a, b in zip(raw_s, layer_s, strict=True)]
    pratios = [a.seconds / b.seconds for a, b in zip(raw_s, layer_s, strict=True)]
    ratio = statistics.median(ratios)
    results["throughput"] = {
        "tokens_per_s": {
            "raw": round(raw_tps, 1),
            "selfdistill": round(layer_tps, 1),
            "ratio": round(ratio, 3),
            "ratios": [round(r, 3) for r in ratios],
        },
        "prompts_per_s": {
            "raw": round(raw_pps, 3),
            "selfdistill": round(layer_pps, 3),
            "ratio": round(statistics.median(pratios), 3),
        },
        "meets_target": ratio >= TARGET_RATIO,
        "same_tokens": all(
            a.per_prompt == b.per_prompt for a, b in zip(raw_s, layer_s, strict=True)
        ),
        "samples": {
            name: [
                {
                    "seconds": round(x.seconds, 3),
                    "tokens": x.tokens,
                    "tokens_per_s": round(x.tokens_per_s, 1),
                    **x.extra,
                }
                for x in xs
            ]
            for name, xs in samples.items()
        },
    }
    return results


def fmt_span(x: dict[str, Any]) -> str:
    text = f"{x['what']} {x['called']:+.1f}"
    if x["started"] is not None and x["started"] - x["called"] >= 0.05:
        text += f" (got the engine {x['started']:+.1f})"
    return text + f" → {x['ended']:+.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _med(summary: dict[str, Any], key: str) -> float | None:
    return summary[key]["median"] if key in summary else None


def _x(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}×"


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def swap_lines(sw: dict[str, Any]) -> list[str]:
    idle, fl, fail, goals = sw["idle"], sw["in_flight"], sw["failures"], sw["goals"]
    lines = [
        "",
        f"swaps ({sw['adapter']}; the router keeps {sw['keep_loaded']} adapters loaded), each "
        f"event ~{sw['event_into_batch_s']:g} s into a serve batch of a steady stream; seconds:",
        "",
        "| swap | from | event → active | event → apply called | router.apply | "
        "event → first response | in-flight batch (one chunk) | in-flight end → first | "
        "in-flight batch stepped aside | swap held the engine |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in fl["swaps"]:
        loaded = " (loaded)" if r["action"] == "rollback" and r["version"] != BASE else ""
        lines.append(
            f"| {r['action']} {r['version']}{loaded} | {r['from']} | {r['event_to_active_s']:.2f} "
            f"| {r['event_to_apply_s']:.2f} | {r['router_apply_s']:.2f} "
            f"| {r['event_to_first_response_s']:.2f} | {r['inflight_batch_s']:.2f} "
            f"| {r['inflight_end_to_first_response_s']:.2f} | {r['stepped_aside']}× "
            f"| {r['swap_held_engine_s']:.2f} |"
        )
    lines.append("")
    for action in ("promote", "rollback"):
        f, i = fl[action], idle[action]
        if not f["n"]:
            continue
        ea_f, ea_i = _med(f, "event_to_active_s"), _med(i, "event_to_active_s")
        ap_f, ap_i = _med(f, "router_apply_s"), _med(i, "router_apply_s")
        lines.append(
            f"{action}s, in flight (n={f['n']}) vs idle (n={i['n']}), medians: event → active "
            f"{ea_f:.2f} s (max {f['event_to_active_s']['max']:.2f}) vs {ea_i:.2f} s "
            f"({_x(_ratio(ea_f, ea_i))}); router.apply {ap_f:.2f} s vs {ap_i:.2f} s "
            f"({_x(_ratio(ap_f, ap_i))}); event → first response "
            f"{_med(f, 'event_to_first_response_s'):.2f} s = {f['first_to_chunk_ratio']:.2f}× "
            f"the in-flight chunk ({_med(f, 'inflight_batch_s'):.2f} s)"
        )
    parts = (
        [
            (
                k,
                statistics.median(
                    r["parts_s"][k] for r in idle["swaps"] if r["action"] == "promote"
                ),
                statistics.median(r["parts_s"][k] for r in fl["swaps"] if r["action"] == "promote"),
            )
            for k in ("read", "attach_wait", "attach", "canary_wait", "canary", "unload")
        ]
        if fl["promote"]["n"] and idle["promote"]["n"]
        else []
    )
    if parts:
        f = fl["promote"]
        lines.append(
            "where a promotion's seconds went, medians idle / in flight: "
            + ", ".join(f"{k} {a:.2f} / {b:.2f}" for k, a, b in parts)
            + " (read: files and weights, no lock; attach, canary, unload: holding the model; "
            "the waits: for the batch in flight to step aside after its current forward pass); "
            f"the event landed in the in-flight batch's prefill in {f['event_in_prefill']} of "
            f"{f['n']} (prefill median {_med(f, 'inflight_prefill_s'):.2f} s: one forward pass "
            "over every sample's prompt, which nothing interrupts)"
        )
    lines += [
        "goals: promote → router.active median < 1 s: "
        f"{_yes(goals['promote_active_median_under_1s'])}; first response within one chunk's "
        f"time of the event: {_yes(goals['first_response_within_one_chunk'])}; first response "
        "from the batch right after the in-flight one (which finishes on the old adapter): "
        f"{_yes(goals['first_response_from_next_batch'])}",
        f"requests during the in-flight swaps: {fail['produced']} produced, "
        f"{fail['answered']} answered, {fail['missing']} missing, {fail['duplicated']} answered "
        f"twice, {fail['dead_lettered']} dead-lettered → {fail['failed']} failed (goal 0); "
        f"handler failures {fail['handler_failures']}",
    ]
    if fl["swaps"]:
        first = fl["swaps"][0]
        lines.append(
            f"engine timeline of {first['action']} {first['version']} (s after the event): "
            + "; ".join(fmt_span(x) for x in first["timeline_s_after_event"])
        )
    return lines


CONDITIONS = {
    "idle": "(a) engine otherwise idle",
    "judged": "(b) verify judging beside (serving first)",
    "neutral": "(c) verify judging, no priorities (informational)",
}


def latency_lines(lt: dict[str, Any]) -> list[str]:
    j = lt["judge"]
    lines = [
        "",
        f"serve latency: {lt['prompts']} single prompts, each produced once the previous answer "
        f"was visible (one batch of 1 prompt each), serving {lt['serving']}; produced → response "
        "visible read_committed, seconds. Verify: a VerifyWorker on the same engine instance, "
        f"judging a backlog of {j['backlog']} candidates messages ({j['candidates']} candidates, "
        f"v={j['votes']}, reasoning judge, judge_max_tokens {j['judge_max_tokens']}, "
        f"batch {j['batch']})",
        "",
        "| condition | p50 | p95 | max | handler p50 | p50 ÷ (a) | p95 ÷ (a) | "
        "serve call outstanding | verify call outstanding | judge calls (overlapping) | "
        "judge stepped aside | prompts judged |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    idle = lt["idle"]
    for key, label in CONDITIONS.items():
        c = lt.get(key)
        if c is None:
            continue
        judge = c["judge"]
        calls, share = "–", "–"
        if judge is not None:
            share = f"{100 * judge['outstanding_share']:.0f}%"
            calls = f"{judge['calls']}" + "".join(
                f", {n} at {level}" for level, n in judge["levels"].items()
            )
        lines.append(
            f"| {label} | {c['p50_s']:.2f} | {c['p95_s']:.2f} | {c['max_s']:.2f} "
            f"| {c['handler_p50_s']:.2f} | {c['p50_s'] / idle['p50_s']:.2f} "
            f"| {c['p95_s'] / idle['p95_s']:.2f} "
            f"| {100 * c['serve']['outstanding_share']:.0f}% | {share} | {calls} "
            f"| {c['judge_stepped_aside']} | {c['judged_prompts']} |"
        )
    lines += [
        "",
        "same serve tokens per prompt in every condition: "
        + _yes(lt["same_tokens"])
        + f"; judge backlog left at the end: {j['backlog_left']} (0: verify may have run dry)",
    ]
    return lines


def render(results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> str:
    tp = results["throughput"]
    raw, layer = tp["samples"]["raw"], tp["samples"]["selfdistill"]
    wall = sum(x["seconds"] for x in layer)
    gen = sum(x["engine_generate_s"] for x in layer)
    batches = sum(x["batches"] for x in layer)
    lines = [
        f"serve throughput: {args.prompts} prompts × n={args.candidates} samples "
        f"(answer + {args.candidates - 1} candidates), batch size {args.batch_size}, "
        f"max_tokens {args.max_tokens}, temperature {args.temperature}, top_p {args.top_p}, "
        f"seed {args.seed}, {args.partitions} partition(s), {args.repeats} repeat(s)",
        f"model: {results['model']} ({results['dtype']}, cpu, torch threads "
        f"{info['torch_threads']})",
        f"machine: {info['processor']}, nproc={info['nproc']}, python {info['python']}, "
        f"torch {info['torch']}, transformers {info['transformers']}, peft {info['peft']}, "
        f"kafka-python {info['kafka_python']} ({info['platform']})",
        "",
        "raw: model.generate, B prompts × num_return_sequences=n per call, no Kafka; "
        "selfdistill: prompts → embedded broker → ServeWorker (transactional) → responses "
        "visible read_committed",
        "",
        "| path | raw | selfdistill | ratio (serve/raw) |",
        "|---|---:|---:|---:|",
    ]
    mark = "" if tp["meets_target"] else " ✗"
    t, p = tp["tokens_per_s"], tp["prompts_per_s"]
    lines.append(
        f"| generated tokens/s | {t['raw']:.1f} | {t['selfdistill']:.1f} | {t['ratio']:.2f}{mark} |"
    )
    lines.append(f"| prompts/s | {p['raw']:.2f} | {p['selfdistill']:.2f} | {p['ratio']:.2f} |")
    lines += [
        "",
        "tokens/s are medians over repeats; the ratio is the median of the per-repeat ratios "
        f"({', '.join(f'{r:.2f}' for r in t['ratios'])})",
        "per repeat, raw / selfdistill seconds: "
        + ", ".join(
            f"{a['seconds']:.1f} / {b['seconds']:.1f}" for a, b in zip(raw, layer, strict=True)
        )
        + f"; tokens {raw[0]['tokens']} / {layer[0]['tokens']} "
        f"(counter {layer[0]['counter_tokens']})",
        f"selfdistill wall {wall:.2f} s = engine.generate {gen:.2f} s over {batches} batches "
        f"+ Kafka/loop {wall - gen:.2f} s ({(wall - gen) / max(batches, 1):.3f} s per batch)",
        "same tokens per prompt on both paths: "
        + ("yes" if tp["same_tokens"] else "no (batch composition or sampling differed)"),
    ]
    if "swaps" in results:
        lines += swap_lines(results["swaps"])
    if "latency" in results:
        lines += latency_lines(results["latency"])
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in results["phases_s"].items())
    lines += [
        "",
        f"target: ratio ≥ {TARGET_RATIO} — {'met' if tp['meets_target'] else 'NOT met'}",
        f"phases: {phases}",
    ]
    return "\n".join(lines)


def swap_rows(sw: dict[str, Any]) -> list[dict[str, Any]]:
    """Swap latency in flight against the idle engine, the first response against one chunk,
    and the requests the swaps cost."""
    idle, fl, fail, goals = sw["idle"], sw["in_flight"], sw["failures"], sw["goals"]
    rows = []
    idle_name = "the same kind of swap on the idle engine"
    lr = "lower is better"
    for action, what in (("promote", "promotion"), ("rollback", "rollback")):
        f, i = fl[action], idle[action]
        if not f["n"] or not i["n"]:
            continue
        sizes = f"medians of {f['n']} in flight, {i['n']} idle"
        ea_f, ea_i = _med(f, "event_to_active_s"), _med(i, "event_to_active_s")
        ap_f, ap_i = _med(f, "router_apply_s"), _med(i, "router_apply_s")
        deliver = _med(f, "event_to_apply_s")
        if action == "promote":
            goal = (
                "goal median < 1 s: "
                + ("met" if goals["promote_active_median_under_1s"] else "missed")
                + "; "
            )
            apply = f"router.apply {ap_f:.2f} s vs {ap_i:.2f} s idle (next row)"
        else:
            goal = ""
            apply = (
                "to a version still loaded and to the base: no load, no canary, no engine "
                f"call (router.apply {ap_f:.3f} s)"
            )
        rows.append(
            result_row(
                f"adapter {what}, a serve batch in flight: event → router.active",
                "s",
                f"{idle_name}: event → router.active",
                ea_i,
                ea_f,
                target=None,
                notes=f"{lr}; {goal}{sizes}, max {f['event_to_active_s']['max']:.2f} s; of it "
                f"Kafka delivery (event → router.apply called) {deliver:.2f} s; {apply}",
            )
        )
        if action == "promote" and ap_i:
            wait_f, wait_i = (
                statistics.median(
                    r["parts_s"]["attach_wait"] + r["parts_s"]["canary_wait"]
                    for r in side["swaps"]
                    if r["action"] == "promote"
                )
                for side in (fl, idle)
            )
            rows.append(
                result_row(
                    "adapter promotion, a serve batch in flight: router.apply "
                    "(verify + attach + canary)",
                    "s",
                    f"{idle_name}: router.apply",
                    ap_i,
                    ap_f,
                    target=None,
                    notes=f"{lr}; {sizes}, max {f['router_apply_s']['max']:.2f} s; "
                    "SwapResult.seconds (hashing and reading outside the engine lock, attach "
                    "and canary at swap priority); the batch in flight stepped aside "
                    f"{_med(f, 'stepped_aside'):.0f}× per promotion (median), the swap held "
                    f"the engine {_med(f, 'swap_held_engine_s'):.2f} s (attach + canary + "
                    "unloading the evicted adapter) and waited for it "
                    f"{wait_f:.2f} s vs {wait_i:.2f} s idle; the event fell in the batch's "
                    f"prefill (one uninterruptible forward pass, median "
                    f"{_med(f, 'inflight_prefill_s'):.2f} s) in {f['event_in_prefill']} of "
                    f"{f['n']}",
                )
            )
        chunk = _med(f, "inflight_batch_s")
        first = _med(f, "event_to_first_response_s")
        rows.append(
            result_row(
                f"adapter {what}, a serve batch in flight: event → first response on the new "
                f"{'adapter' if action == 'promote' else 'target'}",
                "s",
                "one chunk: the engine time of the serve batch in flight at the event",
                chunk,
                first,
                ratio=f["first_to_chunk_ratio"],
                target=None,
                notes=f"{lr}; ratio: median of per-swap ratios; {f['n']} swaps; goal first "
                "response within one chunk's time of the event: "
                + ("met" if f["first_within_chunk"] == f["n"] else "missed")
                + f" ({f['first_within_chunk']} of {f['n']}); the batch in flight finishes "
                "on the old adapter (by design), the first response comes from the next batch "
                f"in {f['first_from_next_batch']} of {f['n']} "
                "(in-flight end → first response "
                f"{_med(f, 'inflight_end_to_first_response_s'):.2f} s, "
                f"the new adapter's first batch {_med(f, 'first_batch_s'):.2f} s); events "
                f"{_med(f, 'event_into_batch_s'):.2f} s into the batch",
            )
        )
    if fail["produced"]:
        rows.append(
            result_row(
                "hot-swaps under load: requests failed or missing (no response, two, or "
                "dead-lettered)",
                "requests",
                "prompts produced during the in-flight swaps",
                fail["produced"],
                fail["failed"],
                target=None,
                notes="goal 0: "
                + ("met" if goals["no_failed_requests"] else "missed")
                + f"; {fail['answered']} answered, {fail['missing']} missing, "
                f"{fail['duplicated']} answered twice, {fail['dead_lettered']} on prompts.dlq; "
                f"serve handler failures {fail['handler_failures']}",
            )
        )
    return rows


def latency_rows(lt: dict[str, Any]) -> list[dict[str, Any]]:
    idle, judged, neutral = lt["idle"], lt["judged"], lt.get("neutral")
    j = lt["judge"]
    share = (judged["judge"] or {}).get("outstanding_share", 0.0)
    common = (
        f"{lt['prompts']} single prompts per condition, each after the previous answer (one "
        "batch of 1 prompt × n), the idle ones half before and half after; verify: a "
        "VerifyWorker on the same engine instance judging a backlog "
        f"({j['candidates']} candidates, v={j['votes']}, reasoning judge, "
        f"{j['judge_max_tokens']} tokens, batch {j['batch']}), a judge call outstanding "
        f"{100 * share:.0f}% of the time (serve's {100 * judged['serve']['outstanding_share']:.0f}"
        f"%), {judged['judge_stepped_aside']} step-asides for serve, "
        f"{judged['judged_prompts']} prompts judged meanwhile; same serve tokens in every "
        f"condition: {_yes(lt['same_tokens'])}"
    )
    rows = []
    for q, key, nkey in (
        ("p50", "p50_s", "neutral_ratio_p50"),
        ("p95", "p95_s", "neutral_ratio_p95"),
    ):
        before = (
            f"; (c) informational, the cascade at serve priority (no priorities): {q} "
            f"{neutral[key]:.2f} s, ratio {lt[nkey]:.2f}"
            if neutral
            else ""
        )
        rows.append(
            result_row(
                f"serve latency {q}, verify judging on the same engine (serving first)",
                "s",
                f"the same prompts, the engine otherwise idle: {q}",
                idle[key],
                judged[key],
                target=None,
                notes="lower is better; produced → response visible read_committed; "
                f"{'p95 linear between ranks; ' if q == 'p95' else ''}{common}{before}",
            )
        )
    return rows


def report_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Throughput, swaps and latency as bench.report's rows (``bench.common.result_row``)."""
    tp = results["throughput"]
    t, p = tp["tokens_per_s"], tp["prompts_per_s"]
    raw = "plain model.generate (no Kafka)"
    layer = tp["samples"]["selfdistill"]
    wall = sum(x["seconds"] for x in layer)
    outside = wall - sum(x["engine_generate_s"] for x in layer)
    rows = [
        result_row(
            "serve worker: generated tokens/s (Kafka, transactional, candidates)",
            "tokens/s",
            raw,
            t["raw"],
            t["selfdistill"],
            ratio=t["ratio"],
            notes=(
                "ratio: median of per-repeat ratios; same tokens on both paths: "
                + ("yes" if tp["same_tokens"] else "no")
                + f"; {100 * outside / wall:.1f}% of the worker's wall outside the engine"
            ),
        ),
        result_row(
            "serve worker: prompts/s",
            "prompts/s",
            raw,
            p["raw"],
            p["selfdistill"],
            ratio=p["ratio"],
            target=None,
            notes="the same runs as tokens/s, counted in prompts",
        ),
    ]
    if "swaps" in results:
        rows += swap_rows(results["swaps"])
    if "latency" in results:
        rows += latency_rows(results["latency"])
    return rows


def report_conditions(
    results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]
) -> list[str]:
    """The run's sizes for bench.report."""
    out = [
        f"{results['model']}: {results['dtype']}, cpu, torch threads {info['torch_threads']}",
        f"{args.prompts} prompts × n={args.candidates} samples, batch size {args.batch_size}, "
        f"max_tokens {args.max_tokens}, temperature {args.temperature}, top_p {args.top_p}, "
        f"seed {args.seed}, {args.partitions} partition(s)",
        f"{args.repeats} repeat(s) after one warm-up batch per path, order alternating",
    ]
    if "swaps" in results:
        sw = results["swaps"]
        out.append(
            f"swaps: {sw['adapter']}, sha256-checked, applied by the worker's adapter-event "
            f"follower; idle: one untimed warm-up promotion, then {args.promotions} "
            f"promotion(s) + {args.rollbacks} rollback(s); in flight: {args.promotions} + "
            f"{args.rollbacks}, each ~{args.event_at:g} s into a serve batch of a steady stream "
            "(from its second batch), the next after the first response on the previous "
            "target; rollbacks alternate between the newest other adapter still loaded (keep "
            f"{sw['keep_loaded']}) and the base"
        )
    if "latency" in results:
        lt = results["latency"]
        j = lt["judge"]
        out.append(
            f"serve latency: {lt['prompts']} single prompts per condition after one untimed "
            f"prompt, each produced once the previous answer is visible, serving "
            f"{lt['serving']}; (a) idle engine, half before (b) and (c), half after, (b) a "
            "VerifyWorker on the same engine judging a backlog of "
            f"{j['backlog']} candidates messages (bench.verify's arithmetic pool, "
            f"{j['candidates']} candidates, v={j['votes']}, judge_max_tokens "
            f"{j['judge_max_tokens']}, infer_max_tokens {j['infer_max_tokens']}, batch "
            f"{j['batch']}), (c) as (b) with daemon.verifying.cascade.BACKGROUND patched to SERVE"
        )
    phases = ", ".join(f"{k} {v:.0f} s" for k, v in results["phases_s"].items())
    out.append(f"phases: {phases}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=16, help="prompts per path per run")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="prompts per generate call (raw) = kafka.batch_size (serve)",
    )
    ap.add_argument(
        "--candidates",
        type=int,
        default=4,
        help="samples per prompt, n = answer + extra candidates",
    )
    ap.add_argument("--max-tokens", type=int, default=48, help="max new tokens per sample")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0, help="sampling seed of both paths")
    ap.add_argument(
        "--partitions",
        type=int,
        default=1,
        help="partitions of the data topics (1 keeps serve batches = raw batches)",
    )
    ap.add_argument("--repeats", type=int, default=1, help="alternating runs; median reported")
    ap.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="longest wait for one run's responses, in seconds",
    )
    ap.add_argument("--no-swap", action="store_true", help="skip the swap-latency measurement")
    ap.add_argument(
        "--promotions",
        type=int,
        default=3,
        help="promotions of fresh adapters, idle and again with a batch in flight",
    )
    ap.add_argument(
        "--rollbacks",
        type=int,
        default=2,
        help="rollbacks after them, idle and in flight (to a loaded adapter, to the base, …)",
    )
    ap.add_argument(
        "--event-at",
        type=float,
        default=1.0,
        help="seconds into a serve batch at which each in-flight swap event is produced",
    )
    ap.add_argument(
        "--no-latency", action="store_true", help="skip the serve latency beside verify"
    )
    ap.add_argument(
        "--latency-prompts", type=int, default=12, help="single prompts per latency condition"
    )
    ap.add_argument(
        "--no-neutral",
        action="store_true",
        help="skip latency condition (c): verify judging with priorities neutralised",
    )
    ap.add_argument(
        "--judge-backlog",
        type=int,
        default=48,
        help="candidates messages queued for the verify worker (it must never run dry)",
    )
    ap.add_argument(
        "--judge-batch", type=int, default=2, help="the verify worker's kafka.batch_size"
    )
    ap.add_argument("--judge-max-tokens", type=int, default=48, help="the judge's longest output")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if (
        min(
            args.prompts,
            args.batch_size,
            args.candidates,
            args.max_tokens,
            args.repeats,
            args.partitions,
            args.promotions,
            args.latency_prompts,
            args.judge_backlog,
            args.judge_batch,
            args.judge_max_tokens,
        )
        < 1
    ):
        ap.error(
            "--prompts, --batch-size, --candidates, --max-tokens, --repeats, --partitions, "
            "--promotions, --latency-prompts and the --judge-* sizes must be positive"
        )
    if args.rollbacks < 0:
        ap.error("--rollbacks must not be negative")
    if args.temperature <= 0:
        ap.error("--temperature must be positive (the bench samples)")
    for name in [n for n in os.environ if n.startswith("SELFDISTILL_")]:
        log(f"ignoring {name} (the bench builds its own settings)")
        del os.environ[name]

    started = now()
    quiet()
    info = machine("torch", "transformers", "peft")
    results = run_bench(args)
    print(render(results, args, info))
    write_result(
        args,
        "serve",
        info,
        started,
        results,
        report_rows(results),
        report_conditions(results, args, info),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
