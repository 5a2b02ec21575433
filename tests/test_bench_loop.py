"""bench/loop.py on the tiny yes-model: the efficacy benchmark runs the real loop and its
record says what each arm did (the numbers themselves come from `make bench`)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.common import check_record
from bench.loop import main, paired, rate


def test_the_rates_and_changes_carry_their_intervals() -> None:
    value, (low, high) = rate([1.0] * 30 + [0.0] * 70)
    assert value == 0.3 and low < 0.3 < high and high - low < 0.25
    d = paired({"a": 1.0, "b": 1.0, "c": 0.0}, {"a": 0.0, "b": 1.0, "c": 0.0, "z": 1.0})
    assert (d["wins"], d["losses"]) == (1, 0) and abs(d["delta"] - 1 / 3) < 1e-9
    assert d["low"] <= d["delta"] <= d["high"]


def test_the_loop_benchmark_runs_every_arm_round_by_round(
    tmp_path: Path, yes_model_dir: Path
) -> None:
    out = tmp_path / "loop.json"
    argv = ["--model", str(yes_model_dir), "--rounds", "2", "--prompts", "3", "--n", "2"]
    argv += ["--max-tokens", "4", "--eval-items", "10", "--verifier-items", "2", "--votes", "1"]
    argv += ["--arms", "checker:base,self:base,self-floor:base", "--json", str(out)]
    argv += ["--no-injection-filter"]  # every yes-model answer is the verdict marker "[[Y]]"
    assert main(argv) == 0
    record = json.loads(out.read_text())
    check_record(record, "loop")
    rounds = record["details"]["results"]["rounds"]
    assert [(x["arm"], x["round"]) for x in rounds] == [
        (arm, r) for arm in ("checker:base", "self:base", "self-floor:base") for r in (1, 2)
    ]
    by = {(x["arm"], x["round"]): x for x in rounds}
    # The yes-model's answers ("[[Y]]") pass no check: the checker accepts nothing...
    assert all(by["checker:base", r]["accepted_new"] == 0 for r in (1, 2))
    assert by["checker:base", 1]["outcome"] == "skipped"
    assert by["checker:base", 2]["judge_calls"] == 0
    # ...its judges accept everything: self:base trains on it every round, gated...
    s1, s2 = by["self:base", 1], by["self:base", 2]
    # (one accepted sample per prompt: the first valid candidate)
    assert s1["accepted_new"] == 3 and s2["accepted_total"] == 6 and s1["judge_calls"] > 0
    assert s1["prompts_with_accepted"] == 3
    assert s1["outcome"] in ("promoted", "rejected") and s1["trained_on"] > 0
    assert s2["trained_on"] > s1["trained_on"]  # init base: the cumulative data
    # ...and the floor pauses it: precision 0 on the labeled problems.
    f1 = by["self-floor:base", 1]
    assert f1["outcome"] == "paused" and f1["verifier_precision"] == 0.0
    assert f1["serving"] == "base" and f1["vs_base"]["delta"] == 0
    for x in rounds:
        assert x["items"] == 10 and x["pass1_interval"][0] <= x["pass1"] <= x["pass1_interval"][1]
    rows = record["rows"]
    assert len(rows) == 6 and all(r["unit"] == "pass@1" and r["target"] is None for r in rows)
    assert all(r["baseline"] == record["details"]["results"]["base"]["pass1"] for r in rows)
    assert "paused" in rows[-1]["notes"] and "vs base" in rows[-1]["notes"]
