"""Judge cost of the verify cascade (early exit vs naive) and the verify worker's throughput.

One run, one model (the embedded SmolLM2-135M-Instruct, on the CPU), the same candidates
(arithmetic questions with plausible answers, some right, some wrong, in varying order):

1. **Cost at identical decisions.** The NAIVE full cascade is run first: every candidate of
   every prompt gets the inferred question and ``v`` votes in each of the 3 stages, no early
   exit, every vote recorded (a candidate is valid iff its inferred question is non-empty and
   all its votes are yes; first-valid keeps the first valid one). From those very votes the
   bench derives what the project's early exit (policy first-valid, ``votes_per_round`` 1)
   needs to reach the same decisions: a candidate's votes are read in order and stop at the
   first no (or unparseable); a prompt's candidates stop at the first accepted one. Judge
   calls and judge tokens (generated) per candidate are compared — the same decisions by
   construction, so this is the apples-to-apples comparison. The naive run samples its ``v``
   votes of a stage as one ``n=v`` request and lets each round batch (one
   ``torch.manual_seed`` per run instead of one seed per request); that changes its wall time,
   not its calls or tokens.
   Then the real project ``Cascade`` (same config and seed, its own sampling) judges the same
   candidates; its calls/tokens are reported, and whether its decisions matched the naive
   ones (they need not: its votes are different samples).
2. **Worker throughput.** The project cascade run above is recorded round by round (the
   engine instance's ``generate`` is wrapped to observe). **raw** replays exactly those
   ``ChatRequest`` lists through ``TransformersEngine.generate``, round by round, no Kafka.
   **selfdistill** is a ``VerifyWorker`` over the same engine, consuming the same
   ``CandidatesMessage`` s (pre-produced to a 1-partition topic of an embedded broker, so one
   poll holds the whole batch, in order) and publishing each prompt's verdict to a verdicts
   topic in a Kafka transaction with the consumed offsets; timed from the group being ready
   (``loop.ready``) to the commit of the batch holding the last message. A ``StoreWriter``
   then materialises the verdicts into a temporary SQLite file (untimed: the store writer is
   its own process in the daemon, and its own bench, ``bench.verify_scale``). Judge tokens:
   what the engine generated (the same count on both paths), checked against the sum of
   ``votes.completion_tokens`` in the store (equal for reasoning votes; the store books a
   fast-judge vote as one token each) and the ``selfdistill_judge_tokens_total`` counter
   (prompt + completion tokens, as booked in the store). With a fixed seed the worker issues
   the very same requests, so both paths generate the same tokens; the report says whether
   they did. With ``--repeats`` the order of the two paths alternates and the median of the
   per-repeat ratios is reported. The worker's own split (wall time vs time inside
   ``engine.generate``) is reported too: it measures the layer's overhead free of the model's
   speed drifting between runs on a CPU shared with other work. ``--batched-replay`` (on by
   default, off with ``--paper``) also replays the rounds with the seeds dropped: what
   ``verify.seed`` costs, since a seed is part of the engine's sampling key (the cascade
   draws one per round, so a round's requests batch either way). Both paths call the engine
   at ``BACKGROUND`` priority, as ``Cascade.run`` does (``daemon.engines.priority``); with
   one caller no generation steps aside, and the report says so.

Two shapes. The default (benchmark ``verify``) is small: 4 prompts × 3 candidates, v = 2.
``--paper`` (benchmark ``verify_paper``, so both can stand in bench/RESULTS.md) is the
paper's budget per prompt: n = 8 candidates, v = 5 votes per stage, reasoning judge; what is
cut to fit about 20 minutes of a 2-core CPU is the number of prompts (3), the judge's token
budgets (the small shape's 48 and 32, so only n and v differ) and the naive full cascade,
which at v = 5 is most of the run's time (every candidate: the inferred question and 15
votes, ~4 minutes a prompt here): it runs on the first ``--naive-prompts`` prompts (2), and
the judge-cost rows compare on those candidates; its calls per candidate are fixed
(``naive_calls``), its tokens are what it generated there.

Both paths use ``--threads`` torch threads (1 by default: on the shared 2-core box two
OpenMP threads were no faster for this model, and stalled badly whenever another process
took a core).

    PYTHONPATH=. .venv/bin/python -m bench.verify --json bench/results/verify.json
    PYTHONPATH=. .venv/bin/python -m bench.verify --paper --json bench/results/verify_paper.json
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from bench.common import (
    PROBLEMS,
    TARGET_RATIO,
    WORDS,
    log,
    machine,
    now,
    question,
    quiet,
    result_row,
    solve,
    write_result,
)
from daemon.engines.base import ChatRequest, ChatResult
from daemon.engines.priority import BACKGROUND, NAMES, current, priority
from daemon.verifying.cascade import (
    _FAST_PREFIX,
    STAGES,
    Cascade,
    CascadeConfig,
    CascadeInput,
    JudgeCall,
    PromptOutcome,
    naive_calls,
)
from daemon.verifying.verdicts import parse_verdict
from daemon.verifying.worker import question_of
from streams.broker import BrokerConfig, EmbeddedBroker, free_port
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import CandidatesMessage, ChatMessage, Sample, SamplingParams
from streams.topics import TopicsConfig, ensure_topics

# The two shapes the bench runs. SMALL: what `make bench` runs (benchmark "verify").
# PAPER (--paper, benchmark "verify_paper"): the paper's budget per prompt, n = 8
# candidates and v = 5 votes in each of the 3 stages, reasoning judge; what is cut to fit
# about 20 minutes of a 2-core CPU is the number of prompts (and of prompts the naive
# cascade runs on), and the judge's token budgets, which stay the small shape's so that only
# n and v differ between the two.
SMALL: dict[str, int] = {
    "prompts": 4,
    "candidates": 3,
    "votes": 2,
    "max_tokens": 48,
    "infer_max_tokens": 32,
}
PAPER: dict[str, int] = {
    "prompts": 3,
    "candidates": 8,
    "votes": 5,
    "max_tokens": 48,
    "infer_max_tokens": 32,
    "naive_prompts": 2,
}


def shape_name(args: argparse.Namespace) -> str:
    return "paper" if args.paper else "small"


def benchmark_name(args: argparse.Namespace) -> str:
    """The result's name in bench/RESULTS.md (and bench/results/<name>.json)."""
    return "verify_paper" if args.paper else "verify"


def shape_label(args: argparse.Namespace) -> str:
    """How a row names the shape it ran at: n and v, and whether they are the paper's."""
    if args.paper:
        tag = "paper budget"
    elif (args.candidates, args.votes) == (SMALL["candidates"], SMALL["votes"]):
        tag = "small shape"
    else:
        tag = "custom shape"
    return f"{tag}: n={args.candidates}, v={args.votes}"


