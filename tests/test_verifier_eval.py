"""The verifier measured against graded truth: exact numbers on constructed sets.

The judge is a ScriptedJudge (tests/judges.py), the documented stand-in: these tests check
that the report counts what the cascade decided correctly, so the verdicts are scripted per
candidate and per stage and every number below is worked out by hand in the comments.
"""

from __future__ import annotations

import json
import sqlite3
from itertools import pairwise
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from adapters.registry import Registry
from daemon.engines.base import ChatRequest
from daemon.learning.verifier_gate import (
    VerifierGateConfig,
    export_verifier_metrics,
    measure_verifier,
)
from daemon.operating.config import Settings
from daemon.verifying.cascade import Cascade, CascadeConfig, CascadeInput
from daemon.verifying.graders import LabeledItem
from daemon.verifying.quality import (
    VerifierEvalConfig,
    VerifierReport,
    auc,
    evaluate_verifier,
    sample_candidates,
    sweep,
)
from streams.schemas import CheckSpec
from tests.conftest import cli
from tests.judges import ScriptedJudge, prompt_text, stage_of

STAGES = ("cycle", "factuality", "correctness")


def _item(id_: str, question: str, answer: str, grader: str = "numeric") -> LabeledItem:
    return LabeledItem(id=id_, question=question, answer=answer, grader=grader)  # type: ignore[arg-type]


def _between(text: str, start: str) -> str:
    return text.split(start, 1)[1].split("\n>>>", 1)[0]


def _subject(r: ChatRequest) -> tuple[str, str]:
    """(question, candidate answer) a judge request is about. The compare prompt has no
    answer, but the scripted inferred question carries it ("ASKS: <answer>")."""
    t = prompt_text(r)
    if stage_of(r) == "cycle":
        inferred = _between(t, "Question B:\n<<<\n")
        return _between(t, "Question A:\n<<<\n"), inferred.removeprefix("ASKS: ")
    return _between(t, "Question:\n<<<\n"), _between(t, "Answer:\n<<<\n")


YES, NO = "Fine.\n[[Y]]", "Wrong.\n[[N]]"


def _table_judge(plan: dict[tuple[str, str], str]) -> ScriptedJudge:
    """Verdicts per (question, answer): plan[...][i] is stage i's verdict (Y/N); stages
    after the first N are never asked."""

    def rule(r: ChatRequest) -> str:
        stage = stage_of(r)
        if stage == "infer":
            return "ASKS: " + _between(prompt_text(r), "Answer:\n<<<\n")
        verdicts = plan[_subject(r)]
        return YES if verdicts[STAGES.index(stage)] == "Y" else NO

    return ScriptedJudge(rule)


# ------------------------------------------------------------------------- the set
QA, QB, QC, QD = (
    "What is 2 + 3?",
    "What is 10 - 4?",
    "Is 9 greater than 4? Answer yes or no.",
    "What is 3 * 3?",
)
ITEMS = [
    _item("a", QA, "5"),
    _item("b", QB, "6"),
    _item("c", QC, "yes", "exact"),
    _item("d", QD, "9"),
]
CANDIDATES = [
    ["5", "6", "The answer is 5."],  # right, wrong, right
    ["6", "", "7"],  # right, empty (static), wrong
    ["yes", "no", "yes"],  # right, wrong, right
    ["8", "10", "6"],  # all wrong
]
# cycle, factuality, correctness verdicts per candidate
PLAN = {
    (QA, "5"): "YYY",  # a0 right: accepted
    (QA, "6"): "YYY",  # a1 wrong: accepted (a false accept)
    (QA, "The answer is 5."): "N",  # a2 right: rejected at cycle (a false reject)
    (QB, "6"): "YN",  # b0 right: rejected at factuality
    (QB, "7"): "YYN",  # b2 wrong: rejected at correctness
    (QC, "yes"): "YYY",  # c0, c2 right: accepted
    (QC, "no"): "YN",  # c1 wrong: rejected at factuality
    (QD, "8"): "N",  # d0 wrong: rejected at cycle
    (QD, "10"): "YYY",  # d1 wrong: accepted
    (QD, "6"): "YYN",  # d2 wrong: rejected at correctness
}


