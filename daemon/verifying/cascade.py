"""The verifier's cascade: the model judges its own candidates, unanimously, stage by stage.

For each prompt, candidates are judged in order (policy ``first-valid``, the paper's default:
stop at the first accepted one; ``all-valid`` judges all). A candidate passes when every
stage passes, and a stage passes when all of its ``v`` votes say yes:

0. static: the final answer (after any ``</think>``) must be non-empty, and must not talk to
   its judge (verdict markers, control tokens, notes to the grader: ``injection.py``; the
   rejection's one tool call names the family); judges see only the final answer;
1. cycle-consistency: infer the question from the answer alone, then judge whether the
   inferred and the original question are the same question;
2. factuality: no factual, numeric or logical errors;
3. correctness: the answer is complete and correct.

Tool stages run before the self-judges, or instead of them, for prompts that carry a check
(``CheckSpec``; which stages a prompt meets is per domain, ``domains``): ``checker`` applies a
registered deterministic check (``daemon/checkers.py``), ``execution`` runs a code candidate
against the prompt's tests in a sandbox (``daemon/verifying/sandbox.py``). They are one verdict each,
cost no judge call, and run on every candidate of the prompt whatever the policy, so each
group has a definite pass/fail per candidate (ranking data, ``selfdistill export --ranking``).

Unanimity makes early exit free: the first no ends the stage, and the candidate. Votes are
drawn in rounds (``votes_per_round`` each) so a no stops further votes, and every round
sends the requests of all pending candidates, of all prompts, to the engine as one batch.

The cascade knows no Kafka and no SQLite: it takes an engine and candidates and returns
verdicts (``PromptOutcome``), which the verify worker stores.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from string import Template
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from daemon.engines.base import ChatRequest, ChatResult, Engine
from daemon.engines.priority import BACKGROUND, priority
from daemon.verifying.checkers import TOOL_STAGES, applies, run_tool_stage
from daemon.verifying.injection import INJECTED, injection_reason
from daemon.verifying.sandbox import SandboxConfig
from daemon.verifying.verdicts import final_answer, neutralise, parse_verdict
from streams.schemas import CheckSpec


@dataclass(frozen=True)
class JudgeCall:
    """One generation by the judge: a vote, or the cycle stage's inferred question."""

    stage: str  # "checker" | "execution" | "cycle" | "factuality" | "correctness"
    kind: str  # "infer" (cycle's question inference) | "vote" | "tool" (a tool stage's check)
    verdict: bool | None  # votes: parsed verdict; None = unparseable (counts as no)
    output: str  # the judge's raw output; a tool stage's one-line reason
    prompt_tokens: int
    completion_tokens: int


@dataclass
class StageOutcome:
    stage: str
    passed: bool
    calls: list[JudgeCall] = field(default_factory=list)


@dataclass
class CandidateOutcome:
    index: int  # position among the prompt's samples
    text: str  # the candidate as generated
    answer: str  # the final answer the judges saw
    accepted: bool = False
    rejected_at: str | None = None  # "static", a stage name, or "skipped" (not needed)
    stages: list[StageOutcome] = field(default_factory=list)

    @property
    def calls(self) -> list[JudgeCall]:
        """Everything the cascade ran on this candidate, tool checks included."""
        return [c for s in self.stages for c in s.calls]

    @property
    def judge_calls(self) -> list[JudgeCall]:
        """The model's own generations: what the judge budget is spent on."""
        return [c for c in self.calls if c.kind != "tool"]

    @property
    def tool_passed(self) -> bool | None:
        """The tool stages' verdict (None: no tool stage ran): ranking data's label."""
        tools = [s for s in self.stages if s.stage in TOOL_STAGES]
        return all(s.passed for s in tools) if tools else None


@dataclass
class PromptOutcome:
    prompt_id: str
    question: str
    candidates: list[CandidateOutcome]

    @property
    def accepted(self) -> list[CandidateOutcome]:
        return [c for c in self.candidates if c.accepted]

    @property
    def judge_calls(self) -> int:
        return sum(len(c.judge_calls) for c in self.candidates)

    @property
    def judge_tokens(self) -> int:
        return sum(j.completion_tokens for c in self.candidates for j in c.judge_calls)


