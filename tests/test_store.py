"""The sample store on real SQLite files: idempotency, first-valid, splits, snapshots, export."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from daemon.learning.export import export_accepted
from daemon.verifying.cascade import (
    STAGES,
    CandidateOutcome,
    JudgeCall,
    PromptOutcome,
    StageOutcome,
)
from daemon.verifying.store import Store, StoreConfig, candidate_id, question_key, split_for
from daemon.verifying.verdicts import final_answer
from streams.schemas import CandidatesMessage, ChatMessage, Sample, SamplingParams

TOK = 7  # completion tokens of every judge call in these tests


def cand(index: int, text: str, fate: str, votes: int = 2) -> CandidateOutcome:
    """A judged candidate: fate is "accepted", "superseded", "static", "skipped" or the
    stage that said no (after the stages before it passed with ``votes`` yes votes)."""
    c = CandidateOutcome(index, text, final_answer(text) if fate != "static" else "")
    if fate in ("static", "skipped"):
        c.rejected_at = fate
        return c
    for stage in STAGES:
        calls = (
            [JudgeCall(stage, "infer", None, "inferred question", 30, TOK)]
            if stage == "cycle"
            else []
        )
        if stage == fate:
            calls += [
                JudgeCall(stage, "vote", True, "[[Y]]", 40, TOK),
                JudgeCall(stage, "vote", False, "[[N]]", 40, TOK),
            ]
            c.stages.append(StageOutcome(stage, False, calls))
            c.rejected_at = stage
            return c
        calls += [JudgeCall(stage, "vote", True, f"ok {i} [[Y]]", 40, TOK) for i in range(votes)]
        c.stages.append(StageOutcome(stage, True, calls))
    c.accepted = fate == "accepted"
    c.rejected_at = None if c.accepted else "superseded"
    return c


def msg(pid: str, texts: list[str], adapter: str | None = "m-sd-v0001") -> CandidatesMessage:
    return CandidatesMessage(
        id=pid,
        messages=[
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content=f"question {pid}?"),
        ],
        domain="math",
        metadata={"source": "test"},
        samples=[Sample(text=t, completion_tokens=len(t), finish_reason="stop") for t in texts],
        sampling=SamplingParams(n=len(texts), temperature=0.8),
        adapter=adapter,
        created_at=1000.0,
    )


def prompt(pid: str, fates: dict[str, str]) -> tuple[PromptOutcome, CandidatesMessage]:
    """One prompt whose candidates are the keys (texts), judged as the values say."""
    texts = list(fates)
    cands = [cand(i, t, fates[t]) for i, t in enumerate(texts)]
    out = PromptOutcome(pid, f"question {pid}?", cands)
    return out, msg(pid, texts)


def table(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "var" / "store.db"


@pytest.fixture
def store(db_path: Path):
    s = Store(db_path, heldout_fraction=0.0)
    yield s
    s.close()


# --------------------------------------------------------------------------- record
def test_record_writes_every_row_and_twice_changes_nothing(store: Store, db_path: Path) -> None:
    out, m = prompt("p1", {"20": "factuality", " 19 ": "accepted", "19.0": "skipped"})
    r = store.record(out, m)
    assert r.new_prompt and r.new_candidates == 3 and not r.duplicate
    cid = candidate_id("p1", " 19 ")
    assert cid == hashlib.sha256(b"p1\0 19 ").hexdigest()[:32]
    assert r.accepted == (cid,) and r.superseded == ()
    # votes: factuality-reject = infer + 2 cycle + 1 yes + 1 no; accepted = infer + 3 x 2
    assert store.counts() == {
        "prompts": 1,
        "candidates": 3,
        "votes": 12,
        "accepted": 1,
        "accepted_train": 1,
        "accepted_heldout": 0,
    }
    assert r.new_votes == 12

    again = store.record(out, m)
    assert again.duplicate and again.known_candidates == 3 and again.accepted == ()
    assert store.counts()["votes"] == 12 and store.counts()["accepted"] == 1

    [row] = store.accepted_samples()
    assert row["id"] == cid and row["prompt_id"] == "p1" and row["split"] == "train"
    assert row["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "question p1?"},
        {"role": "assistant", "content": "19"},
    ]
    assert row["votes"] == 6 and row["judge_tokens"] == 7 * TOK
    assert row["adapter"] == "m-sd-v0001" and row["domain"] == "math"
    cands = table(
        db_path,
        "SELECT idx, text, answer, completion_tokens, finish_reason, "
        "accepted, rejected_at FROM candidates ORDER BY idx",
    )
    assert cands == [
        (0, "20", "20", 2, "stop", 0, "factuality"),
        (1, " 19 ", "19", 4, "stop", 1, None),
        (2, "19.0", "19.0", 4, "stop", 0, "skipped"),
    ]
    verdicts = table(
        db_path,
        "SELECT stage, kind, ordinal, verdict FROM votes "
        f"WHERE candidate_id = '{candidate_id('p1', '20')}' ORDER BY rowid",
    )
    assert verdicts == [
        ("cycle", "infer", 0, None),
        ("cycle", "vote", 0, 1),
        ("cycle", "vote", 1, 1),
        ("factuality", "vote", 0, 1),
        ("factuality", "vote", 1, 0),
    ]
    assert table(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_two_stores_on_one_file_and_a_foreign_thread(db_path: Path) -> None:
    """A worker that crashed after its commit left its Store open; the next one records the
    redelivered prompt again, from a handler thread that did not open the store."""
    out, m = prompt("p1", {"a": "correctness", "b": "accepted"})
    first = Store(db_path)
    first.record(out, m)
    before = first.counts()
    second = Store(db_path)
    errors: list[BaseException] = []

    def handler() -> None:
        try:
            second.record(out, m)
            second.record(*prompt("p2", {"c": "accepted"}))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=handler)
    t.start()
    t.join()
    assert errors == []
    after = second.counts()
    # Only p2 is new: one prompt, one candidate, infer + 3 stages x 2 votes, one sample.
    assert {k: after[k] - before[k] for k in ("prompts", "candidates", "votes", "accepted")} == {
        "prompts": 1,
        "candidates": 1,
        "votes": 7,
        "accepted": 1,
    }
    assert first.counts() == second.counts()  # both see the same committed rows
    first.close()
    second.close()


def test_two_workers_writing_at_once_store_each_prompt_once(db_path: Path) -> None:
    """Two processes' worth of writers racing over the same prompts (WAL + busy_timeout +
    BEGIN IMMEDIATE): every prompt ends up stored once, with one accepted sample."""
    stores = [Store(db_path), Store(db_path)]
    work = [prompt(f"p{i}", {f"x{i}": "factuality", f"y{i}": "accepted"}) for i in range(40)]
    errors: list[BaseException] = []

    def run(s: Store, items: list) -> None:
        try:
            for out, m in items:
                s.record(out, m)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=(stores[0], work)),
        threading.Thread(target=run, args=(stores[1], work[::-1])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    c = stores[0].counts()
    assert (c["prompts"], c["candidates"], c["votes"], c["accepted"]) == (40, 80, 40 * 12, 40)
    for s in stores:
        s.close()


def test_redelivery_with_another_outcome_keeps_the_first_verdicts(store: Store) -> None:
    out1, m = prompt("p1", {"A": "accepted", "B": "skipped"})
    store.record(out1, m)
    votes_before = store.counts()["votes"]
    # Judge votes are sampled: the redelivered prompt comes out the other way round.
    out2 = PromptOutcome("p1", "question p1?", [cand(0, "A", "cycle"), cand(1, "B", "accepted")])
    r = store.record(out2, m)
    assert r.duplicate and r.accepted == () and r.known_candidates == 2
    assert [s["id"] for s in store.accepted_samples()] == [candidate_id("p1", "A")]
    assert store.counts()["votes"] == votes_before
    assert store.stage_funnel()["skipped"] == 1  # B still as first recorded


def test_first_valid_never_accepts_a_second_sample_per_prompt(store: Store) -> None:
    store.record(*prompt("p1", {"A": "accepted"}))
    # The same prompt produced again (same content id), new samples, one passes:
    r = store.record(*prompt("p1", {"C": "accepted", "A": "skipped"}))
    assert r.new_candidates == 1 and r.known_candidates == 1
    assert r.accepted == () and r.superseded == (candidate_id("p1", "C"),)
    assert [s["id"] for s in store.accepted_samples()] == [candidate_id("p1", "A")]
    assert store.stage_funnel()["superseded"] == 1
    # all-valid keeps every passing candidate, each once:
    r = store.record(*prompt("p1", {"D": "accepted", "A": "accepted"}), policy="all-valid")
    assert r.accepted == (candidate_id("p1", "D"),)
    assert store.counts()["accepted"] == 2


def test_a_prompt_without_an_accepted_sample_can_gain_one_later(store: Store) -> None:
    store.record(*prompt("p1", {"A": "cycle", "B": "static"}))
    assert store.counts()["accepted"] == 0
    r = store.record(*prompt("p1", {"E": "accepted"}))
    assert r.accepted == (candidate_id("p1", "E"),)
    assert store.counts()["accepted"] == 1


def test_identical_texts_in_one_outcome_are_one_candidate(store: Store) -> None:
    out = PromptOutcome("p1", "q", [cand(0, "19", "correctness"), cand(1, "19", "accepted")])
    r = store.record(out, msg("p1", ["19", "19"]))
    assert r.new_candidates == 1 and r.accepted == (candidate_id("p1", "19"),)
    assert store.counts()["candidates"] == 1 and store.counts()["accepted"] == 1


def test_a_failed_write_leaves_nothing_behind(store: Store, db_path: Path) -> None:
    """One transaction per prompt: a failure on its last insert undoes the first ones."""
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "CREATE TRIGGER fail BEFORE INSERT ON accepted "
            "BEGIN SELECT RAISE(ABORT, 'simulated full disk'); END"
        )
    out, m = prompt("p1", {"A": "cycle", "B": "accepted"})
    with pytest.raises(sqlite3.DatabaseError, match="simulated full disk"):
        store.record(out, m)
    assert set(store.counts().values()) == {0}
    with sqlite3.connect(db_path) as conn:
        conn.execute("DROP TRIGGER fail")
    assert store.record(out, m).accepted == (candidate_id("p1", "B"),)


def test_read_only_store_reads_and_refuses_writes(db_path: Path) -> None:
    """Tests run as root, whom chmod does not stop, so read-only is SQLite's own mode=ro."""
    with Store(db_path) as rw:
        rw.record(*prompt("p1", {"A": "accepted"}))
        counts = rw.counts()
    ro = Store(db_path, read_only=True)
    assert ro.counts() == counts and len(ro.accepted_samples()) == 1
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.record(*prompt("p2", {"B": "accepted"}))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.create_snapshot("s1")
    assert ro.counts() == counts  # and the store still works after the failure
    ro.close()
    with pytest.raises(FileNotFoundError):
        Store(db_path.parent / "missing.db", read_only=True)


