"""The tool stages' checkers: deterministic verdicts with details that say why.

The execution-stage tests here run the real sandbox (fast, ordinary candidates); the hostile
cases are in ``test_sandbox.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from daemon.verifying.checkers import (
    CHECKERS,
    MAX_BITS,
    TOOL_STAGES,
    ToolVerdict,
    applies,
    evaluate_arithmetic,
    register_checker,
    run_tool_stage,
)
from daemon.verifying.sandbox import SandboxConfig
from streams.schemas import CheckSpec

SANDBOX = SandboxConfig(timeout_s=3.0, memory_mb=256)


def check(spec: CheckSpec, answer: str) -> ToolVerdict:
    verdict = run_tool_stage("checker", spec, answer, SANDBOX)
    assert isinstance(verdict, ToolVerdict)
    assert "\n" not in verdict.detail and len(verdict.detail) <= 300
    return verdict


# --- built-in checkers -------------------------------------------------------------------


def test_the_built_in_checkers_are_registered() -> None:
    assert {"exact", "numeric", "regex", "choice", "arithmetic"} <= set(CHECKERS)
    assert TOOL_STAGES == ("checker", "execution")


def test_exact() -> None:
    spec = CheckSpec(checker="exact", answer="Paris")
    ok = check(spec, "<think>London? no.</think>The capital is...\nParis.")
    assert ok.passed and "expected 'Paris'" in ok.detail
    bad = check(spec, "I think it is\nLondon")
    assert not bad.passed
    assert bad.detail == "exact: expected 'Paris', found 'London'"
    assert not check(spec, "Paris is not it; Lyon").passed  # containing it is not a pass


def test_numeric() -> None:
    spec = CheckSpec(checker="numeric", answer="42")
    assert check(spec, "6 * 7 = 42").passed
    bad = check(spec, "6 * 7 = 41")
    assert not bad.passed and bad.detail == "numeric: expected 42, found 41"
    none = check(spec, "no idea")
    assert not none.passed and "found no number" in none.detail
    loose = CheckSpec(checker="numeric", answer="3.14", tolerance=0.01)
    assert check(loose, "pi is about 3.1416").passed
    assert "tolerance 0.01" in check(loose, "3.2").detail


def test_regex() -> None:
    spec = CheckSpec(checker="regex", answer=r"^\s*x\s*=\s*4\s*$")
    assert check(spec, "Solving: x = 4").passed is False  # anchored: the whole answer
    assert check(spec, "x = 4").passed
    bad = check(spec, "x = 5")
    assert not bad.passed and "no match in 'x = 5'" in bad.detail


def test_a_catastrophic_regex_is_a_failed_verdict_within_its_time_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``(a|aa)+$`` against a long run of a's and a bang backtracks for longer than anyone
    waits (Python's ``re`` has no bound); the check must end, fail, and say why."""
    import daemon.verifying.checkers as checkers
    import daemon.verifying.graders as graders

    monkeypatch.setattr(checkers, "REGEX_TIMEOUT_S", 0.2)
    monkeypatch.setattr(graders, "REGEX_TIMEOUT_S", 0.2)
    real = graders.regex_search
    monkeypatch.setattr(checkers, "regex_search", lambda p, t: real(p, t, timeout_s=0.2))
    spec = CheckSpec(checker="regex", answer=r"(a|aa)+$")
    verdict = check(spec, "a" * 60 + "!")
    assert not verdict.passed and "ran past 0.2s" in verdict.detail
    assert check(spec, "aaaa").passed  # an honest input still matches


def test_choice() -> None:
    spec = CheckSpec(checker="choice", answer="B", choices=["18", "19", "20"])
    assert check(spec, "The answer is (B).").passed
    assert check(spec, "19").passed  # the option's text picks it too
    bad = check(spec, "Answer: C")
    assert not bad.passed and bad.detail == "choice: expected B, found C"
    assert "found no choice" in check(spec, "hmm").detail


def test_arithmetic() -> None:
    spec = CheckSpec(checker="arithmetic", expression="6 + 36")
    assert check(spec, "<think>6 + 36 is 41? no</think>42").passed
    bad = check(spec, "It is 41.")
    assert not bad.passed and bad.detail == "arithmetic: expected 42 (= 6 + 36), found 41"
    assert check(CheckSpec(checker="arithmetic", expression="(3*4) - 2/5"), "11.6").passed
    assert check(CheckSpec(checker="arithmetic", expression="2**10"), "1,024").passed
    assert check(CheckSpec(checker="arithmetic", expression="7 // 2 + 7 % 2"), "4").passed
    near = CheckSpec(checker="arithmetic", expression="1/3", tolerance=0.001)
    assert check(near, "0.333").passed and not check(near, "0.33").passed
    assert "found no number" in check(spec, "forty-two").detail


