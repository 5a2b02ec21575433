"""Measuring the verifier: how good are the model's verdicts on its own candidates?

Self-verified distillation is only as good as the cascade's verdicts, and the cascade is
the model judging itself. This module measures it against ground truth: for a labeled set
(question, reference answer, grader: ``daemon/verifying/graders.py``) it samples candidates with the
serving settings, runs the cascade, grades every candidate, and reports how acceptance
lines up with correctness:

* **base rate**: the share of candidates that are correct (what a verifier that accepts
  everything would keep);
* **precision** of acceptance: correct among accepted (the quality of the training data);
* **recall**: accepted among correct (how much good data the verifier throws away);
* **AUC**: whether the verifier's graded confidence ranks correct candidates above wrong
  ones (0.5 is chance), from a score described at :class:`VerifierReport`;
* **judge cost**: judge calls and tokens (prompt + completion), in total and per candidate.

All of it for the whole cascade and for each stage. The measurement judges every candidate
to its end (policy ``all-valid``): acceptance per candidate is what is measured, and what
``first-valid`` would keep is derived from it exactly (:func:`first_valid`, :func:`sweep`).

Tool stages (``checker``, ``execution``: deterministic, their calls have kind ``"tool"``)
appear as stages with their precision and recall, but cost no judge calls or tokens.

This module measures, given an engine, the labeled items and their candidates. Who runs it
and where the numbers go is ``daemon/learning/verifier_gate.py``: ``measure_verifier`` (the
train cycle's verifier gate and ``selfdistill eval verifier``) caches a measurement in the
adapter registry by fingerprint (``verifier_evals``) and exports the ``selfdistill_verifier_*``
gauges. Its config class is mounted by ``daemon/verifying/worker.py`` (``[verify.eval]``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapters.registry import BASE
from daemon.engines.base import ChatRequest, Engine, generate_batched
from daemon.engines.priority import BACKGROUND, priority
from daemon.verifying.cascade import (
    CandidateOutcome,
    Cascade,
    CascadeConfig,
    CascadeInput,
    PromptOutcome,
)
from daemon.verifying.checkers import TOOL_STAGES, applies
from daemon.verifying.graders import LabeledItem, grade, hash_items

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)

TOOL_KIND = "tool"  # JudgeCall.kind of a deterministic tool stage: not a judge call
CASCADE = "cascade"  # the stage label of whole-cascade numbers
Kind = Literal["eval", "sweep", "gate"]


# ---------------------------------------------------------------------------- config
def grid(values: list[int]) -> list[int]:
    if not values:
        raise ValueError("the grid must not be empty")
    return sorted(set(values))


class VerifierEvalConfig(BaseModel):
    """`selfdistill eval verifier`: what the verifier is measured on and at what budget."""

    model_config = ConfigDict(extra="forbid")

    heldout: Path | None = Field(
        None,
        description="Labeled JSONL ({id, question, answer, grader, ...}) the verifier's verdicts "
        "are checked against; default: the bundled task's held-out set.",
    )
    max_items: int | None = Field(
        None, ge=1, description="Use only the first N labeled items (None: all)."
    )
    candidates: int | None = Field(
        None,
        ge=1,
        le=64,
        description="Candidates sampled per item (None: what serve samples, "
        "serve.extra_candidates + 1).",
    )
    sweep_candidates: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        default_factory=lambda: [1, 4, 8],
        description="--sweep: candidates per prompt (n) to compare (the paper: 1, 4, 8).",
    )
    sweep_votes: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        default_factory=lambda: [1, 3, 5],
        description="--sweep: votes per stage (v) to compare (the paper: 1, 3, 5).",
    )
    batch_size: int = Field(
        16, ge=1, description="Items per generate call when sampling, and per cascade run."
    )

    @field_validator("sweep_candidates", "sweep_votes")
    @classmethod
    def _sorted_unique(cls, v: list[int]) -> list[int]:
        return grid(v)


# ------------------------------------------------------------------------- sampling
def sample_candidates(
    engine: Engine,
    items: Sequence[LabeledItem],
    n: int,
    *,
    temperature: float,
    top_p: float,
    max_tokens: int,
    seed: int | None = None,
    adapter: str | None = None,
    batch_size: int = 16,
) -> list[list[str]]:
    """``n`` samples per item, as serve samples them: the question as one user turn."""
    requests = [
        ChatRequest(
            [{"role": "user", "content": item.question}],
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_tokens=max_tokens,
            seed=seed,
            adapter=adapter,
        )
        for item in items
    ]
    from daemon import progress

    out: list[list[str]] = []
    with progress.track(f"sampling {n} candidates per problem", len(requests), "problems") as t:
        for i in range(0, len(requests), batch_size):
            with priority(BACKGROUND):
                results = generate_batched(engine, requests[i : i + batch_size], batch_size)
            out += [[c.text for c in r.completions] for r in results]
            t.advance(len(results))
    return out


# ------------------------------------------------------------------------------ AUC
def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve: P(score of a random positive > of a random negative),
    ties counting one half (the Mann-Whitney U statistic over P x N). None when either
    class is empty. O(n log n): average ranks."""
    if len(scores) != len(labels):
        raise ValueError("scores and labels differ in length")
    pos = sum(1 for x in labels if x)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    rank_sum = 0.0
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        average = (i + j) / 2 + 1  # ranks i+1 .. j+1, averaged over the tie
        rank_sum += average * sum(1 for k in range(i, j + 1) if labels[order[k]])
        i = j + 1
    u = rank_sum - pos * (pos + 1) / 2
    return u / (pos * neg)