# ----------------------------------------------------------------- split, snapshots
def test_split_is_deterministic_and_heldout_is_never_trained_on(db_path: Path) -> None:
    with Store(db_path, heldout_fraction=0.3) as s:
        for i in range(200):
            s.record(*prompt(f"p{i}", {f"answer {i}": "accepted"}))
        rows = s.accepted_samples(None)
        assert len(rows) == 200
        for row in rows:
            asked = row["messages"]
            assert row["split"] == split_for(question_key(asked), 0.3)
        train = s.accepted_samples("train")
        heldout = s.accepted_samples("heldout")
        assert {r["split"] for r in train} == {"train"}
        assert len(train) + len(heldout) == 200 and 30 <= len(heldout) <= 90
        assert not {r["id"] for r in train} & {r["id"] for r in heldout}
        counts = s.counts()
        assert (counts["accepted_train"], counts["accepted_heldout"]) == (len(train), len(heldout))
    # Reopening with another fraction does not move stored rows: the split is fixed at insert.
    with Store(db_path, heldout_fraction=0.0) as s:
        assert [r["id"] for r in s.accepted_samples("heldout")] == [r["id"] for r in heldout]
    assert split_for("0" * 32, 0.0) == "train" and split_for("0" * 32, 0.1) == "heldout"
    # 0xffffffff % 1000 == 295: the boundary sits exactly at the fraction
    assert split_for("f" * 32, 0.295) == "train" and split_for("f" * 32, 0.296) == "heldout"
    with pytest.raises(ValueError):
        Store(db_path, heldout_fraction=0.6)