# ---------------------------------------------------------------------- setup
def candidate_texts(a: int, op: str, b: int, n: int, shift: int) -> list[str]:
    """n distinct plausible answers, right and wrong ones interleaved, rotated by ``shift``."""
    right = solve(a, op, b)
    wrong = right + (1 if right % 2 else -1)  # a near miss
    far = right + 10
    sym = {"*": "×", "/": "÷"}.get(op, op)
    pool = [
        f"{a} {sym} {b} = {wrong}.",
        f"{a} {sym} {b} = {right}.",
        f"We compute {a} {WORDS[op]} {b}. {a} {sym} {b} = {right}. The answer is {right}.",
        f"Working it out step by step, {a} {WORDS[op]} {b} gives {far}. The answer is {far}.",
        f"The answer is {right}.",
        f"I think it is {wrong}, since {a} {sym} {b} is about {wrong}.",
    ]
    rotated = pool[shift % len(pool) :] + pool[: shift % len(pool)]
    out = [rotated[k % len(rotated)] for k in range(n)]
    return [t if k < len(pool) else f"{t} (#{k})" for k, t in enumerate(out)]


def make_messages(
    n_prompts: int, n_cands: int, tokenizer: Any, tag: str, s: Knobs
) -> list[CandidatesMessage]:
    msgs = []
    for i in range(n_prompts):
        a, op, b = PROBLEMS[i % len(PROBLEMS)]
        if i >= len(PROBLEMS):
            a += i // len(PROBLEMS)
        texts = candidate_texts(a, op, b, n_cands, shift=i)
        msgs.append(
            CandidatesMessage(
                id=f"{tag}-{i:04d}",
                messages=[ChatMessage(role="user", content=question(a, op, b))],
                samples=[
                    Sample(text=t, completion_tokens=len(tokenizer.encode(t)), finish_reason="stop")
                    for t in texts
                ],
                sampling=SamplingParams(n=n_cands, temperature=s.temperature, top_p=s.top_p),
                domain="arithmetic",
            )
        )
    return msgs


def inputs_of(msgs: Sequence[CandidatesMessage]) -> list[CascadeInput]:
    """What the verify handler builds from a batch (``VerifyHandler._judge``)."""
    return [CascadeInput(m.id, question_of(m.messages), [x.text for x in m.samples]) for m in msgs]


@dataclass
class Knobs:
    prompts: int
    candidates: int
    votes: int
    max_tokens: int
    infer_max_tokens: int
    temperature: float
    top_p: float
    seed: int
    fast_judge: bool

    def cascade(self) -> CascadeConfig:
        return CascadeConfig(
            votes=self.votes,
            policy="first-valid",
            votes_per_round=1,
            parallel_candidates=1,
            fast_judge=self.fast_judge,
            judge_max_tokens=self.max_tokens,
            infer_max_tokens=self.infer_max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
        )


# ------------------------------------------------------------ 1. the naive cascade
class NaiveCascade(Cascade):
    """The full cascade without early exit: every candidate gets the inferred question and
    ``v`` votes in every stage, whatever the earlier votes said; every vote is recorded."""

    def __init__(self, engine: Any, config: CascadeConfig) -> None:
        super().__init__(
            engine,
            config.model_copy(update={"policy": "all-valid", "votes_per_round": config.votes}),
        )

    def _sampling(self, n: int, max_tokens: int) -> dict[str, object]:
        # One torch.manual_seed per run instead of one seed per request: requests of a
        # round share a sampling key and so one batched generate call.
        return {**super()._sampling(n, max_tokens), "seed": None}

    def _apply(self, item: Any, result: ChatResult) -> None:
        cfg = self.config
        stage = cfg.stages[item.stage]
        outcome = self._stage(item, stage)
        if stage == "cycle" and item.inferred is None:
            c = result.completions[0]
            item.inferred = c.text.strip()  # may be empty: still compared, never valid
            outcome.calls.append(
                JudgeCall(stage, "infer", None, c.text, result.prompt_tokens, c.tokens)
            )
            return
        if cfg.fast_judge:
            verdicts = self._fast_votes(result.completions[0].top_logprobs, cfg.votes)
            texts = [
                f"{_FAST_PREFIX}{'Y' if v else 'N' if v is not None else '?'}]]" for v in verdicts
            ]
            tokens = [1] * cfg.votes
        else:
            verdicts = [parse_verdict(c.text) for c in result.completions]
            texts = [c.text for c in result.completions]
            tokens = [c.tokens for c in result.completions]
        for verdict, text, tok in zip(verdicts, texts, tokens, strict=True):
            outcome.calls.append(JudgeCall(stage, "vote", verdict, text, result.prompt_tokens, tok))
        outcome.passed = all(v is True for v in verdicts) and (
            stage != "cycle" or bool(item.inferred)
        )
        item.stage += 1
        if item.stage == len(cfg.stages):
            item.done = True
            item.out.accepted = all(s.passed for s in item.out.stages)
            if not item.out.accepted:
                item.out.rejected_at = next(s.stage for s in item.out.stages if not s.passed)


@dataclass
class CandidateCost:
    """One candidate's judge cost and fate, under one way of judging."""

    calls: int = 0
    tokens: int = 0  # generated (completion) tokens of the judge
    prompt_tokens: int = 0
    accepted: bool = False
    rejected_at: str | None = None
    stages: list[tuple[str, bool]] = field(default_factory=list)  # (stage, passed), reached


def costs_of(outcome: PromptOutcome) -> list[CandidateCost]:
    """What an outcome actually spent (the naive run, or the project cascade's)."""
    out = []
    for c in outcome.candidates:
        calls = c.calls
        out.append(
            CandidateCost(
                len(calls),
                sum(j.completion_tokens for j in calls),
                sum(j.prompt_tokens for j in calls),
                c.accepted,
                c.rejected_at,
                [(s.stage, s.passed) for s in c.stages],
            )
        )
    return out


def early_exit_from(naive: PromptOutcome, policy: str = "first-valid") -> list[CandidateCost]:
    """What early exit spends to reach the naive run's decisions from the naive run's votes.

    Votes are read in the order they were drawn and stop at the first no (or unparseable);
    an empty inferred question ends the cycle stage after the infer call; under first-valid
    the prompt's later candidates are never judged once one is accepted.
    """
    out: list[CandidateCost] = []
    settled = False
    for c in naive.candidates:
        if settled:
            out.append(CandidateCost(rejected_at="skipped"))
            continue
        if c.rejected_at == "static":
            out.append(CandidateCost(rejected_at="static"))
            continue
        cost = CandidateCost()
        for s in c.stages:
            passed = True
            for j in s.calls:
                cost.calls += 1
                cost.tokens += j.completion_tokens
                cost.prompt_tokens += j.prompt_tokens
                ok = bool(j.output.strip()) if j.kind == "infer" else j.verdict is True
                if not ok:
                    passed = False
                    break
            cost.stages.append((s.stage, passed))
            if not passed:
                cost.rejected_at = s.stage
                break
        cost.accepted = cost.rejected_at is None
        if cost.accepted and policy == "first-valid":
            settled = True
        out.append(cost)
    return out


