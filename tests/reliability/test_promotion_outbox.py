"""Promotion has one source of truth: the registry and ``adapter-events`` agree after a crash
at any step between them, a publish whose outcome is unknown says so, and promotions by the
trainer and an operator are serialised.

The crashes are real: ``tests/workers/promote_crash.py`` runs a promotion in its own process
and ends it with ``os._exit`` right after the intent is recorded, or right after the broker
acknowledged the event. The next command (the real ``selfdistill`` CLI) must then finish the
half-done promotion before it does anything else, so ``rollback`` goes where the replicas
actually came from.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from adapters import outbox
from adapters.registry import Registry
from daemon.learning import promote as promote_mod
from daemon.learning.promote import AnnounceUnknown, promote, rollback
from daemon.operating.config import Settings, render_toml
from streams.producer import ProduceError
from streams.topics import COMPACTED, TopicsConfig
from tests.conftest import ROOT, cli
from tests.test_learning_loop import _events, _register_adapters, _settings


def _crash(config: Path, version: str, point: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tests.workers.promote_crash", str(config), version, point],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _setup(kafka, topics, tmp_path, tiny_model_dir, n=3):  # type: ignore[no-untyped-def]
    settings: Settings = _settings(kafka, topics, tmp_path, tiny_model_dir)
    config = tmp_path / "selfdistill.toml"
    config.write_text(render_toml(settings, comments=False))
    registry = Registry(settings.adapters.path(settings.data_dir))
    versions = _register_adapters(registry, tiny_model_dir, seeds=tuple(range(1, n + 1)))
    return settings, config, registry, versions


def test_state_topics_are_created_compacted_with_no_time_retention() -> None:
    t = TopicsConfig()
    for topic in (t.adapter_events, t.adapter_status):
        assert t.topic_configs(topic) == COMPACTED
        assert t.layout()[topic] == 1
    assert COMPACTED == {"cleanup.policy": "compact", "retention.ms": "-1"}
    for topic in t.data_topics():
        if topic == t.verdicts:  # kept for ever: the store is rebuilt from it
            assert t.topic_configs(topic) == COMPACTED and t.layout()[topic] == t.partitions
            continue
        assert t.topic_configs(topic) == {}  # data topics keep the cluster's retention


def test_a_crash_after_publishing_is_finished_before_the_next_rollback(
    kafka, topics, tiny_model_dir, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    settings, config, registry, (v1, v2, v3) = _setup(kafka, topics, tmp_path, tiny_model_dir)
    promote(settings, registry, v1, actor="test")

    died = _crash(config, v2, "after-publish")
    assert died.returncode == 9, died.stderr
    # The replicas were told v2; the registry still says v1, with the intent pending.
    assert _events(kafka, topics.adapter_events)[-1].version == v2
    assert registry.active_version() == v1
    assert [i.version for i in outbox.pending(registry)] == [v2]
    shown = cli("-c", str(config), "status")
    assert f"unfinished promote of {v2}" in shown.stdout, shown.stdout + shown.stderr

    # Rollback finishes v2 first, so it goes back to v1 (what the replicas came from), not
    # to the base (what the registry alone would have said).
    r = cli("-c", str(config), "adapters", "rollback", "--wait", "0")
    assert r.returncode == 0 and f"rollback {v1}" in r.stdout, r.stdout + r.stderr
    assert registry.active_version() == v1
    assert registry.require(v2).status == "rolled-back"
    assert outbox.pending(registry) == []
    actions = [(e.action, e.version) for e in _events(kafka, topics.adapter_events)]
    assert actions == [("promote", v1), ("promote", v2), ("rollback", v1)]  # v2 once

    # A crash after only the intent: nothing reached the broker. `reconcile` publishes it.
    died = _crash(config, v3, "after-intent")
    assert died.returncode == 9, died.stderr
    assert _events(kafka, topics.adapter_events)[-1].version == v1
    assert [i.version for i in outbox.pending(registry)] == [v3]
    r = cli("-c", str(config), "adapters", "reconcile")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"promote {v3}: published the pending announcement" in r.stdout
    assert f"agree: {v3}" in r.stdout
    assert registry.active_version() == v3 and outbox.pending(registry) == []
    assert _events(kafka, topics.adapter_events)[-1].version == v3
    # Nothing left to do: a second reconcile publishes nothing.
    before = len(_events(kafka, topics.adapter_events))
    r = cli("-c", str(config), "adapters", "reconcile")
    assert r.returncode == 0 and len(_events(kafka, topics.adapter_events)) == before
    registry.close()


def test_an_unknown_publish_outcome_is_reported_as_unknown_and_settled_later(
    kafka, topics, tiny_model_dir, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    settings, _config, registry, (v1, v2, _v3) = _setup(kafka, topics, tmp_path, tiny_model_dir)
    promote(settings, registry, v1, actor="test")
    real = promote_mod.publish

    def lost_ack(s, event):  # type: ignore[no-untyped-def]
        real(s, event)  # the broker has it...
        raise ProduceError("request timed out")  # ...but the producer never heard back

    monkeypatch.setattr(promote_mod, "publish", lost_ack)
    with pytest.raises(AnnounceUnknown, match="unknown"):
        promote(settings, registry, v2, actor="test")
    assert registry.active_version() == v1  # not claimed as done...
    assert [i.version for i in outbox.pending(registry)] == [v2]  # ...nor forgotten
    monkeypatch.setattr(promote_mod, "publish", real)

    # The next rollback sees v2 on the topic, records it without publishing it again, and
    # then rolls back from v2 to v1.
    event = rollback(settings, registry, actor="test")
    assert event.version == v1
    actions = [(e.action, e.version) for e in _events(kafka, topics.adapter_events)]
    assert actions == [("promote", v1), ("promote", v2), ("rollback", v1)]
    assert registry.require(v2).status == "rolled-back"
    registry.close()


def test_the_registry_re_announces_what_serves_when_the_topic_lost_it(
    kafka, topics, tiny_model_dir, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """A broker with memory-only storage restarted (here: a fresh topic name): the registry
    says v1, adapter-events says nothing, and a replica started now would serve the base."""
    settings, _config, registry, (v1, _v2, _v3) = _setup(kafka, topics, tmp_path, tiny_model_dir)
    promote(settings, registry, v1, actor="test")
    fresh = topics.model_copy(update={"adapter_events": topics.adapter_events + "-new"})
    from streams.topics import ensure_topics

    ensure_topics(kafka, fresh)
    moved = settings.model_copy(update={"topics": fresh})
    done = promote_mod.reconcile(moved, registry)
    assert done == [f"re-announced {v1}: adapter-events said nothing"]
    assert [e.version for e in _events(kafka, fresh.adapter_events)] == [v1]
    assert promote_mod.reconcile(moved, registry) == []
    registry.close()


def test_promotions_are_serialised_across_callers(kafka, topics, tiny_model_dir, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings, _config, registry, (v1, *_) = _setup(kafka, topics, tmp_path, tiny_model_dir)
    finished = threading.Event()
    with outbox.promotion_lock(registry):  # e.g. the trainer, mid-promotion
        t = threading.Thread(
            target=lambda: (promote(settings, registry, v1, actor="cli"), finished.set()),
            daemon=True,
        )
        t.start()
        time.sleep(1.5)
        assert not finished.is_set()  # the operator's promotion waits its turn
        assert registry.active_version() == "base"
    t.join(60)
    assert finished.is_set() and registry.active_version() == v1
    with (
        pytest.raises(outbox.PromotionBusy),
        outbox.promotion_lock(registry),
        outbox.promotion_lock(registry, timeout_s=0.3),
    ):
        pass
    registry.close()


def test_a_promotion_never_published_is_abandoned_without_touching_the_fleet(
    kafka, topics, tiny_model_dir, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    settings, config, registry, (v1, v2) = _setup(kafka, topics, tmp_path, tiny_model_dir, n=2)
    promote(settings, registry, v1, actor="test")
    died = _crash(config, v2, "after-intent")  # the intent is recorded, nothing published
    assert died.returncode == 9, died.stderr
    assert [i.version for i in outbox.pending(registry)] == [v2]

    r = cli("-c", str(config), "adapters", "reconcile", "--abandon", "--wait", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"abandoned promote {v2}: never published; dropped" in r.stdout
    assert "announced" not in r.stdout  # nothing to undo, so nothing published
    assert f"agree: {v1}" in r.stdout
    assert registry.active_version() == v1 and outbox.pending(registry) == []
    assert registry.require(v2).status == "candidate"
    assert [(e.action, e.version) for e in _events(kafka, topics.adapter_events)] == [
        ("promote", v1)
    ]
    assert registry.events(v2)[0]["action"] == "abandon"
    # Abandoned means gone: the next reconcile does not publish it after all.
    r = cli("-c", str(config), "adapters", "reconcile", "--wait", "0")
    assert r.returncode == 0 and len(_events(kafka, topics.adapter_events)) == 1
    registry.close()


def test_an_abandoned_promotion_that_reached_the_topic_is_undone_by_a_corrective_event(
    kafka, topics, tiny_model_dir, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    settings, config, registry, (v1, v2) = _setup(kafka, topics, tmp_path, tiny_model_dir, n=2)
    promote(settings, registry, v1, actor="test")
    died = _crash(config, v2, "after-publish")  # the broker has v2; the outcome was unknown
    assert died.returncode == 9, died.stderr
    assert _events(kafka, topics.adapter_events)[-1].version == v2

    r = cli("-c", str(config), "adapters", "reconcile", "--abandon", "--wait", "0")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"abandoned promote {v2}: its event had reached adapter-events" in r.stdout
    assert f"announced {v1} again (rollback), undoing {v2} on the replicas" in r.stdout
    # The fleet ends where the registry was before the intent: v1, never via the registry.
    assert registry.active_version() == v1 and outbox.pending(registry) == []
    assert registry.require(v2).status == "candidate"
    actions = [(e.action, e.version) for e in _events(kafka, topics.adapter_events)]
    assert actions == [("promote", v1), ("promote", v2), ("rollback", v1)]
    r = cli("-c", str(config), "adapters", "reconcile", "--abandon", "--wait", "0")
    assert r.returncode == 0 and "nothing pending to abandon" in r.stdout, r.stdout + r.stderr
    assert len(_events(kafka, topics.adapter_events)) == 3
    registry.close()