def test_one_question_never_lands_on_both_sides(db_path: Path) -> None:
    """All accepted answers of a question, under any prompt id, share its split.

    Decided per candidate id (the old rule), a question with several accepted answers or
    produced twice lands on both sides about half the time at this fraction: its held-out
    answers would be graded on a question the adapter was trained on.
    """
    sides: dict[str, set[str]] = {}
    with Store(db_path, heldout_fraction=0.5) as s:
        for q in range(40):
            for copy in range(2):  # the same question produced twice, under two ids
                pid = f"q{q}-copy{copy}"
                out, message = prompt(pid, {f"answer {k} of {q}": "accepted" for k in range(3)})
                message = message.model_copy(
                    update={
                        "messages": [
                            ChatMessage(
                                role="user",
                                content=f"  Question {q}?  " if copy else f"question {q}?",
                            )
                        ]
                    }
                )
                s.record(out, message, policy="all-valid")
        for row in s.accepted_samples(None):
            sides.setdefault(row["prompt_id"].split("-")[0], set()).add(row["split"])
    assert len(sides) == 40
    assert all(len(split) == 1 for split in sides.values()), sides
    held = sum(split == {"heldout"} for split in sides.values())
    assert 8 <= held <= 32  # about half of 40 questions


def test_snapshots_are_exact_and_stable(store: Store) -> None:
    for i in range(3):
        store.record(*prompt(f"p{i}", {f"a{i}": "accepted"}))
    assert store.new_accepted_since(None) == 3
    assert store.create_snapshot("run-1", note="first") == 3
    assert store.create_snapshot("run-1") == 3  # idempotent
    frozen = [r["id"] for r in store.snapshot_samples("run-1")]
    assert frozen == [r["id"] for r in store.accepted_samples()]
    assert store.new_accepted_since("run-1") == 0
    assert store.accepted_samples(since_snapshot="run-1") == []

    for i in range(3, 5):
        store.record(*prompt(f"p{i}", {f"a{i}": "accepted"}))
    assert store.create_snapshot("run-1") == 3
    assert [r["id"] for r in store.snapshot_samples("run-1")] == frozen
    assert store.new_accepted_since("run-1") == 2
    assert [r["prompt_id"] for r in store.accepted_samples(since_snapshot="run-1")] == ["p3", "p4"]
    assert store.create_snapshot("run-2") == 5
    assert store.snapshot("run-1") | {"created_at": 0} == {
        "id": "run-1",
        "created_at": 0,
        "split": "train",
        "sample_count": 3,
        "note": "first",
    }
    assert [s["id"] for s in store.snapshots()] == ["run-1", "run-2"]
    with pytest.raises(KeyError):
        store.new_accepted_since("nope")
    with pytest.raises(KeyError):
        store.snapshot_samples("nope")
    with pytest.raises(ValueError):
        store.create_snapshot("run-1", split="heldout")
    with pytest.raises(ValueError):
        store.accepted_samples("test")