def kept(costs: Sequence[CandidateCost]) -> int | None:
    """first-valid: the index of the sample a prompt keeps (None: no sample)."""
    return next((i for i, c in enumerate(costs) if c.accepted), None)


def summarise(rows: list[list[CandidateCost]], stages: Sequence[str]) -> dict[str, Any]:
    flat = [c for row in rows for c in row]
    n = len(flat)
    funnel = {}
    for st in stages:
        reached = sum(1 for c in flat for s, _ in c.stages if s == st)
        passed = sum(1 for c in flat for s, p in c.stages if s == st and p)
        funnel[st] = {
            "reached": reached,
            "passed": passed,
            "pass_rate": round(passed / reached, 3) if reached else None,
        }
    judged = sum(1 for c in flat if c.rejected_at not in ("skipped", "static"))
    return {
        "candidates": n,
        "judged": judged,
        "calls": sum(c.calls for c in flat),
        "tokens": sum(c.tokens for c in flat),
        "prompt_tokens": sum(c.prompt_tokens for c in flat),
        "calls_per_candidate": round(sum(c.calls for c in flat) / n, 3),
        "tokens_per_candidate": round(sum(c.tokens for c in flat) / n, 2),
        "prompt_tokens_per_candidate": round(sum(c.prompt_tokens for c in flat) / n, 1),
        "accepted_candidates": sum(c.accepted for c in flat),
        "kept": [kept(row) for row in rows],
        "prompts_with_sample": sum(kept(row) is not None for row in rows),
        "funnel": funnel,
    }


def vote_stats(outcomes: list[PromptOutcome], stages: Sequence[str]) -> dict[str, Any]:
    """Per stage, over every vote of the naive run: yes / no / unparseable."""
    out: dict[str, Any] = {}
    for st in stages:
        votes = [
            j.verdict
            for o in outcomes
            for c in o.candidates
            for s in c.stages
            if s.stage == st
            for j in s.calls
            if j.kind == "vote"
        ]
        out[st] = {
            "votes": len(votes),
            "yes": sum(v is True for v in votes),
            "no": sum(v is False for v in votes),
            "unparseable": sum(v is None for v in votes),
        }
    infers = [
        j
        for o in outcomes
        for c in o.candidates
        for s in c.stages
        for j in s.calls
        if j.kind == "infer"
    ]
    out["empty_inferred"] = sum(1 for j in infers if not j.output.strip())
    return out


# ------------------------------------------------------------ recording the engine
class Recorder:
    """Wraps the engine instance's ``generate`` to note each call's requests, tokens and time
    (observation only: the call runs unchanged). ``close()`` restores the class method."""

    def __init__(self, engine: Any) -> None:
        import torch

        self.engine = engine
        self.rounds: list[list[ChatRequest]] = []
        self.tokens: list[list[list[int]]] = []  # per round, per request: tokens per sample
        self.seconds = 0.0
        self.threads: set[int] = set()  # torch threads seen by the calling threads
        self.levels: set[int] = set()  # engine priorities the calls were made at
        self.prompt_tokens = 0  # read by the engine, once per request
        inner = engine.generate

        def generate(requests: Sequence[ChatRequest]) -> list[ChatResult]:
            self.threads.add(torch.get_num_threads())
            self.levels.add(current())
            t0 = time.perf_counter()
            results = inner(requests)
            self.seconds += time.perf_counter() - t0
            self.rounds.append(list(requests))
            self.tokens.append([[c.tokens for c in r.completions] for r in results])
            self.prompt_tokens += sum(r.prompt_tokens for r in results)
            return results

        engine.generate = generate

    @property
    def completion_tokens(self) -> int:
        return sum(t for rnd in self.tokens for req in rnd for t in req)

    def close(self) -> None:
        del self.engine.generate


# ------------------------------------------------------------ 2. the two paths
@dataclass
class PathSample:
    seconds: float
    tokens: int
    per_round: list[list[list[int]]]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def run_raw(engine: Any, rounds: list[list[ChatRequest]]) -> PathSample:
    """Replay the recorded rounds through ``TransformersEngine.generate``; no Kafka.

    At ``BACKGROUND`` priority, as the cascade calls the engine (``Cascade.run``): the
    engine's lock and its step-aside check between decoding steps are the same on both
    paths (with one caller nobody is more urgent, so neither ever steps aside)."""
    per_round: list[list[list[int]]] = []
    levels: set[int] = set()
    t0 = time.perf_counter()
    with priority(BACKGROUND):
        for requests in rounds:
            levels.add(current())
            results = engine.generate(requests)
            per_round.append([[c.tokens for c in r.completions] for r in results])
    seconds = time.perf_counter() - t0
    tokens = sum(t for rnd in per_round for req in rnd for t in req)
    return PathSample(
        seconds, tokens, per_round, {"rounds": len(rounds), "priority": _level_names(levels)}
    )


def _level_names(levels: set[int]) -> list[str]:
    return [NAMES.get(x, str(x)) for x in sorted(levels)]


def engine_yields(engine: Any) -> int:
    """How often a generation stepped aside for a more urgent caller (0 with one caller)."""
    return int(getattr(getattr(engine, "_lock", None), "yields", 0))


def engine_calls(rounds: list[list[ChatRequest]]) -> int:
    """model.generate calls TransformersEngine makes: one per sampling key per round."""
    return sum(len({r.sampling_key() for r in rnd}) for rnd in rounds)


class _StampedEvent(threading.Event):
    """``loop.ready`` that notes when it was first set."""

    at: float | None = None

    def set(self) -> None:
        if self.at is None:
            self.at = time.perf_counter()
        super().set()


def judge_tokens_counter() -> float:
    return sum(
        REGISTRY.get_sample_value("selfdistill_judge_tokens_total", {"stage": s}) or 0.0
        for s in STAGES
    )