# ----------------------------------------------------------------------------- config
STAGES = ("cycle", "factuality", "correctness")  # the model judges itself
Stage = Literal["checker", "execution", "cycle", "factuality", "correctness"]


def _tools_first(stages: list[str]) -> list[str]:
    """Tool stages run before the self-judges (or instead of them), never after."""
    seen_judge = False
    for s in stages:
        if s in TOOL_STAGES and seen_judge:
            raise ValueError(f"tool stage {s!r} must come before the judge stages")
        seen_judge = seen_judge or s not in TOOL_STAGES
    if len(set(stages)) != len(stages):
        raise ValueError("a stage may appear only once")
    return stages


class CascadeConfig(BaseModel):
    """How candidates are judged (paper defaults where it has them)."""

    model_config = ConfigDict(extra="forbid")

    votes: int = Field(
        5, ge=1, le=64, description="v: votes per stage, all must be yes (paper: 5)."
    )
    stages: list[Stage] = Field(
        default_factory=lambda: list(STAGES),
        min_length=1,
        description="Stages in order; the paper's full cascade beat a single correctness judge. "
        "Tool stages (checker: a registered deterministic answer check; execution: the "
        "prompt's tests run in a sandbox) go first and apply to prompts that carry a check.",
    )
    domains: dict[str, list[Stage]] = Field(
        default_factory=dict,
        description="Stages per prompt domain, replacing 'stages' for prompts of that domain: "
        'e.g. arithmetic = ["checker"] (instead of the self-judges) or ["checker", '
        '"correctness"] (before them).',
    )
    missing_check: Literal["skip", "reject"] = Field(
        "skip",
        description="A tool stage on a prompt that carries no check for it: 'skip' the stage, "
        "or 'reject' the candidate. A candidate left with no stage at all is rejected either "
        "way: nothing verified it.",
    )
    sandbox: SandboxConfig = Field(
        default_factory=SandboxConfig, description="Limits of the execution stage's sandbox."
    )
    policy: Literal["first-valid", "all-valid"] = Field(
        "first-valid",
        description="first-valid (paper): keep at most the first accepted candidate per prompt; "
        "all-valid: keep every candidate that passes.",
    )
    temperature: float = Field(0.6, ge=0, description="Judge sampling temperature (paper: 0.6).")
    top_p: float = Field(0.95, gt=0, le=1, description="Judge nucleus sampling (paper: 0.95).")
    judge_max_tokens: int = Field(
        256, ge=1, description="Longest judge output (its reasoning + verdict)."
    )
    infer_max_tokens: int = Field(96, ge=1, description="Longest inferred question (cycle stage).")
    votes_per_round: int = Field(
        1,
        ge=1,
        description="Votes drawn per candidate per engine call: 1 stops at the first no; "
        "more trades judge calls for fewer rounds.",
    )
    parallel_candidates: int = Field(
        1,
        ge=1,
        description="first-valid: candidates of one prompt judged at once (1 = strictly in "
        "order, fewest judge calls; more = fewer rounds, some calls wasted).",
    )
    fast_judge: bool = Field(
        False,
        description="Sample each vote from the judge's next-token probabilities of Y vs N after "
        "the verdict prefix, instead of letting it reason: an approximation for small models.",
    )
    prompts_dir: Path | None = Field(
        None,
        description="Directory overriding the judge prompt templates (infer.txt, compare.txt, "
        "factuality.txt, correctness.txt; $question, $answer, $inferred placeholders).",
    )
    seed: int | None = Field(None, description="Seed the judge's sampling (reproducible runs).")
    reject_injection: bool = Field(
        True,
        description="Static stage: reject a candidate whose final answer talks to its judge "
        "(verdict markers, chat-template control tokens, notes to the grader; "
        "daemon/verifying/injection.py) before any judge reads it. Off only to measure it.",
    )

    @field_validator("stages")
    @classmethod
    def _valid_stages(cls, v: list[str]) -> list[str]:
        return _tools_first(v)

    @field_validator("domains")
    @classmethod
    def _valid_domains(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for domain, stages in v.items():
            if not stages:
                raise ValueError(f"domain {domain!r} has no stages")
            try:
                _tools_first(stages)
            except ValueError as exc:
                raise ValueError(f"domain {domain!r}: {exc}") from None
        return v

    def stages_for(self, domain: str | None) -> list[str]:
        """The stage list a prompt of ``domain`` goes through."""
        if domain is not None and domain in self.domains:
            return list(self.domains[domain])
        return list(self.stages)


@dataclass(frozen=True)
class CascadeInput:
    """One prompt's question (as the judges see it), its candidates in order, and what a tool
    stage can check them against (``domain`` picks the stage list, ``check`` the reference)."""

    prompt_id: str
    question: str
    candidates: list[str]
    domain: str | None = None
    check: CheckSpec | None = None


def question_of(messages: Sequence[Any]) -> str:
    """What the judges are told was asked: the last user turn (system prompts stay out)."""
    for m in reversed(messages):
        if m.role == "user":
            return m.content
    return messages[-1].content


@functools.cache
def load_templates(prompts_dir: Path | None = None) -> dict[str, Template]:
    """The judge prompts, read once per process (a Cascade is built for every batch)."""
    names = ("infer", "compare", "factuality", "correctness")
    out = {}
    for name in names:
        override = prompts_dir / f"{name}.txt" if prompts_dir else None
        if override is not None and override.is_file():
            text = override.read_text()
        else:
            text = resources.files("daemon.verifying").joinpath(f"prompts/{name}.txt").read_text()
        out[name] = Template(text)
    return out


# ----------------------------------------------------------------------------- engine
_FAST_PREFIX = "Verdict: [["


@dataclass
class _Item:
    """A candidate on its way through the stages."""

    prompt: int
    out: CandidateOutcome
    question: str
    stages: list[str]  # judge stages still ahead of it, in order (tool stages already ran)
    stage: int = 0
    votes: int = 0  # yes votes in the current stage
    inferred: str | None = None
    done: bool = False


class Cascade:
    """Runs the cascade over many prompts at once, one engine batch per round."""

    def __init__(
        self, engine: Engine, config: CascadeConfig, *, adapter: str | None = None
    ) -> None:
        self.engine = engine
        self.config = config
        self.adapter = adapter  # None: the frozen base model judges
        self.templates = load_templates(config.prompts_dir)
        self._rng = random.Random(config.seed)
        self._round_seed: int | None = None
        self.rounds = 0

    # -------------------------------------------------------------- requests
    def _sampling(self, n: int, max_tokens: int) -> dict[str, object]:
        # One seed per round, not per request: requests that share their sampling parameters
        # (seed included) go out as one batched generate call.
        seed = self._round_seed
        return {
            "n": n,
            "temperature": self.config.temperature,
            "top_p": self.config.top_p,
            "max_tokens": max_tokens,
            "seed": seed,
            "adapter": self.adapter,
        }

    def _judge_prompt(self, item: _Item) -> str:
        stage = item.stages[item.stage]
        t = self.templates["compare" if stage == "cycle" else stage]
        return t.substitute(
            question=neutralise(item.question),
            answer=neutralise(item.out.answer),
            inferred=neutralise(item.inferred or ""),
        )

    def _request(self, item: _Item) -> ChatRequest:
        stage = item.stages[item.stage]
        if stage == "cycle" and item.inferred is None:
            text = self.templates["infer"].substitute(answer=neutralise(item.out.answer))
            return ChatRequest(
                [{"role": "user", "content": text}],
                **self._sampling(1, self.config.infer_max_tokens),
            )
        n = min(self.config.votes_per_round, self.config.votes - item.votes)
        messages = [{"role": "user", "content": self._judge_prompt(item)}]
        if self.config.fast_judge:
            messages.append({"role": "assistant", "content": _FAST_PREFIX})
            return ChatRequest(
                messages,
                continue_final=True,
                logprobs=20,
                **{**self._sampling(1, 1), "temperature": 0.0},
            )
        return ChatRequest(messages, **self._sampling(n, self.config.judge_max_tokens))

    # ---------------------------------------------------------------- verdicts
    def _fast_votes(self, top: dict[str, float] | None, n: int) -> list[bool | None]:
        """Votes sampled from P(Y) / (P(Y) + P(N)) of the next token; None if neither shows."""
        p = {"Y": 0.0, "N": 0.0}
        for token, logprob in (top or {}).items():
            t = token.strip().upper()
            if t in p:
                p[t] += math.exp(logprob)
        if p["Y"] + p["N"] == 0:
            return [None] * n
        p_yes = p["Y"] / (p["Y"] + p["N"])
        return [self._rng.random() < p_yes for _ in range(n)]

    def _apply(self, item: _Item, result: ChatResult) -> None:
        stage = item.stages[item.stage]
        outcome = self._stage(item, stage)
        if stage == "cycle" and item.inferred is None:
            c = result.completions[0]
            item.inferred = c.text.strip()
            outcome.calls.append(
                JudgeCall(stage, "infer", None, c.text, result.prompt_tokens, c.tokens)
            )
            if not item.inferred:  # nothing to compare with: the cycle cannot close
                self._reject(item, stage)
            return
        n = min(self.config.votes_per_round, self.config.votes - item.votes)
        if self.config.fast_judge:
            # One next-token distribution gives every remaining vote of the stage at once.
            n = self.config.votes - item.votes
            verdicts = self._fast_votes(result.completions[0].top_logprobs, n)
            texts = [
                f"{_FAST_PREFIX}{'Y' if v else 'N' if v is not None else '?'}]]" for v in verdicts
            ]
            # One request produced all of them: book its tokens once, on the first vote.
            tokens = [result.completions[0].tokens] + [0] * (n - 1)
        else:
            verdicts = [parse_verdict(c.text) for c in result.completions]
            texts = [c.text for c in result.completions]
            tokens = [c.tokens for c in result.completions]
        prompt_tokens = [result.prompt_tokens] * len(verdicts)
        if self.config.fast_judge:
            prompt_tokens = [result.prompt_tokens] + [0] * (len(verdicts) - 1)
        for verdict, text, tok, ptok in zip(verdicts, texts, tokens, prompt_tokens, strict=True):
            outcome.calls.append(JudgeCall(stage, "vote", verdict, text, ptok, tok))
            if verdict is not True:  # unanimity: the first no (or unparseable) ends it
                self._reject(item, stage)
                return
            item.votes += 1
        if item.votes >= self.config.votes:
            outcome.passed = True
            item.stage += 1
            item.votes = 0
            if item.stage == len(item.stages):
                item.out.accepted = True
                item.done = True

    def _stage(self, item: _Item, stage: str) -> StageOutcome:
        if not item.out.stages or item.out.stages[-1].stage != stage:
            item.out.stages.append(StageOutcome(stage, False))
        return item.out.stages[-1]

    @staticmethod
    def _reject(item: _Item, stage: str) -> None:
        item.out.rejected_at = stage
        item.done = True

    # -------------------------------------------------------------------- run
    def run(self, inputs: list[CascadeInput]) -> list[PromptOutcome]:
        if self.config.seed is not None:
            # Reproducible for the same prompts, but not the same seeds for every batch (which
            # would correlate the judge's samples across batches).
            salt = "\0".join(p.prompt_id for p in inputs)
            self._rng = random.Random(f"{self.config.seed}\0{salt}")
        outcomes = [PromptOutcome(p.prompt_id, p.question, []) for p in inputs]
        items: list[list[_Item]] = []
        for pi, p in enumerate(inputs):
            tools, judges, missing = self._plan(p)
            row = []
            for ci, text in enumerate(p.candidates):
                out = CandidateOutcome(ci, text, final_answer(text))
                outcomes[pi].candidates.append(out)
                item = _Item(pi, out, p.question, judges)
                injected = injection_reason(out.answer) if self.config.reject_injection else None
                if not out.answer:
                    out.rejected_at = "static"
                    item.done = True
                elif injected is not None:  # it talks to its judge: no judge ever reads it
                    self._tool_verdict(item, "static", False, f"{injected}: {INJECTED}")
                elif missing is not None:
                    self._tool_verdict(
                        item, missing, False, "no check for this stage in the prompt"
                    )
                elif tools and p.check is not None:
                    self._run_tools(item, tools, p.check)
                if not item.done and not judges:  # the tools alone verified it
                    item.out.accepted = True
                    item.done = True
                row.append(item)
            items.append(row)
        while True:
            active = [it for row in items for it in self._needed(row)]
            if not active:
                break
            if self.config.seed is not None:
                self._round_seed = self._rng.randrange(2**31)
            with priority(BACKGROUND):  # production answers on a shared engine go first
                results = self.engine.generate([self._request(it) for it in active])
            self.rounds += 1
            for it, res in zip(active, results, strict=True):
                self._apply(it, res)
        for row in items:
            first_accepted = False
            for it in row:
                if not it.done:  # never needed: an earlier candidate was accepted
                    it.out.rejected_at = "skipped"
                elif it.out.accepted and self.config.policy == "first-valid":
                    if first_accepted:  # judged in parallel, but a earlier one won
                        it.out.accepted = False
                        it.out.rejected_at = "superseded"
                    first_accepted = True
        return outcomes

    # ------------------------------------------------------------------ tool stages
    def _plan(self, p: CascadeInput) -> tuple[list[str], list[str], str | None]:
        """(tool stages to run, judge stages after them, a stage that rejects everyone).

        Tool stages are cheap and deterministic, so they run on EVERY candidate, whatever the
        policy: a prompt's group then has a definite pass/fail per candidate (ranking data),
        and first-valid early exit applies only to the judges, which are what cost.
        """
        stages = self.config.stages_for(p.domain)
        tools: list[str] = []
        for s in stages:
            if s not in TOOL_STAGES:
                continue
            if applies(s, p.check):
                tools.append(s)
            elif self.config.missing_check == "reject":
                return [], [], s
        judges = [s for s in stages if s not in TOOL_STAGES]
        if not tools and not judges:  # every stage was a tool stage without a check
            return [], [], stages[0]
        return tools, judges, None

    def _run_tools(self, item: _Item, tools: list[str], check: CheckSpec) -> None:
        for stage in tools:
            verdict = run_tool_stage(stage, check, item.out.answer, self.config.sandbox)
            if not self._tool_verdict(item, stage, verdict.passed, verdict.detail):
                return

    def _tool_verdict(self, item: _Item, stage: str, passed: bool, detail: str) -> bool:
        """Record a tool stage's one verdict (a no rejects the candidate); returns it."""
        call = JudgeCall(stage, "tool", passed, detail, 0, 0)
        item.out.stages.append(StageOutcome(stage, passed, [call]))
        if not passed:
            self._reject(item, stage)
        return passed

    def _needed(self, row: list[_Item]) -> list[_Item]:
        """Candidates of one prompt that still need a judge call this round."""
        if self.config.policy == "all-valid":
            return [it for it in row if not it.done]
        needed: list[_Item] = []
        for it in row:
            if it.out.accepted:  # an earlier one passed: nothing after it matters
                break
            if not it.done:
                needed.append(it)
                if len(needed) == self.config.parallel_candidates:
                    break
        return needed


def naive_calls(config: CascadeConfig) -> int:
    """Judge calls per candidate of the full cascade without early exit (v x stages + infer)."""
    judges = [s for s in config.stages if s not in TOOL_STAGES]
    return config.votes * len(judges) + (1 if "cycle" in judges else 0)