def ratio(num: float, den: float) -> float | None:
    return num / den if den else None


# --------------------------------------------------------------------------- reports
@dataclass
class StageReport:
    """One stage's numbers, *conditional on the candidates that reached it* (passed every
    earlier stage): precision is correct among those it passed, recall is passed among the
    correct ones it saw, AUC ranks them by the share of its votes that said yes. So a late
    stage's precision says what it adds on top of the stages before it."""

    stage: str
    tool: bool  # a deterministic tool stage (no judge calls)
    reached: int
    passed: int
    correct_reached: int
    passed_correct: int
    precision: float | None  # passed_correct / passed
    recall: float | None  # passed_correct / correct_reached
    auc: float | None
    judge_calls: int
    judge_tokens: int


@dataclass
class SweepPoint:
    """What ``first-valid`` keeps at ``n`` candidates per prompt and ``v`` votes per stage:
    per item at most the first accepted candidate among the first ``n``."""

    n: int
    v: int
    items: int
    items_kept: int  # items with a kept candidate
    coverage: float | None  # items_kept / items
    kept_correct: int
    precision: float | None  # kept_correct / items_kept
    items_with_correct: int  # items with any correct candidate among the first n (pass@n)
    judge_calls_per_item: float | None
    judge_tokens_per_item: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifierReport:
    """The verifier measured against graded truth.

    ``judge`` judged the candidates of ``adapter`` (each a version or "base"). Counts are
    over all candidates (``items`` x about ``n``); ``precision``/``recall``/``auc`` are
    None where undefined (nothing accepted / nothing correct / one class empty).
    ``judge_tokens`` are prompt + completion tokens of judge calls; tool-stage calls cost
    nothing here. ``stages`` holds per-stage numbers (conditional on reaching the stage: see
    :class:`StageReport`). ``first_valid`` is what the ``first-valid`` policy would keep at
    this ``n`` and ``votes`` (see :func:`first_valid`).

    The whole-cascade AUC ranks candidates by how deep they got: (stages passed + the share
    of yes votes in the stage that stopped it) / the stages it had to pass, in [0, 1]; an
    accepted candidate scores 1, a static rejection (empty final answer) 0. Divided by the
    number of stages so that items whose domains have different stage lists rank on one
    scale; with one stage list it ranks exactly as the undivided depth. A stage's score is
    the share of its votes (1 for a tool stage) that said yes.
    """

    judge: str
    adapter: str
    items: int
    candidates: int
    correct: int
    base_rate: float | None
    accepted: int
    accepted_correct: int
    precision: float | None
    recall: float | None
    auc: float | None
    static_rejected: int
    judge_calls: int
    judge_tokens: int
    calls_per_candidate: float | None
    tokens_per_candidate: float | None
    stages: list[StageReport]
    first_valid: SweepPoint | None
    n: int
    votes: int
    stage_config: dict[str, Any]
    seconds: float
    heldout: str
    heldout_fingerprint: str
    fingerprint: str = ""
    false_accepts: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VerifierReport:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in data.items() if k in known}
        d["stages"] = [StageReport(**s) for s in d.get("stages", [])]
        fv = d.get("first_valid")
        d["first_valid"] = SweepPoint(**fv) if fv else None
        return cls(**d)

    def stage(self, name: str) -> StageReport:
        for s in self.stages:
            if s.stage == name:
                return s
        raise KeyError(name)