def test_arithmetic_is_exact_and_small() -> None:
    assert evaluate_arithmetic("0.1 + 0.2") == evaluate_arithmetic("3/10")
    assert evaluate_arithmetic("-2**2") == -4
    assert evaluate_arithmetic("2 ** -2") == evaluate_arithmetic("1/4")
    assert evaluate_arithmetic("1 ** (10**100)") == 1


@pytest.mark.parametrize(
    "expression",
    ["9**9**9", "10**10**10", "2**(MAX)", "(2**4000)**2", "99999999**999999"],
)
def test_arithmetic_refuses_huge_powers_without_computing_them(expression: str) -> None:
    expression = expression.replace("MAX", str(MAX_BITS + 1))
    started = time.monotonic()
    verdict = check(CheckSpec(checker="arithmetic", expression=expression), "1")
    assert not verdict.passed and "check spec error" in verdict.detail
    assert time.monotonic() - started < 5  # a bound on a hang, not a speed test


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('touch /tmp/pwned_by_checker')",
        "open('/etc/passwd').read()",
        "x + 1",
        "(1).__class__",
        "[1, 2][0]",
        "lambda: 1",
        "1 if 1 else 2",
        "1 < 2",
        "True + 1",
        "1j * 1j",
        "'4' * 2",
        "1 << 2",
        "1 / 0",
        "(-8) ** (1/3)",
        "1 +",
        "",
        "(" * 250 + "1" + ")" * 250,  # deeper than the parser allows
    ],
)
def test_arithmetic_refuses_anything_but_arithmetic(expression: str) -> None:
    verdict = check(CheckSpec(checker="arithmetic", expression=expression), "2")
    assert not verdict.passed and "check spec error" in verdict.detail


def test_arithmetic_never_evaluates_a_call() -> None:
    marker = "/tmp/selfdistill_checker_must_not_exist"
    expression = f"__import__('os').system('touch {marker}')"
    with pytest.raises(ValueError, match="Call"):
        evaluate_arithmetic(expression)
    assert not os.path.exists(marker)


# --- specs that cannot be checked --------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (CheckSpec(checker="numeric", answer="forty-two"), "must be a number"),
        (CheckSpec(checker="numeric"), "needs 'answer'"),
        (CheckSpec(checker="exact", answer="  "), "must not be empty"),
        (CheckSpec(checker="regex", answer="(unclosed"), "does not compile"),
        (CheckSpec(checker="choice", answer="Z", choices=["a", "b"]), "one of the letters"),
        (CheckSpec(checker="choice", answer="A"), "choices"),
        (CheckSpec(checker="choice", answer="A", choices=["same", "same"]), "distinct"),
        (CheckSpec(checker="arithmetic"), "needs 'expression'"),
        (CheckSpec(checker="arithmetic", answer="4"), "needs 'expression'"),
    ],
)
def test_a_bad_spec_is_a_failed_verdict_not_an_exception(spec: CheckSpec, words: str) -> None:
    verdict = check(spec, "42")
    assert not verdict.passed
    assert "check spec error" in verdict.detail and words in verdict.detail, verdict


def test_an_unknown_checker_fails() -> None:
    verdict = check(CheckSpec(checker="no-such-checker"), "42")
    assert verdict == ToolVerdict(False, "unknown checker 'no-such-checker'")


def test_a_stage_without_its_part_of_the_spec_fails() -> None:
    assert not run_tool_stage("checker", CheckSpec(tests="assert True"), "x", SANDBOX).passed
    no_tests = run_tool_stage("execution", CheckSpec(checker="exact", answer="x"), "x", SANDBOX)
    assert not no_tests.passed and "no tests" in no_tests.detail


def test_an_unknown_stage_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown tool stage"):
        run_tool_stage("judgement", CheckSpec(checker="exact", answer="x"), "x", SANDBOX)


def test_applies() -> None:
    both = CheckSpec(checker="exact", answer="x", tests="assert True")
    assert applies("checker", both) and applies("execution", both)
    assert not applies("execution", CheckSpec(checker="exact", answer="x"))
    assert not applies("checker", CheckSpec(tests="assert True"))
    assert not applies("checker", None)


