"""The verifier's tool stages: deterministic checks instead of the model's own judgment.

A self-judge can be talked into a yes; a check that computes the answer cannot. Where a
prompt carries a checkable form (:class:`streams.schemas.CheckSpec`), the verifier can run
these stages before or instead of the judges:

- ``checker``: a registered deterministic checker looks at the candidate's final answer
  (after the last ``</think>``). The built-ins ``exact``, ``numeric``, ``regex`` and
  ``choice`` are the held-out set's graders (:mod:`daemon.verifying.graders`), so a prompt is checked
  by the same rule the promotion gate grades with; ``arithmetic`` computes the prompt's
  ``expression`` itself and compares the answer's last number with it. Each built-in
  accepts only an answer that is right *for the right reason*: one that also states
  something false that can be checked exactly ("7 + 6 = 11" before a right "D) 13", a
  restated "D) 11" when option D is 13, "15 < 9" before a right "yes") is rejected, and
  the detail says which statement (:func:`daemon.verifying.consistency.contradictions`;
  :func:`measure_consistency` measures the rule on a bundled corpus). Users add their own
  with :func:`register_checker`.
- ``execution``: the code in the final answer (its last fenced block) runs against the
  prompt's tests in :mod:`daemon.verifying.sandbox`; resource exhaustion, crashes and forbidden calls
  are failed votes, never a crashed worker.

:func:`run_tool_stage` never raises for anything a candidate or a check spec can contain:
a bad spec or a broken checker is a failed verdict whose detail says so, because one odd
prompt must not stop the worker. Only a programmer's error (an unknown stage) raises.

What a check spec holds comes from the prompt's producer and is not trusted with running
time: the arithmetic checker bounds its own work, and a ``regex`` pattern runs with a time
bound (:data:`daemon.verifying.graders.REGEX_TIMEOUT_S`), so one prone to catastrophic
backtracking is a failed verdict that says so, not a wedged worker. A registered checker
runs in the worker's own process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

# The evaluator moved to its own module (the consistency rule uses it too); still shown here.
from daemon.verifying.arithmetic import MAX_BITS as MAX_BITS
from daemon.verifying.arithmetic import ExpressionError, evaluate_arithmetic
from daemon.verifying.consistency import (
    ConsistencyReport,
    CorpusCase,
    contradictions,
    load_corpus,
)
from daemon.verifying.graders import (
    REGEX_TIMEOUT_S,
    GraderName,
    LabeledItem,
    extract_choice,
    extract_number,
    grade,
    last_line,
    regex_search,
)
from daemon.verifying.sandbox import DETAIL_CHARS, SandboxConfig, extract_code, one_line
from daemon.verifying.sandbox_health import monitor_for
from daemon.verifying.sandbox_server import run_candidate
from daemon.verifying.verdicts import final_answer
from streams.schemas import CheckSpec, validation_summary

TOOL_STAGES = ("checker", "execution")


@dataclass(frozen=True)
class ToolVerdict:
    passed: bool
    detail: str  # why, in one line (shown in the store's votes table and `status`)


#: A checker: the prompt's check spec and the candidate's final answer in, a verdict out.
Checker = Callable[[CheckSpec, str], ToolVerdict]

#: The registered checkers by name; :func:`register_checker` adds to it.
CHECKERS: dict[str, Checker] = {}


def register_checker(name: str) -> Callable[[Checker], Checker]:
    """Register the decorated function as the checker ``name`` (replacing one of that name).

    Replacing is allowed so that a deployment can swap a built-in for its own rule.
    A checker gets the final answer (reasoning before ``</think>`` already removed) and
    should return a :class:`ToolVerdict` whose detail says what was expected and found;
    if it raises, the stage turns that into a failed verdict.
    """
    if not isinstance(name, str) or not 1 <= len(name) <= 64:
        raise ValueError(f"a checker name must be 1 to 64 characters (got {name!r})")

    def decorator(function: Checker) -> Checker:
        CHECKERS[name] = function
        return function

    return decorator


def applies(stage: str, check: CheckSpec | None) -> bool:
    """Whether ``stage`` can check a prompt carrying ``check``."""
    if check is None:
        return False
    return check.checker is not None if stage == "checker" else check.tests is not None


def run_tool_stage(
    stage: str, check: CheckSpec, answer: str, sandbox: SandboxConfig
) -> ToolVerdict:
    """One tool-stage vote on ``answer`` (a whole candidate; its final answer is checked).

    Raises ValueError only for a stage that is not in :data:`TOOL_STAGES`; everything a
    candidate or a spec can do (an unknown checker, a spec that makes no sense, a checker
    that raises, code that crashes) is a failed verdict with the reason in its detail.
    """
    if stage not in TOOL_STAGES:
        raise ValueError(f"unknown tool stage {stage!r} (expected one of {', '.join(TOOL_STAGES)})")
    try:
        final = final_answer(answer)
        if stage == "checker":
            return _run_checker(check, final)
        if check.tests is None:
            return _verdict(False, "execution: the prompt's check has no tests")
        code = extract_code(final)
        if not code:
            return _verdict(False, "execution: no code in the answer")
        result = run_candidate(code, check.tests, sandbox)
        monitor_for(sandbox).observe(result)  # a refusal is counted and shown, not just failed
        return _verdict(result.passed, result.detail)
    except Exception as exc:  # a candidate or a spec must never take the worker down
        return _verdict(False, f"{stage} stage error: {type(exc).__name__}: {exc}")


def _run_checker(check: CheckSpec, final: str) -> ToolVerdict:
    name = check.checker
    if name is None:
        return _verdict(False, "checker: the prompt's check names no checker")
    function = CHECKERS.get(name)
    if function is None:
        return _verdict(False, f"unknown checker {name!r}")
    try:
        verdict = function(check, final)
    except Exception as exc:  # a user's checker failing is its verdict, not our crash
        return _verdict(False, f"{name}: checker error: {type(exc).__name__}: {exc}")
    if not isinstance(verdict, ToolVerdict):
        return _verdict(False, f"{name}: checker returned {type(verdict).__name__}, not a verdict")
    return _verdict(verdict.passed, f"{name}: {verdict.detail}")


def _verdict(passed: bool, detail: str) -> ToolVerdict:
    """A verdict whose detail is one line of at most :data:`DETAIL_CHARS` characters (the
    sandbox's bound, shared: an execution verdict quotes the sandbox's detail)."""
    return ToolVerdict(passed=bool(passed), detail=one_line(str(detail), DETAIL_CHARS))


def _clip(text: str, limit: int = 60) -> str:
    """``text`` for a detail: one line, quoted, shortened from the front (answers end well)."""
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else "..." + text[-(limit - 3) :])


# --- the graders as checkers ---------------------------------------------------------------


def _item(grader: GraderName, check: CheckSpec) -> LabeledItem | str:
    """The held-out item a grader needs, or why the spec cannot make one."""
    if check.answer is None:
        return f"check spec error: the {grader} checker needs 'answer'"
    try:
        return LabeledItem(
            id="check",
            question="check",
            answer=check.answer,
            grader=grader,
            choices=check.choices if grader == "choice" else None,
            tolerance=check.tolerance,
        )
    except ValidationError as exc:
        # The item's own fields (id, question) are ours; every problem is in the spec.
        return "check spec error: " + validation_summary(exc).replace("(message): ", "")


def _number(value: float) -> str:
    """A number as a person writes it: 42 rather than 42.0, 11.6 rather than 11.600000001."""
    if math.isfinite(value) and value == int(value) and abs(value) < 1e16:
        return str(int(value))
    return f"{value:.12g}"


@register_checker("exact")
def check_exact(check: CheckSpec, answer: str) -> ToolVerdict:
    """Normalised equality with the reference (whole answer, last line or stated answer)."""
    item = _item("exact", check)
    if isinstance(item, str):
        return ToolVerdict(False, item)
    found = _clip(last_line(answer)) if answer.strip() else "an empty answer"
    verdict = ToolVerdict(grade(item, answer), f"expected {_clip(item.answer)}, found {found}")
    return _consistent(verdict, check, answer)


@register_checker("numeric")
def check_numeric(check: CheckSpec, answer: str) -> ToolVerdict:
    """The answer's last number equals the reference within the spec's tolerance."""
    item = _item("numeric", check)
    if isinstance(item, str):
        return ToolVerdict(False, item)
    got = extract_number(answer)
    found = "no number" if got is None else _number(got)
    within = f" (tolerance {check.tolerance:g})" if check.tolerance else ""
    verdict = ToolVerdict(grade(item, answer), f"expected {item.answer}{within}, found {found}")
    return _consistent(verdict, check, answer)


@register_checker("regex")
def check_regex(check: CheckSpec, answer: str) -> ToolVerdict:
    """``re.search`` of the spec's pattern (``answer``) in the final answer."""
    item = _item("regex", check)
    if isinstance(item, str):
        return ToolVerdict(False, item)
    try:
        final = final_answer(answer)
        passed = bool(final) and regex_search(item.answer, final)
    except TimeoutError:
        return ToolVerdict(
            False, f"the pattern /{_clip(item.answer)}/ ran past {REGEX_TIMEOUT_S:g}s: no match"
        )
    found = "matched" if passed else f"no match in {_clip(answer)}"
    verdict = ToolVerdict(passed, f"expected a match for /{item.answer}/, {found}")
    return _consistent(verdict, check, answer)