@dataclass
class SweepReport:
    """A grid of (n, v): what ``first-valid`` keeps, how precise it is and what it costs."""

    judge: str
    adapter: str
    items: int
    candidates: int  # sampled per item: max(ns)
    base_rate: float | None
    ns: list[int]
    vs: list[int]
    points: list[SweepPoint]
    stage_config: dict[str, Any]
    seconds: float
    heldout: str
    heldout_fingerprint: str
    fingerprint: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": "sweep"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepReport:
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in data.items() if k in known}
        d["points"] = [SweepPoint(**p) for p in d.get("points", [])]
        return cls(**d)


# ------------------------------------------------------------------ judging candidates
@dataclass
class _Judged:
    """One candidate's verdicts, truth and judge cost."""

    correct: bool
    accepted: bool
    static: bool
    score: float  # whole-cascade depth score in [0, 1]
    stages: dict[str, tuple[bool, float, int, int]]  # stage -> (passed, score, calls, tokens)
    calls: int
    tokens: int


def measurement_config(config: CascadeConfig, **update: Any) -> CascadeConfig:
    """The cascade's own knobs (a ``VerifyConfig`` loses its worker fields), judging every
    candidate to its end (``all-valid``) so that each one's verdict is measured."""
    plain = CascadeConfig.model_validate(
        {k: getattr(config, k) for k in CascadeConfig.model_fields}
    )
    return plain.model_copy(update={"policy": "all-valid", **update})


def _stage_config(config: CascadeConfig) -> dict[str, Any]:
    return {
        "stages": list(config.stages),
        "domains": {k: list(v) for k, v in config.domains.items()},
        "votes": config.votes,
    }


def _planned(config: CascadeConfig, item: LabeledItem) -> list[str]:
    """The stages ``item``'s candidates must pass: its domain's list, less the tool stages
    its check does not cover (unless ``missing_check`` rejects on them)."""
    stages = config.stages_for(item.domain)
    if config.missing_check == "reject":
        return stages
    return [s for s in stages if s not in TOOL_STAGES or applies(s, item.check)]


def _judged(item: LabeledItem, out: CandidateOutcome, config: CascadeConfig) -> _Judged:
    stages: dict[str, tuple[bool, float, int, int]] = {}
    depth = 0.0
    for s in out.stages:
        tool = s.stage in TOOL_STAGES or any(c.kind == TOOL_KIND for c in s.calls)
        judge_calls = [c for c in s.calls if c.kind != TOOL_KIND]
        votes = [c for c in s.calls if c.kind in ("vote", TOOL_KIND)]
        needed = 1 if tool else config.votes
        yes = sum(1 for c in votes if c.verdict is True)
        score = 1.0 if s.passed else min(yes, needed) / needed
        stages[s.stage] = (
            s.passed,
            score,
            len(judge_calls),
            sum(c.prompt_tokens + c.completion_tokens for c in judge_calls),
        )
        depth += score
    if out.accepted:
        cascade_score = 1.0
    elif out.rejected_at == "static" or not out.stages:
        cascade_score = 0.0
    else:
        total = max(len(_planned(config, item)), len(out.stages))
        cascade_score = depth / total
    return _Judged(
        correct=grade(item, out.text),
        accepted=out.accepted,
        static=out.rejected_at == "static",
        score=cascade_score,
        stages=stages,
        calls=sum(v[2] for v in stages.values()),
        tokens=sum(v[3] for v in stages.values()),
    )


