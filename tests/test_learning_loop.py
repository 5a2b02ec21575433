"""The learning loop on the tiny model, through the real broker, store, registry and engine.

Accepted samples → LoRA training → eval gate → promotion on ``adapter-events``; a worse
adapter is rejected; pins hold promotion back; ``selfdistill adapters rollback`` restores the
previous adapter in a running serve worker. Training runs killed at random points:
tests/reliability/test_kills.py.

The gate is tested honestly: one adapter is trained on correct answers, one on wrong ones, and
both are scored by greedy generation on a labeled set of *other* questions. The task is one a
tiny random model can learn in seconds (every question's answer is the same code word), so the
numbers the gate compares are real measurements, not constructed ones.
"""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest

from adapters.files import adapter_digest
from adapters.registry import Registry
from daemon.engines.transformers_engine import TransformersEngine
from daemon.learning.promote import promote
from daemon.learning.train import gate_candidate, run_cycle
from daemon.operating.config import Settings, render_toml
from daemon.serving.worker import ServeWorker
from daemon.verifying.cascade import PromptOutcome
from daemon.verifying.store import Store
from streams.connection import KafkaSettings
from streams.schemas import AdapterEvent, ChatMessage
from streams.topics import TopicsConfig
from tests.conftest import cli, read_topic, start_cli, wait_for
from tests.models import build_adapter
from tests.test_serve import _start
from tests.test_store import cand, msg

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "paper",
    "lamp",
    "tiger",
    "glass",
    "honey",
    "maple",
    "orbit",
    "pencil",
    "violet",
    "copper",
    "meadow",
    "candle",
    "harbor",
    "falcon",
    "ribbon",
    "summit",
    "walnut",
    "lantern",
    "pepper",
    "willow",
]
RIGHT, WRONG = "blue", "red"


def _question(rng: random.Random, i: int) -> str:
    return f"Item {i}: {' '.join(rng.sample(WORDS, 3))}. What is the code word?"


