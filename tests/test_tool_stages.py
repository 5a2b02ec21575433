"""Tool-verified stages in the cascade, ranking groups in the store, `export --ranking`.

The cascade tests use the ScriptedJudge (the documented stand-in for a judge model) only to
count and inspect judge calls; the tool stages themselves are real: the registered checkers
and the sandbox run for real. The worker test runs the real verify worker against the
embedded broker and a real SQLite store.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from daemon.operating.config import Settings
from daemon.verifying.cascade import Cascade, CascadeConfig, CascadeInput
from daemon.verifying.sandbox import SandboxConfig
from daemon.verifying.store import Store
from daemon.verifying.worker import VerifyWorker
from streams.connection import KafkaSettings
from streams.schemas import CandidatesMessage, CheckSpec
from streams.topics import TopicsConfig
from tests.conftest import candidates_message, cli, committed_total, store_verdicts, wait_for
from tests.judges import ScriptedJudge, prompt_text
from tests.test_serve import _start
from tests.test_verify import _produce

SIX_TIMES_SEVEN = CheckSpec(checker="arithmetic", expression="6 * 7")


def _yes(_: object) -> str:
    return "Looks right. [[Y]]"


def _run(config: CascadeConfig, *inputs: CascadeInput) -> tuple[list, ScriptedJudge]:
    judge = ScriptedJudge(_yes)
    return Cascade(judge, config).run(list(inputs)), judge


def test_checker_instead_of_the_judges_costs_no_judge_call_and_labels_every_candidate() -> None:
    cfg = CascadeConfig(votes=3, domains={"math": ["checker"]})
    [out], judge = _run(
        cfg,
        CascadeInput(
            "p", "What is 6 times 7?", ["It is 41.", "42", "", "6*7 = 42"], "math", SIX_TIMES_SEVEN
        ),
    )
    assert judge.calls == []  # no model generation at all
    fates = [(c.accepted, c.rejected_at) for c in out.candidates]
    # first-valid keeps the first passing one; the later passing one is superseded, but it
    # was still checked (so the group has a label for every candidate).
    assert fates == [(False, "checker"), (True, None), (False, "static"), (False, "superseded")]
    assert [c.tool_passed for c in out.candidates] == [False, True, None, True]
    assert out.candidates[0].stages[0].calls[0].kind == "tool"
    assert "expected 42" in out.candidates[0].stages[0].calls[0].output
    assert out.judge_calls == 0 and out.judge_tokens == 0


def test_checker_before_the_judges_spares_them_the_wrong_candidates() -> None:
    cfg = CascadeConfig(votes=2, stages=["checker", "correctness"], policy="all-valid")
    [out], judge = _run(
        cfg, CascadeInput("p", "What is 6 times 7?", ["41", "42", "43"], None, SIX_TIMES_SEVEN)
    )
    assert [c.accepted for c in out.candidates] == [False, True, False]
    assert [c.rejected_at for c in out.candidates] == ["checker", None, "checker"]
    # Only the candidate that passed the checker met the judge: two votes, both on "42".
    assert len(judge.calls) == 2
    assert all("42" in prompt_text(r) and "41" not in prompt_text(r) for r in judge.calls)
    assert [s.stage for s in out.candidates[1].stages] == ["checker", "correctness"]


def test_prompts_without_a_check_skip_or_fail_the_tool_stage_as_configured() -> None:
    no_check = CascadeInput("p", "Name a colour.", ["red"])
    [out], judge = _run(CascadeConfig(votes=1, stages=["checker", "correctness"]), no_check)
    assert out.candidates[0].accepted and len(judge.calls) == 1  # skipped to the judge

    strict = CascadeConfig(votes=1, stages=["checker", "correctness"], missing_check="reject")
    [out], judge = _run(strict, no_check)
    assert out.candidates[0].rejected_at == "checker" and judge.calls == []
    assert "no check" in out.candidates[0].stages[0].calls[0].output

    # Tools only and nothing to check with: nothing verified it, so it is not accepted.
    [out], judge = _run(
        CascadeConfig(votes=1, domains={"d": ["checker"]}),
        CascadeInput("p", "Name a colour.", ["red"], "d"),
    )
    assert not out.candidates[0].accepted and out.candidates[0].rejected_at == "checker"


def test_execution_stage_runs_code_candidates_against_the_prompts_tests() -> None:
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"
    good = "Here it is:\n```python\ndef add(a, b):\n    return a + b\n```"
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    hang = "```python\ndef add(a, b):\n    while True:\n        pass\n```"
    cfg = CascadeConfig(
        votes=1,
        domains={"code": ["execution"]},
        policy="all-valid",
        sandbox=SandboxConfig(timeout_s=1.0),
    )
    [out], judge = _run(
        cfg,
        CascadeInput("c", "Write add(a, b).", [wrong, hang, good], "code", CheckSpec(tests=tests)),
    )
    assert [c.accepted for c in out.candidates] == [False, False, True]
    assert [c.rejected_at for c in out.candidates] == ["execution", "execution", None]
    assert "timeout" in out.candidates[1].stages[0].calls[0].output
    assert judge.calls == []


def test_tool_stages_must_come_first() -> None:
    with pytest.raises(ValidationError, match="before the judge stages"):
        CascadeConfig(stages=["correctness", "checker"])
    with pytest.raises(ValidationError, match="domain 'x'"):
        CascadeConfig(domains={"x": ["cycle", "execution"]})


# --------------------------------------------------------------- worker, store, export
def _msg(pid: str, texts: list[str], expression: str) -> CandidatesMessage:
    check = CheckSpec(checker="arithmetic", expression=expression)
    return candidates_message(pid, f"What is {expression}?", texts, domain="math", check=check)


def test_the_verify_worker_checks_stores_and_exports_ranking_groups(
    kafka: KafkaSettings, topics: TopicsConfig, tiny_model_dir: Path, tmp_path: Path
) -> None:
    msgs = [
        _msg("r1", ["5", "4", "4"], "2 + 2"),  # fail, pass, pass (same text: one candidate)
        _msg("r2", ["9", "9.0"], "3 * 3"),  # all pass: no ranking group
        _msg("r3", ["1", "2"], "10 - 3"),  # all fail: nothing accepted, no group
        _msg("r4", ["7", "", "8"], "14 / 2"),  # pass, static, fail
    ]
    _produce(kafka, topics.candidates, msgs)
    settings = Settings(
        data_dir=tmp_path,
        kafka=kafka.model_dump(),
        topics=topics.model_dump(),
        model={"path": str(tiny_model_dir)},
        # The tiny random model would judge at random: the checker alone decides math.
        verify={"votes": 1, "domains": {"math": ["checker"]}, "group_id": "verify-tools"},
    )
    worker = VerifyWorker(settings)
    t = _start(worker)
    wait_for(lambda: committed_total(kafka, "verify-tools", topics.candidates) == 4, 120)
    worker.stop()
    t.join(30)
    store_verdicts(settings)

    with Store(settings.store.path_in(tmp_path), read_only=True) as store:
        accepted = {
            r["prompt_id"]: r["messages"][-1]["content"] for r in store.accepted_samples(None)
        }
        groups = store.ranking_groups()
        funnel = store.stage_funnel()
    assert accepted == {"r1": "4", "r2": "9", "r4": "7"}
    assert next(iter(funnel["stages"])) == "checker"
    assert funnel["stages"]["checker"] == {"reached": 8, "passed": 4}  # 10 texts, 1 dup, 1 empty
    # Groups come in store order, which is the order partitions were consumed in.
    assert sorted(g["prompt_id"] for g in groups) == ["r1", "r4"]
    r1, r4 = sorted(groups, key=lambda g: g["prompt_id"])
    assert [m["text"] for m in r1["passed"]] == ["4"] and [m["text"] for m in r1["failed"]] == ["5"]
    assert [m["text"] for m in r4["passed"]] == ["7"]
    assert sorted(m["text"] for m in r4["failed"]) == ["", "8"]  # an empty answer fails too
    assert all(g["source"] == "tool" for g in groups)

    env = {"SELFDISTILL_DATA_DIR": str(tmp_path)}
    out = tmp_path / "ranking.jsonl"
    res = cli("export", "--ranking", "--out", str(out), env=env)
    assert res.returncode == 0, res.stderr
    lines = sorted(
        (json.loads(x) for x in out.read_text().splitlines()), key=lambda x: x["prompt_id"]
    )
    assert [x["prompt_id"] for x in lines] == ["r1", "r4"]
    assert lines[0]["messages"] == [{"role": "user", "content": "What is 2 + 2?"}]

    pairs = tmp_path / "pairs.jsonl"
    res = cli("export", "--ranking", "--format", "pairs", "--out", str(pairs), env=env)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(x) for x in pairs.read_text().splitlines()]
    assert len(rows) == 1 + 2  # r1: 1 x 1, r4: 1 x 2
    assert {(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows} == {
        ("4", "5"),
        ("7", ""),
        ("7", "8"),
    }
    assert all(r["prompt"][0]["role"] == "user" for r in rows)

    bad = cli("export", "--ranking", "--format", "csv", "--out", str(pairs), env=env)
    assert bad.returncode == 2 and "groups or pairs" in bad.stderr