def _judge_all(
    engine: Engine,
    items: Sequence[LabeledItem],
    config: CascadeConfig,
    candidates: Sequence[Sequence[str]],
    judge_adapter: str | None,
    batch_size: int | None,
) -> list[list[_Judged]]:
    if len(items) != len(candidates):
        raise ValueError(f"{len(items)} items but {len(candidates)} candidate lists")
    inputs = [
        CascadeInput(item.id, item.question, list(c), domain=item.domain, check=item.check)
        for item, c in zip(items, candidates, strict=True)
    ]
    from daemon import progress

    step = batch_size or max(1, len(items))
    outcomes: list[PromptOutcome] = []
    with progress.track("judging the candidates", len(inputs), "problems") as t:
        for i in range(0, len(inputs), step):  # a fresh Cascade (vote RNG from its seed) per batch
            outcomes += Cascade(engine, config, adapter=judge_adapter).run(inputs[i : i + step])
            t.advance(len(inputs[i : i + step]))
    return [
        [_judged(item, c, config) for c in outcome.candidates]
        for item, outcome in zip(items, outcomes, strict=True)
    ]


def first_valid(rows: Sequence[Sequence[_Judged]], n: int, v: int) -> SweepPoint:
    """What ``first-valid`` keeps with the first ``n`` of each item's judged candidates.

    Per item, the kept candidate is the first accepted one among the first ``n``; the judge
    cost is that of candidates 0 up to and including it (all ``n`` when none is accepted):
    exactly the candidates first-valid judges when it judges one candidate at a time
    (``parallel_candidates = 1``).

    Why this equals running first-valid at (n, v), in distribution: each candidate's
    verdict and cost depend only on its own text and the judge's independently sampled
    votes, never on the other candidates, and ``all-valid`` judges each candidate by the
    same per-candidate procedure (same stages, same early exit at the first no) that
    ``first-valid`` applies to the candidates it reaches. First-valid reaches candidates 0
    .. k (k the first accepted) and nothing after; the simulation reads those same
    candidates' outcomes and ignores the rest. And the first ``n`` of ``N`` i.i.d. samples
    are distributed as ``n`` samples. Reusing one judged pool for every ``n`` (common random
    numbers) makes the points comparable: coverage can only grow with ``n``.
    """
    items = len(rows)
    kept = kept_correct = with_correct = calls = tokens = 0
    for row in rows:
        head = list(row[:n])
        with_correct += any(j.correct for j in head)
        for j in head:
            calls += j.calls
            tokens += j.tokens
            if j.accepted:
                kept += 1
                kept_correct += j.correct
                break
    return SweepPoint(
        n=n,
        v=v,
        items=items,
        items_kept=kept,
        coverage=ratio(kept, items),
        kept_correct=kept_correct,
        precision=ratio(kept_correct, kept),
        items_with_correct=with_correct,
        judge_calls_per_item=ratio(calls, items),
        judge_tokens_per_item=ratio(tokens, items),
    )


def heldout_fingerprint(items: Sequence[LabeledItem]) -> str:
    h = hashlib.sha256()
    hash_items(h, items)
    return h.hexdigest()[:24]


