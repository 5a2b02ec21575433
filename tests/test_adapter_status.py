"""``adapter-status`` as operators read it: who is live, who serves what, who refused.

Records are written to the real embedded broker the way replicas write them (plus the odd
records a broker accepts from anyone), and read back by the same functions the CLI uses.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kafka import KafkaProducer

from daemon.operating.config import Settings, render_toml
from streams.adapter_status import (
    StatusReporter,
    fleet_summary,
    read_statuses,
    wait_for_fleet,
)
from streams.connection import KafkaSettings
from streams.schemas import AdapterStatus
from streams.topics import TopicsConfig
from tests.conftest import cli


def _write(kafka: KafkaSettings, topic: str, records: list[tuple[bytes, bytes | None]]) -> None:
    producer = KafkaProducer(bootstrap_servers=kafka.bootstrap_servers)
    for key, value in records:
        producer.send(topic, key=key, value=value)
    producer.flush()
    producer.close()


def _status(replica: str, **kw: object) -> tuple[bytes, bytes]:
    return replica.encode(), AdapterStatus(
        replica=replica, heartbeat_s=5, **kw
    ).model_dump_json().encode()  # type: ignore[arg-type]


def test_live_serving_refused_stale_stopped_and_odd_records(
    kafka: KafkaSettings, topics: TopicsConfig, tmp_path: Path
) -> None:
    topic = topics.adapter_status
    announced = time.time()
    future = json.loads(_status("replica-e", serving="v1")[1])
    future["gpu"] = "h200"  # a field from a later release: ignored, not refused
    _write(
        kafka,
        topic,
        [
            _status("replica-a", serving="base"),  # superseded by its next record
            _status("replica-a", serving="v1", requested="v1", swapped_at=announced + 1),
            _status(
                "replica-b",
                serving="base",
                requested="v1",
                ok=False,
                error="sha256 mismatch",
                swapped_at=announced + 1,
            ),
            _status("replica-c", serving="base", at=time.time() - 3600),  # silent for an hour
            _status("replica-d", serving="base", state="stopped"),
            (b"replica-e", json.dumps(future).encode()),
            (b"junk", b"\xff not json"),
            (b"replica-f", _status("replica-f", serving="base")[1]),
            (b"replica-f", None),  # a tombstone: an operator removed it
        ],
    )
    replicas = {r.name: r for r in read_statuses(kafka, topic)}
    assert sorted(replicas) == ["replica-a", "replica-b", "replica-c", "replica-d", "replica-e"]
    assert {n for n, r in replicas.items() if r.live} == {"replica-a", "replica-b", "replica-e"}
    assert replicas["replica-b"].refused == "v1" and replicas["replica-a"].refused is None
    summary = fleet_summary(replicas.values())
    assert summary == {
        "v1": {"serving": ["replica-a", "replica-e"], "refused": ["replica-b"], "retrying": []},
        "base": {"serving": ["replica-b"], "refused": [], "retrying": []},
    }

    # A refusal after the announcement is final: the wait ends at once, naming it.
    started = time.monotonic()
    ok, pending = wait_for_fleet(kafka, topic, "v1", 30, since=announced)
    assert [r.name for r in ok] == ["replica-a", "replica-e"]
    assert [r.name for r in pending] == ["replica-b"]
    assert time.monotonic() - started < 25  # it did not sit out its timeout

    settings = Settings(
        data_dir=tmp_path / "var", kafka=kafka.model_dump(), topics=topics.model_dump()
    )
    config = tmp_path / "selfdistill.toml"
    config.write_text(render_toml(settings, comments=False))
    listing = cli("-c", str(config), "adapters", "list")
    assert listing.returncode == 0, listing.stderr
    assert "3 live replica(s)" in listing.stdout
    base_row = next(
        line for line in listing.stdout.splitlines() if line.strip().startswith("* base")
    )
    assert "1 serving" in base_row
    shown = cli("-c", str(config), "status")
    assert "replica-b" in shown.stdout and "refused: sha256 mismatch" in shown.stdout


def test_a_reporter_reports_swaps_beats_and_its_stop(
    kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    reporter = StatusReporter(kafka, topics.adapter_status, "replica-x", heartbeat_s=1)
    reporter.report(None, None, True)
    reporter.start()
    reporter.report("v2", "v3", False, "canary returned no text")
    first = read_statuses(kafka, topics.adapter_status)[0]
    time.sleep(2.5)
    beat = read_statuses(kafka, topics.adapter_status)[0]
    assert (beat.status.serving, beat.status.requested, beat.status.ok) == ("v2", "v3", False)
    assert beat.status.at > first.status.at and beat.live  # the heartbeat repeats the state
    assert beat.refused == "v3"
    # A passing failure (the engine unavailable) is not a refusal: it is still being tried.
    reporter.report("v2", "v4", False, "HTTP 503", retrying=True, attempts=3)
    [trying] = read_statuses(kafka, topics.adapter_status)
    assert trying.retrying == "v4" and trying.refused is None and trying.status.attempts == 3
    assert fleet_summary([trying])["v4"] == {
        "serving": [],
        "refused": [],
        "retrying": ["replica-x"],
    }
    reporter.close()
    [gone] = read_statuses(kafka, topics.adapter_status)
    assert gone.status.state == "stopped" and not gone.live
