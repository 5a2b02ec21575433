"""The store writer on the real broker and real SQLite files: positions kept in the store,
replays skipped, a lost store replayed whole, one writer per file, rebuild equal to live."""

from __future__ import annotations

import sqlite3
from dataclasses import asdict
from pathlib import Path

import pytest

from daemon.operating.config import Settings
from daemon.verifying.store import Store
from daemon.verifying.store_writer import StoreWriter, WriterBusy, apply_verdicts, rebuild
from daemon.verifying.verdict_message import to_verdict
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.records import Record
from streams.schemas import VerdictMessage
from streams.topics import TopicsConfig
from tests.conftest import cli
from tests.reliability.test_verify_scale_out import store_rows
from tests.test_store import prompt


def verdict(pid: str, fates: dict[str, str], at: float = 2000.0) -> VerdictMessage:
    outcome, message = prompt(pid, fates)
    return to_verdict(outcome, message, policy="first-valid", judged_at=at)


def _settings(kafka: KafkaSettings, topics: TopicsConfig, tmp: Path, group: str) -> Settings:
    return Settings(
        data_dir=tmp,
        kafka={**kafka.model_dump(), "batch_size": 4},
        topics=topics.model_dump(),
        store={"group_id": f"{group}-{topics.verdicts}", "heldout_fraction": 0.0},
        metrics={"enabled": False},
    )


def _publish(kafka: KafkaSettings, topic: str, verdicts: list[VerdictMessage]) -> None:
    p = Producer(kafka)
    for v in verdicts:
        p.send(topic, v, key=v.id)
    p.flush()
    p.close()


def _drain(settings: Settings) -> StoreWriter:
    writer = StoreWriter(settings)
    writer.run(max_idle_s=1.5, handle_signals=False)
    return writer


def test_a_verdict_carries_the_whole_outcome_over_the_wire() -> None:
    fates = {"a": "cycle", "b": "accepted", "c": "skipped"}
    v = verdict("p1", fates)
    back = VerdictMessage.model_validate_json(v.model_dump_json())
    outcome, message = prompt("p1", fates)
    # Every candidate, stage, vote and token count, under the cascade's own field names.
    assert [c.model_dump() for c in back.outcomes] == [asdict(c) for c in outcome.candidates]
    assert back.candidates == message and back.judged_at == 2000.0
    assert [c.calls for c in back.outcomes][1] == back.outcomes[1].stages[0].calls + [
        call for s in back.outcomes[1].stages[1:] for call in s.calls
    ]


def test_apply_saves_positions_with_the_rows_and_skips_what_is_below_them(tmp_path: Path) -> None:
    vs = [verdict(f"p{i}", {f"a{i}": "accepted"}) for i in range(3)]
    recs = [Record("verdicts", 0, 10 + i, v.id, v) for i, v in enumerate(vs)]
    with Store(tmp_path / "s.db") as store:
        done = apply_verdicts(store, "verdicts", recs[:2])
        assert (done.applied, done.already, done.accepted) == (2, 0, 2)
        assert store.positions("verdicts") == {0: 12}
        again = apply_verdicts(store, "verdicts", recs, highwater=lambda _p: 13)
        assert (again.applied, again.already) == (1, 2)  # a replay: only the third is new
        assert store.positions("verdicts") == {0: 13}
        rows = store.accepted_samples(split=None)
        assert [r["prompt_id"] for r in rows] == ["p0", "p1", "p2"]
        assert {r["accepted_at"] for r in rows} == {2000.0}  # the verdict's time, not now
        # The broker lost the log: offsets restart at 0 below the saved position 13.
        fresh = [Record("verdicts", 0, 0, v.id, v) for v in [verdict("p9", {"z": "accepted"})]]
        reset = apply_verdicts(store, "verdicts", fresh, highwater=lambda _p: 1)
        assert (reset.applied, reset.resets) == (1, [0])
        assert store.positions("verdicts") == {0: 1}
        assert store.counts()["prompts"] == 4


def test_a_failed_batch_saves_no_position_and_no_row(tmp_path: Path) -> None:
    good = verdict("p1", {"a": "accepted"})
    with Store(tmp_path / "s.db") as store:
        bad = good.model_copy(update={"id": "p2"})  # candidates of p1 under id p2: refused
        with pytest.raises(ValueError, match="recorded with message"):
            apply_verdicts(
                store,
                "verdicts",
                [Record("verdicts", 0, 0, "p1", good), Record("verdicts", 0, 1, "p2", bad)],
            )
        assert store.positions("verdicts") == {} and store.counts()["prompts"] == 0


