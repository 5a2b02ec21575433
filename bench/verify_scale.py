"""Verify scale-out: throughput of 1, 2 and 3 verify processes in one group, and the store
writer's rows/s against raw sqlite-utils inserts of the same rows.

Both on one embedded broker, with an engine of FIXED LATENCY (``FixedLatencyEngine``), so
what is measured is the pipeline (Kafka, the cascade's bookkeeping, the transactions), not
the CPU's speed at running a model:

* The engine sleeps ``--latency-ms`` per ``generate`` call, whatever the call holds: a round
  of the cascade (every pending request of a batch of prompts) costs one latency, as it does
  on a batching server (vLLM) that runs the round's requests side by side. It answers like a
  tiny arithmetic-minded judge: the inferred question of ``a + b = c`` is ``What is a + b?``,
  two questions are the same when their text is, and an answer passes factuality and
  correctness when its sum is right (``[[Y]]``, else ``[[N]]``).

1. **Verify throughput, 1 / 2 / 3 processes.** Each member is a real OS process (``spawn``)
   running a ``VerifyWorker`` with its own ``verify.transactional_id``, all in ONE consumer
   group over a candidates topic of ``--partitions`` partitions. A session starts N members
   on an empty topic and waits until their assignments are balanced (disjoint, covering
   every partition) and unchanged for ``--settle-s``: group joins and rebalances are outside
   the timer. An untimed warm-up burst (``--warmup`` prompts: the members' first
   transactions) follows, then ``--prompts`` candidate groups are produced round-robin over
   the partitions (every member gets the same share) and timed from the first send to the
   last member's commit of the batch that completes them (each member reports
   ``loop.stats.processed`` and the time after every committed transaction;
   ``time.monotonic`` is one clock for every process on Linux). Afterwards the session's
   verdicts topic is read ``read_committed``: every prompt must have exactly one committed
   verdict. ``--repeats`` rounds, each a session with 1, 2 and 3 members (order alternating
   between rounds, so a round's three are measured side by side). Reported: prompts/s per
   member count (median over rounds) and the scaling ratio ``throughput(N) / (N ×
   throughput(1))``: the median of the per-round ratios, with their min–max.
2. **Store writer vs raw sqlite-utils.** ``--verdicts`` verdict messages (the fixed-latency
   engine's cascade run once, ``to_verdict``; every third prompt's first answer is wrong, so
   rejected candidates and their votes are stored too) are produced to a verdicts topic.
   **selfdistill**: a ``StoreWriter`` (``store.batch_size`` = ``--writer-batch-size``), timed
   from ``loop.ready`` to the Kafka commit of the batch holding the last verdict; each batch
   is one SQLite transaction (``apply_verdicts``: ``Store.record_in`` per verdict, and the
   positions). **raw**: the very rows the writer stored (dumped from an untimed warm-up
   writer run's file: prompts, candidates, votes, accepted), inserted with
   ``sqlite_utils.Database(path)[table].insert_all(rows)`` into a fresh file with the same
   schema (``create_schema``) and the same PRAGMAs (WAL, ``synchronous=FULL``, foreign keys),
   one transaction per ``--writer-batch-size`` prompts, in the order the writer applied
   them. Rows/s counts the rows of those four tables on both paths (the writer's
   ``positions`` rows are its bookkeeping, not counted). Each writer run uses a fresh store
   file (a writer with no positions replays the topic from its beginning) and a fresh group;
   the order of the paths alternates; the ratio is the median of per-repeat ratios.

    PYTHONPATH=. .venv/bin/python -m bench.verify_scale --json bench/results/verify_scale.json
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import queue
import re
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import TARGET_RATIO, log, machine, now, result_row, write_result
from daemon.engines.base import ChatRequest, ChatResult, Completion
from daemon.verifying.store import StoreConfig
from streams.broker import BrokerConfig, EmbeddedBroker, free_port
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import CandidatesMessage, ChatMessage, Sample, SamplingParams
from streams.topics import TopicsConfig, ensure_topics

MEMBERS = (1, 2, 3)
DATA_TABLES = ("prompts", "candidates", "votes", "accepted")
_SUM = re.compile(r"(\d+) \+ (\d+) = (\d+)")
_BLOCK = re.compile(r"<<<\n(.*?)\n>>>", re.S)
# What a reasoning judge writes before its verdict (the store keeps it in votes.output).
_REASONING = (
    "Checking the sum digit by digit: the units add up, the tens carry correctly, and "
    "nothing else in the answer makes a claim that could be wrong."
)


# ------------------------------------------------------------------- the engine
class FixedLatencyEngine:
    """An ``Engine`` (``daemon.engines.base``) that sleeps ``latency_s`` per ``generate`` call
    and answers the cascade's four prompts like a tiny judge of sums (see the module doc)."""

    model_name = "fixed-latency"

    def __init__(self, latency_s: float) -> None:
        from daemon.verifying.cascade import load_templates

        self.latency_s = latency_s
        # Each template's fixed opening tells which stage a request is.
        self._openings = {
            name: t.template.split("$", 1)[0][:60] for name, t in load_templates().items()
        }
        self.calls = 0
        self.requests = 0

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        self.calls += 1
        self.requests += len(requests)
        return [self._answer(r) for r in requests]

    def _answer(self, request: ChatRequest) -> ChatResult:
        prompt = request.messages[-1]["content"]
        blocks = _BLOCK.findall(prompt)
        if prompt.startswith(self._openings["infer"]):
            m = _SUM.search(blocks[-1] if blocks else "")
            text = f"What is {m.group(1)} + {m.group(2)}?" if m else "What was asked?"
            return self._result([text], prompt)
        if prompt.startswith(self._openings["compare"]):
            ok = len(blocks) >= 2 and blocks[0].strip() == blocks[1].strip()
        else:  # factuality, correctness: the answer (the last block) adds up
            m = _SUM.search(blocks[-1] if blocks else "")
            ok = bool(m) and int(m.group(1)) + int(m.group(2)) == int(m.group(3))
        verdict = "[[Y]]" if ok else "[[N]]"
        return self._result([f"{_REASONING}\n{verdict}"] * request.n, prompt)

    @staticmethod
    def _result(texts: list[str], prompt: str) -> ChatResult:
        return ChatResult(
            [Completion(t, len(t.split()), "stop") for t in texts],
            prompt_tokens=len(prompt.split()),
        )

    def load_adapter(self, name: str, path: str) -> None:
        raise NotImplementedError("the fixed-latency engine has no adapters")

    def unload_adapter(self, name: str) -> None:
        pass

    def adapters(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


# --------------------------------------------------------------------- messages
def make_candidates(
    n: int, tag: str, samples: int, wrong_every: int = 0
) -> list[CandidatesMessage]:
    """``n`` prompts ``What is a + b?``, each with ``samples`` answers ``a + b = c``; the first
    answer is right, unless ``wrong_every`` says this prompt's first answer is off by one."""
    out = []
    for i in range(n):
        a, b = 17 + i % 83, 25 + (7 * i) % 91
        wrong_first = wrong_every > 0 and i % wrong_every == 0
        texts = []
        for k in range(samples):
            c = a + b + (1 if wrong_first and k == 0 else 0)
            texts.append(f"Adding the two numbers, {a} + {b} = {c}. The answer is {c}. (#{k})")
        out.append(
            CandidatesMessage(
                id=f"{tag}-{i:05d}",
                messages=[ChatMessage(role="user", content=f"What is {a} + {b}?")],
                samples=[Sample(text=t, completion_tokens=16, finish_reason="stop") for t in texts],
                sampling=SamplingParams(n=samples, temperature=0.7, top_p=0.95),
                domain="arithmetic",
            )
        )
    return out


def topics_for(tag: str, partitions: int) -> TopicsConfig:
    return TopicsConfig(
        prompts=f"bvs-prompts-{tag}",
        responses=f"bvs-responses-{tag}",
        candidates=f"bvs-candidates-{tag}",
        verdicts=f"bvs-verdicts-{tag}",
        adapter_events=f"bvs-adapter-events-{tag}",
        adapter_status=f"bvs-adapter-status-{tag}",
        partitions=partitions,
    )


def _ensure_topics(kafka: KafkaSettings, topics: TopicsConfig) -> None:
    """``ensure_topics``, without the ERROR lines kafka-python logs when the embedded broker
    drops the admin client's connection as it closes (harmless: the topics are created)."""
    net = logging.getLogger("kafka.net")
    level = net.level
    net.setLevel(logging.CRITICAL)
    try:
        ensure_topics(kafka, topics)
    finally:
        net.setLevel(level)


def produce(producer: Producer, topic: str, msgs: Sequence[Any], partitions: int) -> None:
    """Send round-robin over the partitions (every member gets the same share), then flush."""
    for i, m in enumerate(msgs):
        producer.send(topic, m, key=m.id, partition=i % partitions)
    sent = producer.flush()
    if sent != len(msgs):
        raise RuntimeError(f"the producer acknowledged {sent} of {len(msgs)}")


def read_keys(kafka: KafkaSettings, topic: str, idle_s: float = 1.5) -> list[str]:
    """The key of every committed record on ``topic`` (read_committed, no group)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(
        **kafka.client_kwargs("bench-reader"),
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        keys: list[str] = []
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            for recs in c.poll(timeout_ms=200).values():
                keys += [r.key.decode() for r in recs]
                last = time.monotonic()
        return keys
    finally:
        c.close(autocommit=False)


def _quiet_logs() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)


def _drop_env() -> None:
    for name in [n for n in os.environ if n.startswith("SELFDISTILL_")]:
        del os.environ[name]


# ---------------------------------------------------- 1. verify, 1 / 2 / 3 processes
def verify_member(conf: dict[str, Any], idx: int, events: Any, stop: Any) -> None:
    """One verify process (the spawn target): a VerifyWorker over the fixed-latency engine,
    reporting its assignment, and its processed count after every committed batch."""
    _quiet_logs()
    _drop_env()
    from daemon.operating.config import Settings
    from daemon.verifying.worker import VerifyWorker

    try:
        settings = Settings(
            data_dir=conf["data_dir"],
            kafka=conf["kafka"],
            topics=conf["topics"],
            verify={**conf["verify"], "transactional_id": conf["transactional_id"]},
            metrics={"enabled": False},
        )
        engine = FixedLatencyEngine(conf["latency_s"])
        worker = VerifyWorker(settings, engine)
        loop = worker.loop
        inner = loop._process

        def process(polled: Any) -> None:
            inner(polled)  # decode, judge, transaction (verdicts + offsets) committed
            events.put(("progress", idx, loop.stats.processed, time.monotonic()))

        loop._process = process  # type: ignore[method-assign]
        errors: list[str] = []

        def run() -> None:
            try:
                worker.run(handle_signals=False, topics_ready=True)
            except BaseException as exc:
                errors.append(repr(exc))

        thread = threading.Thread(target=run, name=f"verify-{idx}", daemon=True)
        thread.start()
        last: tuple[int, ...] | None = None
        while not stop.is_set() and thread.is_alive():
            consumer = loop.consumer
            if consumer is not None and loop.ready.is_set():
                try:
                    parts = tuple(sorted(tp.partition for tp in consumer.assignment()))
                except RuntimeError:  # the set changed under us: look again
                    parts = last
                if parts != last and parts is not None:
                    events.put(("assigned", idx, parts, time.monotonic()))
                    last = parts
            stop.wait(0.05)
        worker.stop()
        thread.join(60)
        stats = asdict(loop.stats)
        stats["engine_calls"] = engine.calls
        stats["engine_requests"] = engine.requests
        events.put(("done", idx, stats, errors))
    except BaseException as exc:
        events.put(("done", idx, {}, [repr(exc)]))


@dataclass
class Members:
    """The parent's view of a session's member processes, from their events."""

    n: int
    partitions: int
    events: Any
    assigned: dict[int, tuple[int, ...]] = field(default_factory=dict)
    reassignments: int = 0
    processed: dict[int, int] = field(default_factory=dict)
    last_at: dict[int, float] = field(default_factory=dict)
    done: dict[int, tuple[dict[str, Any], list[str]]] = field(default_factory=dict)

    def pump(self, timeout: float) -> None:
        try:
            ev = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            kind, idx, *rest = ev
            if kind == "assigned":
                self.assigned[idx] = rest[0]
                self.reassignments += 1
            elif kind == "progress":
                self.processed[idx] = rest[0]
                self.last_at[idx] = rest[1]
            elif kind == "done":
                self.done[idx] = (rest[0], rest[1])
            try:
                ev = self.events.get_nowait()
            except queue.Empty:
                return

    def balanced(self) -> bool:
        parts = [p for a in self.assigned.values() for p in a]
        return (
            len(self.assigned) == self.n
            and all(self.assigned.values())
            and len(parts) == len(set(parts)) == self.partitions
        )

    def total(self) -> int:
        return sum(self.processed.values())

    def failed(self) -> str | None:
        bad = {i: errs for i, (_, errs) in self.done.items() if errs}
        return f"member(s) failed: {bad}" if bad else None


def wait_balanced(members: Members, settle_s: float, timeout: float) -> float:
    """Wait until every member holds a share and nothing moved for ``settle_s``; returns
    when (``time.monotonic``) the balanced assignment began."""
    t0 = time.monotonic()
    since: float | None = None
    moves = members.reassignments
    while time.monotonic() - t0 < timeout:
        members.pump(0.1)
        if members.failed() or len(members.done) == members.n:
            raise RuntimeError(members.failed() or "the members exited before joining")
        if members.reassignments != moves:
            moves, since = members.reassignments, None
        if members.balanced():
            since = since or time.monotonic()
            if time.monotonic() - since >= settle_s:
                return since
        else:
            since = None
    raise TimeoutError(f"{members.n} member(s) not balanced in {timeout:.0f} s: {members.assigned}")


@dataclass
class Burst:
    seconds: float
    produce_s: float
    prompts: int

    @property
    def rate(self) -> float:
        return self.prompts / self.seconds


def _burst(
    members: Members, producer: Producer, topic: str, msgs: list[CandidatesMessage], args: Any
) -> Burst:
    """Produce ``msgs``; wait for the members' commits to cover them; first send → last commit."""
    target = members.total() + len(msgs)
    moves = members.reassignments
    t0 = time.monotonic()
    produce(producer, topic, msgs, args.partitions)
    produced = time.monotonic()
    deadline = t0 + args.timeout
    while members.total() < target:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{members.n} member(s) committed {members.total()} of {target} in "
                f"{args.timeout:.0f} s"
            )
        if members.failed():
            raise RuntimeError(members.failed())
        members.pump(0.05)
    if members.reassignments != moves:
        raise RuntimeError("the group rebalanced during a burst: the timing is void")
    return Burst(max(members.last_at.values()) - t0, produced - t0, len(msgs))


