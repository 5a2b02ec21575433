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
from streams.schemas import CheckSpec, PromptMessage, ResponseMessage
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
        # Every answer of the yes-model is "[[Y]]", a verdict marker the static stage rightly
        # rejects (tests/security/test_injection.py); here the judges are what is tested.
        verify={"reject_injection": False},
        demo={
            "extra_candidates": 1,
            "max_tokens": 6,
            "votes": 1,
            "checker_domains": [],
            "task_prompts": 4,
            "eval_items": 12,
            **demo,
        },
    )


def _up_settings(
    kafka: KafkaSettings, topics: TopicsConfig, tmp_path: Path, model_dir: Path
) -> Settings:
    """The learning loop's test settings for `up`: a train tick every second, free ports,
    greedy one-candidate serving, the test's own groups."""
    settings = _settings(kafka, topics, tmp_path, model_dir, interval_s=1.0)
    settings.metrics = settings.metrics.model_copy(update=_free_metrics())
    serve = settings.serve
    serve.max_tokens, serve.temperature, serve.extra_candidates = 4, 0.0, 0
    serve.group_id = serve.transactional_id = f"serve-{topics.prompts}"
    settings.verify.group_id = f"verify-{topics.prompts}"
    return settings


def test_up_trains_promotes_and_serves_the_new_adapter_then_stops(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
) -> None:
    settings = _up_settings(kafka, topics, tmp_path, tiny_model_dir)
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


def test_up_keeps_learning_each_cycle_on_new_data_gated_against_what_serves(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
) -> None:
    """Continuous: prompts keep arriving and being answered; samples accepted after the
    first promotion train a second adapter, continued from the one that serves and gated
    against it, and the registry records the lineage."""
    settings = _up_settings(kafka, topics, tmp_path, tiny_model_dir)
    settings.train.lora.init = "active"
    # The steady stream is judged by a checker no answer passes: the new data is ours.
    settings.verify.domains = {"steady": ["checker"]}
    never = CheckSpec(checker="exact", answer="no answer says this")
    _accept(settings, RIGHT, 0, 30, seed=2)  # what verify accepted before the first cycle
    producer = Producer(kafka)
    sent: list[str] = []
    more: list[bool] = []

    def tick(up: Up) -> None:
        pid = f"steady-{len(sent)}"
        prompt = PromptMessage(
            id=pid, prompt=f"Item {800 + len(sent)}: lamp?", domain="steady", check=never
        )
        producer.send(topics.prompts, prompt)
        producer.flush()
        sent.append(pid)
        if up.state.swapped and not more:  # new data accepted while v1 serves
            _accept(settings, RIGHT, 200, 20, seed=5)
            more.append(True)

    with Up(settings, tiny_engine, max_cycles=2, max_minutes=10) as up:
        state = up.wait(tick)
    producer.close()
    assert "2 training cycle(s) decided" in state.stopped_by, state
    first, second = state.cycles
    assert first.outcome == "promoted" and first.against == "base"
    v1, v2 = first.version, second.version
    # The second cycle trained on the new samples only, from the adapter that served...
    assert second.against == v1 and second.trained_on == second.new_samples
    assert 0 < second.trained_on <= 20 < first.trained_on
    # ...and was gated against it: v1 already answers the labeled set, so no candidate can
    # show a gain on these items, and the decision says so.
    assert second.outcome == "rejected" and "lower bound does not clear" in second.reason
    assert second.decision["resolution"]["can_pass"] is False
    assert "cannot pass on these" in second.reason
    with Registry(settings.adapters.path(settings.data_dir), read_only=True) as reg:
        r1, r2 = reg.require(v1), reg.require(v2)
        assert reg.active_version() == v1
    assert (r1.parent, r1.snapshot_id, r1.status) == (None, v1, "promoted")
    assert (r2.parent, r2.snapshot_id, r2.status) == (v1, v2, "rejected")
    assert r2.sample_count == second.trained_on
    # serve answered the steady stream throughout, never on the rejected v2
    responses = [
        ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.responses)
    ]
    served = {r.id: r.adapter for r in responses}
    assert set(served) <= set(sent) and len(served) >= 2
    assert set(served.values()) <= {None, v1} and served[max(served, key=sent.index)] == v1


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
        tmp_path, yes_model_dir, verifier_floor=0.5, verifier_items=3, compare_items=0
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
