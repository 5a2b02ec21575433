"""Right for the right reason (issue 17): a checker accepts an answer only when everything it
states that can be checked agrees with it.

Every rejected case below is one the grader alone (``grade``, which the built-in checkers
applied before) accepts: each test asserts that, so these are exactly the "right letter,
wrong reason" answers the rule exists for. The accepted cases are the false rejections the
rule must not make: unit statements, times, dates, ranges, list numbering, echoed questions.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console

from daemon.learning.tasks import CONVERSIONS, KINDS, generate_items
from daemon.operating.config import Settings
from daemon.operating.eval_verifier import run_eval_verifier, uses_checker
from daemon.verifying.arithmetic import evaluate_arithmetic
from daemon.verifying.cascade import CascadeConfig
from daemon.verifying.checkers import ToolVerdict, measure_consistency, run_tool_stage
from daemon.verifying.consistency import (
    CORPUS,
    ConsistencyReport,
    CorpusCase,
    contradictions,
    load_corpus,
    statements,
    wilson_interval,
)
from daemon.verifying.graders import LabeledItem, grade
from daemon.verifying.sandbox import SandboxConfig
from streams.schemas import CheckSpec
from tests.judges import ScriptedJudge

SANDBOX = SandboxConfig(timeout_s=3.0, memory_mb=256)

ISSUE = "7 + 6 = 11\n\nSo the correct answer is D) 11."
SEVEN_SIX = CheckSpec(checker="choice", answer="D", choices=["12", "14", "11", "13"])
ADD = CheckSpec(checker="arithmetic", expression="7 + 6")
MUL = CheckSpec(checker="arithmetic", expression="3 * 26")
WORD = CheckSpec(checker="numeric", answer="54")  # 6 boxes with 9 cookies in each
UNITS = CheckSpec(checker="numeric", answer="7000")  # meters in 7 kilometers
YES = CheckSpec(checker="exact", answer="yes")  # Is 15 greater than 9?
NO = CheckSpec(checker="exact", answer="no")  # Is 15 less than 9?
GRAMS = CheckSpec(checker="regex", answer=r"(?<![\d.,])3,?000\s*(?:g|grams?)\b")  # 3 kg
CHOICE = CheckSpec(checker="choice", answer="B", choices=["450", "440", "432", "442"])  # 4 + 436
CAPITAL = CheckSpec(checker="choice", answer="B", choices=["Paris", "London", "Rome"])


def check(spec: CheckSpec, answer: str) -> ToolVerdict:
    verdict = run_tool_stage("checker", spec, answer, SANDBOX)
    assert "\n" not in verdict.detail and len(verdict.detail) <= 300
    return verdict


def graded(spec: CheckSpec, answer: str) -> bool:
    """What the grader alone says: the rule the built-in checkers applied before issue 17."""
    if spec.checker == "arithmetic":
        assert spec.expression is not None
        value = evaluate_arithmetic(spec.expression)
        item = LabeledItem(id="x", question="q", answer=str(value), grader="numeric")
    else:
        assert spec.answer is not None
        item = LabeledItem(
            id="x",
            question="q",
            answer=spec.answer,
            grader=spec.checker,  # type: ignore[arg-type]
            choices=spec.choices,
            tolerance=spec.tolerance,
        )
    return grade(item, answer)


# --- the issue's answer ------------------------------------------------------------------


def test_the_issue_answer_is_rejected_and_the_detail_says_why() -> None:
    assert graded(SEVEN_SIX, ISSUE)  # the letter is right: the grader alone accepts it
    verdict = check(SEVEN_SIX, ISSUE)
    assert not verdict.passed
    assert "states 7 + 6 = 11, which is false (13)" in verdict.detail
    assert "D) 11, while option D is 13" in verdict.detail
    assert verdict.detail.startswith("choice: expected D, found D, but it states")
    assert check(SEVEN_SIX, "7 + 6 = 13\n\nSo the correct answer is D) 13.").passed


# --- the rule, case by case: each rejected answer is graded correct ----------------------

REJECTED = [
    # choice: the value restated next to the chosen letter
    (SEVEN_SIX, "D) 11", "states D) 11, while option D is 13"),
    (SEVEN_SIX, "(D) 11", "states (D) 11, while option D is 13"),
    (SEVEN_SIX, "D. 11", "states D. 11, while option D is 13"),
    (SEVEN_SIX, "The answer is D: 11.", "D: 11, while option D is 13"),
    (SEVEN_SIX, "D (11)", "D (11), while option D is 13"),
    (SEVEN_SIX, "D, which is 11", "D, which is 11, while option D is 13"),
    (CHOICE, "**B) 442**", "B) 442, while option B is 440"),
    (CAPITAL, "B) Paris", "states B) Paris, while option B is London"),
    # choice: a stated answer or a last line that is not the chosen option's value
    (SEVEN_SIX, "The answer is 11, which is D.", "states 'answer is 11', while its pick D is 13"),
    (SEVEN_SIX, "D\n11", "states '11', while its pick D is 13"),
    # choice: a false equation anywhere, the problem's or not
    (CHOICE, "4 + 436 = 450, so the answer is B.", "states 4 + 436 = 450, which is false (440)"),
    (SEVEN_SIX, "6 + 6 = 11 and 7 + 6 = 13. D", "states 6 + 6 = 11, which is false (12)"),
    # arithmetic / numeric: a false equation with a right final number
    (ADD, "7 + 6 = 11, so the answer is 13.", "states 7 + 6 = 11, which is false (13)"),
    (ADD, "7 + 6 is 12. The answer is 13.", "states 7 + 6 is 12, which is false (13)"),
    (ADD, "7 plus 6 equals 14.\n13", "states 7 plus 6 equals 14, which is false (13)"),
    (ADD, "**7 + 6 = 11**\n\nAnswer: 13", "states 7 + 6 = 11, which is false (13)"),
    (ADD, r"\(7 + 6 = 12\)" + "\n13", "states"),
    (ADD, "13 = 7 + 5, so 13", "states 13 = 7 + 5, which is false (12)"),
    (ADD, "7 + 6 = 14 = 13", "states 7 + 6 = 14, which is false (13)"),
    (MUL, "3 x 26 = 68\n\nAnswer: 78", "states 3 x 26 = 68, which is false (78)"),
    (MUL, "3 × 26 = 88. 78", "states 3 × 26 = 88, which is false (78)"),
    (MUL, "3 times 26 is 77, no: 78", "states 3 times 26 is 77, which is false (78)"),
    (WORD, "6 × 9 = 45 cookies.\nAnswer: 54", "states 6 × 9 = 45, which is false (54)"),
    (UNITS, "7 × 100 = 7000, so 7000 meters.", "states 7 × 100 = 7000, which is false (700)"),
    (UNITS, "7 km = 7 × 1000 = 700 m... 7000", "states 7 × 1000 = 700, which is false (7000)"),
    (ADD, "7 + 6 = 13. Since 13 < 7, 13.", "states 13 < 7, which is false (13 > 7)"),
    # exact yes/no: a false comparison, or the other verdict as well
    (YES, "15 < 9, so the answer is yes.", "states 15 < 9, which is false (15 > 9)"),
    (YES, "15 is less than 9.\nYes", "states 15 is less than 9, which is false (15 > 9)"),
    (YES, "9 is greater than 15, so the answer is yes.", "which is false (9 < 15)"),
    (YES, "15 is not greater than 9. Answer: yes", "states 15 is not greater than 9"),
    (YES, "15 ≤ 9, so yes.\nyes", "states 15 ≤ 9, which is false (15 > 9)"),
    (YES, "So 15 equals 9.\nyes", "states 15 equals 9, which is false (15 > 9)"),
    (YES, "No, 15 is greater than 9. The answer is yes.", "also says 'No'"),
    (NO, "Yes, 15 > 9.\nAnswer: no", "also says 'Yes'"),
    (NO, "15 is less than 9, so the answer is no.", "states 15 is less than 9, which is false"),
    # regex (units_text): a false equation as well
    (GRAMS, "3 × 1000 = 300, so 3 kilograms is 3000 grams.", "states 3 × 1000 = 300"),
    (GRAMS, "1 kg = 1000 g, so 3 kg = 3 × 1000 = 30 g... 3000 g", "states 3 × 1000 = 30"),
    (GRAMS, "3 * 1000 = 3,100\n3000 grams", "states 3 * 1000 = 3,100, which is false (3000)"),
]


@pytest.mark.parametrize(("spec", "answer", "why"), REJECTED)
def test_an_answer_right_for_a_wrong_reason_is_rejected(
    spec: CheckSpec, answer: str, why: str
) -> None:
    assert graded(spec, answer), "the grader alone must accept it (else the case is moot)"
    verdict = check(spec, answer)
    assert not verdict.passed, verdict
    assert why in verdict.detail, verdict.detail
    assert contradictions(answer, spec)  # the one place the rule lives


ACCEPTED = [
    (SEVEN_SIX, "D) 13"),
    (SEVEN_SIX, "D"),
    (SEVEN_SIX, "(D) 13"),
    (SEVEN_SIX, "D. 13 is the sum."),
    (SEVEN_SIX, "The answer is D. 7 + 6 = 13."),  # "D." ends a sentence: 7 is not D's value
    (SEVEN_SIX, "7 + 6 = 13, so D"),
    (SEVEN_SIX, "A) 12\nB) 14\nC) 11\nD) 13\nThe answer is D."),  # echoes the options
    (
        SEVEN_SIX,
        "Not C (11): 7 + 6 = 13, so the answer is D) 13.",
    ),  # another letter's value is not D's
    (SEVEN_SIX, "The answer is 13, which is D."),
    (SEVEN_SIX, "The answer is 4, D."),  # 4 may be the fourth option
    (CHOICE, "4 + 436 = 440\n\nSo the correct answer is B) 440."),
    (CAPITAL, "B) London is the capital of the UK."),
    (CAPITAL, "B) London, not Paris."),
    (ADD, "12 + 1 = 13. The answer is 13."),
    (ADD, "<think>7 + 6 = 11? no.</think>7 + 6 = 13"),  # reasoning is not the final answer
    (ADD, "7 + 6 = 11? No: 7 + 6 = 13."),  # a question states nothing
    (ADD, "If 7 + 6 = 12, the answer would be 12; but 7 + 6 = 13.\n13"),  # hedged
    (ADD, "7 + 6 = 11 is wrong; 7 + 6 = 13."),
    (ADD, "$7 + 6 = 13$"),
    (ADD, "**7 + 6 = 13**"),
    (ADD, "- 7 + 6 = 13"),  # a bullet, not a minus
    (ADD, "1. 7 + 6 = 13\n2. Answer: 13"),  # list numbering
    (ADD, "1) 7 + 6 = 13"),
    (ADD, "At 3:00 + 2 = 5:00 I found 13."),  # times are not numbers
    (ADD, "On 2024-01-05 = today: 13"),  # a date
    (ADD, "Pages 7-9 = 3 pages. 13"),  # a range
    (ADD, "12/25/2024 = Christmas; 13"),
    (ADD, "Ratio 3:4 = 0.75. 13"),
    (ADD, "50% of 26 = 13"),
    (ADD, "half of 26 = 13"),
    (ADD, "Box 1 = 5 + 8 = 13"),  # a label, then a true sum
    (ADD, "26 / 2 = 13"),
    (ADD, "1/3 = 0.33 and 7 + 6 = 13"),  # a rounded decimal
    (ADD, "27 / 2 = 13 remainder 1, so 13"),
    (ADD, "The sum of 7 and 6 equals 13"),
    (ADD, "The sum of 6 and 8 is greater than 13; 7 + 6 = 13"),  # "8 > 13" is not stated
    (ADD, "3 × 4 = 1 dozen; 13"),
    (ADD, "7 apples + 6 apples = 13 apples"),
    (MUL, "3 × 26 = 78"),
    (MUL, "3 x 26 = 78"),
    (MUL, "3 times 26 is 78."),
    (MUL, "3 * 26 = 78 (3 * 20 = 60 and 3 * 6 = 18; 60 + 18 = 78)"),
    (WORD, "6 boxes with 9 cookies each: 6 × 9 = 54 cookies.\nAnswer: 54"),
    (UNITS, "1 km = 1000 m, so 7 km = 7000 m"),
    (UNITS, "7 kilometers = 7000 meters"),
    (UNITS, "1 kilometer = 1000 meters, so 7 kilometers = 7 × 1000 = 7000 meters."),
    (UNITS, "7 km × 1000 m/km = 7,000 m. Answer: 7000"),
    (UNITS, "7 × 1000 = 7.000 meters, i.e. 7000"),  # dots as thousands separators
    (YES, "15 is greater than 9, so the answer is yes."),
    (YES, "Since 15 > 9, the answer is yes."),
    (YES, "Is 15 greater than 9? 15 is greater than 9.\nAnswer: yes"),  # echoes the question
    (YES, "Is 15 less than 9? No. Is it greater? Yes.\nThe answer is yes."),
    (YES, "Yes or no? Yes.\nyes"),
    (YES, "9 < 15, so 15 is not less than 9.\nThe answer is yes."),
    (YES, "15 - 9 = 6 > 0, so yes.\nyes"),
    (NO, "15 is greater than 9, not less.\nThe answer is no."),
    (GRAMS, "1 kg = 1000 g, so 3 kg = 3000 g"),
    (GRAMS, "3 kilograms = 3 × 1000 grams = 3000 grams"),
    (GRAMS, "3 × 1000 = 3,000 grams"),
    (GRAMS, "3000 grams"),
]


@pytest.mark.parametrize(("spec", "answer"), ACCEPTED)
def test_an_answer_right_for_the_right_reason_is_accepted(spec: CheckSpec, answer: str) -> None:
    verdict = check(spec, answer)
    assert verdict.passed, verdict
    assert not contradictions(answer, spec)


def test_a_failing_verdict_keeps_its_own_detail() -> None:
    # Wrong anyway: the detail says what the grader found, as before.
    assert check(ADD, "7 + 6 = 11").detail == "arithmetic: expected 13 (= 7 + 6), found 11"
    assert check(SEVEN_SIX, "C) 11").detail == "choice: expected D, found C"


def test_many_reasons_are_counted_not_all_shown() -> None:
    answer = "1 + 1 = 3. 2 + 2 = 5. 3 + 3 = 7. 7 + 6 = 13"
    verdict = check(ADD, answer)
    assert not verdict.passed and "(and 1 more)" in verdict.detail
    assert len(contradictions(answer, ADD)) == 3


# --- what is a statement -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("7 + 6 = 11", [("7 + 6 = 11", False)]),
        ("So 7+6=13.", [("7+6=13", True)]),
        ("12-7=5", [("12-7=5", True)]),  # compact: arithmetic, not a range
        ("7 + 6 = 13 = 12 + 1", [("7 + 6 = 13", True), ("13 = 12 + 1", True)]),
        ("15 > 9 > 10", [("15 > 9", True), ("9 > 10", False)]),
        ("15 is greater than 9", [("15 is greater than 9", True)]),
        ("15 isn't less than 9", [("15 isn't less than 9", True)]),
        ("15 is not equal to 9", [("15 is not equal to 9", True)]),
        ("5 - 8 = -3", [("5 - 8 = -3", True)]),
        ("(7 + 6) × 2 = 26", [("(7 + 6) × 2 = 26", True)]),
        ("10 ÷ 4 = 2.5", [("10 ÷ 4 = 2.5", True)]),
        ("2/3 = 0.67", [("2/3 = 0.67", True)]),
        ("2/3 = 0.5", [("2/3 = 0.5", False)]),
        ("1,000 + 2,000 = 3,000", [("1,000 + 2,000 = 3,000", True)]),
        ("7 + 6 = 13 apples", [("7 + 6 = 13", True)]),
        # not statements: units, labels, times, dates, ranges, percents, code, prose
        ("1 km = 1000 m", []),
        ("3 kilometers = 3000 meters", []),
        ("3 = 3000", []),  # "=" needs an operator on one side
        ("Step 2 = 3 + 4", []),
        ("3:00 + 2 = 5:00", []),
        ("2024-01-05 = 2018", []),
        ("7-9 = 3", []),
        ("x + 2 = 5", []),
        ("2x + 3 = 11", []),
        ("2^3 = 8", []),
        ("√16 = 5", []),
        ("10% = 5", []),
        ("3 × 1000 = 3000m", []),
        ("7 / 2 = 3 and a half", []),
        ("7 / 2 = 3 and 1/2", []),
        ("twice 3 + 4 = 14", []),
        ("Is 15 less than 9?", []),
        ("Is 15 < 9?", []),
        ("15 apples > 9", []),
        ("15 > 9 apples", []),  # might compare other things
        ("a -> b", []),
        ("13 ≡ 1 (mod 12)", []),  # congruence, not equality
        ("9" * 20 + " + 1 = 0", []),  # too many digits to be a sum anyone wrote
    ],
)
def test_statements(text: str, found: list[tuple[str, bool]]) -> None:
    assert [(s.text, s.holds) for s in statements(text)] == found


@pytest.mark.parametrize(
    "answer",
    ["", "\x00", "\udc80", "=" * 5000, "1=" * 3000, "(" * 300 + "1 = 2", "-" * 10_000 + "=1"],
)
def test_odd_answers_never_raise_and_stay_quick(answer: str) -> None:
    started = time.monotonic()
    for spec in (SEVEN_SIX, ADD, YES, GRAMS, WORD):
        contradictions(answer, spec)
        check(spec, answer)
    assert time.monotonic() - started < 5  # a bound on a hang, not a speed test


def test_a_long_answer_is_read_in_linear_time() -> None:
    answer = "1 + 1 = 2. " * 2000 + "7 + 6 = 12. 13"
    started = time.monotonic()
    assert contradictions(answer, ADD) == ["states 7 + 6 = 12, which is false (13)"]
    assert time.monotonic() - started < 5


# --- the bundled task, answered correctly with typical reasoning --------------------------


def _typical_answers(item: LabeledItem) -> list[str]:
    """Correct answers in the styles a model writes them, for one bundled problem."""
    q, v = item.question, item.answer
    kind = item.id.split("-")[1]
    sym = {"+": "+", "-": "-", "times": "×"}
    if kind in ("add", "sub", "mul"):
        a, op, b = re.match(r"What is (\d+) (\+|-|times) (\d+)\?", q).groups()  # type: ignore[union-attr]
        e = f"{a} {sym[op]} {b}"
        out = [f"{e} = {v}. The answer is {v}.", f"{e} = {v}", f"**{e} = {v}**\n\nAnswer: {v}"]
        return [*out, f"{a} times {b} is {v}.", f"{a} x {b} = {v}"] if op == "times" else out
    if kind == "word":
        a, b = (int(x) for x in re.findall(r"\d+", q)[:2])
        e = next(f"{a} {s} {b}" for s in "+-×" if {"+": a + b, "-": a - b, "×": a * b}[s] == int(v))
        return [f"{e} = {v}. The answer is {v}.", f"- {e} = {v}\n- Answer: {v}"]
    if kind == "compare":
        a, _, b = re.match(r"Is (\d+) (greater than|less than) (\d+)\?", q).groups()  # type: ignore[union-attr]
        word, sign = ("greater than", ">") if int(a) > int(b) else ("less than", "<")
        return [
            f"{a} is {word} {b}, so the answer is {v}.",
            f"Since {a} {sign} {b}, the answer is {v}.",
            f"{a} {sign} {b}.\n{v}",
        ]
    if kind in ("units", "units_text"):
        m = re.search(r"(?:in|Convert) (\d+) (\w+)", q)
        assert m is not None
        n, unit = int(m.group(1)), m.group(2)
        conv = next(c for c in CONVERSIONS if unit in (c.source, c.source_plural) and c.target in q)
        total = n * conv.factor
        return [
            f"1 {conv.source} = {conv.factor} {conv.target}, so {n} {unit} = "
            f"{n} × {conv.factor} = {total} {conv.target}.\nAnswer: {total}",
            f"{n} {unit} × {conv.factor} = {total:,} {conv.target}. The answer is {total}.",
        ]
    assert kind == "choice" and item.choices is not None
    value = item.choices["ABCD".index(v)]
    return [f"{v}) {value}", f"The answer is {v}) {value}.", f"({v}) {value}", v]


def test_bundled_problems_answered_right_with_typical_reasoning_pass() -> None:
    items = generate_items(400, 7)
    assert {i.id.split("-")[1] for i in items} == set(KINDS)
    failed = [
        (item.id, answer, verdict.detail)
        for item in items
        for answer in _typical_answers(item)
        if not (verdict := check(item.check, answer)).passed  # type: ignore[arg-type]
    ]
    assert not failed, failed[:5]


# --- the corpus and its report -----------------------------------------------------------


def test_the_corpus_is_in_the_package_and_covers_every_kind() -> None:
    import daemon.verifying

    package = Path(daemon.verifying.__file__).parent
    assert package / "data" / "contradictions.jsonl" == CORPUS and CORPUS.is_file()
    cases = load_corpus()
    wrong = Counter(c.kind for c in cases if not c.consistent)
    right = Counter(c.kind for c in cases if c.consistent)
    assert sum(wrong.values()) >= 30 and sum(right.values()) >= 30
    assert set(wrong) == set(right) == set(KINDS)
    checkers = {c.check.checker for c in cases}
    assert checkers == {"arithmetic", "numeric", "exact", "regex", "choice"}


def test_every_corpus_case_has_a_right_final_answer_by_the_grader() -> None:
    """The wrong-reason cases are exactly what the grader alone accepts; the controls too."""
    for case in load_corpus():
        assert graded(case.check, case.answer), case.id


def test_the_checker_accepts_no_wrong_reason_in_the_corpus_and_rejects_no_control() -> None:
    report = measure_consistency()
    assert report.cases >= 30 and report.controls >= 30
    assert report.false_accepts == [] and report.false_accept_rate == 0.0
    assert report.false_rejects == [] and report.false_reject_rate == 0.0
    data = report.as_dict()
    assert data["n"] == report.cases and data["false_accepts"] == 0
    lo, hi = data["false_accept_ci95"]
    assert lo == 0.0 and 0 < hi < 0.15  # 0 of n still leaves some possible


def test_the_report_counts_what_the_checker_accepts() -> None:
    case = CorpusCase(
        id="x", kind="choice", question="q", check=SEVEN_SIX, answer=ISSUE, consistent=False
    )
    control = case.model_copy(update={"id": "y", "answer": "D) 13", "consistent": True})
    bad_control = case.model_copy(update={"id": "z", "answer": "C) 11", "consistent": True})
    report = measure_consistency([case, control, bad_control])
    assert report == ConsistencyReport(cases=1, false_accepts=[], controls=2, false_rejects=["z"])
    assert report.false_reject_rate == 0.5
    assert "false-reject 50.0% (1/2 consistent answers" in report.line()


def test_wilson_interval() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(0, 40)
    assert lo == 0.0 and hi == pytest.approx(0.0876, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(1 - hi) and lo == pytest.approx(0.2366, abs=1e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_a_bad_corpus_line_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "c.jsonl"
    good = load_corpus()[0].model_dump_json()
    bad.write_text(good + "\n\n" + '{"id": "x"}\n')
    with pytest.raises(ValueError, match=r"c\.jsonl:3"):
        load_corpus(bad)
    bad.write_text(good + "\n" + good + "\n")
    with pytest.raises(ValueError, match="duplicate id"):
        load_corpus(bad)


# --- eval verifier reports it ------------------------------------------------------------


def _settings(tmp_path: Path, **verify: object) -> tuple[Settings, Path]:
    heldout = tmp_path / "h.jsonl"
    item = LabeledItem(
        id="a",
        question="What is 40 + 2? Answer with a number.",
        answer="42",
        grader="numeric",
        check=CheckSpec(checker="arithmetic", expression="40 + 2"),
    )
    heldout.write_text(item.model_dump_json() + "\n")
    settings = Settings(
        data_dir=tmp_path / "var",
        verify={"votes": 1, "eval": {"heldout": str(heldout)}, **verify},
    )
    return settings, heldout


def _run(settings: Settings, *, as_json: bool) -> str:
    out = io.StringIO()
    console = Console(file=out, width=300, no_color=True)
    engine = ScriptedJudge(lambda r: "40 + 2 = 42")
    code = run_eval_verifier(
        settings, heldout=None, sweep=False, as_json=as_json, console=console, engine=engine
    )
    assert code == 0
    return out.getvalue()


def test_eval_verifier_reports_the_checker_consistency(tmp_path: Path) -> None:
    settings, _ = _settings(tmp_path, stages=["checker"])
    n = measure_consistency().cases
    text = _run(settings, as_json=False)
    assert f"checker consistency: false-accept 0.0% (0/{n} right answers for a wrong reason" in text
    assert "95% CI 0.0%-" in text and "false-reject 0.0%" in text
    data = json.loads(_run(settings, as_json=True))
    report = data["checker_consistency"]
    assert report["false_accept_rate"] == 0.0 and report["n"] == n >= 30
    assert report["false_reject_rate"] == 0.0 and report["controls"] >= 30
    assert report["false_accept_ci95"][0] == 0.0 and 0 < report["false_accept_ci95"][1] < 0.15


def test_eval_verifier_reports_it_for_a_domain_checker_and_not_without_one(
    tmp_path: Path,
) -> None:
    assert uses_checker(CascadeConfig(domains={"arithmetic": ["checker", "correctness"]}))
    assert not uses_checker(CascadeConfig())
    settings, _ = _settings(tmp_path)  # the self-judges only: nothing about the checker
    engine_yes = "Fine.\n[[Y]]"
    out = io.StringIO()
    code = run_eval_verifier(
        settings,
        heldout=None,
        sweep=False,
        as_json=True,
        console=Console(file=out, width=300),
        engine=ScriptedJudge(lambda r: engine_yes),
    )
    assert code == 0 and "checker_consistency" not in json.loads(out.getvalue())