def test_the_writer_resumes_where_the_store_says_not_where_the_group_says(
    kafka: KafkaSettings, topics: TopicsConfig, tmp_path: Path
) -> None:
    first = [verdict(f"p{i}", {f"a{i}": "accepted"}) for i in range(5)]
    _publish(kafka, topics.verdicts, first)
    writer = _drain(_settings(kafka, topics, tmp_path, "w1"))
    assert writer.handler.totals.applied == 5
    db = tmp_path / "store.db"
    with Store(db, read_only=True) as s:
        saved = s.positions(topics.verdicts)
    assert sum(1 for _ in saved) >= 1

    # A new group has no committed offsets at all: the store's positions decide, so the
    # five are not applied again and only the new ones are.
    more = [verdict(f"q{i}", {f"b{i}": "accepted"}) for i in range(3)]
    _publish(kafka, topics.verdicts, more)
    writer = _drain(_settings(kafka, topics, tmp_path, "w2"))
    assert (writer.handler.totals.applied, writer.handler.totals.already) == (3, 0)

    # The store's disk lost: the same group (its offsets at the end) replays it all.
    for p in tmp_path.glob("store.db*"):
        p.unlink()
    writer = _drain(_settings(kafka, topics, tmp_path, "w2"))
    assert writer.handler.totals.applied == 8
    with Store(db, read_only=True) as s:
        assert s.counts()["accepted"] == 8


def test_one_writer_per_store_file(
    kafka: KafkaSettings, topics: TopicsConfig, tmp_path: Path
) -> None:
    settings = _settings(kafka, topics, tmp_path, "lock")
    writer = StoreWriter(settings)
    try:
        with pytest.raises(WriterBusy, match="another store writer holds"):
            StoreWriter(settings)
    finally:
        writer.close()
    StoreWriter(settings).close()  # released: the next one starts


def test_rebuild_equals_the_live_store_and_keeps_the_trainers_snapshots(
    kafka: KafkaSettings, topics: TopicsConfig, tmp_path: Path
) -> None:
    vs = [
        verdict("p1", {"x": "cycle", "y": "accepted", "z": "skipped"}, at=1.0),
        verdict("p2", {"": "static", "w": "factuality"}, at=2.0),
        verdict("p1", {"y": "accepted", "v": "accepted"}, at=3.0),  # p1 again: v superseded
        verdict("p3", {"u": "accepted"}, at=4.0),
    ]
    _publish(kafka, topics.verdicts, vs)
    settings = _settings(kafka, topics, tmp_path, "live")
    _drain(settings)
    live = tmp_path / "store.db"
    with Store(live) as s:
        assert s.create_snapshot("m-sd-v0001") == 2  # the trainer's, not from verdicts

    config = tmp_path / "selfdistill.toml"
    from daemon.operating.config import render_toml

    config.write_text(render_toml(settings, comments=False))
    out = tmp_path / "rebuilt.db"
    res = cli(
        "-c",
        str(config),
        *("store", "rebuild", "--out", str(out), "--snapshots-from", str(live)),
        env={"COLUMNS": "60"},  # narrower than the line: it must still come out whole
    )
    assert res.returncode == 0, res.stderr
    assert f"rebuilt {out} from 4 verdicts: 3 prompts" in res.stdout
    assert "1 snapshots copied" in res.stdout
    assert store_rows(out) == store_rows(live)
    with Store(out, read_only=True) as s:
        # The same members (their order is the order rows were applied in, which follows
        # the partitions' interleaving: the same within a partition, not across them).
        assert sorted(r["id"] for r in s.snapshot_samples("m-sd-v0001")) == sorted(
            r["id"] for r in Store(live, read_only=True).snapshot_samples("m-sd-v0001")
        )
        funnel = s.stage_funnel()
    assert funnel["superseded"] == 1 and funnel["prompts_with_accepted"] == 2

    again = cli("-c", str(config), "store", "rebuild", "--out", str(out))
    assert again.returncode == 1 and "exists" in again.stderr
    with pytest.raises(FileExistsError):
        rebuild(settings, out)
    with sqlite3.connect(out) as con:  # what the live writer saved: where to resume
        assert dict(con.execute("SELECT partition, next_offset FROM positions"))