@register_checker("choice")
def check_choice(check: CheckSpec, answer: str) -> ToolVerdict:
    """The option letter the answer picks equals the reference letter."""
    item = _item("choice", check)
    if isinstance(item, str):
        return ToolVerdict(False, item)
    picked = extract_choice(final_answer(answer), item.choices)
    verdict = ToolVerdict(
        grade(item, answer), f"expected {item.answer}, found {picked or 'no choice'}"
    )
    return _consistent(verdict, check, answer)


# --- arithmetic ----------------------------------------------------------------------------


@register_checker("arithmetic")
def check_arithmetic(check: CheckSpec, answer: str) -> ToolVerdict:
    """The answer's last number equals the spec's ``expression``, computed here."""
    if check.expression is None:
        return ToolVerdict(False, "check spec error: the arithmetic checker needs 'expression'")
    try:
        exact = evaluate_arithmetic(check.expression)
        expected = float(exact)
    except ExpressionError as exc:
        return ToolVerdict(False, f"check spec error: {exc} in {_clip(check.expression)}")
    except OverflowError:
        return ToolVerdict(False, "check spec error: the expression's value is too large")
    got = extract_number(answer)
    shown = f"expected {_number(expected)} (= {' '.join(check.expression.split())})"
    if got is None:
        return ToolVerdict(False, f"{shown}, found no number")
    passed = math.isclose(got, expected, rel_tol=1e-9, abs_tol=check.tolerance)
    return _consistent(ToolVerdict(passed, f"{shown}, found {_number(got)}"), check, answer)