def test_report_numbers_are_exact_on_a_constructed_set() -> None:
    judge = _table_judge(PLAN)
    report = evaluate_verifier(
        judge, ITEMS, CascadeConfig(votes=1), CANDIDATES, heldout="constructed"
    )
    # 12 candidates; correct: a0 a2 b0 c0 c2 = 5.
    assert (report.items, report.candidates, report.correct) == (4, 12, 5)
    assert report.base_rate == pytest.approx(5 / 12)
    # Accepted: a0 a1 c0 c2 d1 = 5, of which a0 c0 c2 are right.
    assert (report.accepted, report.accepted_correct) == (5, 3)
    assert report.precision == pytest.approx(3 / 5)
    assert report.recall == pytest.approx(3 / 5)
    assert report.static_rejected == 1
    # Depth scores (stages passed / 3; accepted 1): positives a0 1, a2 0, b0 1/3, c0 1,
    # c2 1; negatives a1 1, b1 0 (static), b2 2/3, c1 1/3, d0 0, d1 1, d2 2/3.
    # Each positive at 1 beats b1 b2 c1 d0 d2 and ties a1 d1: 6, three of them: 18;
    # a2 (0) ties b1, d0: 1; b0 (1/3) beats b1, d0 and ties c1: 2.5. 21.5 / (5 x 7).
    assert report.auc == pytest.approx(21.5 / 35)

    cycle, fact, corr = (report.stage(s) for s in STAGES)
    # cycle: the 11 non-empty candidates; fails a2, d0. Correct reached 5, passed 4.
    assert (cycle.reached, cycle.passed, cycle.correct_reached, cycle.passed_correct) == (
        11,
        9,
        5,
        4,
    )
    assert cycle.precision == pytest.approx(4 / 9) and cycle.recall == pytest.approx(4 / 5)
    # Positives a0 b0 c0 c2 at 1 each beat d0 and tie the other 5 negatives: 3.5 each;
    # a2 at 0 ties d0: 0.5. 14.5 / (5 x 6).
    assert cycle.auc == pytest.approx(14.5 / 30)
    # factuality: the 9 that passed cycle; fails b0, c1. Correct reached a0 b0 c0 c2.
    assert (fact.reached, fact.passed, fact.correct_reached, fact.passed_correct) == (9, 7, 4, 3)
    assert fact.precision == pytest.approx(3 / 7) and fact.recall == pytest.approx(3 / 4)
    # Positives at 1 (a0 c0 c2) beat c1, tie a1 b2 d1 d2: 3 each; b0 at 0 ties c1: 0.5.
    assert fact.auc == pytest.approx(9.5 / 20)
    # correctness: a0 a1 b2 c0 c2 d1 d2; fails b2, d2; every right one passes.
    assert (corr.reached, corr.passed, corr.correct_reached, corr.passed_correct) == (7, 5, 3, 3)
    assert corr.precision == pytest.approx(3 / 5) and corr.recall == 1.0
    assert corr.auc == pytest.approx(9 / 12)  # 3 positives x (beat b2 d2, tie a1 d1) = 9

    # Judge calls: cycle = infer + 1 vote for 11 candidates, factuality 9, correctness 7.
    assert (cycle.judge_calls, fact.judge_calls, corr.judge_calls) == (22, 9, 7)
    assert report.judge_calls == 38 == len(judge.calls)
    assert report.calls_per_candidate == pytest.approx(38 / 12)

    # Tokens as the engine counted them: prompt (words of the request) + completion.
    def tokens(r: ChatRequest) -> int:
        return len(str(r.messages).split()) + len(judge.rule(r).split())

    assert report.judge_tokens == sum(tokens(r) for r in judge.calls)
    for s in (cycle, fact, corr):
        asked = [r for r in judge.calls if stage_of(r).replace("infer", "cycle") == s.stage]
        assert s.judge_tokens == sum(tokens(r) for r in asked)
    assert report.judge_tokens == sum(s.judge_tokens for s in report.stages)

    # first-valid at n = 3: a keeps a0 (right, 4 calls), b keeps nothing (3 + 0 + 4 calls),
    # c keeps c0 (right, 4), d keeps d1 (wrong, 2 + 4).
    fv = report.first_valid
    assert fv is not None and (fv.n, fv.v, fv.items_kept, fv.kept_correct) == (3, 1, 3, 2)
    assert fv.precision == pytest.approx(2 / 3)
    assert fv.judge_calls_per_item == pytest.approx((4 + 7 + 4 + 6) / 4)
    assert fv.items_with_correct == 3
    assert [(x["id"], x["candidate"]) for x in report.false_accepts] == [("a", "6"), ("d", "10")]
    # The report survives a round trip through its dict (the registry stores that).
    again = VerifierReport.from_dict(json.loads(json.dumps(report.as_dict())))
    assert again == report


