"""`selfdistill up` and the demo: every worker in one process, until a bound."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from adapters.registry import Registry
from daemon.engines.transformers_engine import TransformersEngine
from daemon.operating.config import Settings
from daemon.operating.demo import run_demo
from daemon.operating.up import Up
from streams.broker import free_port
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import PromptMessage, ResponseMessage
from streams.topics import TopicsConfig
from tests.conftest import read_topic, wait_for
from tests.test_learning_loop import RIGHT, _accept, _settings


def _free_metrics() -> dict[str, int]:
    return {"serve_port": free_port(), "verify_port": free_port(), "train_port": free_port()}


def _demo_settings(tmp: Path, model: Path, **demo: object) -> Settings:
    """The demo on the yes-model, its own broker and free metrics ports. The yes-model writes
    no correct answer, so the checker would accept nothing: every prompt goes to the judges."""
    return Settings(
        data_dir=tmp / "var",
        broker={"port": free_port()},
        model={"path": str(model)},
        metrics=_free_metrics(),
        demo={
            "extra_candidates": 1,
            "max_tokens": 6,
            "votes": 1,
            "checker_domains": [],
            **demo,
        },
    )


def test_up_trains_promotes_and_serves_the_new_adapter_then_stops(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
) -> None:
    settings = _settings(kafka, topics, tmp_path, tiny_model_dir, interval_s=1.0)
    settings.metrics = settings.metrics.model_copy(update=_free_metrics())
    serve = settings.serve
    serve.max_tokens, serve.temperature, serve.extra_candidates = 4, 0.0, 0
    serve.group_id = serve.transactional_id = f"serve-{topics.prompts}"
    settings.verify.group_id = f"verify-{topics.prompts}"
    _accept(settings, RIGHT, 0, 30, seed=2)  # what verify accepted earlier
    with Up(settings, tiny_engine, until_promotion=True, max_minutes=10) as up:
        state = up.wait()
        assert state.swapped and "promoted" in state.stopped_by, state
        version = state.promoted
        assert up.serve.router.active == version
        (cycle,) = state.cycles
        assert cycle.outcome == "promoted" and cycle.candidate["labeled_pass@1"] >= 0.8
        # still serving: a prompt produced now is answered on the promoted adapter
        p = Producer(kafka)
        p.send(
            topics.prompts,
            PromptMessage(id="after", prompt="Item 700: lamp honey orbit. What is the code word?"),
        )
        p.flush()
        p.close()
        wait_for(lambda: up.serve.loop.stats.processed >= 1, 60)
    (resp,) = [
        ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.responses)
    ]
    assert resp.adapter == version and resp.text.strip() == RIGHT
    with Registry(settings.adapters.path(settings.data_dir), read_only=True) as reg:
        assert reg.active_version() == version


def test_demo_trains_on_what_verify_accepted_gates_it_and_shows_status(
    tmp_path: Path, yes_model_dir: Path
) -> None:
    # No floor: the yes-judges accept only wrong answers, which would pause training.
    settings = _demo_settings(
        tmp_path, yes_model_dir, train_steps=2, verifier_floor=None, compare_items=3
    )
    out = io.StringIO()
    report = run_demo(settings, Console(file=out, width=140))
    text = out.getvalue()
    assert report.answered_once and report.store_counts["accepted_train"] > 0
    cycle = report.cycle
    assert cycle is not None and cycle.outcome in ("promoted", "rejected")
    # The closing comparison: the same 3 x 2 candidates judged by both verifiers.
    self_cascade, checker = report.verifiers.values()
    assert self_cascade.candidates == checker.candidates == 6
    assert self_cascade.accepted == 6 and self_cascade.precision == 0.0  # accepts every wrong one
    assert checker.accepted == 0 and checker.judge_calls == 0
    assert "the verifiers against the truth" in text and "self-cascade (v=1)" in text
    assert f"9. gate: {cycle.outcome}" in text and "labeled_pass@1" in text
    with Registry(settings.adapters.path(settings.data_dir), read_only=True) as reg:
        assert reg.require(cycle.version).status == (
            "promoted" if cycle.outcome == "promoted" else "rejected"
        )
    # the status screen, with every worker of the process answering its health check
    assert "selfdistill status" in text
    workers = text[text.index("workers (/healthz") :]
    assert workers.count("ready") >= 3, workers


def test_demo_pauses_training_while_the_verifier_is_below_its_floor(
    tmp_path: Path, yes_model_dir: Path
) -> None:
    # the yes-judges accept everything, all of it wrong
    settings = _demo_settings(
        tmp_path, yes_model_dir, verifier_floor=0.5, eval_items=3, compare_items=0
    )
    out = io.StringIO()
    report = run_demo(settings, Console(file=out, width=140))
    text = out.getvalue()
    assert report.store_counts["accepted_train"] > 0  # there was data to train on...
    cycle = report.cycle
    assert cycle is not None and cycle.outcome == "paused"  # ...but it was not trusted
    assert cycle.verifier["precision"] == 0.0 and cycle.verifier["candidates"] == 6
    assert "no adapter trained: paused" in text and "verifier check: precision 0.000" in text
    with Registry(settings.adapters.path(settings.data_dir), read_only=True) as reg:
        assert reg.list() == []
    assert "training paused: verifier precision" in text  # the status screen says why
    assert report.verifiers == {}