# --- registering checkers ----------------------------------------------------------------


@pytest.fixture
def restore_registry() -> Iterator[None]:
    saved = dict(CHECKERS)
    yield
    CHECKERS.clear()
    CHECKERS.update(saved)


@pytest.mark.usefixtures("restore_registry")
def test_register_checker_adds_a_checker() -> None:
    @register_checker("palindrome")
    def palindrome(spec: CheckSpec, answer: str) -> ToolVerdict:
        word = answer.strip().lower()
        return ToolVerdict(word == word[::-1], f"{word!r} reversed is {word[::-1]!r}")

    assert CHECKERS["palindrome"] is palindrome
    spec = CheckSpec(checker="palindrome")
    assert check(spec, "<think>hmm</think> Level").passed
    bad = check(spec, "levels")
    assert not bad.passed and bad.detail == "palindrome: 'levels' reversed is 'slevel'"


@pytest.mark.usefixtures("restore_registry")
def test_a_broken_checker_is_a_failed_verdict() -> None:
    @register_checker("raises")
    def raises(spec: CheckSpec, answer: str) -> ToolVerdict:
        raise RuntimeError("bug in a user's checker")

    @register_checker("returns-junk")
    def junk(spec: CheckSpec, answer: str) -> ToolVerdict:
        return True  # type: ignore[return-value]

    verdict = check(CheckSpec(checker="raises"), "x")
    assert not verdict.passed and "RuntimeError: bug in a user's checker" in verdict.detail
    verdict = check(CheckSpec(checker="returns-junk"), "x")
    assert not verdict.passed and "not a verdict" in verdict.detail


def test_register_checker_refuses_a_bad_name() -> None:
    with pytest.raises(ValueError, match="checker name"):
        register_checker("")
    with pytest.raises(ValueError, match="checker name"):
        register_checker("x" * 65)


# --- the execution stage -----------------------------------------------------------------

ADD_TESTS = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def test_execution_passes_a_correct_fenced_solution() -> None:
    answer = (
        "<think>Maybe a - b? No.</think>Here is the function:\n\n"
        "```python\ndef add(a, b):\n    return a + b\n```\n\nExample:\n```\n>>> add(2, 3)\n5\n```"
    )
    verdict = run_tool_stage("execution", CheckSpec(tests=ADD_TESTS), answer, SANDBOX)
    assert verdict.passed and verdict.detail == "ok: tests passed"


def test_execution_fails_a_wrong_solution_and_says_why() -> None:
    answer = "```python\ndef add(a, b):\n    return a - b\n```"
    verdict = run_tool_stage("execution", CheckSpec(tests=ADD_TESTS), answer, SANDBOX)
    assert not verdict.passed
    assert verdict.detail.startswith("failed:") and "AssertionError" in verdict.detail


def test_execution_uses_the_final_answer_only() -> None:
    # Code that only appears in the reasoning is not the answer.
    answer = "<think>```python\ndef add(a, b):\n    return a + b\n```</think>I cannot say."
    assert not run_tool_stage("execution", CheckSpec(tests=ADD_TESTS), answer, SANDBOX).passed
    empty = run_tool_stage("execution", CheckSpec(tests=ADD_TESTS), "<think>x</think>", SANDBOX)
    assert not empty.passed and "no code" in empty.detail


def test_execution_of_a_hostile_answer_is_a_failed_vote() -> None:
    quick = SANDBOX.model_copy(update={"timeout_s": 1.0})
    for code in ("while True: pass", "import os\nos.fork()", "x = bytearray(8 * 1024**3)"):
        verdict = run_tool_stage("execution", CheckSpec(tests=ADD_TESTS), code, quick)
        assert not verdict.passed and verdict.detail.split(":")[0] in (
            "timeout",
            "forbidden",
            "memory",
        )


def test_odd_answers_never_raise() -> None:
    specs = [
        CheckSpec(checker=name, answer="A", choices=["x", "y"], expression="1+1")
        for name in ("exact", "numeric", "regex", "choice", "arithmetic")
    ] + [CheckSpec(tests="assert True")]
    answers = ["", "\x00", "\udc80", "```", "```python\n", "</think>", "9" * 5000, "-" * 10_000]
    for spec in specs:
        stage = "checker" if spec.checker else "execution"
        for answer in answers:
            verdict = run_tool_stage(stage, spec, answer, SANDBOX)
            assert isinstance(verdict, ToolVerdict)