def test_a_stage_score_is_the_share_of_yes_votes() -> None:
    """With v = 3, a candidate stopped by the third vote scores 2/3 in that stage."""

    def rule(r: ChatRequest) -> str:
        answer = _between(prompt_text(r), "Answer:\n<<<\n")
        if answer == "5":
            return YES
        rule.count[answer] = rule.count.get(answer, 0) + 1  # type: ignore[attr-defined]
        return YES if rule.count[answer] < 3 else NO  # type: ignore[attr-defined]

    rule.count = {}  # type: ignore[attr-defined]
    judge = ScriptedJudge(rule)
    report = evaluate_verifier(
        judge, [ITEMS[0]], CascadeConfig(votes=3, stages=["factuality"]), [["5", "6", "4"]]
    )
    # "6" and "4" each get yes, yes, no: stage score 2/3 (< 1 for the accepted "5").
    fact = report.stage("factuality")
    assert (fact.reached, fact.passed, fact.judge_calls) == (3, 1, 9)
    assert fact.auc == 1.0 and report.auc == 1.0
    assert report.precision == 1.0 and report.recall == 1.0


def test_nothing_accepted_or_nothing_correct_leaves_the_ratios_undefined() -> None:
    judge = ScriptedJudge(lambda r: NO)
    report = evaluate_verifier(
        judge, [ITEMS[3]], CascadeConfig(votes=1, stages=["correctness"]), [["8", "7"]]
    )
    assert report.accepted == 0 and report.correct == 0 and report.base_rate == 0.0
    assert report.precision is None and report.recall is None and report.auc is None
    assert report.stage("correctness").precision is None


# ---------------------------------------------------------------------- tool stages
def _checked(item: LabeledItem) -> LabeledItem:
    return item.model_copy(update={"check": CheckSpec(checker=item.grader, answer=item.answer)})


def test_a_checker_is_measured_on_the_same_candidates_at_no_judge_cost() -> None:
    """The caller's comparison: the self-cascade and the checker on identical candidates."""
    items = [_checked(i) for i in ITEMS]
    judge = _table_judge(PLAN)
    own = evaluate_verifier(judge, items, CascadeConfig(votes=1), CANDIDATES)
    tool = evaluate_verifier(judge, items, CascadeConfig(votes=1, stages=["checker"]), CANDIDATES)
    assert own.precision == pytest.approx(3 / 5)
    # The checker applies the grader's own rule: it accepts exactly the 5 right ones.
    assert (tool.accepted, tool.accepted_correct, tool.correct) == (5, 5, 5)
    assert tool.precision == 1.0 and tool.recall == 1.0 and tool.auc == 1.0
    checker = tool.stage("checker")
    assert checker.tool and (checker.reached, checker.passed) == (11, 5)
    assert checker.judge_calls == checker.judge_tokens == tool.judge_calls == 0


def test_tool_stages_without_a_check_are_skipped_or_reject_at_no_cost() -> None:
    judge = ScriptedJudge(lambda r: YES)
    skip = evaluate_verifier(
        judge, ITEMS, CascadeConfig(votes=1, stages=["checker", "correctness"]), CANDIDATES
    )
    assert skip.stage("checker").reached == 0
    assert skip.stage("correctness").reached == 11
    reject = evaluate_verifier(
        judge,
        ITEMS,
        CascadeConfig(votes=1, stages=["checker", "correctness"], missing_check="reject"),
        CANDIDATES,
    )
    checker = reject.stage("checker")
    assert checker.tool and (checker.reached, checker.passed, checker.judge_calls) == (11, 0, 0)
    assert reject.accepted == 0 and reject.judge_calls == 0 and reject.precision is None
    assert reject.stage("correctness").reached == 0
    assert reject.auc == 0.5  # every candidate scores 0: no ranking at all