def run_session(
    kafka: KafkaSettings, n: int, args: argparse.Namespace, tag: str, tmp: Path
) -> dict[str, Any]:
    """``n`` verify processes in one group: an untimed warm-up burst, then a timed one."""
    topics = topics_for(tag, args.partitions)
    _ensure_topics(kafka, topics)
    kafka_conf = {**kafka.model_dump(), "batch_size": args.batch_size}
    verify = {
        "votes": args.votes,
        "policy": "first-valid",
        "judge_max_tokens": 64,
        "infer_max_tokens": 32,
        "seed": 0,
        "group_id": f"bvs-verify-{tag}",
    }
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    stop = ctx.Event()
    members = Members(n, args.partitions, events)
    procs = []
    t_start = time.monotonic()
    for i in range(n):
        conf = {
            "data_dir": str(tmp / f"{tag}-{i}"),
            "kafka": kafka_conf,
            "topics": topics.model_dump(),
            "verify": verify,
            # Each process its own transactional id (one per pod in a Deployment).
            "transactional_id": f"bench-verify-{tag}-{i}",
            "latency_s": args.latency_ms / 1000,
        }
        p = ctx.Process(target=verify_member, args=(conf, i, events, stop), name=f"verify-{i}")
        p.start()
        procs.append(p)
    producer = Producer(kafka, name=f"bench-{tag}")
    try:
        join_s = wait_balanced(members, args.settle_s, args.timeout) - t_start
        if args.warmup:
            # The first transactions of a member (producer id, partitions added to the
            # transaction, the first fetches) are start-up, not throughput.
            _burst(
                members,
                producer,
                topics.candidates,
                make_candidates(args.warmup, f"{tag}-w", args.samples),
                args,
            )
        msgs = make_candidates(args.prompts, f"{tag}-b", args.samples)
        burst = _burst(members, producer, topics.candidates, msgs, args)
        log(
            f"  N={n}: {burst.rate:7.1f} prompts/s ({burst.prompts} in {burst.seconds:.2f} s; "
            f"produce {burst.produce_s:.2f} s; joined and balanced after {join_s:.1f} s: "
            f"{dict(sorted(members.assigned.items()))})"
        )
    finally:
        producer.close()
        stop.set()
        deadline = time.monotonic() + 90
        while len(members.done) < n and time.monotonic() < deadline:
            if not any(p.is_alive() for p in procs):
                members.pump(0.5)
                break
            members.pump(0.2)
        for p in procs:
            p.join(max(1.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(10)
    if members.failed():
        raise RuntimeError(members.failed())
    stats = {i: s for i, (s, _) in sorted(members.done.items())}
    for i, s in stats.items():
        bad = {k: s.get(k) for k in ("dead_lettered", "handler_failures", "abandoned") if s.get(k)}
        if bad or s.get("commit_failures"):
            raise RuntimeError(f"member {i} did not go cleanly: {s}")
    keys = read_keys(kafka, topics.verdicts)
    expected = args.warmup + args.prompts
    exactly_once = len(keys) == len(set(keys)) == expected
    if not exactly_once:
        raise RuntimeError(
            f"verdicts: {len(keys)} committed, {len(set(keys))} distinct, {expected} expected"
        )
    return {
        "members": n,
        "prompts_per_s": round(burst.rate, 2),
        "seconds": round(burst.seconds, 3),
        "produce_s": round(burst.produce_s, 3),
        "join_s": round(join_s, 2),
        "assignment": {str(i): list(a) for i, a in sorted(members.assigned.items())},
        "per_member_processed": {str(i): s.get("processed") for i, s in stats.items()},
        "per_member_batches": {str(i): s.get("batches") for i, s in stats.items()},
        "engine_calls": sum(s.get("engine_calls", 0) for s in stats.values()),
        "verdicts_committed": len(keys),
        "exactly_one_verdict_per_prompt": exactly_once,
    }


def run_scale(kafka: KafkaSettings, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """``args.repeats`` rounds; each runs a session per member count, in alternating order,
    so the three of a round are measured side by side."""
    sessions: dict[int, list[dict[str, Any]]] = {n: [] for n in MEMBERS}
    for rep in range(args.repeats):
        order = MEMBERS if rep % 2 == 0 else tuple(reversed(MEMBERS))
        log(f"verify scale-out, round {rep + 1}/{args.repeats}: {order} process(es)")
        for n in order:
            sessions[n].append(run_session(kafka, n, args, f"r{rep}n{n}-{os.getpid()}", tmp))
    rates = {n: [s["prompts_per_s"] for s in ss] for n, ss in sessions.items()}
    out: dict[str, Any] = {
        "prompts_per_s": {str(n): round(statistics.median(r), 2) for n, r in rates.items()},
        "samples": {str(n): r for n, r in rates.items()},
        "sessions": {str(n): ss for n, ss in sessions.items()},
        "exactly_one_verdict_per_prompt": all(
            s["exactly_one_verdict_per_prompt"] for ss in sessions.values() for s in ss
        ),
    }
    for n in MEMBERS[1:]:
        ratios = [x / (n * b) for x, b in zip(rates[n], rates[1], strict=True)]
        out[f"ratio_{n}"] = {
            "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
            "per_repeat": [round(r, 3) for r in ratios],
            "meets_target": statistics.median(ratios) >= TARGET_RATIO,
        }
    return out


# ------------------------------------------------ 2. the store writer vs raw sqlite-utils
def make_verdicts(n: int, tag: str, samples: int, votes: int) -> list[Any]:
    """``n`` verdicts as verify publishes them: the cascade over the fixed-latency engine
    (no latency), every third prompt's first answer wrong (so it is judged and rejected)."""
    from daemon.verifying.cascade import Cascade, CascadeConfig, CascadeInput, question_of
    from daemon.verifying.verdict_message import to_verdict

    msgs = make_candidates(n, tag, samples, wrong_every=3)
    cfg = CascadeConfig(votes=votes, judge_max_tokens=64, infer_max_tokens=32, seed=0)
    inputs = [
        CascadeInput(m.id, question_of(m.messages), [s.text for s in m.samples], domain=m.domain)
        for m in msgs
    ]
    outcomes = Cascade(FixedLatencyEngine(0.0), cfg).run(inputs)
    at = time.time()
    return [
        to_verdict(o, m, policy=cfg.policy, judged_at=at)
        for o, m in zip(outcomes, msgs, strict=True)
    ]


class _StampedEvent(threading.Event):
    """``loop.ready`` that notes when it was first set."""

    at: float | None = None

    def set(self) -> None:
        if self.at is None:
            self.at = time.perf_counter()
        super().set()


@dataclass
class WriterRun:
    seconds: float
    rows: int
    verdicts: int
    batches: list[list[str]]  # the prompt ids of each applied batch, in order
    apply_s: float  # inside apply_verdicts (the SQLite transactions)
    db: Path

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def table_counts(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in DATA_TABLES}


def run_writer(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    n: int,
    args: argparse.Namespace,
    tag: str,
    tmp: Path,
) -> WriterRun:
    """A StoreWriter over the pre-produced verdicts; ready → commit of the last batch."""
    from daemon.operating.config import Settings
    from daemon.verifying import store_writer as sw

    data = tmp / f"writer-{tag}"
    settings = Settings(
        data_dir=data,
        kafka=kafka.model_dump(),
        topics=topics.model_dump(),
        store={"group_id": f"bvs-store-{tag}", "batch_size": args.writer_batch_size},
        metrics={"enabled": False},
    )
    writer = sw.StoreWriter(settings)
    loop = writer.loop
    ready = _StampedEvent()
    loop.ready = ready
    done = threading.Event()
    done_at: list[float] = []
    inner_process = loop._process

    def process(polled: Any) -> None:
        inner_process(polled)  # decode, apply (one SQLite transaction), commit the offsets
        if not done_at and loop.stats.processed >= n:
            done_at.append(time.perf_counter())
            done.set()

    loop._process = process  # type: ignore[method-assign]
    batches: list[list[str]] = []
    apply_s = [0.0]
    inner_handler = writer.handler

    def observed(batch: list[Any]) -> None:
        t0 = time.perf_counter()
        inner_handler(batch)  # apply_verdicts: one SQLite transaction
        apply_s[0] += time.perf_counter() - t0
        batches.append([r.value.id for r in batch])

    loop.handler = observed
    errors: list[BaseException] = []

    def run() -> None:
        try:
            writer.run(handle_signals=False, topics_ready=True)
        except BaseException as exc:
            errors.append(exc)
            ready.set()
            done.set()

    thread = threading.Thread(target=run, name=f"bench-store-{tag}", daemon=True)
    thread.start()
    try:
        if not ready.wait(60) or errors:
            raise RuntimeError("the store writer did not join its group") from (
                errors[0] if errors else None
            )
        finished = done.wait(args.timeout)
    finally:
        writer.stop()
        thread.join(60)
    if errors:
        raise errors[0]
    if not finished or not done_at or ready.at is None:
        raise TimeoutError(f"the writer applied {loop.stats.processed} of {n}")
    if loop.stats.dead_lettered or loop.stats.handler_failures or writer.handler.totals.already:
        raise RuntimeError(f"the writer's batches did not go cleanly: {loop.stats}")
    db = settings.store.path_in(data)
    rows = sum(table_counts(db).values())
    return WriterRun(done_at[0] - ready.at, rows, n, batches, apply_s[0], db)


def dump_rows(db: Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The writer's rows, ``{prompt id: {table: rows}}``, in insertion (rowid) order."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        for table in DATA_TABLES:
            key = "id" if table == "prompts" else "prompt_id"
            for row in con.execute(f"SELECT * FROM {table} ORDER BY rowid"):
                out.setdefault(row[key], {t: [] for t in DATA_TABLES})[table].append(dict(row))
    finally:
        con.close()
    return out


def run_raw(
    rows: dict[str, dict[str, list[dict[str, Any]]]], batches: list[list[str]], path: Path
) -> tuple[float, int]:
    """The same rows into a fresh file: same schema and PRAGMAs, one transaction per batch
    of prompts. Returns (seconds, rows)."""
    from sqlite_utils import Database

    from daemon.verifying.store_schema import create_schema

    db = Database(path)
    try:
        db.enable_wal()
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        with db.atomic():
            create_schema(db, path)
        # Built outside the timer: what a hand-written writer would hold already.
        work = [
            [(t, [r for pid in ids for r in rows[pid][t]]) for t in DATA_TABLES] for ids in batches
        ]
        count = sum(len(rs) for batch in work for _, rs in batch)
        t0 = time.perf_counter()
        for batch in work:
            with db.atomic():
                for table, table_rows in batch:
                    if table_rows:
                        db[table].insert_all(table_rows)
        seconds = time.perf_counter() - t0
    finally:
        db.close()
    if table_counts(path) != table_counts_of(rows):
        raise RuntimeError("the raw path wrote other rows than the writer")
    return seconds, count


def run_raw_kafka(
    kafka: KafkaSettings,
    topic: str,
    rows: dict[str, dict[str, list[dict[str, Any]]]],
    batch_size: int,
    path: Path,
) -> tuple[float, int]:
    """A hand-written writer: raw kafka-python reads every verdict (``read_committed``,
    ``max_records`` = the writer's batch), ``json.loads`` each, and inserts that batch's
    rows (built beforehand, as in :func:`run_raw`) in one transaction. First poll → last
    commit. Returns (seconds, rows)."""
    import json

    from kafka import KafkaConsumer, TopicPartition
    from sqlite_utils import Database

    from daemon.verifying.store_schema import create_schema
    from streams.adapter_events import at_end

    db = Database(path)
    consumer = KafkaConsumer(
        **kafka.client_kwargs("bench-raw-writer"),
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    try:
        db.enable_wal()
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        with db.atomic():
            create_schema(db, path)
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        count = 0
        t0 = done_at = time.perf_counter()
        while True:
            polled = consumer.poll(timeout_ms=500, max_records=batch_size)
            if not polled:
                if all(at_end(consumer, tp) for tp in tps):
                    break
                continue
            ids = [json.loads(r.value)["id"] for recs in polled.values() for r in recs]
            with db.atomic():
                for table in DATA_TABLES:
                    table_rows = [r for pid in ids for r in rows[pid][table]]
                    if table_rows:
                        db[table].insert_all(table_rows)
                        count += len(table_rows)
            done_at = time.perf_counter()  # the last commit; the idle poll after it is not timed
        seconds = done_at - t0
    finally:
        consumer.close()
        db.close()
    if table_counts(path) != table_counts_of(rows):
        raise RuntimeError("the raw Kafka path wrote other rows than the writer")
    return seconds, count


def run_apply(
    verdicts: list[Any], batches: list[list[str]], topic: str, partitions: int, path: Path
) -> tuple[float, int]:
    """The writer's SQLite part alone: ``apply_verdicts`` over the verdicts as decoded records
    (no Kafka, no decoding), in the same batches as the raw path. Returns (seconds, rows)."""
    from daemon.verifying.store import Store
    from daemon.verifying.store_writer import apply_verdicts
    from streams.consumer import Record

    # Where each verdict sits on the topic (produced round-robin): the positions it saves.
    where = {v.id: (i % partitions, i // partitions) for i, v in enumerate(verdicts)}
    by_id = {v.id: v for v in verdicts}
    work = [[Record(topic, *where[pid], pid, by_id[pid]) for pid in ids] for ids in batches]
    with Store(path) as store:
        t0 = time.perf_counter()
        for batch in work:
            apply_verdicts(store, topic, batch)
        seconds = time.perf_counter() - t0
    return seconds, sum(table_counts(path).values())


def table_counts_of(rows: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, int]:
    return {t: sum(len(r[t]) for r in rows.values()) for t in DATA_TABLES}


def decode_seconds(verdicts: list[Any], max_bytes: int) -> float:
    """Seconds to decode every verdict as the writer's loop does (``streams.schemas.decode``:
    JSON + pydantic validation), outside any Kafka: one part of the writer's wall."""
    from streams.schemas import VerdictMessage, decode

    raw = [v.model_dump_json().encode() for v in verdicts]
    t0 = time.perf_counter()
    for b in raw:
        decode(VerdictMessage, b, max_bytes)
    return time.perf_counter() - t0


def run_store(kafka: KafkaSettings, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    tag = f"w-{os.getpid()}"
    topics = topics_for(tag, args.partitions)
    _ensure_topics(kafka, topics)
    verdicts = make_verdicts(args.verdicts, tag, args.samples, args.votes)
    producer = Producer(kafka, name="bench-verdicts")
    try:
        produce(producer, topics.verdicts, verdicts, args.partitions)
    finally:
        producer.close()
    # An untimed writer run first: it warms the page cache and the broker's fetch path, and
    # its file holds the rows the raw path inserts (every run writes the same rows: their
    # times come from the verdicts), in the order the writer applied them.
    warm = run_writer(kafka, topics, len(verdicts), args, f"{tag}-warm", tmp)
    rows = dump_rows(warm.db)
    order_ids = [pid for batch in warm.batches for pid in batch]
    B = args.writer_batch_size
    raw_batches = [order_ids[i : i + B] for i in range(0, len(order_ids), B)]
    samples: dict[str, list[float]] = {"raw": [], "selfdistill": [], "apply": [], "raw_kafka": []}
    runs: list[dict[str, Any]] = []
    paths = ["selfdistill", "raw", "apply", "raw_kafka"]
    for rep in range(args.writer_repeats):
        order = paths[rep % 4 :] + paths[: rep % 4]
        for path in order:
            if path == "selfdistill":
                w = run_writer(kafka, topics, len(verdicts), args, f"{tag}-{rep}", tmp)
                if table_counts(w.db) != table_counts_of(rows):
                    raise RuntimeError("the writer's runs wrote different rows")
                samples["selfdistill"].append(w.rows_per_s)
            elif path == "raw":
                raw_s, raw_rows = run_raw(rows, raw_batches, tmp / f"raw-{tag}-{rep}.db")
                samples["raw"].append(raw_rows / raw_s)
            elif path == "raw_kafka":
                rk_s, rk_rows = run_raw_kafka(
                    kafka, topics.verdicts, rows, B, tmp / f"rawk-{tag}-{rep}.db"
                )
                samples["raw_kafka"].append(rk_rows / rk_s)
            else:
                apply_s, apply_rows = run_apply(
                    verdicts,
                    raw_batches,
                    topics.verdicts,
                    args.partitions,
                    tmp / f"apply-{tag}-{rep}.db",
                )
                samples["apply"].append(apply_rows / apply_s)
        if not raw_rows == apply_rows == w.rows:
            raise RuntimeError(f"rows: raw {raw_rows}, apply {apply_rows}, writer {w.rows}")
        sizes = [len(b) for b in w.batches]
        runs.append(
            {
                "writer_s": round(w.seconds, 3),
                "writer_apply_s": round(w.apply_s, 3),
                "apply_alone_s": round(apply_s, 3),
                "raw_s": round(raw_s, 3),
                "rows": w.rows,
                "verdicts_per_s": round(w.verdicts / w.seconds, 1),
                "batches": len(sizes),
                "mean_batch": round(statistics.mean(sizes), 2),
            }
        )
        log(
            f"  store rep {rep + 1}/{args.writer_repeats} {order}: writer "
            f"{w.rows_per_s:7.0f} rows/s ({w.rows} rows, {w.verdicts} verdicts in "
            f"{w.seconds:.2f} s, of which {w.apply_s:.2f} s in apply_verdicts; "
            f"{len(sizes)} batches); apply_verdicts alone {apply_rows / apply_s:7.0f} rows/s "
            f"({apply_s:.2f} s); raw {raw_rows / raw_s:7.0f} rows/s ({raw_s:.2f} s, "
            f"{len(raw_batches)} transactions)"
        )
    ratios = [s / r for s, r in zip(samples["selfdistill"], samples["raw"], strict=True)]
    kafka_ratios = [
        s / r for s, r in zip(samples["selfdistill"], samples["raw_kafka"], strict=True)
    ]
    apply_ratios = [s / r for s, r in zip(samples["apply"], samples["raw"], strict=True)]
    return {
        "rows_per_s": {
            "raw": round(statistics.median(samples["raw"]), 1),
            "selfdistill": round(statistics.median(samples["selfdistill"]), 1),
        },
        "ratio": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "per_repeat_ratios": [round(r, 3) for r in ratios],
        "meets_target": statistics.median(ratios) >= TARGET_RATIO,
        "raw_kafka": {
            "rows_per_s": round(statistics.median(samples["raw_kafka"]), 1),
            "ratio": round(statistics.median(kafka_ratios), 3),
            "ratio_min": round(min(kafka_ratios), 3),
            "ratio_max": round(max(kafka_ratios), 3),
            "per_repeat_ratios": [round(r, 3) for r in kafka_ratios],
            "meets_target": statistics.median(kafka_ratios) >= TARGET_RATIO,
        },
        "apply": {
            "rows_per_s": round(statistics.median(samples["apply"]), 1),
            "ratio": round(statistics.median(apply_ratios), 3),
            "ratio_min": round(min(apply_ratios), 3),
            "ratio_max": round(max(apply_ratios), 3),
            "per_repeat_ratios": [round(r, 3) for r in apply_ratios],
        },
        "samples": {k: [round(x, 1) for x in v] for k, v in samples.items()},
        "runs": runs,
        "raw_transactions": len(raw_batches),
        "decode_s": round(decode_seconds(verdicts, kafka.max_message_bytes), 3),
        "rows_per_table": table_counts_of(rows),
        "verdict_bytes": len(verdicts[0].model_dump_json()),
    }


# -------------------------------------------------------------------------- main
def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with (
        EmbeddedBroker(BrokerConfig(port=free_port())) as broker,
        tempfile.TemporaryDirectory(prefix="bench-verify-scale-") as tmp_dir,
    ):
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap, connect_timeout_s=20)
        tmp = Path(tmp_dir)
        if not args.skip_scale:
            results["scale"] = run_scale(kafka, args, tmp)
        if not args.skip_store:
            log("store writer vs raw sqlite-utils")
            results["store"] = run_store(kafka, args, tmp)
    return results


def _interval(r: dict[str, Any]) -> str:
    return f"median {r['median']:.2f}, min–max {r['min']:.2f}–{r['max']:.2f}"


def engine_bound(args: argparse.Namespace) -> float:
    """Prompts/s of ONE process if nothing but the engine took time: a full batch per
    ``1 + 3v`` rounds (every prompt's first candidate passes), ``latency`` per round."""
    rounds = 1 + 3 * args.votes
    return args.batch_size / (rounds * args.latency_ms / 1000) if args.latency_ms else 0.0


def _series(xs: Sequence[float]) -> str:
    return ", ".join(f"{x:.1f}" for x in xs)


def render(results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> str:
    lines = [
        f"verify scale-out: fixed-latency engine {args.latency_ms:g} ms per generate call, "
        f"{args.prompts} prompts × {args.samples} candidates per session, v={args.votes}, "
        f"batch size {args.batch_size}, {args.partitions} partitions, {args.repeats} round(s)",
        f"machine: {info['processor']}, nproc={info['nproc']}, python {info['python']}, "
        f"kafka-python {info['kafka_python']} ({info['platform']})",
        "",
    ]
    if "scale" in results:
        sc = results["scale"]
        one = sc["prompts_per_s"]["1"]
        lines += [
            "| processes | prompts/s (median) | per round | N × one | ratio (median, min–max) |",
            "|---:|---:|---|---:|---|",
        ]
        for n in MEMBERS:
            ratio = "" if n == 1 else _interval(sc[f"ratio_{n}"])
            lines.append(
                f"| {n} | {sc['prompts_per_s'][str(n)]:.1f} | {_series(sc['samples'][str(n)])} "
                f"| {n * one:.1f} | {ratio} |"
            )
        lines += [
            "",
            f"one process's bound from the engine alone: {engine_bound(args):.1f} prompts/s; "
            "exactly one committed verdict per prompt in every session: "
            + ("yes" if sc["exactly_one_verdict_per_prompt"] else "NO"),
            "",
        ]
    if "store" in results:
        st = results["store"]
        r, ap = st["rows_per_s"], st["apply"]
        lines += [
            f"store writer: {args.verdicts} verdicts, batch size {args.writer_batch_size}, "
            f"rows {st['rows_per_table']}",
            "",
            "| path | rows/s | per repeat | ratio (median, min–max) |",
            "|---|---:|---|---|",
            f"| raw sqlite-utils insert_all | {r['raw']:,.0f} "
            f"| {_series(st['samples']['raw'])} | |",
            f"| StoreWriter | {r['selfdistill']:,.0f} | {_series(st['samples']['selfdistill'])} "
            f"| {st['ratio']:.2f} ({st['ratio_min']:.2f}–{st['ratio_max']:.2f}) |",
            f"| raw kafka-python + json.loads + insert_all | {st['raw_kafka']['rows_per_s']:,.0f} "
            f"| {_series(st['samples']['raw_kafka'])} | writer ÷ this: "
            f"{st['raw_kafka']['ratio']:.2f} ({st['raw_kafka']['ratio_min']:.2f}–"
            f"{st['raw_kafka']['ratio_max']:.2f}) |",
            f"| apply_verdicts alone (no Kafka) | {ap['rows_per_s']:,.0f} "
            f"| {_series(st['samples']['apply'])} "
            f"| {ap['ratio']:.2f} ({ap['ratio_min']:.2f}–{ap['ratio_max']:.2f}) |",
            "",
        ]
    verdicts = [
        v["meets_target"]
        for v in [*results.get("scale", {}).values(), results.get("store", {})]
        if isinstance(v, dict) and "meets_target" in v
    ]
    lines.append(f"target: ratio ≥ {TARGET_RATIO} — {'met' if all(verdicts) else 'NOT met'}")
    return "\n".join(lines)


def report_rows(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The scale-out ratios and the writer against raw as bench.report's rows."""
    rows = []
    if "scale" in results:
        sc = results["scale"]
        one = sc["prompts_per_s"]["1"]
        for n in MEMBERS[1:]:
            r = sc[f"ratio_{n}"]
            rows.append(
                result_row(
                    f"verify scale-out: {n} verify processes in one group",
                    "prompts/s",
                    f"{n} × one process (one: {one:.1f}, per round {_series(sc['samples']['1'])})",
                    n * one,
                    sc["prompts_per_s"][str(n)],
                    ratio=r["median"],
                    notes=(
                        f"ratio: median of {len(r['per_repeat'])} per-round ratios "
                        f"(min–max {r['min']:.2f}–{r['max']:.2f}); {n} processes per round: "
                        f"{_series(sc['samples'][str(n)])} prompts/s; fixed-latency engine "
                        f"({args.latency_ms:g} ms per generate call; one process's bound "
                        f"{engine_bound(args):.1f} prompts/s); exactly one committed verdict "
                        "per prompt: " + ("yes" if sc["exactly_one_verdict_per_prompt"] else "no")
                    ),
                )
            )
    if "store" in results:
        st = results["store"]
        runs = st["runs"]
        vps = statistics.median(x["verdicts_per_s"] for x in runs)
        share = statistics.median(x["writer_apply_s"] / x["writer_s"] for x in runs)
        wall = statistics.median(x["writer_s"] for x in runs)
        decode = st["decode_s"] / wall
        rest = statistics.median(
            (x["writer_s"] - x["writer_apply_s"] - st["decode_s"]) / x["batches"] for x in runs
        )
        rows.append(
            result_row(
                "store writer: verdicts → SQLite (Kafka + apply_verdicts)",
                "rows/s",
                f"raw sqlite-utils insert_all of the same rows (WAL, synchronous=FULL, "
                f"one transaction per {args.writer_batch_size} prompts)",
                st["rows_per_s"]["raw"],
                st["rows_per_s"]["selfdistill"],
                ratio=st["ratio"],
                notes=(
                    f"ratio: median of {len(st['per_repeat_ratios'])} per-repeat ratios "
                    f"(min–max {st['ratio_min']:.2f}–{st['ratio_max']:.2f}); rows of prompts, "
                    f"candidates, votes, accepted ({sum(st['rows_per_table'].values())} per "
                    f"run); {vps:.0f} verdicts/s; the writer's wall: {100 * share:.0f}% in "
                    f"apply_verdicts (next row), {100 * decode:.0f}% decoding verdicts "
                    f"(JSON + pydantic, {1e6 * st['decode_s'] / args.verdicts:.0f} µs each), the "
                    f"rest ({1000 * rest:.1f} ms per batch) the consumer loop: fetches, the "
                    "handler-thread handoff, an offset commit per batch; the raw path commits as "
                    "many SQLite transactions (synchronous=FULL), so fsync is not the gap"
                ),
            )
        )
        ap = st["apply"]
        rows.append(
            result_row(
                "store writer's SQLite part alone: apply_verdicts of decoded verdicts (no Kafka)",
                "rows/s",
                "raw sqlite-utils insert_all of the same rows (same transactions)",
                st["rows_per_s"]["raw"],
                ap["rows_per_s"],
                target=None,
                ratio=ap["ratio"],
                notes=(
                    f"informational: where the writer's time goes; ratio: median of "
                    f"{len(ap['per_repeat_ratios'])} per-repeat ratios (min–max "
                    f"{ap['ratio_min']:.2f}–{ap['ratio_max']:.2f}); Store.record_many per "
                    "batch (3 SELECTs, then one executemany per table) vs 4 insert_all calls "
                    "per transaction"
                ),
            )
        )
        rk = st["raw_kafka"]
        rows.append(
            result_row(
                "store writer against a hand-written writer: raw kafka-python + sqlite-utils",
                "rows/s",
                "raw kafka-python read_committed poll (same batch), json.loads, insert_all of "
                "the same rows, one transaction per poll",
                rk["rows_per_s"],
                st["rows_per_s"]["selfdistill"],
                ratio=rk["ratio"],
                notes=(
                    f"ratio: median of {len(rk['per_repeat_ratios'])} per-repeat ratios "
                    f"(min–max {rk['ratio_min']:.2f}–{rk['ratio_max']:.2f}); both read the "
                    "same verdicts from the embedded broker; the writer also validates each "
                    "verdict, plans its rows (content keys, first-valid) and saves positions"
                ),
            )
        )
    return rows


def report_conditions(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The run's sizes for bench.report."""
    out = []
    if "scale" in results:
        sc = results["scale"]["sessions"]
        joins = [s["join_s"] for ss in sc.values() for s in ss]
        out += [
            f"verify: FixedLatencyEngine, {args.latency_ms:g} ms per generate call (one cascade "
            f"round of a batch = one call), v={args.votes}, first-valid, {args.samples} "
            f"candidates per prompt, the first right ({1 + 3 * args.votes} rounds per batch)",
            f"each session: N spawned processes, each a VerifyWorker with its own "
            f"transactional id, one group, {args.partitions} partitions, batch size "
            f"{args.batch_size}; {args.warmup} warm-up prompts, then {args.prompts} timed, "
            "produced round-robin over the partitions",
            "timed from the first send (the group joined and balanced, unchanged for "
            f"{args.settle_s:g} s; joins took {min(joins):.1f}–{max(joins):.1f} s, untimed) to "
            f"the member's last committed transaction; {args.repeats} round(s) of N = 1, 2, 3, "
            "the order alternating",
        ]
    if "store" in results:
        st = results["store"]
        runs = st["runs"]
        out.append(
            f"store writer: {args.verdicts} verdicts ({st['verdict_bytes']} B of JSON each) on "
            f"{args.partitions} partitions, batch size {args.writer_batch_size} "
            f"({statistics.median(x['batches'] for x in runs):.0f} batches per run vs raw's "
            f"{st['raw_transactions']} transactions), one untimed warm-up run, then "
            f"{args.writer_repeats} repeat(s), order alternating, a fresh store and group each"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=480, help="candidate groups per burst")
    ap.add_argument("--samples", type=int, default=2, help="candidates per prompt")
    ap.add_argument("--votes", type=int, default=1, help="v: votes per stage")
    ap.add_argument(
        "--latency-ms",
        type=float,
        default=50.0,
        help="the engine's sleep per generate call (one cascade round of a batch)",
    )
    ap.add_argument("--batch-size", type=int, default=8, help="verify kafka.batch_size")
    ap.add_argument("--partitions", type=int, default=6, help="partitions of the topics")
    ap.add_argument(
        "--repeats", type=int, default=3, help="rounds of sessions with 1, 2 and 3 processes"
    )
    ap.add_argument(
        "--warmup", type=int, default=48, help="untimed prompts at the start of each session"
    )
    ap.add_argument(
        "--settle-s", type=float, default=1.0, help="how long the assignment must hold still"
    )
    ap.add_argument("--verdicts", type=int, default=2000, help="verdicts for the store writer")
    ap.add_argument(
        "--writer-batch-size",
        type=int,
        default=StoreConfig().batch_size,
        help="the store writer's store.batch_size (default: the project's, %(default)s)",
    )
    ap.add_argument("--writer-repeats", type=int, default=5, help="writer / raw pairs")
    ap.add_argument("--skip-scale", action="store_true", help="only the store writer")
    ap.add_argument("--skip-store", action="store_true", help="only the verify scale-out")
    ap.add_argument("--timeout", type=float, default=180.0, help="longest wait for one step, s")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if (
        min(
            args.prompts,
            args.samples,
            args.votes,
            args.batch_size,
            args.partitions,
            args.repeats,
            args.verdicts,
            args.writer_batch_size,
            args.writer_repeats,
        )
        < 1
        or args.latency_ms < 0
        or args.warmup < 0
    ):
        ap.error("sizes, repeats and batch sizes must be positive, --latency-ms not negative")
    if args.skip_scale and args.skip_store:
        ap.error("nothing to run")
    if not args.skip_scale and args.partitions < max(MEMBERS):
        ap.error(f"--partitions must be at least {max(MEMBERS)} (one share per member)")
    for name in [n for n in os.environ if n.startswith("SELFDISTILL_")]:
        log(f"ignoring {name} (the bench builds its own settings)")
    _drop_env()
    _quiet_logs()

    started = now()
    info = machine()
    results = run_bench(args)
    print(render(results, args, info))
    write_result(
        args,
        "verify_scale",
        info,
        started,
        results,
        report_rows(results, args),
        report_conditions(results, args),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