def test_stage_funnel(store: Store) -> None:
    store.record(*prompt("p1", {"a": "cycle", "b": "factuality", "c": "accepted", "d": "skipped"}))
    store.record(*prompt("p2", {"": "static", "e": "correctness", "f": "accepted"}))
    store.record(*prompt("p2", {"g": "accepted"}))  # superseded: p2 already has a sample
    store.record(*prompt("p3", {"h": "cycle"}))
    assert store.stage_funnel() == {
        "prompts": 3,
        "candidates": 9,
        "static": 1,
        "stages": {
            "cycle": {"reached": 7, "passed": 5},
            "factuality": {"reached": 5, "passed": 4},
            "correctness": {"reached": 4, "passed": 3},
        },
        "skipped": 1,
        "superseded": 1,
        "accepted": 2,
        "prompts_with_accepted": 2,
    }


# ---------------------------------------------------------------------------- export
def test_export_jsonl_chat_format_with_provenance(store: Store, tmp_path: Path) -> None:
    store.record(*prompt("p1", {"<think>7+12</think> 19": "accepted"}))
    store.record(*prompt("p2", {"x": "cycle", "y": "accepted"}))
    store.create_snapshot("s1")
    store.record(*prompt("p3", {"z": "accepted"}))

    out = tmp_path / "exports" / "train.jsonl"
    assert export_accepted(store, out) == 3
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 3
    assert list(tmp_path.joinpath("exports").iterdir()) == [out]  # no temp file left
    first = lines[0]
    assert first["messages"][-1] == {"role": "assistant", "content": "19"}
    assert first["messages"][:-1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "question p1?"},
    ]
    assert first == {
        "messages": first["messages"],
        "prompt_id": "p1",
        "candidate_id": candidate_id("p1", "<think>7+12</think> 19"),
        "adapter": "m-sd-v0001",
        "domain": "math",
        "votes": 6,
        "judge_tokens": 7 * TOK,
        "split": "train",
    }
    for line in lines:
        assert [m["role"] for m in line["messages"]] == ["system", "user", "assistant"]

    buf = io.StringIO()
    assert export_accepted(store, buf, snapshot="s1") == 2
    assert [json.loads(x)["prompt_id"] for x in buf.getvalue().splitlines()] == ["p1", "p2"]
    assert export_accepted(store, io.StringIO(), split="heldout") == 0
    with pytest.raises(ValueError):
        export_accepted(store, io.StringIO(), split="heldout", snapshot="s1")
    with pytest.raises(KeyError):
        export_accepted(store, out, snapshot="nope")
    assert len(out.read_text().splitlines()) == 3  # a failed export left the file alone


# ---------------------------------------------------------------------------- config
def test_store_config(tmp_path: Path) -> None:
    assert StoreConfig().path_in(tmp_path) == tmp_path / "store.db"
    assert StoreConfig(path=tmp_path / "x.db").path_in(Path("elsewhere")) == tmp_path / "x.db"
    with pytest.raises(ValidationError):
        StoreConfig(heldout_fraction=0.7)
    with pytest.raises(ValidationError):
        StoreConfig(pth="typo")  # type: ignore[call-arg]
    cfg = StoreConfig(heldout_fraction=0.25)
    with Store.open(cfg, tmp_path) as s:
        assert s.path == tmp_path / "store.db" and s.heldout_fraction == 0.25