# ------------------------------------------------------------------------------ AUC
def test_auc() -> None:
    assert auc([0.1, 0.4, 0.8, 0.9], [False, False, True, True]) == 1.0
    assert auc([0.9, 0.8, 0.4, 0.1], [False, False, True, True]) == 0.0
    assert auc([1, 1, 1, 1], [True, False, True, False]) == 0.5  # all tied
    # pos {2, 1}, neg {1, 0}: 2 beats both (2); 1 beats 0, ties 1 (1.5); 3.5 / 4.
    assert auc([2, 1, 1, 0], [True, True, False, False]) == pytest.approx(0.875)
    assert auc([0.3, 0.7], [True, True]) is None
    assert auc([0.3, 0.7], [False, False]) is None
    assert auc([], []) is None


# ---------------------------------------------------------------------------- sweep
QP, QQ, QR, QS = "What is 2 + 3?", "What is 7 + 1?", "What is 4 + 4?", "What is 1 + 1?"
SWEEP_ITEMS = [_item("p", QP, "5"), _item("q", QQ, "8"), _item("r", QR, "8"), _item("s", QS, "2")]
SWEEP_CANDIDATES = [
    ["4", "5", "5", "6"],  # F T T F
    ["8", "9", "8", "8"],  # T F T T
    ["1", "2", "3", "4"],  # all wrong
    ["", "2", "3", "2"],  # static, T, F, T
]
RIGHT = {(QP, "5"), (QQ, "8"), (QR, "8"), (QS, "2")}


def _unsure_judge() -> ScriptedJudge:
    """Always yes to a right answer; to a wrong one, yes, yes, then no on the third vote.

    The votes of a stage come in one request (votes_per_round >= v), so the k-th vote is the
    k-th sample of the same request object."""
    state: dict[str, object] = {"req": None, "k": 0}

    def rule(r: ChatRequest) -> str:
        state["k"] = state["k"] + 1 if state["req"] is r else 0  # type: ignore[operator]
        state["req"] = r
        if _subject(r) in RIGHT:
            return YES
        return NO if state["k"] == 2 else YES

    return ScriptedJudge(rule)


SWEEP_CONFIG = CascadeConfig(stages=["factuality", "correctness"], votes_per_round=5)


def test_sweep_points_are_exact_and_v_matters() -> None:
    points = sweep(
        _unsure_judge(), SWEEP_ITEMS, SWEEP_CONFIG, SWEEP_CANDIDATES, [4, 1, 2], [3, 1, 1]
    )
    got = {
        (p.n, p.v): (p.items_kept, p.kept_correct, p.precision, p.coverage, p.judge_calls_per_item)
        for p in points
    }
    assert [(p.v, p.n) for p in points] == [(1, 1), (1, 2), (1, 4), (3, 1), (3, 2), (3, 4)]
    # v = 1: every non-empty candidate passes both stages (2 calls). n = 1 keeps p "4" (F),
    # q "8" (T), r "1" (F); s's first is empty (0 calls). n >= 2: s keeps "2" (T) after it.
    assert got[(1, 1)] == (3, 1, pytest.approx(1 / 3), 0.75, 6 / 4)
    assert got[(2, 1)] == (4, 2, 0.5, 1.0, 8 / 4)
    assert got[(4, 1)] == (4, 2, 0.5, 1.0, 8 / 4)
    # v = 3: a right answer costs 3 + 3 calls and passes; a wrong one 3 (yes, yes, no).
    # n = 1: only q keeps; calls p 3, q 6, r 3, s 0.
    assert got[(1, 3)] == (1, 1, 1.0, 0.25, 12 / 4)
    # n = 2: p 3 + 6, q 6, r 3 + 3 (none kept), s 0 + 6.
    assert got[(2, 3)] == (3, 3, 1.0, 0.75, 27 / 4)
    # n = 4: r now judges all four wrong ones: 12.
    assert got[(4, 3)] == (3, 3, 1.0, 0.75, 33 / 4)
    assert [p.items_with_correct for p in points] == [1, 3, 3, 1, 3, 3]
    for v in (1, 3):
        row = [p for p in points if p.v == v]
        assert [p.n for p in row] == [1, 2, 4]
        # Larger n can only raise coverage (and never lowers the cost).
        assert all(a.items_kept <= b.items_kept for a, b in pairwise(row))
        assert all(
            a.judge_tokens_per_item <= b.judge_tokens_per_item  # type: ignore[operator]
            for a, b in pairwise(row)
        )
        assert all(p.judge_tokens_per_item and p.judge_tokens_per_item > 0 for p in row)