def histogram_sum(name: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_sum", {}) or 0.0


def store_verdicts(settings: Any, n: int, timeout: float) -> tuple[int, float]:
    """What the worker published, into the store: a ``StoreWriter`` on the run's verdicts
    topic until it has applied ``n`` verdicts. Returns (verdicts applied, seconds from its
    ``loop.ready`` to the commit of the batch holding the last one)."""
    from daemon.verifying.store_writer import StoreWriter

    writer = StoreWriter(settings)
    loop = writer.loop
    ready = _StampedEvent()
    loop.ready = ready
    done = threading.Event()
    done_at: list[float] = []
    inner_process = loop._process

    def process(polled: Any) -> None:
        inner_process(polled)  # decode, apply_verdicts (one SQLite transaction), commit
        if not done_at and writer.handler.totals.applied >= n:
            done_at.append(time.perf_counter())
            done.set()

    loop._process = process  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            writer.run(handle_signals=False, topics_ready=True)
        except BaseException as exc:
            errors.append(exc)
            ready.set()
            done.set()

    thread = threading.Thread(target=run, name="bench-store-writer", daemon=True)
    thread.start()
    try:
        finished = done.wait(timeout)
    finally:
        writer.stop()
        thread.join(60)
    if errors:
        raise errors[0]
    if not finished or not done_at or ready.at is None:
        raise TimeoutError(f"the store writer applied {writer.handler.totals.applied} of {n}")
    return writer.handler.totals.applied, done_at[0] - ready.at


def run_worker(
    engine: Any,
    kafka_settings: KafkaSettings,
    msgs: list[CandidatesMessage],
    knobs: Knobs,
    tag: str,
    timeout: float,
) -> tuple[PathSample, dict[str, Any]]:
    """A VerifyWorker over ``engine`` on pre-produced candidates; ready → last commit."""
    from daemon.operating.config import Settings
    from daemon.verifying.worker import VerifyWorker

    topics = TopicsConfig(
        candidates=f"bench-candidates-{tag}", verdicts=f"bench-verdicts-{tag}", partitions=1
    )
    ensure_topics(kafka_settings, topics)
    producer = Producer(kafka_settings, name=f"bench-{tag}")
    try:
        for m in msgs:
            producer.send(topics.candidates, m, key=m.id)
        producer.flush()
    finally:
        producer.close()
    with tempfile.TemporaryDirectory(prefix="bench-verify-") as tmp:
        settings = Settings(
            data_dir=tmp,
            kafka={**kafka_settings.model_dump(), "batch_size": len(msgs)},
            topics=topics.model_dump(),
            verify={
                **knobs.cascade().model_dump(),
                "group_id": f"bench-verify-{tag}",
                "transactional_id": f"bench-verify-{tag}-{os.getpid()}",
            },
            store={"group_id": f"bench-store-{tag}"},
        )
        worker = VerifyWorker(settings, engine)
        loop = worker.loop
        ready = _StampedEvent()
        loop.ready = ready
        done = threading.Event()
        done_at: list[float] = []
        inner_process = loop._process

        def process(polled: Any) -> None:
            inner_process(polled)  # decode, handler (judge), verdicts + offsets committed
            if not done_at and loop.stats.processed >= len(msgs):
                done_at.append(time.perf_counter())
                done.set()

        loop._process = process  # type: ignore[method-assign]
        tokens0 = judge_tokens_counter()
        handler0 = histogram_sum("selfdistill_verify_batch_seconds")
        errors: list[BaseException] = []

        def run() -> None:
            try:
                worker.run(handle_signals=False)
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                done.set()

        thread = threading.Thread(target=run, name=f"bench-verify-{tag}", daemon=True)
        recorder = Recorder(engine)
        try:
            thread.start()
            if not ready.wait(120) or errors:
                raise RuntimeError("the verify worker did not join its group") from (
                    errors[0] if errors else None
                )
            finished = done.wait(timeout)
        finally:
            worker.stop()
            thread.join(120)
            recorder.close()
        if errors:
            raise errors[0]
        if not finished or not done_at or ready.at is None:
            raise TimeoutError(
                f"the worker processed {loop.stats.processed} of {len(msgs)} in {timeout:.0f} s"
            )
        if loop.stats.commit_failures or loop.stats.dead_lettered or loop.stats.handler_failures:
            raise RuntimeError(f"the worker's batch did not go cleanly: {loop.stats}")
        applied, store_seconds = store_verdicts(settings, len(msgs), timeout)
        db = settings.store.path_in(Path(tmp))
        conn = sqlite3.connect(db)
        try:
            v_calls, v_tokens, v_prompt = conn.execute(
                "SELECT count(*), coalesce(sum(completion_tokens), 0), "
                "coalesce(sum(prompt_tokens), 0) FROM votes"
            ).fetchone()
            kept_rows = dict(
                conn.execute("SELECT prompt_id, idx FROM candidates WHERE accepted = 1").fetchall()
            )
        finally:
            conn.close()
    seconds = done_at[0] - ready.at
    extra = {
        "rounds": len(recorder.rounds),
        "torch_threads": sorted(recorder.threads),
        "priority": _level_names(recorder.levels),
        "batches": loop.stats.batches,
        "engine_generate_s": round(recorder.seconds, 3),
        "handler_s": round(histogram_sum("selfdistill_verify_batch_seconds") - handler0, 3),
        "store_writer_s": round(store_seconds, 3),
        "verdicts_applied": applied,
        "engine_prompt_tokens": recorder.prompt_tokens,
        "votes_rows": v_calls,
        "votes_completion_tokens": int(v_tokens),
        "votes_prompt_tokens": int(v_prompt),
        "counter_tokens": int(judge_tokens_counter() - tokens0),
    }
    decisions = {"kept": [kept_rows.get(m.id) for m in msgs], "requests": recorder.rounds}
    # Tokens/s counts what the engine generated, as on the raw path. The votes table books
    # the same number for reasoning votes; a fast-judge request yields all of a stage's
    # remaining votes from one generated token and is booked as one token per vote.
    return PathSample(seconds, recorder.completion_tokens, recorder.tokens, extra), decisions


def phase(rec: Recorder, seconds: float, prompts: int) -> dict[str, Any]:
    """One recorded phase's size and time, for sizing a run (``timings`` in the JSON)."""
    return {
        "seconds": round(seconds, 1),
        "seconds_per_prompt": round(seconds / max(prompts, 1), 1),
        "rounds": len(rec.rounds),
        "requests": sum(len(r) for r in rec.rounds),
        "engine_calls": engine_calls(rec.rounds),
        "completion_tokens": rec.completion_tokens,
        "prompt_tokens": rec.prompt_tokens,
        "engine_generate_s": round(rec.seconds, 1),
    }


# ----------------------------------------------------------------------- main
def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from daemon.engines.model_files import resolve_model_dir
    from daemon.engines.transformers_engine import TransformersEngine

    knobs = Knobs(
        args.prompts,
        args.candidates,
        args.votes,
        args.max_tokens,
        args.infer_max_tokens,
        args.temperature,
        args.top_p,
        args.seed,
        args.fast_judge,
    )
    cfg = knobs.cascade()
    model_dir = resolve_model_dir("embedded")
    t = time.perf_counter()
    engine = TransformersEngine(model_dir, device="cpu")
    timings: dict[str, Any] = {"load_s": round(time.perf_counter() - t, 1)}
    log(f"loaded {model_dir.name} in {timings['load_s']:.1f} s")
    results: dict[str, Any] = {
        "model": model_dir.name,
        "dtype": str(engine.base.dtype).removeprefix("torch."),
        "shape": shape_name(args),
        "timings": timings,
    }
    msgs = make_messages(args.prompts, args.candidates, engine.tokenizer, "c", knobs)
    inputs = inputs_of(msgs)
    n_naive = args.naive_prompts
    stages = list(cfg.stages)
    try:
        # ---- 1a. naive: every vote of every candidate (of the first n_naive prompts)
        t = time.perf_counter()
        torch.manual_seed(args.seed)
        naive_rec = Recorder(engine)
        try:
            naive = NaiveCascade(engine, cfg).run(inputs[:n_naive])
        finally:
            naive_rec.close()
        timings["naive"] = phase(naive_rec, time.perf_counter() - t, n_naive)
        log(f"naive cascade ({n_naive} of {args.prompts} prompts): {timings['naive']}")
        naive_rows = [costs_of(o) for o in naive]
        derived_rows = [early_exit_from(o) for o in naive]
        # Identical decisions by construction; check it.
        for nrow, drow in zip(naive_rows, derived_rows, strict=True):
            if kept(nrow) != kept(drow):
                raise AssertionError("early exit derived a different decision")
        # ---- 1b. the project cascade (its own votes), recorded for the raw replay
        t = time.perf_counter()
        recorder = Recorder(engine)
        try:
            project = Cascade(engine, cfg).run(inputs)
        finally:
            recorder.close()
        timings["project_cascade"] = phase(recorder, time.perf_counter() - t, args.prompts)
        log(
            f"project cascade: {len(recorder.rounds)} rounds "
            f"({sum(len(r) for r in recorder.rounds)} requests): {timings['project_cascade']}"
        )
        project_rows = [costs_of(o) for o in project]
        naive_s = summarise(naive_rows, stages)
        derived_s = summarise(derived_rows, stages)
        project_s = summarise(project_rows, stages)
        results["cost"] = {
            "naive": naive_s,
            "early_exit": derived_s,
            "project_cascade": project_s,
            "naive_calls_formula": naive_calls(cfg),
            "ratio_calls": round(naive_s["calls"] / max(derived_s["calls"], 1), 3),
            "ratio_tokens": round(naive_s["tokens"] / max(derived_s["tokens"], 1), 3),
            "project_matches_naive": project_s["kept"][:n_naive] == naive_s["kept"],
            "naive_prompts": n_naive,
            "prompts": args.prompts,
            "votes": vote_stats(naive, stages),
            "project_rounds": len(recorder.rounds),
            "project_requests": sum(len(r) for r in recorder.rounds),
        }
        rounds = recorder.rounds
        unseeded = [[replace(r, seed=None) for r in rnd] for rnd in rounds]

        # ---- 2. throughput: raw replay vs the worker
        samples: dict[str, list[PathSample]] = {"raw": [], "selfdistill": []}
        worker_kept: list[list[int | None]] = []
        same_requests: list[bool] = []
        with EmbeddedBroker(BrokerConfig(port=free_port())) as broker:
            kafka_settings = KafkaSettings(bootstrap_servers=broker.bootstrap)

            def raw() -> PathSample:
                return run_raw(engine, rounds)

            def layer() -> PathSample:
                tag = f"r{len(samples['selfdistill'])}"
                sample, decisions = run_worker(
                    engine,
                    kafka_settings,
                    # The recorded run's prompt ids: the cascade's seeds are salted by them,
                    # so the worker issues exactly the recorded requests. Each run has its own
                    # topic, group and store, so equal ids cannot collide.
                    make_messages(args.prompts, args.candidates, engine.tokenizer, "c", knobs),
                    knobs,
                    tag,
                    args.timeout,
                )
                worker_kept.append(decisions["kept"])
                same_requests.append(decisions["requests"] == rounds)
                return sample

            paths: dict[str, Callable[[], PathSample]] = {"raw": raw, "selfdistill": layer}
            for rep in range(args.repeats):
                order = ["raw", "selfdistill"] if rep % 2 == 0 else ["selfdistill", "raw"]
                for name in order:
                    sample = paths[name]()
                    samples[name].append(sample)
                    log(
                        f"  rep {rep + 1}/{args.repeats} {name:11s} {sample.tokens_per_s:7.1f} "
                        f"judge tokens/s ({sample.tokens} tokens in {sample.seconds:.2f} s) "
                        f"{sample.extra}"
                    )
            if args.batched_replay:
                # What the same requests cost when a round is one batch: drop the per-request
                # seeds (part of the engine's sampling key), seed torch once instead.
                torch.manual_seed(args.seed)
                batched = run_raw(engine, unseeded)
                timings["batched_replay_s"] = round(batched.seconds, 1)
                log(
                    f"  batched replay   {batched.tokens_per_s:7.1f} judge tokens/s "
                    f"({batched.tokens} tokens in {batched.seconds:.2f} s)"
                )
        yields = engine_yields(engine)
    finally:
        engine.close()

    raw_s, layer_s = samples["raw"], samples["selfdistill"]
    timings["raw_s"] = [round(x.seconds, 1) for x in raw_s]
    timings["worker_s"] = [round(x.seconds, 1) for x in layer_s]
    ratios = [b.tokens_per_s / a.tokens_per_s for a, b in zip(raw_s, layer_s, strict=True)]
    ratio = statistics.median(ratios)
    results["throughput"] = {
        "tokens_per_s": {
            "raw": round(statistics.median(x.tokens_per_s for x in raw_s), 2),
            "selfdistill": round(statistics.median(x.tokens_per_s for x in layer_s), 2),
            "ratio": round(ratio, 3),
            "ratios": [round(r, 3) for r in ratios],
        },
        "meets_target": ratio >= TARGET_RATIO,
        "same_tokens": all(x.per_round == recorder.tokens for x in raw_s + layer_s),
        "same_requests": all(same_requests),
        "worker_matches_project": all(k == project_s["kept"] for k in worker_kept),
        # Both paths call the engine at the cascade's priority (BACKGROUND); with one caller
        # no generation ever steps aside (yields), so the priority lock costs both the same.
        "priority": {
            "raw": sorted({p for x in raw_s for p in x.extra["priority"]}),
            "selfdistill": sorted({p for x in layer_s for p in x.extra["priority"]}),
            "project_cascade": _level_names(recorder.levels),
            "engine_yields": yields,
        },
        "samples": {
            name: [
                {
                    "seconds": round(x.seconds, 3),
                    "tokens": x.tokens,
                    "tokens_per_s": round(x.tokens_per_s, 2),
                    **x.extra,
                }
                for x in xs
            ]
            for name, xs in samples.items()
        },
        # Share of the worker's wall time spent inside engine.generate: what Kafka, the
        # cascade's bookkeeping and the verdicts transaction cost, free of the model's speed
        # drifting between the two paths on a shared CPU.
        "engine_share": [round(x.extra["engine_generate_s"] / x.seconds, 4) for x in layer_s],
    }
    if args.batched_replay:
        results["throughput"]["batched_replay"] = {
            "seconds": round(batched.seconds, 3),
            "tokens": batched.tokens,
            "tokens_per_s": round(batched.tokens_per_s, 2),
            "engine_calls": engine_calls(unseeded),
            "seeded_engine_calls": engine_calls(rounds),
        }
    return results


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def _phase_seconds(timings: dict[str, Any]) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = [("load", timings["load_s"])]
    out += [(k, timings[k]["seconds"]) for k in ("naive", "project_cascade")]
    out += [("raw", "+".join(map(str, timings["raw_s"])))]
    out += [("worker", "+".join(map(str, timings["worker_s"])))]
    if "batched_replay_s" in timings:
        out.append(("batched replay", timings["batched_replay_s"]))
    return out


def render(results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> str:
    c, tp = results["cost"], results["throughput"]
    n, d, p = c["naive"], c["early_exit"], c["project_cascade"]
    total = n["candidates"]
    mode = (
        "fast judge (P(Y) vs P(N) after the verdict prefix)"
        if args.fast_judge
        else "reasoning judge"
    )
    lines = [
        f"verify cascade [{benchmark_name(args)}, {shape_label(args)}]: {args.prompts} prompts × "
        f"{args.candidates} candidates, v={args.votes} "
        f"votes × {len(STAGES)} stages, {mode}, judge_max_tokens {args.max_tokens}, "
        f"infer_max_tokens {args.infer_max_tokens}, temperature {args.temperature}, "
        f"top_p {args.top_p}, seed {args.seed}, {args.repeats} repeat(s)",
        f"model: {results['model']} ({results['dtype']}, cpu, torch threads "
        f"{info['torch_threads']})",
        f"machine: {info['processor']}, nproc={info['nproc']}, python {info['python']}, "
        f"torch {info['torch']}, transformers {info['transformers']}, "
        f"kafka-python {info['kafka_python']} ({info['platform']})",
        "",
        f"1. judge cost per candidate ({total} candidates"
        + (
            f" of the first {c['naive_prompts']} of {c['prompts']} prompts: the naive cascade "
            "ran on those only; the project Cascade row is all prompts"
            if c["naive_prompts"] < c["prompts"]
            else ""
        )
        + f"; naive = {c['naive_calls_formula']} calls each: the inferred question + v votes × "
        "3 stages; tokens = generated judge tokens)",
        "",
        "| cascade | calls/candidate | judge tokens/candidate | prompt tokens/candidate "
        "| valid candidates | prompts with a sample |",
        "|---|---:|---:|---:|---:|---:|",
    ]

    def row(name: str, s: dict[str, Any], valid: str) -> str:
        return (
            f"| {name} | {s['calls_per_candidate']:.2f} | {s['tokens_per_candidate']:.1f} "
            f"| {s['prompt_tokens_per_candidate']:.0f} | {valid} "
            f"| {s['prompts_with_sample']}/{len(s['kept'])} |"
        )

    lines += [
        row("naive (no early exit, all candidates)", n, f"{n['accepted_candidates']}/{total}"),
        row(
            "early exit, first-valid, 1 vote/round (same votes)",
            d,
            f"{d['accepted_candidates']}/{d['judged']} judged",
        ),
        f"| ratio naive / early exit | {c['ratio_calls']:.2f}× | {c['ratio_tokens']:.2f}× | "
        f"{n['prompt_tokens'] / max(d['prompt_tokens'], 1):.2f}× | | |",
        row(
            "project Cascade (its own votes, same seed)",
            p,
            f"{p['accepted_candidates']}/{p['judged']} judged",
        ),
        "",
        f"decisions (kept candidate per prompt, first-valid): naive = early exit = {n['kept']} "
        f"(identical by construction); project Cascade {p['kept'][: len(n['kept'])]} — "
        + (
            "matched"
            if c["project_matches_naive"]
            else "differ: its votes are other samples of the same judge (the early-exit row above is "
            "the apples-to-apples comparison)"
        ),
        "",
        "per-stage pass rates (naive: every candidate reaches every stage; early exit and "
        "project Cascade: passed / reached)",
        "",
        "| stage | naive | early exit | project Cascade | naive votes yes / no / unparseable |",
        "|---|---:|---:|---:|---:|",
    ]
    for st in STAGES:
        if st not in n["funnel"]:
            continue
        a, b, q, v = n["funnel"][st], d["funnel"][st], p["funnel"][st], c["votes"][st]
        lines.append(
            f"| {st} | {a['passed']}/{a['reached']} ({_pct(a['pass_rate'])}) "
            f"| {b['passed']}/{b['reached']} ({_pct(b['pass_rate'])}) "
            f"| {q['passed']}/{q['reached']} ({_pct(q['pass_rate'])}) "
            f"| {v['yes']} / {v['no']} / {v['unparseable']} |"
        )
    lines += [
        f"acceptance: {n['accepted_candidates']}/{total} candidates valid "
        f"({_pct(n['accepted_candidates'] / total)}); {n['prompts_with_sample']}/{len(n['kept'])} "
        f"prompts get a sample; {c['votes']['empty_inferred']} empty inferred question(s)",
        "",
        f"2. judge throughput: the project cascade's {c['project_requests']} requests in "
        f"{c['project_rounds']} rounds; raw = TransformersEngine.generate replay, no Kafka; "
        "selfdistill = embedded broker → VerifyWorker → verdicts (Kafka transaction), "
        "loop.ready → last commit; a StoreWriter then puts the verdicts in SQLite (untimed)",
        "",
        "| path | judge tokens | seconds | judge tokens/s | ratio (worker/raw) |",
        "|---|---:|---:|---:|---:|",
    ]
    raw, layer = tp["samples"]["raw"], tp["samples"]["selfdistill"]
    t = tp["tokens_per_s"]
    mark = "" if tp["meets_target"] else " ✗"
    lines += [
        f"| raw | {raw[0]['tokens']} | {statistics.median(x['seconds'] for x in raw):.2f} "
        f"| {t['raw']:.2f} | |",
        f"| selfdistill | {layer[0]['tokens']} | "
        f"{statistics.median(x['seconds'] for x in layer):.2f} | {t['selfdistill']:.2f} "
        f"| {t['ratio']:.2f}{mark} |",
        "",
        "ratio: median of per-repeat ratios (" + ", ".join(f"{r:.2f}" for r in t["ratios"]) + ")",
    ]
    for x, r in zip(layer, raw, strict=True):
        rest = x["seconds"] - x["engine_generate_s"]
        lines.append(
            f"worker wall {x['seconds']:.2f} s = engine.generate {x['engine_generate_s']:.2f} s "
            f"+ the rest {rest:.2f} s (handler {x['handler_s']:.2f} s; {x['batches']} "
            f"batch(es), {x['rounds']} rounds); "
            f"the raw replay of the same requests took {r['seconds']:.2f} s; the store writer "
            f"then applied {x['verdicts_applied']} verdicts in {x['store_writer_s']:.3f} s"
        )
    share = statistics.median(tp["engine_share"])
    lines.append(
        f"layer overhead (Kafka + cascade bookkeeping + verdicts transaction) = worker wall − "
        f"its engine.generate time: {100 * (1 - share):.2f}% of the wall, i.e. a ratio of "
        f"{share:.3f} if the model ran at the same speed on both paths; the rest of any gap is "
        "the model's own speed varying between runs on this shared CPU"
    )
    if "batched_replay" in tp:
        b = tp["batched_replay"]
        lines.append(
            f"seeded (verify.seed set: one seed per round) the rounds take "
            f"{b['seeded_engine_calls']} model.generate calls; with the seeds dropped "
            f"{b['engine_calls']} calls: {b['tokens_per_s']:.2f} judge "
            f"tokens/s ({b['tokens']} tokens in {b['seconds']:.2f} s; other samples, so other "
            f"token counts) vs {t['raw']:.2f} seeded"
        )
    w = layer[0]
    booked = w["votes_completion_tokens"] + w["votes_prompt_tokens"]
    lines += [
        f"worker tokens: the engine generated {w['tokens']} (and read {w['engine_prompt_tokens']} "
        f"prompt tokens); the store's votes table books {w['votes_completion_tokens']} completion "
        f"+ {w['votes_prompt_tokens']} prompt = {booked} in {w['votes_rows']} rows; "
        f"selfdistill_judge_tokens_total counted {w['counter_tokens']} (prompt + completion)"
        + (
            ""
            if w["votes_completion_tokens"] == w["tokens"]
            else " — the store books each fast-judge vote as 1 token with the whole prompt, though "
            "one request yields all of a stage's remaining votes"
        ),
        "same requests and tokens on both paths as the recorded cascade: "
        + (
            "yes"
            if tp["same_tokens"] and tp["same_requests"]
            else f"no (requests {tp['same_requests']}, tokens {tp['same_tokens']})"
        )
        + "; worker's stored decisions = project Cascade's: "
        + ("yes" if tp["worker_matches_project"] else "no"),
        f"engine priority: raw replay {'/'.join(tp['priority']['raw'])}, worker "
        f"{'/'.join(tp['priority']['selfdistill'])} (as Cascade.run calls it); generations that "
        f"stepped aside for a more urgent caller: {tp['priority']['engine_yields']}",
        "phases (s): " + ", ".join(f"{k} {v}" for k, v in _phase_seconds(results["timings"])),
        "",
        f"target: ratio ≥ {TARGET_RATIO} — {'met' if tp['meets_target'] else 'NOT met'}",
    ]
    return "\n".join(lines)


def report_rows(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Judge cost and worker throughput as bench.report's rows (``bench.common.result_row``).

    The cost rows compare early exit with the naive cascade on the naive run's own votes
    (identical decisions); lower is better there, so they carry no ratio target. Every path
    names the shape it ran at (``shape_label``), so a paper-budget result (``verify_paper``)
    and a small-shape one (``verify``) can stand in one table.
    """
    c, tp = results["cost"], results["throughput"]
    naive, early, project = c["naive"], c["early_exit"], c["project_cascade"]
    judge = "fast judge" if args.fast_judge else f"reasoning judge, {args.max_tokens} tokens"
    shape = shape_label(args)
    naive_name = f"naive full cascade ({c['naive_calls_formula']} calls each)"
    on = (
        f"the first {c['naive_prompts']} of {c['prompts']} prompts ({naive['candidates']} "
        "candidates; the naive cascade ran on those only)"
        if c["naive_prompts"] < c["prompts"]
        else f"every prompt ({naive['candidates']} candidates)"
    )
    same = f"same votes and decisions; lower is better; on {on}"
    t = tp["tokens_per_s"]
    share = statistics.median(tp["engine_share"])
    return [
        result_row(
            f"verify cascade ({shape}), early exit first-valid: judge calls/candidate ({judge})",
            "calls/candidate",
            naive_name,
            naive["calls_per_candidate"],
            early["calls_per_candidate"],
            target=None,
            notes=f"{same}; the project Cascade (its own votes, every prompt): "
            f"{project['calls_per_candidate']:.2f}",
        ),
        result_row(
            f"verify cascade ({shape}), early exit first-valid: judge tokens/candidate ({judge})",
            "tokens/candidate",
            naive_name,
            naive["tokens_per_candidate"],
            early["tokens_per_candidate"],
            target=None,
            notes=f"{same}; the project Cascade (its own votes, every prompt): "
            f"{project['tokens_per_candidate']:.1f}",
        ),
        result_row(
            f"verify worker ({shape}): judge tokens/s (Kafka + cascade + verdicts transaction)",
            "tokens/s",
            "TransformersEngine.generate replay of the same requests (no Kafka)",
            t["raw"],
            t["selfdistill"],
            ratio=t["ratio"],
            notes=(
                "ratio: median of per-repeat ratios; same requests and tokens: "
                + ("yes" if tp["same_tokens"] and tp["same_requests"] else "no")
                + f"; {100 * (1 - share):.2f}% of the worker's wall outside the engine; both "
                "paths at engine priority "
                + "/".join(sorted(set(tp["priority"]["raw"] + tp["priority"]["selfdistill"])))
            ),
        ),
    ]


def report_conditions(
    results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]
) -> list[str]:
    """The run's sizes for bench.report."""
    c, tp = results["cost"], results["throughput"]
    votes = c["votes"]
    unparseable = sum(votes[st]["unparseable"] for st in STAGES if st in votes)
    total = sum(votes[st]["votes"] for st in STAGES if st in votes)
    if args.paper:
        own = [
            f"--{k.replace('_', '-')} {getattr(args, k)}"
            for k in ("prompts", "naive_prompts", "max_tokens", "infer_max_tokens")
            if getattr(args, k) != PAPER[k]
        ]
        shape = (
            f"paper budget shape (--paper): n={args.candidates} candidates per prompt and "
            f"v={args.votes} votes per stage are the paper's, reasoning judge; what is cut to "
            f"fit about 20 minutes on a 2-core CPU: the prompts ({args.prompts}; the paper "
            f"judges its whole prompt set), the naive full cascade (the first "
            f"{args.naive_prompts} of them), judge_max_tokens {args.max_tokens} and "
            f"infer_max_tokens {args.infer_max_tokens} (CascadeConfig defaults 256 and 96"
            + (
                "; the small shape's budgets, so only n and v differ from it)"
                if (args.max_tokens, args.infer_max_tokens)
                == (SMALL["max_tokens"], SMALL["infer_max_tokens"])
                else ")"
            )
            + (f"; set by hand, not the preset: {', '.join(own)}" if own else "")
        )
    else:
        shape = (
            f"{shape_label(args)}, not the paper's budget (bench.verify --paper runs n="
            f"{PAPER['candidates']}, v={PAPER['votes']} as result verify_paper)"
        )
    pr = tp["priority"]
    return [
        shape,
        f"{results['model']}: {results['dtype']}, cpu, torch threads {info['torch_threads']}",
        f"{args.prompts} prompts × {args.candidates} candidates, v={args.votes} votes × "
        f"{len(STAGES)} stages, "
        + ("fast judge" if args.fast_judge else "reasoning judge")
        + f", judge_max_tokens {args.max_tokens}, infer_max_tokens {args.infer_max_tokens}, "
        f"temperature {args.temperature}, seed {args.seed}",
        f"{args.repeats} repeat(s) of raw replay vs worker, order alternating; the worker's "
        f"{c['project_requests']} requests in {c['project_rounds']} rounds; engine priority: "
        f"raw {'/'.join(pr['raw'])}, worker {'/'.join(pr['selfdistill'])} (generations "
        f"that stepped aside: {pr['engine_yields']})",
        f"naive cascade on {c['naive_prompts']} of {c['prompts']} prompts; naive votes "
        f"unparseable: {unparseable} of {total}; prompts with an accepted "
        f"sample: {c['naive']['prompts_with_sample']} of {len(c['naive']['kept'])}",
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--paper",
        action="store_true",
        help=f"the paper's budget shape: n={PAPER['candidates']} candidates per prompt, "
        f"v={PAPER['votes']} votes per stage, reasoning judge; prompts cut to "
        f"{PAPER['prompts']} (the naive cascade to the first {PAPER['naive_prompts']}) to fit "
        "~20 minutes on a 2-core CPU; written as benchmark 'verify_paper'",
    )

    def sized(name: str, text: str) -> None:
        ap.add_argument(
            f"--{name.replace('_', '-')}",
            type=int,
            default=None,
            help=f"{text} (default {SMALL[name]}; --paper: {PAPER[name]})",
        )

    sized("prompts", "prompts (candidate groups)")
    sized("candidates", "n: candidates per prompt")
    sized("votes", "v: votes per stage")
    sized("max_tokens", "judge_max_tokens")
    sized("infer_max_tokens", "infer_max_tokens")
    ap.add_argument(
        "--naive-prompts",
        type=int,
        default=None,
        help="run the naive full cascade (every vote, no early exit: the costly part) on the "
        "first N prompts only; the judge-cost rows compare on those (default: all prompts; "
        f"--paper: {PAPER['naive_prompts']})",
    )
    ap.add_argument("--temperature", type=float, default=0.6, help="judge temperature")
    ap.add_argument("--top-p", type=float, default=0.95, help="judge top_p")
    ap.add_argument("--seed", type=int, default=0, help="the cascade's seed (all runs)")
    ap.add_argument(
        "--fast-judge",
        action="store_true",
        help="votes from P(Y) vs P(N) of the next token (CascadeConfig.fast_judge)",
    )
    ap.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="alternating raw / worker runs; median ratio reported",
    )
    ap.add_argument(
        "--batched-replay",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also replay the rounds with the seeds dropped, torch seeded once instead "
        "(what verify.seed costs; on by default, off with --paper: the cascade seeds per round, "
        "so a round is one generate call either way, and at the paper's shape it would add a "
        "fourth pass over the judge requests)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for both paths (0: torch's default). 1 by "
        "default: on a 2-core box shared with other work, 2 OpenMP threads are no "
        "faster for this model and stall whenever a core is taken",
    )
    ap.add_argument(
        "--timeout", type=float, default=900.0, help="longest wait for one worker run, in seconds"
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    preset = PAPER if args.paper else SMALL
    if args.paper:
        for name in ("candidates", "votes"):
            given = getattr(args, name)
            if given is not None and given != PAPER[name]:
                ap.error(f"--paper fixes --{name} at {PAPER[name]} (the paper's budget)")
        if args.fast_judge:
            ap.error("--paper is the reasoning judge; drop --fast-judge")
    naive_given = args.naive_prompts is not None
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if not naive_given:  # the preset's, or every prompt; never more prompts than there are
        args.naive_prompts = min(args.naive_prompts or args.prompts, args.prompts)
    if args.batched_replay is None:
        args.batched_replay = not args.paper
    if (
        min(
            args.prompts,
            args.candidates,
            args.votes,
            args.max_tokens,
            args.infer_max_tokens,
            args.naive_prompts,
            args.repeats,
        )
        < 1
    ):
        ap.error(
            "--prompts, --candidates, --votes, --max-tokens, --infer-max-tokens, "
            "--naive-prompts and --repeats must be positive"
        )
    if args.naive_prompts > args.prompts:
        ap.error("--naive-prompts cannot exceed --prompts")
    if args.temperature <= 0:
        ap.error("--temperature must be positive (the judge samples its votes)")
    for name in [n for n in os.environ if n.startswith("SELFDISTILL_")]:
        log(f"ignoring {name} (the bench builds its own settings)")
        del os.environ[name]

    started = now()
    quiet()
    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    info = machine("torch", "transformers")
    results = run_bench(args)
    print(render(results, args, info))
    write_result(
        args,
        benchmark_name(args),
        info,
        started,
        results,
        report_rows(results, args),
        report_conditions(results, args, info),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
