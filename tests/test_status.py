"""``selfdistill status`` on real parts: a real store and registry on disk, dead letters on the
embedded broker, live /healthz and /readyz endpoints, and the real console script.

Also the screen an operator sees when things are broken: an empty data dir, a broker that
refuses connections and one that accepts them and never answers must all still give a full
screen, quickly, with exit code 0.
"""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from adapters.gate import HELDOUT, LABELED, GateConfig, decide
from adapters.registry import Registry
from daemon.operating.config import Settings, render_toml
from daemon.operating.observe import observability
from daemon.operating.status import collect_status, dlq_topics
from daemon.operating.status_view import render_status
from daemon.verifying.store import Store
from streams.broker import free_port
from streams.connection import KafkaSettings
from streams.deadletter import DeadLetter
from streams.producer import Producer
from streams.topics import TopicsConfig
from tests.conftest import cli
from tests.test_registry import _add
from tests.test_store import prompt


def _metrics() -> dict[str, int]:
    """Free ports, so a developer's running workers on 9101-9103 never answer a test."""
    return {"serve_port": free_port(), "verify_port": free_port(), "train_port": free_port()}


def _config(settings: Settings, tmp: Path) -> Path:
    path = tmp / "selfdistill.toml"
    path.write_text(render_toml(settings, comments=False))
    return path


def _fill_store(settings: Settings) -> None:
    """Three prompts through every fate of the cascade (the data of test_store's funnel)."""
    with Store.open(settings.store, settings.data_dir) as store:
        store.record(
            *prompt("p1", {"a": "cycle", "b": "factuality", "c": "accepted", "d": "skipped"})
        )
        store.record(*prompt("p2", {"": "static", "e": "correctness", "f": "accepted"}))
        store.record(*prompt("p2", {"g": "accepted"}))  # superseded: p2 already has a sample
        store.record(*prompt("p3", {"h": "cycle"}))


def _items(right: int, n: int) -> dict[str, float]:
    """n items of which the first ``right`` passed (so two adapters agree where both pass)."""
    return {f"i{i}": float(i < right) for i in range(n)}