def test_sweep_equals_running_first_valid_at_each_point() -> None:
    """With a deterministic judge the simulation is exactly what first-valid does."""
    points = sweep(_unsure_judge(), SWEEP_ITEMS, SWEEP_CONFIG, SWEEP_CANDIDATES, [1, 2, 4], [1, 3])
    for p in points:
        config = SWEEP_CONFIG.model_copy(update={"votes": p.v, "policy": "first-valid"})
        outcomes = Cascade(_unsure_judge(), config).run(
            [
                CascadeInput(item.id, item.question, cands[: p.n])
                for item, cands in zip(SWEEP_ITEMS, SWEEP_CANDIDATES, strict=True)
            ]
        )
        kept = [o.accepted for o in outcomes]
        assert p.items_kept == sum(1 for k in kept if k)
        assert p.kept_correct == sum(
            1
            for o, k in zip(outcomes, kept, strict=True)
            if k and (o.question, k[0].answer) in RIGHT
        )
        calls = sum(len(c.judge_calls) for o in outcomes for c in o.candidates)
        tokens = sum(
            j.prompt_tokens + j.completion_tokens
            for o in outcomes
            for c in o.candidates
            for j in c.judge_calls
        )
        assert p.judge_calls_per_item == pytest.approx(calls / len(SWEEP_ITEMS))
        assert p.judge_tokens_per_item == pytest.approx(tokens / len(SWEEP_ITEMS))


def test_sweep_needs_enough_candidates() -> None:
    with pytest.raises(ValueError, match="needs 4 candidates"):
        sweep(_unsure_judge(), SWEEP_ITEMS[:1], SWEEP_CONFIG, [["5", "6"]], [1, 4], [1])


# --------------------------------------------------------------------------- config
def test_config_grids_are_sorted_deduplicated_and_bounded() -> None:
    cfg = VerifierEvalConfig(sweep_candidates=[8, 1, 4, 4], sweep_votes=[5, 1])
    assert cfg.sweep_candidates == [1, 4, 8] and cfg.sweep_votes == [1, 5]
    for bad in ({"sweep_votes": [0]}, {"sweep_candidates": []}, {"candidates": 65}, {"x": 1}):
        with pytest.raises(ValueError):
            VerifierEvalConfig(**bad)  # type: ignore[arg-type]
    assert VerifierGateConfig(floor=0.5).measure is True
    with pytest.raises(ValueError):
        VerifierGateConfig(floor=1.5)
    s = Settings()
    assert isinstance(s.verify.eval, VerifierEvalConfig)