def _labeled_set(path: Path) -> Path:
    rng = random.Random(99)
    lines = [
        {"id": f"lab-{i}", "question": _question(rng, 500 + i), "answer": RIGHT, "grader": "exact"}
        for i in range(6)
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _record_accepted(settings: Settings, answer: str, questions: dict[str, str]) -> None:
    """One prompt per ``{id: question}`` whose single candidate, ``answer``, passed the whole
    cascade, recorded in the store."""
    with Store.open(settings.store, settings.data_dir) as store:
        for pid, question in questions.items():
            message = msg(pid, [answer]).model_copy(
                update={"messages": [ChatMessage(role="user", content=question)]}
            )
            store.record(
                PromptOutcome(pid, question, [cand(0, answer, "accepted", votes=1)]), message
            )


def _accept(settings: Settings, answer: str, start: int, n: int, seed: int) -> None:
    """n code-word prompts (p<start>...) accepted with ``answer``."""
    rng = random.Random(seed)
    _record_accepted(
        settings, answer, {f"p{i}": _question(rng, i) for i in range(start, start + n)}
    )


def _settings(
    kafka: KafkaSettings, topics: TopicsConfig, tmp: Path, model_dir: Path, **train: object
) -> Settings:
    return Settings(
        data_dir=tmp / "var",
        kafka=kafka.model_dump(),
        topics=topics.model_dump(),
        model={"path": str(model_dir)},
        engine={"torch_threads": 1},
        verify={"votes": 1, "judge_max_tokens": 6, "infer_max_tokens": 6, "seed": 0},
        store={"heldout_fraction": 0.1},
        train={
            "min_new_samples": 10,
            "lora": {
                "r": 8,
                "alpha": 16,
                "dropout": 0.0,
                "learning_rate": 1e-2,
                "epochs": 20,
                "max_steps": 100,
                "batch_size": 8,
                "max_length": 96,
            },
            "eval": {
                "labeled_set": str(_labeled_set(tmp / "labeled.jsonl")),
                "max_tokens": 4,
                "heldout_max": 2,
            },
            "gate": {"margin": 0.3},
            **train,
        },
    )


def _register_adapters(registry: Registry, model_dir: Path, seeds: tuple[int, ...]) -> list[str]:
    """Real adapters (random LoRA weights, one per seed) trained-and-registered the way a
    training run leaves them: staged, renamed into place, recorded with their digest."""
    versions = []
    for seed in seeds:
        version = registry.next_version("tiny")
        with registry.staging(version) as tmp:
            build_adapter(model_dir, tmp, seed=seed)
        registry.register(
            version,
            parent=None,
            base_model=str(model_dir),
            sha256=adapter_digest(registry.root / version),
            snapshot_id=None,
            sample_count=0,
            hyperparams={},
            training={},
        )
        versions.append(version)
    return versions


def _events(kafka: KafkaSettings, topic: str) -> list[AdapterEvent]:
    return [AdapterEvent.model_validate_json(r.value) for r in read_topic(kafka, topic)]


def test_gate_promotes_an_adapter_trained_on_right_answers_and_rejects_one_on_wrong_answers(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
) -> None:
    settings = _settings(kafka, topics, tmp_path, tiny_model_dir)
    _accept(settings, RIGHT, 0, 5, seed=1)
    skipped = run_cycle(settings, engine=tiny_engine)
    assert skipped.outcome == "skipped" and "needs 10" in skipped.reason

    # Pinned: the candidate passes the gate but is held back.
    registry = Registry(settings.adapters.path(settings.data_dir))
    registry.pin("base", actor="test")
    _accept(settings, RIGHT, 5, 25, seed=2)
    first = run_cycle(settings, engine=tiny_engine)
    v1 = first.version
    assert first.outcome == "candidate" and "pinned" in first.reason, first
    assert first.candidate["labeled_pass@1"] >= 0.8 > first.active["labeled_pass@1"]
    assert first.against == "base" and first.trained_on == first.training["samples"] > 20
    assert _events(kafka, topics.adapter_events) == []

    # Unpinned, the operator re-runs the gate: the numbers come from the eval cache and the
    # adapter is promoted and announced with its registered digest.
    registry.unpin(actor="test")
    with Store.open(settings.store, settings.data_dir) as store:
        again = gate_candidate(settings, registry, store, v1, engine=tiny_engine)
    assert again.outcome == "promoted" and again.candidate == first.candidate
    rec = registry.require(v1)
    assert rec.status == "promoted" and rec.sha256 == adapter_digest(tmp_path / "var/adapters" / v1)
    assert rec.eval["candidate"]["labeled"][0]["output"].strip() == RIGHT
    (event,) = _events(kafka, topics.adapter_events)
    assert (event.action, event.version, event.path, event.sha256) == (
        "promote", v1, v1, rec.sha256,
    )  # fmt: skip

    # Wrong answers arrive; continuing from the active adapter learns them; the gate refuses.
    settings.train.lora.init = "active"
    _accept(settings, WRONG, 100, 30, seed=3)
    second = run_cycle(settings, engine=tiny_engine)
    v2 = second.version
    assert second.outcome == "rejected", second
    assert second.against == v1
    assert second.candidate["labeled_pass@1"] < second.active["labeled_pass@1"]
    assert "lower bound does not clear" in second.reason
    rec2 = registry.require(v2)
    assert rec2.status == "rejected" and rec2.parent == v1
    assert rec2.decision["checks"][0]["candidate"] == second.candidate["labeled_pass@1"]
    assert rec2.sample_count == second.trained_on < 35  # only the new samples
    assert registry.active_version() == v1
    assert len(_events(kafka, topics.adapter_events)) == 1  # nothing announced
    # the held-out slice was never trained on
    with Store.open(settings.store, settings.data_dir) as store:
        held = {r["id"] for r in store.accepted_samples("heldout")}
        assert held and not held & {r["id"] for r in store.snapshot_samples(v2)}
    assert run_cycle(settings, engine=tiny_engine).outcome == "skipped"  # nothing new
    registry.close()


def test_cli_rollback_restores_the_previous_adapter_in_a_running_serve_worker(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
) -> None:
    settings = _settings(kafka, topics, tmp_path, tiny_model_dir)
    registry = Registry(settings.adapters.path(settings.data_dir))
    v1, v2 = _register_adapters(registry, tiny_model_dir, seeds=(1, 2))
    promote(settings, registry, v1, actor="test")

    config = tmp_path / "selfdistill.toml"
    config.write_text(render_toml(settings, comments=False))
    worker = ServeWorker(settings, tiny_engine)
    t = _start(worker)
    try:
        wait_for(lambda: worker.router.active == v1, 60)  # restored from adapter-events

        r = cli("-c", str(config), "adapters", "promote", v2)
        assert r.returncode == 0, r.stderr
        wait_for(lambda: worker.router.active == v2, 30)

        started = time.monotonic()
        r = cli("-c", str(config), "adapters", "rollback", "--reason", "bad answers")
        assert r.returncode == 0 and f"rollback {v1}" in r.stdout, r.stderr
        wait_for(lambda: worker.router.active == v1, 30)
        rollback_s = time.monotonic() - started

        listing = cli("-c", str(config), "adapters", "list")
        assert listing.returncode == 0
        assert f"* {v1}" in listing.stdout and "rolled-back" in listing.stdout
        shown = json.loads(cli("-c", str(config), "adapters", "show", v2).stdout)
        assert shown["status"] == "rolled-back"
        assert [e["action"] for e in shown["events"]] == ["rollback", "promote"]

        # (A tampered adapter promoted by hand: tests/reliability/test_adapters.py.)
        r = cli("-c", str(config), "adapters", "rollback")  # nothing older: the base model
        assert r.returncode == 0 and "rollback base" in r.stdout, r.stderr
        wait_for(lambda: worker.router.active is None, 30)
        r = cli("-c", str(config), "adapters", "rollback")
        assert r.returncode == 1 and "already active" in r.stderr
    finally:
        worker.stop()
        t.join(30)
    actions = [(e.action, e.version) for e in _events(kafka, topics.adapter_events)]
    assert actions == [("promote", v1), ("promote", v2), ("rollback", v1), ("rollback", "base")]
    print(f"rollback took {rollback_s:.1f}s from the command to the worker serving {v1}")
    registry.close()


@pytest.mark.parametrize("bad", ["cron", "lora"])
def test_bad_train_config_fails_at_start_naming_the_key(bad: str, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[train]\ncron = 'every day'\n" if bad == "cron" else "[train.lora]\nr = 0\n")
    r = cli("-c", str(config), "train", "--once")
    assert r.returncode == 2
    assert ("train.cron" if bad == "cron" else "train.lora.r") in r.stderr


def _adapters(root: Path) -> int:
    if not (root / "registry.db").exists():
        return 0
    with Registry(root) as registry:
        return len(registry.list())


def test_the_scheduler_trains_when_enough_samples_arrive_and_stops_on_sigterm(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    settings = _settings(kafka, topics, tmp_path, tiny_model_dir, interval_s=0.5)
    settings.train.lora.max_steps = 10
    _accept(settings, RIGHT, 0, 4, seed=1)  # below min_new_samples: ticks skip
    config = tmp_path / "selfdistill.toml"
    config.write_text(render_toml(settings, comments=False))
    root = settings.adapters.path(settings.data_dir)
    proc = start_cli("-c", str(config), "train")
    try:
        time.sleep(3.0)  # several ticks
        assert proc.poll() is None
        assert _adapters(root) == 0
        _accept(settings, RIGHT, 4, 12, seed=2)
        wait_for(lambda: _adapters(root) == 1, 120)
        time.sleep(2.0)  # more ticks: nothing new, so no second adapter
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
    registry = Registry(root)
    assert len(registry.list()) == 1 and [r["state"] for r in registry.runs()] == ["done"]
    registry.close()