def _means(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    return {m: sum(v.values()) / len(v) for m, v in scores.items()}


def _fill_registry(settings: Settings) -> tuple[str, str, str]:
    """v1 passed the gate against the base and serves; v2 was rejected against v1; the run
    that reserved v3 failed. Returns the three version names."""
    with Registry(settings.adapters.path(settings.data_dir)) as reg:
        v1 = _add(reg)
        base_s = {LABELED: _items(10, 40), HELDOUT: _items(2, 4)}
        v1_s = {LABELED: _items(20, 40), HELDOUT: _items(3, 4)}
        base_m, v1_m = _means(base_s), _means(v1_s)
        d1 = decide(v1_s, base_s, GateConfig())
        assert d1.promote
        reg.record_decision(
            v1,
            {"candidate": {"metrics": v1_m}, "active": {"metrics": base_m}},
            {**d1.as_dict(), "against": "base", "pinned": None},
            rejected=False,
        )
        reg.promote(v1, actor="train", reason=d1.reason)
        v2 = _add(reg)
        v2_s = {LABELED: _items(15, 40), HELDOUT: _items(4, 4)}
        v2_m = _means(v2_s)
        d2 = decide(v2_s, v1_s, GateConfig())
        assert not d2.promote
        reg.record_decision(
            v2,
            {"candidate": {"metrics": v2_m}, "active": {"metrics": v1_m}},
            {**d2.as_dict(), "against": v1, "pinned": None},
            rejected=True,
        )
        v3 = reg.next_version("Tiny-Model")
        run = reg.begin_run(v3, v2)
        reg.set_run_data(run, v3, 7)
        reg.finish_run(run, "failed", "RuntimeError('CUDA out of memory')")
        reg.pin(v1, actor="cli", reason="holiday freeze")
    return v1, v2, v3


def _dead_letters(kafka: KafkaSettings, topics: TopicsConfig) -> None:
    producer = Producer(kafka)
    try:
        for offset, (value, reason) in enumerate(
            [(b"{not json", "invalid-json"), (b'{"v": 99}', "schema-version")]
        ):
            dl = DeadLetter(topics.prompts, 0, offset, reason, "why", b"k", value, "serve")
            producer.send_dead_letter(topics.dlq(topics.prompts), dl)
        dl = DeadLetter(topics.candidates, 1, 5, "invalid-json", "why", None, b"\xff", "verify")
        producer.send_dead_letter(topics.dlq(topics.candidates), dl)
        assert producer.flush() == 3
    finally:
        producer.close()


@pytest.fixture
def live_system(
    kafka: KafkaSettings, topics: TopicsConfig, tmp_path: Path
) -> Iterator[tuple[Settings, tuple[str, str, str]]]:
    """A store, a registry, three dead letters, verify ready and serve up but not ready."""
    settings = Settings(
        data_dir=tmp_path / "var",
        kafka=kafka.model_dump(),
        topics=topics.model_dump(),
        store={"heldout_fraction": 0.0},
        metrics=_metrics(),
    )
    _fill_store(settings)
    versions = _fill_registry(settings)
    _dead_letters(kafka, topics)
    with (
        observability(settings.metrics, "verify", ready=lambda: True) as verify_port,
        observability(settings.metrics, "serve", ready=lambda: False) as serve_port,
    ):
        assert verify_port and serve_port
        yield settings, versions


def test_status_json_reports_every_section(
    live_system: tuple[Settings, tuple[str, str, str]], tmp_path: Path
) -> None:
    settings, (v1, v2, v3) = live_system
    store_file = settings.store.path_in(settings.data_dir)
    before = store_file.read_bytes()
    r = cli("-c", str(_config(settings, tmp_path)), "status", "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)

    # 1. adapter: what serves, its numbers, the gate's reason; the rejected newer candidate.
    a = data["adapter"]
    assert a["serving"] == v1 and a["pinned"] == v1 and a["registry_present"]
    assert a["counts"] == {"promoted": 1, "rejected": 1}
    act = a["active"]
    assert act["version"] == v1 and act["status"] == "promoted"
    assert act["metrics"] == {LABELED: 0.5, HELDOUT: 0.75}
    assert act["compared_to"] == "base"
    assert act["compared_metrics"] == {LABELED: 0.25, HELDOUT: 0.5}
    assert act["gate"]["promote"] is True and "0.500 vs active 0.250" in act["gate"]["reason"]
    assert [c["metric"] for c in act["gate"]["checks"]] == [LABELED, HELDOUT]
    assert act["promoted_at"] > time.time() - 300 and act["promoted_by"] == "train"
    assert act["train_loss"] == 0.5 and act["sample_count"] == 3
    new = a["newest"]
    assert new["version"] == v2 and new["status"] == "rejected"
    assert new["metrics"] == {LABELED: 0.375, HELDOUT: 1.0} and new["compared_to"] == v1
    assert new["gate"]["promote"] is False and "lower bound does not clear" in new["gate"]["reason"]

    # 2. runs: newest first, joined with the adapter each registered.
    runs = data["runs"]
    assert [(x["version"], x["state"], x["adapter_status"]) for x in runs] == [
        (v3, "failed", None),
        (v2, "done", "rejected"),
        (v1, "done", "promoted"),
    ]
    assert runs[0]["sample_count"] == 7 and "CUDA out of memory" in runs[0]["error"]
    assert runs[1]["train_loss"] == 0.5 and runs[1]["duration_s"] >= 0

    # 3-4. the funnel, acceptance rates, counts and file sizes of the store.
    s = data["store"]
    assert s["present"] and s["path"] == str(store_file)
    with sqlite3.connect(store_file) as conn:
        votes = conn.execute("SELECT count(*) FROM votes").fetchone()[0]
    assert s["counts"] == {
        "prompts": 3,
        "candidates": 9,
        "votes": votes,
        "accepted": 2,
        "accepted_train": 2,
        "accepted_heldout": 0,
    }
    f = s["funnel"]
    assert (f["judged"], f["static"], f["static_ok"], f["skipped"], f["superseded"]) == (
        7,
        1,
        6,
        1,
        1,
    )
    assert f["stages"] == {
        "cycle": {"reached": 7, "passed": 5},
        "factuality": {"reached": 5, "passed": 4},
        "correctness": {"reached": 4, "passed": 3},
    }
    acc = s["acceptance"]
    assert acc == {
        "accepted": 2,
        "judged": 7,
        "rate": round(2 / 7, 4),
        "prompts": 3,
        "prompts_with_accepted": 2,
        "prompt_rate": round(2 / 3, 4),
    }
    assert s["size_bytes"]["db"] == store_file.stat().st_size
    assert s["size_bytes"]["total"] >= s["size_bytes"]["db"] > 0
    assert store_file.read_bytes() == before  # status wrote nothing

    # 5. dead letters, counted per DLQ topic by reading them.
    d = data["dead_letters"]
    assert d["reachable"] and d["complete"] and d["error"] is None and d["total"] == 3
    t = settings.topics
    assert set(d["topics"]) == set(dlq_topics(settings))
    pq, cq = d["topics"][t.dlq(t.prompts)], d["topics"][t.dlq(t.candidates)]
    assert pq["count"] == 2 and pq["reasons"] == {"invalid-json": 1, "schema-version": 1}
    assert cq["count"] == 1 and cq["reasons"] == {"invalid-json": 1}
    assert pq["last_at"] > time.time() - 300
    for name in (t.dlq(t.responses), t.dlq(t.adapter_events)):
        assert d["topics"][name] == {"exists": True, "count": 0, "reasons": {}, "last_at": None}

    # 6. health: verify ready, serve alive but not ready, train not running.
    w = data["workers"]
    assert w["verify"]["state"] == "ready" and w["verify"]["up"] and w["verify"]["ready"]
    assert w["verify"]["url"] == f"http://127.0.0.1:{settings.metrics.verify_port}"
    assert w["verify"]["uptime_s"] >= 0 and w["verify"]["reported_worker"] == "verify"
    assert w["serve"]["state"] == "not ready" and w["serve"]["up"] and not w["serve"]["ready"]
    assert w["train"]["state"] == "down" and not w["train"]["up"]


def test_status_screen_shows_the_key_facts(
    live_system: tuple[Settings, tuple[str, str, str]], tmp_path: Path
) -> None:
    settings, (v1, v2, v3) = live_system
    r = cli("-c", str(_config(settings, tmp_path)), "status", timeout=60)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    t = settings.topics
    lines = out.splitlines()

    def line(*words: str) -> str:
        found = [x for x in lines if all(w in x for w in words)]
        assert found, f"no line with {words} in:\n{out}"
        return found[0]

    assert f"serving: {v1}" in out and f"pinned to {v1}" in out
    assert line("version", v1, v2) and line("status", "promoted", "rejected")
    assert line(LABELED, "0.500 vs 0.250", "0.375 vs 0.500")
    assert line(HELDOUT, "0.750 vs 0.500", "1.000 vs 0.750")
    assert line("gate", "passed: labeled_pass@1 0.500", "rejected: labeled_pass@1 0.375")
    assert line("made active by", "train")
    assert line(v3, "failed", "7") and line(v2, "done", "rejected", "0.5000")
    assert line(v3, "CUDA out of memory")
    assert line("7", "6", "5", "4", "3", "2", "28.6%", "2/3 (66.7%)")  # the funnel
    assert "3 prompts, 9 candidates" in out and "2 accepted" in out
    assert line(t.dlq(t.prompts), "2", "invalid-json 1, schema-version 1")
    assert line(t.dlq(t.candidates), "1", "invalid-json 1")
    assert "dead letters: 3 in all" in out
    assert line("verify", "ready", str(settings.metrics.verify_port))
    assert line("serve", "not ready", str(settings.metrics.serve_port))
    assert line("train", "down", str(settings.metrics.train_port))


def test_status_with_nothing_there_still_renders_quickly(tmp_path: Path) -> None:
    """An empty data dir and a broker port with nothing listening: a full screen, exit 0,
    and nothing created."""
    settings = Settings(
        data_dir=tmp_path / "var",
        kafka={"bootstrap_servers": f"127.0.0.1:{free_port()}"},
        metrics=_metrics(),
    )
    config = _config(settings, tmp_path)
    started = time.monotonic()
    r = cli("-c", str(config), "status", timeout=60)
    took = time.monotonic() - started
    assert r.returncode == 0, r.stderr
    assert took < 20, f"status took {took:.1f}s with the broker down"
    out = r.stdout
    assert "serving: base" in out and "no adapter registry yet" in out
    assert "training runs: none yet" in out
    assert "no store yet (has verify run?)" in out
    assert "broker unreachable" in out
    for worker in ("serve", "verify", "train"):
        assert [x for x in out.splitlines() if worker in x and "down" in x], out
    assert not (tmp_path / "var").exists()  # status created neither store nor registry

    r = cli("-c", str(config), "status", "--json", timeout=60)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["adapter"]["serving"] == "base" and data["runs"] == []
    assert data["store"] == {
        "path": str(tmp_path / "var" / "store.db"),
        "present": False,
        "message": "no store yet (has verify run?)",
    }
    assert data["dead_letters"]["reachable"] is False and data["dead_letters"]["total"] is None
    assert "KafkaUnavailable" in data["dead_letters"]["error"]
    assert {w["state"] for w in data["workers"].values()} == {"down"}


def test_a_silent_broker_and_hung_workers_cost_bounded_time(tmp_path: Path) -> None:
    """A port that accepts connections and never answers (a wedged broker, a hung worker):
    status gives up on each after its short timeout instead of waiting for the defaults."""
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(16)
    port = sink.getsockname()[1]
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(sink.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    try:
        settings = Settings(
            data_dir=tmp_path / "var",
            kafka={"bootstrap_servers": f"127.0.0.1:{port}"},
            metrics={"serve_port": port, "verify_port": port, "train_port": port},
        )
        started = time.monotonic()
        data = collect_status(settings)
        took = time.monotonic() - started
        assert took < 12, f"took {took:.1f}s"
        assert not data["dead_letters"]["reachable"]
        for w in data["workers"].values():
            assert w["state"] == "down" and "Timeout" in w["error"]
        console = Console(width=120, record=True, file=io.StringIO())
        render_status(data, console)
        text = console.export_text()
        assert "broker unreachable" in text and "no store yet" in text
    finally:
        sink.close()
        for s in held:
            s.close()