# ------------------------------------------------------------------ registry, metrics
def test_registry_stores_lists_and_caches_verifier_evals(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    first = reg.record_verifier_eval("base", "gate", "fp1", {"precision": 0.5})
    second = reg.record_verifier_eval("base", "eval", "fp1", {"precision": 0.75})
    reg.record_verifier_eval("tiny-sd-v0001", "sweep", "fp2", {"points": []})
    assert second > first
    rows = reg.verifier_evals()
    assert [(r["judge"], r["kind"], r["fingerprint"]) for r in rows] == [
        ("tiny-sd-v0001", "sweep", "fp2"),
        ("base", "eval", "fp1"),
        ("base", "gate", "fp1"),
    ]
    assert rows[1]["report"] == {"precision": 0.75} and rows[0]["at"] >= rows[2]["at"]
    assert [r["kind"] for r in reg.verifier_evals(kind="gate")] == ["gate"]
    assert len(reg.verifier_evals(limit=1)) == 1
    assert reg.cached_verifier_eval("base", "fp1") == {"precision": 0.75}  # the newest
    assert reg.cached_verifier_eval("tiny-sd-v0001", "fp1") is None
    assert reg.cached_verifier_eval("base", "nope") is None
    with pytest.raises(ValueError):
        reg.record_verifier_eval("base", "bogus", "fp", {})
    reg.close()
    with Registry(tmp_path, read_only=True) as ro:
        assert len(ro.verifier_evals()) == 3
    # A registry written before the table existed, opened read-only (by `status`): empty.
    conn = sqlite3.connect(tmp_path / "registry.db")
    conn.execute("DROP TABLE verifier_evals")
    conn.commit()
    conn.close()
    with Registry(tmp_path, read_only=True) as ro:
        assert ro.verifier_evals() == [] and ro.cached_verifier_eval("base", "fp1") is None


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_metrics_are_exported_without_nan_and_for_the_newest_versions_only() -> None:
    report = evaluate_verifier(_table_judge(PLAN), ITEMS, CascadeConfig(votes=1), CANDIDATES)
    report.adapter = "metrics-v0"
    export_verifier_metrics(report)
    assert _value("selfdistill_verifier_precision", version="metrics-v0", stage="cascade") == 0.6
    assert _value("selfdistill_verifier_recall", version="metrics-v0", stage="cycle") == 0.8
    assert _value("selfdistill_verifier_auc", version="metrics-v0", stage="correctness") == 0.75
    assert _value("selfdistill_verifier_base_rate", version="metrics-v0") == pytest.approx(5 / 12)
    assert _value(
        "selfdistill_verifier_judge_calls_per_candidate", version="metrics-v0"
    ) == pytest.approx(38 / 12)
    # An undefined number removes its series instead of exporting NaN.
    report.precision = None
    export_verifier_metrics(report)
    assert _value("selfdistill_verifier_precision", version="metrics-v0", stage="cascade") is None
    assert _value("selfdistill_verifier_recall", version="metrics-v0", stage="cascade") == 0.6
    # Eight newer versions push the oldest out entirely.
    for i in range(1, 9):
        report.adapter = f"metrics-v{i}"
        export_verifier_metrics(report)
    assert _value("selfdistill_verifier_recall", version="metrics-v0", stage="cascade") is None
    assert _value("selfdistill_verifier_base_rate", version="metrics-v0") is None
    assert _value("selfdistill_verifier_recall", version="metrics-v8", stage="cascade") == 0.6
    assert _value("selfdistill_verifier_base_rate", version="metrics-v1") == pytest.approx(5 / 12)


# ----------------------------------------------------------- measuring, end to end
ANSWERS = {QA: "5", QB: "7", QC: "yes", QD: "10"}  # what the "model" answers: 2 right


def _answering_judge() -> ScriptedJudge:
    """Answers the questions (ANSWERS) and judges like PLAN."""
    judge = _table_judge(PLAN)
    judging = judge.rule

    def rule(r: ChatRequest) -> str:
        text = prompt_text(r)
        return ANSWERS[text] if text in ANSWERS else judging(r)

    judge.rule = rule
    return judge


def _write(path: Path, items: list[LabeledItem]) -> Path:
    path.write_text("".join(i.model_dump_json(exclude_none=True) + "\n" for i in items))
    return path


def test_sample_candidates_asks_n_samples_per_item_in_batches() -> None:
    engine = _answering_judge()
    out = sample_candidates(
        engine, ITEMS, 3, temperature=0.7, top_p=0.9, max_tokens=5, seed=1, batch_size=3
    )
    assert out == [["5"] * 3, ["7"] * 3, ["yes"] * 3, ["10"] * 3]
    assert engine.batches == [3, 1]
    r = engine.calls[0]
    assert (r.n, r.temperature, r.top_p, r.max_tokens, r.seed, r.adapter) == (
        3,
        0.7,
        0.9,
        5,
        1,
        None,
    )
    assert r.messages == [{"role": "user", "content": QA}]


def test_measure_verifier_samples_judges_stores_and_reuses(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "var",
        serve={"extra_candidates": 1, "temperature": 0.5, "seed": 3},
        verify={"votes": 1, "eval": {"heldout": str(_write(tmp_path / "h.jsonl", ITEMS))}},
    )
    reg = Registry(tmp_path / "reg")
    engine = _answering_judge()
    report = measure_verifier(settings, engine, reg, kind="gate")
    # n = serve's 1 + 1; candidates a "5" (right, accepted), b "7" (wrong, stopped at
    # correctness), c "yes" (right, accepted), d "10" (wrong, accepted), twice each.
    assert (report.n, report.candidates, report.correct) == (2, 8, 4)
    assert (report.accepted, report.accepted_correct) == (6, 4)
    assert report.precision == pytest.approx(4 / 6) and report.recall == 1.0
    assert (report.judge, report.adapter, report.votes) == ("base", "base", 1)
    assert engine.calls[0].temperature == 0.5 and engine.calls[0].seed == 3
    [row] = reg.verifier_evals()
    assert (row["kind"], row["judge"], row["fingerprint"]) == ("gate", "base", report.fingerprint)
    assert _value("selfdistill_verifier_precision", version="base", stage="cascade") == (
        pytest.approx(4 / 6)
    )
    # The same measurement again: from the registry, no engine call, nothing stored.
    calls = len(engine.calls)
    again = measure_verifier(settings, engine, reg, kind="gate")
    assert again == report and len(engine.calls) == calls and len(reg.verifier_evals()) == 1
    # Other settings are another measurement; use_cache=False always measures.
    fewer = measure_verifier(settings, engine, reg, kind="eval", max_items=2, candidates=1)
    assert (fewer.items, fewer.n) != (report.items, report.n)
    assert fewer.fingerprint != report.fingerprint
    measure_verifier(settings, engine, reg, kind="eval", use_cache=False)
    assert [r["kind"] for r in reg.verifier_evals()] == ["eval", "eval", "gate"]


def test_cli_reports_bad_heldout_file_with_its_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(ITEMS[0].model_dump_json() + "\n{not json\n")
    res = cli(
        "eval", "verifier", "--heldout", str(bad), env={"SELFDISTILL_DATA_DIR": str(tmp_path)}
    )
    assert res.returncode == 2, res.stderr
    assert f"{bad}:2" in res.stderr and "not JSON" in res.stderr


def test_cli_eval_verifier_on_a_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    heldout = _write(tmp_path / "small.jsonl", ITEMS[:2])
    env = {
        "SELFDISTILL_DATA_DIR": str(tmp_path / "var"),
        "SELFDISTILL_MODEL__PATH": str(tiny_model_dir),
        "SELFDISTILL_ENGINE__TORCH_THREADS": "1",
        "SELFDISTILL_SERVE__EXTRA_CANDIDATES": "1",
        "SELFDISTILL_SERVE__MAX_TOKENS": "6",
        "SELFDISTILL_SERVE__SEED": "0",
        "SELFDISTILL_VERIFY__VOTES": "1",
        "SELFDISTILL_VERIFY__JUDGE_MAX_TOKENS": "6",
        "SELFDISTILL_VERIFY__INFER_MAX_TOKENS": "6",
        "SELFDISTILL_VERIFY__SEED": "0",
        "SELFDISTILL_VERIFY__EVAL__SWEEP_CANDIDATES": "[2, 1]",
        "SELFDISTILL_VERIFY__EVAL__SWEEP_VOTES": "[1]",
    }
    res = cli("eval", "verifier", "--heldout", str(heldout), "--json", env=env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["items"], data["n"], data["candidates"], data["votes"]) == (2, 2, 4, 1)
    assert data["judge"] == "base" and data["adapter"] == "base"
    assert 0 <= data["accepted_correct"] <= data["accepted"] <= data["candidates"]
    assert data["correct"] <= data["candidates"]
    assert data["precision"] == (
        data["accepted_correct"] / data["accepted"] if data["accepted"] else None
    )
    assert data["base_rate"] == pytest.approx(data["correct"] / data["candidates"])
    assert [s["stage"] for s in data["stages"]] == list(STAGES)
    assert data["judge_calls"] == sum(s["judge_calls"] for s in data["stages"]) > 0
    assert data["judge_tokens"] == sum(s["judge_tokens"] for s in data["stages"]) > 0
    assert all(s["passed"] <= s["reached"] <= data["candidates"] for s in data["stages"])
    with Registry(tmp_path / "var" / "adapters", read_only=True) as reg:
        [row] = reg.verifier_evals()
    assert row["kind"] == "eval" and row["report"] == data

    res = cli("eval", "verifier", "--heldout", str(heldout), "--sweep", "--json", env=env)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["kind"] == "sweep" and (data["ns"], data["vs"]) == ([1, 2], [1])
    assert [(p["n"], p["v"]) for p in data["points"]] == [(1, 1), (2, 1)]
    one, two = data["points"]
    assert one["items_kept"] <= two["items_kept"] <= data["items"]
    assert one["judge_calls_per_item"] <= two["judge_calls_per_item"]
    with Registry(tmp_path / "var" / "adapters", read_only=True) as reg:
        assert [r["kind"] for r in reg.verifier_evals()] == ["sweep", "eval"]

    # The human-readable table: the cascade row and one per stage.
    res = cli("eval", "verifier", "--heldout", str(heldout), env=env)
    assert res.returncode == 0, res.stderr
    for word in ("base rate", "cascade", *STAGES, "precision", "AUC"):
        assert word in res.stdout