# --- right for the right reason ------------------------------------------------------------


def _consistent(verdict: ToolVerdict, check: CheckSpec, answer: str) -> ToolVerdict:
    """A built-in's passing verdict stands only if nothing else the answer states that can be
    checked contradicts it; otherwise it fails and says what (the first two reasons)."""
    if not verdict.passed:
        return verdict
    reasons = contradictions(answer, check)
    if not reasons:
        return verdict
    more = f" (and {len(reasons) - 2} more)" if len(reasons) > 2 else ""
    return ToolVerdict(False, f"{verdict.detail}, but it {'; it '.join(reasons[:2])}{more}")


def measure_consistency(
    cases: Sequence[CorpusCase] | None = None, corpus: Path | None = None
) -> ConsistencyReport:
    """Run the checker stage over a consistency corpus (default: the bundled one, see
    :data:`daemon.verifying.consistency.CORPUS`): the wrong-reason answers it accepted are
    its false accepts, the consistent ones it rejected its false rejects. Deterministic and
    quick (no model, no sandbox); raises what :func:`load_corpus` raises."""
    cases = load_corpus(corpus) if cases is None else list(cases)
    sandbox = SandboxConfig()
    passed = {c.id: run_tool_stage("checker", c.check, c.answer, sandbox).passed for c in cases}
    wrong = [c for c in cases if not c.consistent]
    controls = [c for c in cases if c.consistent]
    return ConsistencyReport(
        cases=len(wrong),
        false_accepts=[c.id for c in wrong if passed[c.id]],
        controls=len(controls),
        false_rejects=[c.id for c in controls if not passed[c.id]],
    )