def _ordered_stages(config: CascadeConfig, rows: list[list[_Judged]]) -> list[str]:
    order: list[str] = list(config.stages)
    for stages in config.domains.values():
        order += [s for s in stages if s not in order]
    for row in rows:
        for j in row:
            order += [s for s in j.stages if s not in order]
    return order


def _report(
    items: Sequence[LabeledItem],
    candidates: Sequence[Sequence[str]],
    rows: list[list[_Judged]],
    config: CascadeConfig,
    *,
    judge: str,
    adapter: str,
    heldout: str,
    seconds: float,
    fingerprint_: str,
) -> VerifierReport:
    flat = [j for row in rows for j in row]
    correct = sum(j.correct for j in flat)
    accepted = sum(j.accepted for j in flat)
    accepted_correct = sum(j.accepted and j.correct for j in flat)
    calls = sum(j.calls for j in flat)
    tokens = sum(j.tokens for j in flat)
    stages = []
    for name in _ordered_stages(config, rows):
        reached = [j for j in flat if name in j.stages]
        passed = [j for j in reached if j.stages[name][0]]
        passed_correct = sum(j.correct for j in passed)
        correct_reached = sum(j.correct for j in reached)
        stages.append(
            StageReport(
                stage=name,
                tool=name in TOOL_STAGES,
                reached=len(reached),
                passed=len(passed),
                correct_reached=correct_reached,
                passed_correct=passed_correct,
                precision=ratio(passed_correct, len(passed)),
                recall=ratio(passed_correct, correct_reached),
                auc=auc([j.stages[name][1] for j in reached], [j.correct for j in reached]),
                judge_calls=sum(j.stages[name][2] for j in reached),
                judge_tokens=sum(j.stages[name][3] for j in reached),
            )
        )
    n = max((len(c) for c in candidates), default=0)
    false_accepts = [
        {"id": item.id, "reference": item.answer, "candidate": text[:300]}
        for item, row, cands in zip(items, rows, candidates, strict=True)
        for j, text in zip(row, cands, strict=True)
        if j.accepted and not j.correct
    ][:5]
    return VerifierReport(
        judge=judge,
        adapter=adapter,
        items=len(items),
        candidates=len(flat),
        correct=correct,
        base_rate=ratio(correct, len(flat)),
        accepted=accepted,
        accepted_correct=accepted_correct,
        precision=ratio(accepted_correct, accepted),
        recall=ratio(accepted_correct, correct),
        auc=auc([j.score for j in flat], [j.correct for j in flat]),
        static_rejected=sum(j.static for j in flat),
        judge_calls=calls,
        judge_tokens=tokens,
        calls_per_candidate=ratio(calls, len(flat)),
        tokens_per_candidate=ratio(tokens, len(flat)),
        stages=stages,
        first_valid=first_valid(rows, n, config.votes) if items else None,
        n=n,
        votes=config.votes,
        stage_config=_stage_config(config),
        seconds=round(seconds, 2),
        heldout=heldout,
        heldout_fingerprint=heldout_fingerprint(items),
        fingerprint=fingerprint_,
        false_accepts=false_accepts,
    )


def evaluate_verifier(
    engine: Engine,
    items: Sequence[LabeledItem],
    cascade_config: CascadeConfig,
    candidates: Sequence[Sequence[str]],
    *,
    judge_adapter: str | None = None,
    judge: str | None = None,
    adapter: str = BASE,
    heldout: str = "",
    batch_size: int | None = None,
    fingerprint_: str = "",
) -> VerifierReport:
    """Judge ``candidates`` (per item, already sampled) with the cascade, every candidate to
    its end, and compare the verdicts with ``grade(item, candidate)``.

    ``judge_adapter`` is the loaded adapter that judges (None: the base model); ``judge``
    and ``adapter`` only name the judge and the candidates' generator in the report.
    Candidates are given, not sampled here, so several configurations (the self-cascade,
    a checker) can be compared on identical candidates.
    """
    started = time.monotonic()
    config = measurement_config(cascade_config)
    rows = _judge_all(engine, items, config, candidates, judge_adapter, batch_size)
    report = _report(
        items,
        candidates,
        rows,
        config,
        judge=judge or judge_adapter or BASE,
        adapter=adapter,
        heldout=heldout,
        seconds=time.monotonic() - started,
        fingerprint_=fingerprint_,
    )
    log.info(
        "verifier (judge %s): precision %s, recall %s, AUC %s, base rate %s; %d judge calls",
        report.judge,
        fmt(report.precision),
        fmt(report.recall),
        fmt(report.auc),
        fmt(report.base_rate),
        report.judge_calls,
    )
    return report


