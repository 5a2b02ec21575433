"""Generation throughput of the serve worker against plain transformers, and adapter swap latency.

One run, one model (the embedded SmolLM2-135M-Instruct, on the CPU), the same prompts:

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

Then the swap: while a steady stream of prompts keeps the worker busy (about two batches
always waiting), a promote ``AdapterEvent`` is produced 1 s into a serve batch for a real PEFT
LoRA adapter (``tests.models.build_adapter``, r=8, small random weights, inside the registry,
sha256 recorded); reported are event → ``router.active`` switched (verify + load + canary) and
event → first response on ``responses`` served by the new adapter, with a timeline of who held
the engine when (the engine instance's methods are wrapped to observe, not changed). The
stream stops once the router has switched; the prompts already waiting feed the first batch
on the new adapter.

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from prometheus_client import REGISTRY

from bench.common import TARGET_RATIO, log, machine, now, quiet, result_row, write_result
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
    """Reads ``responses`` and ``candidates`` (read_committed, no group) on its own thread,
    noting when each record became visible."""

    def __init__(self, settings: KafkaSettings, topics: TopicsConfig) -> None:
        self.topics = topics
        kw = settings.client_kwargs("bench-reader")
        kw.update(isolation_level="read_committed", enable_auto_commit=False, fetch_max_wait_ms=100)
        self.consumer = KafkaConsumer(**kw)
        tps = [
            TopicPartition(t, p)
            for t in (topics.responses, topics.candidates)
            for p in range(topics.partitions)
        ]
        self.consumer.assign(tps)
        for tp in tps:  # fresh topics: offset 0 (no ListOffsets round trip)
            self.consumer.seek(tp, 0)
        self.responses: dict[str, tuple[float, ResponseMessage]] = {}
        self.candidates: dict[str, CandidatesMessage] = {}
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

    def answered(self, ids: list[str]) -> int:
        with self.cond:
            return sum(i in self.responses for i in ids)

    def first_on(self, adapter: str, since: float) -> tuple[float, ResponseMessage] | None:
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
class Timeline:
    """Wraps the engine instance's generate / _generate / load_adapter to note who held the
    engine when (observation only: the wrapped methods run unchanged)."""

    def __init__(self, engine: Any) -> None:
        self.spans: list[dict[str, Any]] = []
        self.batch_started: float | None = None  # when the running serve batch got the engine
        self._lock = threading.Lock()
        self._acquired: dict[int, float] = {}
        gen, inner, load = engine.generate, engine._generate, engine.load_adapter

        def generate(requests: Any) -> Any:
            called = time.perf_counter()
            try:
                return gen(requests)
            finally:
                if threading.current_thread().name != "adapter-events":
                    self.batch_started = None
                self._span(
                    "canary"
                    if threading.current_thread().name == "adapter-events"
                    else f"batch on {requests[0].adapter or 'base'}",
                    called,
                )

        def _generate(reqs: Any) -> Any:  # runs under the engine lock
            now = time.perf_counter()
            self._acquired.setdefault(threading.get_ident(), now)
            if threading.current_thread().name != "adapter-events" and self.batch_started is None:
                self.batch_started = now
            return inner(reqs)

        def load_adapter(name: str, path: str) -> None:
            called = time.perf_counter()
            try:
                load(name, path)
            finally:
                self._span("load_adapter", called, started=None)

        engine.generate, engine._generate, engine.load_adapter = generate, _generate, load_adapter

    def _span(self, what: str, called: float, started: float | None = -1.0) -> None:
        ended = time.perf_counter()
        if started is not None:
            started = self._acquired.pop(threading.get_ident(), called)
        with self._lock:
            self.spans.append({"what": what, "called": called, "started": started, "ended": ended})

    def relative(self, t0: float, since: float) -> list[dict[str, Any]]:
        """Spans that ended after ``since``, in seconds after ``t0``."""
        with self._lock:
            spans = [dict(x) for x in self.spans if x["ended"] >= since]
        for x in spans:
            for k in ("called", "started", "ended"):
                if x[k] is not None:
                    x[k] = round(x[k] - t0, 2)
        return sorted(spans, key=lambda x: x["called"])


def measure_swap(
    worker: Any,
    producer: Producer,
    reader: OutputReader,
    topics: TopicsConfig,
    event: AdapterEvent,
    batch: int,
    timeout: float,
) -> dict[str, Any]:
    """Promote ``event.version`` while prompts keep arriving; time switch and first answer."""
    timeline = Timeline(worker.engine)
    # What router.apply returned (the router keeps no record of it): observed, not changed.
    applied: list[Any] = []
    router_apply = worker.router.apply

    def apply(ev: AdapterEvent) -> Any:
        result = router_apply(ev)
        applied.append(result)
        return result

    worker.router.apply = apply
    stop = threading.Event()
    produced: list[str] = []
    lock = threading.Lock()
    stream_errors: list[BaseException] = []

    def stream() -> None:  # keep about two batches waiting, so the worker never idles
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

    streamer = threading.Thread(target=stream, name="bench-stream", daemon=True)
    streamer.start()
    try:
        # Steady state: a batch of the stream generating, the next ones waiting. The event
        # lands 1 s into that batch.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            started = timeline.batch_started
            if started is not None:
                time.sleep(max(0.0, started + 1.0 - time.perf_counter()))
                break
            time.sleep(0.02)
        else:
            raise TimeoutError("the prompt stream did not reach the engine")

        events = Producer(worker.settings.kafka, name="bench-events")
        try:
            events.send(topics.adapter_events, event)
            events.flush()
            t_event = time.perf_counter()
        finally:
            events.close()
        t_active = None
        while time.perf_counter() - t_event < timeout:
            if worker.router.active == event.version:
                t_active = time.perf_counter()
                break
            last = applied[-1] if applied else None
            if last is not None and last.requested == event.version and not last.ok:
                raise RuntimeError(f"the swap was refused: {last.error}")
            time.sleep(0.005)
        if t_active is None:
            raise TimeoutError(f"router did not switch to {event.version} in {timeout:.0f} s")
        # About two batches are waiting: enough for the first batch started on the new
        # adapter. No more are produced, so the worker stops soon after.
        stop.set()
        first = None
        while time.perf_counter() - t_event < timeout:
            first = reader.first_on(event.version, t_event)
            if first is not None:
                break
            time.sleep(0.02)
        if first is None:
            raise TimeoutError(f"no response from {event.version} in {timeout:.0f} s")
    finally:
        stop.set()
        streamer.join(30)
        del worker.router.apply  # the class's method again
    if stream_errors:
        raise stream_errors[0]
    with lock:
        ids = list(produced)
    last = next((r for r in reversed(applied) if r.requested == event.version), None)
    t_start = t_event - 15.0  # the batches around the event
    return {
        "version": event.version,
        "event_to_active_s": round(t_active - t_event, 3),
        "router_apply_s": round(last.seconds, 3) if last is not None else None,
        "event_to_first_response_s": round(first[0] - t_event, 3),
        "first_response_id": first[1].id,
        "first_response_text": first[1].text[:120],
        "stream_prompts": len(ids),
        "timeline_s_after_event": timeline.relative(t_event, t_start),
    }


# ----------------------------------------------------------------------- main
def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    from adapters.files import adapter_digest
    from daemon.engines.model_files import resolve_model_dir
    from daemon.engines.transformers_engine import TransformersEngine
    from daemon.operating.config import Settings
    from daemon.serving.worker import ServeWorker
    from tests.models import build_adapter

    s = Sampling(
        args.batch_size, args.candidates, args.max_tokens, args.temperature, args.top_p, args.seed
    )
    model_dir = resolve_model_dir("embedded")
    results: dict[str, Any] = {"model": model_dir.name, "model_dir": str(model_dir)}
    samples: dict[str, list[PathSample]] = {"raw": [], "selfdistill": []}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        registry = Path(tmp) / "adapters"
        registry.mkdir()
        version = f"{model_dir.name}-sd-v0001"
        t = time.perf_counter()
        build_adapter(model_dir, registry / version, seed=1, r=8, scale=0.02)
        event = AdapterEvent(
            action="promote",
            version=version,
            path=version,
            sha256=adapter_digest(registry / version),
            reason="bench",
        )
        log(f"adapter {version} built in {time.perf_counter() - t:.1f} s")
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
                if not args.no_swap:
                    log("swap: streaming prompts, then promoting the adapter")
                    results["swap"] = measure_swap(
                        worker, producer, reader, topics, event, s.batch, timeout
                    )
                    log(f"  swap {results['swap']}")
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
    if "swap" in results:
        sw = results["swap"]
        lines += [
            "",
            f"swap latency (promote {sw['version']}, LoRA r=8 all-linear, under a steady "
            f"stream): event → router.active {sw['event_to_active_s']:.2f} s "
            f"(router.apply: verify + load + canary, incl. waiting for the engine, "
            f"{sw['router_apply_s']:.2f} s); event → first response from the new adapter "
            f"{sw['event_to_first_response_s']:.2f} s",
            "engine timeline (s after the event): "
            + "; ".join(fmt_span(x) for x in sw["timeline_s_after_event"]),
        ]
    lines += ["", f"target: ratio ≥ {TARGET_RATIO} — {'met' if tp['meets_target'] else 'NOT met'}"]
    return "\n".join(lines)


def report_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Throughput as bench.report's rows (``bench.common.result_row``)."""
    tp = results["throughput"]
    t, p = tp["tokens_per_s"], tp["prompts_per_s"]
    raw = "plain model.generate (no Kafka)"
    layer = tp["samples"]["selfdistill"]
    wall = sum(x["seconds"] for x in layer)
    outside = wall - sum(x["engine_generate_s"] for x in layer)
    return [
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


def report_conditions(
    results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]
) -> list[str]:
    """The run's sizes for bench.report, and the swap latency, which has no raw baseline."""
    out = [
        f"{results['model']}: {results['dtype']}, cpu, torch threads {info['torch_threads']}",
        f"{args.prompts} prompts × n={args.candidates} samples, batch size {args.batch_size}, "
        f"max_tokens {args.max_tokens}, temperature {args.temperature}, top_p {args.top_p}, "
        f"seed {args.seed}, {args.partitions} partition(s)",
        f"{args.repeats} repeat(s) after one warm-up batch per path, order alternating",
    ]
    if "swap" in results:
        sw = results["swap"]
        out.append(
            f"swap latency (no raw baseline): promote event → router.active "
            f"{sw['event_to_active_s']:.2f} s, → first response on the new adapter "
            f"{sw['event_to_first_response_s']:.2f} s (LoRA r=8, under a steady stream)"
        )
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
        )
        < 1
    ):
        ap.error(
            "--prompts, --batch-size, --candidates, --max-tokens, --repeats and "
            "--partitions must be positive"
        )
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
