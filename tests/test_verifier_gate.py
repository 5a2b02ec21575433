"""The gate watches the verifier: a training cycle measures its precision against labeled
truth first, records it, and pauses below ``train.verifier.floor``; `status` says why.

Real parts throughout: the tiny Llama trained to say "[[Y]]" (a judge that accepts
everything) samples and judges, the registry and store are real SQLite files, the metrics
are read back from the process's Prometheus registry.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from prometheus_client import REGISTRY
from rich.console import Console

from daemon.learning.settings import open_registry
from daemon.learning.train import run_cycle
from daemon.operating.config import Settings
from daemon.operating.status import collect_status
from daemon.operating.status_view import render_status
from tests.test_learning_loop import _record_accepted

# Anything non-empty is right: every candidate the yes-judge accepts is correct.
ANYTHING = {"question": "Say something.", "answer": ".", "grader": "regex"}
# The yes-model never writes "4": everything it accepts is wrong.
FOUR = {"question": "What is 2 + 2? Answer with a number.", "answer": "4", "grader": "numeric"}


def _labeled(path: Path, item: dict[str, str], n: int = 3) -> Path:
    path.write_text("".join(json.dumps({"id": f"i{i}", **item}) + "\n" for i in range(n)))
    return path


def _settings(tmp: Path, model: Path, labeled: Path, floor: float | None) -> Settings:
    return Settings(
        data_dir=tmp / "var",
        model={"path": str(model)},
        engine={"torch_threads": 1},
        serve={"max_tokens": 6, "seed": 0},
        verify={
            # The yes-model answers every chat "[[Y]]", which the static stage would reject
            # as a verdict marker (tests/security/test_injection.py); the gate is tested here.
            "reject_injection": False,
            "votes": 1,
            "stages": ["correctness"],
            "judge_max_tokens": 6,
            "seed": 0,
            "eval": {"heldout": str(labeled)},
        },
        train={
            "min_new_samples": 2,
            "lora": {"r": 4, "alpha": 8, "max_steps": 2, "batch_size": 2, "max_length": 64},
            "eval": {"labeled_set": str(labeled), "max_tokens": 4, "heldout_max": 0},
            "verifier": {"floor": floor, "max_items": 3, "candidates": 2},
        },
        metrics={"enabled": False},
    )


def _fill_store(settings: Settings) -> None:
    _record_accepted(settings, "ok", {f"p{i}": f"q{i}" for i in range(4)})


def _runs(result: str) -> float:
    return REGISTRY.get_sample_value("selfdistill_training_runs_total", {"result": result}) or 0.0


def test_training_pauses_while_the_verifier_accepts_wrong_answers(
    yes_model_dir: Path, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, yes_model_dir, _labeled(tmp_path / "four.jsonl", FOUR), 0.5)
    _fill_store(settings)
    paused_before = _runs("paused")

    report = run_cycle(settings)
    assert report.outcome == "paused", report.reason
    assert report.version is None  # nothing trained, nothing registered
    assert "precision" in report.reason and "floor 0.500" in report.reason
    assert report.verifier["precision"] == 0.0  # 6 accepted, none right
    assert report.verifier["accepted"] == 6 and report.verifier["candidates"] == 6
    assert _runs("paused") == paused_before + 1
    with open_registry(settings, read_only=True) as reg:
        assert reg.list() == []
        [row] = reg.verifier_evals(kind="gate")
    assert row["report"]["precision"] == 0.0 and row["report"]["base_rate"] == 0.0
    assert (
        REGISTRY.get_sample_value(
            "selfdistill_verifier_precision", {"version": "base", "stage": "cascade"}
        )
        == 0.0
    )

    # Same judge, same settings: the next cycle reuses the measurement (no second row).
    again = run_cycle(settings)
    assert again.outcome == "paused"
    with open_registry(settings, read_only=True) as reg:
        assert len(reg.verifier_evals(kind="gate")) == 1

    status = collect_status(settings, kafka_connect_timeout_s=0.5, dlq_timeout_s=0.5)
    v = status["verifier"]
    assert v["paused"] is True and "training paused" in v["reason"]
    assert v["latest"]["precision"] == 0.0 and v["latest"]["kind"] == "gate"
    assert v["latest"]["stages"][0]["stage"] == "correctness"

    # A sweep run by the operator shows beside it, on the screen as in the JSON.
    with open_registry(settings) as reg:
        point = {"n": 4, "v": 3, "coverage": 0.5, "precision": 0.25, "judge_calls_per_item": 9.0}
        reg.record_verifier_eval("base", "sweep", "fp-sweep", {"points": [point]})
    status = collect_status(settings, kafka_connect_timeout_s=0.5, dlq_timeout_s=0.5)
    assert status["verifier"]["sweep"]["points"] == [point]
    out = io.StringIO()
    render_status(status, Console(file=out, width=200))
    screen = out.getvalue()
    assert "n4v3 0.25 @9.0" in screen and "training paused: verifier precision 0.000" in screen


def test_training_proceeds_when_the_verifier_is_precise(
    yes_model_dir: Path, tmp_path: Path
) -> None:
    labeled = _labeled(tmp_path / "anything.jsonl", ANYTHING)
    settings = _settings(tmp_path, yes_model_dir, labeled, 0.5)
    _fill_store(settings)
    report = run_cycle(settings)
    assert report.outcome in ("promoted", "rejected"), report.reason  # a gate decision
    assert report.version is not None
    assert report.verifier["precision"] == 1.0 and report.verifier["floor"] == 0.5
    status = collect_status(settings, kafka_connect_timeout_s=0.5, dlq_timeout_s=0.5)
    assert status["verifier"]["paused"] is False

    # No floor and no measure: the cycle does not measure at all.
    quiet = _settings(tmp_path / "quiet", yes_model_dir, labeled, None)
    _fill_store(quiet)
    assert run_cycle(quiet).verifier == {}
    with open_registry(quiet, read_only=True) as reg:
        assert reg.verifier_evals() == []