def sweep(
    engine: Engine,
    items: Sequence[LabeledItem],
    cascade_config: CascadeConfig,
    candidates: Sequence[Sequence[str]],
    ns: Sequence[int],
    vs: Sequence[int],
    *,
    judge_adapter: str | None = None,
    batch_size: int | None = None,
) -> list[SweepPoint]:
    """Precision, coverage and judge cost of ``first-valid`` over the grid ``ns`` x ``vs``.

    For each ``v`` the cascade runs once (``all-valid``, ``votes = v``) over the first
    ``max(ns)`` candidates of every item; each ``n`` is then read off those verdicts by
    :func:`first_valid` (which explains why that equals running first-valid at (n, v)).
    Points come ordered by v, then n.
    """
    ns, vs = grid(list(ns)), grid(list(vs))
    top = ns[-1]
    short = [item.id for item, c in zip(items, candidates, strict=True) if len(c) < top]
    if short:
        raise ValueError(f"the sweep needs {top} candidates per item; fewer for {short[:3]}")
    pool = [list(c[:top]) for c in candidates]
    points: list[SweepPoint] = []
    for v in vs:
        config = measurement_config(cascade_config, votes=v)
        rows = _judge_all(engine, items, config, pool, judge_adapter, batch_size)
        points += [first_valid(rows, n, v) for n in ns]
    return points


def sweep_report(
    items: Sequence[LabeledItem],
    cascade_config: CascadeConfig,
    candidates: Sequence[Sequence[str]],
    ns: Sequence[int],
    vs: Sequence[int],
    points: list[SweepPoint],
    *,
    judge: str,
    adapter: str,
    heldout: str,
    seconds: float,
    fingerprint_: str = "",
) -> SweepReport:
    """:func:`sweep`'s points with what they were measured on: the base rate over every
    sampled candidate, the stage settings, the labeled set's fingerprint."""
    ns, vs = grid(list(ns)), grid(list(vs))
    flat = [grade(item, c) for item, cands in zip(items, candidates, strict=True) for c in cands]
    return SweepReport(
        judge=judge,
        adapter=adapter,
        items=len(items),
        candidates=ns[-1],
        base_rate=ratio(sum(flat), len(flat)),
        ns=ns,
        vs=vs,
        points=points,
        stage_config=_stage_config(cascade_config),
        seconds=round(seconds, 2),
        heldout=heldout,
        heldout_fingerprint=heldout_fingerprint(items),
        fingerprint=fingerprint_,
    )


def fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


# ------------------------------------------------------------------------ fingerprint
def fingerprint(
    *,
    model: str,
    judge: str,
    adapter: str,
    cascade: CascadeConfig,
    items: Sequence[LabeledItem],
    n: int | Sequence[int],
    sampling: dict[str, Any],
    what: str = "report",
    votes: Sequence[int] | None = None,
) -> str:
    """Same model, judge, candidates' adapter, cascade, items, n and sampling → same
    fingerprint → a stored measurement still answers the question."""
    key = {
        "what": what,
        "model": model,
        "judge": judge,
        "adapter": adapter,
        "cascade": json.loads(measurement_config(cascade).model_dump_json()),
        "items": heldout_fingerprint(items),
        "n": n if isinstance(n, int) else list(n),
        "votes": None if votes is None else list(votes),
        "sampling": sampling,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]
