"""The sample store: every judged prompt, candidate and vote, and the accepted samples.

One writer materialises it: the store writer (``store_writer.py``) applies ``verdicts``
and saves each partition's next offset (``positions``) in the same SQLite transaction as
the rows. A verdict may still be applied twice (the same verdict replayed by ``store
rebuild`` over a live file, a prompt id re-produced and judged again), and the second
application must change nothing. Every row therefore has a key derived from content, never
from arrival order (``store_keys.py``):

- a prompt: the producer's id or its content hash (``streams.schemas.content_id``);
- a candidate: ``sha256(prompt_id + "\\0" + text)`` (32 hex), so the same text of the same
  prompt is the same candidate however often it arrives;
- a vote: ``sha256(candidate_id, stage, kind, ordinal)``, its place in the candidate's cascade.

Redelivery rules (inside ONE ``BEGIN IMMEDIATE`` transaction, the writer's batch):

1. **The first recorded verdict of a candidate wins.** A candidate id already in the store is
   left alone, votes included, even if the redelivered outcome judged it differently (judge
   votes are sampled). Rewriting it would mix two runs' votes under one candidate and make an
   accepted row's vote count and judge tokens disagree with the votes table; keeping the first
   keeps every row's provenance whole. Recording the same outcome twice is a no-op.
2. **A candidate id has at most one accepted row** (it is the primary key of ``accepted``).
3. **first-valid: at most one accepted row per prompt.** If the prompt already has an
   accepted sample (from an earlier delivery, or a re-production of the same prompt with new
   samples), a newly passing candidate is stored with ``accepted = 0`` and
   ``rejected_at = "superseded"`` (the cascade's own word for the same case) and the existing
   sample is kept. all-valid keeps every passing candidate, each once.

Invariant: ``candidates.accepted = 1`` exactly for the ids in ``accepted``.

Held-out split: each accepted row gets ``split`` at insert time from a hash of its
*question* (:func:`question_key`, :func:`split_for`), not of the candidate or the prompt id:
every accepted answer to one question, and the same question produced again under another
id, lands on the same side, so a held-out question never leaks into training. It is stored,
not recomputed, so changing ``heldout_fraction`` later never moves an already held-out
sample into training. The held-out slice is never trained on.

Snapshots record the exact set of accepted ids a training run used, so a run is
reproducible and "new samples since the last run" is a set difference.

Threads: the store writer calls the store from its consumer loop's handler thread, not the
thread that opened it. The store holds ONE connection opened with ``check_same_thread=False``
and serialises every use of it (reads too: transactions on a shared connection interleave)
with a re-entrant lock. One writer per process is all the writer needs, and one connection
keeps one transaction state; other processes (``selfdistill status``, the trainer) open their
own Store, and WAL + ``busy_timeout`` let them share the file.

Errors are never swallowed: a read-only database, a full disk or a lock timeout raise
``sqlite3.OperationalError`` (after rolling the transaction back), so the writer saves no
offset and commits none: the verdicts are applied again once the store can be written.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlite_utils import Database

from daemon.verifying.cascade import STAGES, CandidateOutcome, PromptOutcome
from daemon.verifying.checkers import TOOL_STAGES
from daemon.verifying.store_keys import candidate_id, question_key, split_for, vote_id
from daemon.verifying.store_schema import Rows, create_schema, read_positions
from streams.schemas import CandidatesMessage, VerdictCandidate

SPLITS = ("train", "heldout")
Policy = Literal["first-valid", "all-valid"]


class StoreConfig(BaseModel):
    """Where accepted samples live and how they are split."""

    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(
        None,
        description="The SQLite file of judged and accepted samples. Default: <data_dir>/store.db.",
    )
    heldout_fraction: float = Field(
        0.1,
        ge=0.0,
        le=0.5,
        description="Share of accepted samples held out of training for the evaluation gate, "
        "chosen by candidate-id hash (deterministic; fixed at insert time).",
    )
    busy_timeout_s: float = Field(
        10.0,
        gt=0,
        description="How long a write waits for another process's lock before failing "
        "(the verdicts are then applied again).",
    )
    writer_in_train: bool = Field(
        True,
        description="Run the store writer (verdicts -> this store) inside `selfdistill "
        "train` (and `up`, the demo). Turn off where `selfdistill store` runs on its own.",
    )
    batch_size: int = Field(
        256,
        ge=1,
        le=10000,
        description="Verdicts the store writer applies per SQLite transaction (and per poll): "
        "one fsync and one offset commit per batch, not per prompt.",
    )
    group_id: str = Field(
        "selfdistill-store",
        description="Consumer group of the store writer (one member: it keeps its positions in "
        "the store; the group's offsets are informational).",
    )

    def path_in(self, data_dir: Path) -> Path:
        return self.path if self.path is not None else data_dir / "store.db"


@dataclass(frozen=True)
class RecordResult:
    """What one :meth:`Store.record` changed, for the worker's logs and metrics."""

    prompt_id: str
    new_prompt: bool
    new_candidates: int
    known_candidates: int  # already stored: a redelivery, left as first recorded
    new_votes: int
    accepted: tuple[str, ...]  # candidate ids newly accepted
    superseded: tuple[str, ...]  # passed, but the prompt already had its accepted sample

    @property
    def duplicate(self) -> bool:
        """Nothing new: a redelivery of something already stored."""
        return not self.new_prompt and self.new_candidates == 0


#: A judged candidate, from the cascade or from a verdict message (the same fields).
Judged = CandidateOutcome | VerdictCandidate


def _rank(c: Judged) -> int:
    """Which of two identical texts in one outcome speaks for the candidate id."""
    if c.accepted:
        return 2
    return 1 if c.rejected_at != "skipped" else 0


_ACCEPTED_COLS = (
    "a.id, a.prompt_id, a.messages, a.domain, a.adapter, a.votes, "
    "a.judge_tokens, a.accepted_at, a.split"
)


def _accepted_row(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "messages": json.loads(row["messages"])}


class Store:
    """The SQLite sample store. Opens (and creates) its tables on construction."""

    def __init__(
        self,
        path: Path,
        *,
        heldout_fraction: float = 0.1,
        busy_timeout_s: float = 10.0,
        read_only: bool = False,
    ) -> None:
        """``read_only`` opens with SQLite's ``mode=ro`` (for ``selfdistill status``): any
        write raises, whoever runs it, root included; the file must exist."""
        if not 0.0 <= heldout_fraction <= 0.5:
            raise ValueError(f"heldout_fraction must be in [0, 0.5], got {heldout_fraction}")
        self.path = Path(path)
        self.heldout_fraction = heldout_fraction
        self.read_only = read_only
        self._lock = threading.RLock()
        if read_only:
            if not self.path.is_file():
                raise FileNotFoundError(f"no sample store at {self.path}")
            uri = self.path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), check_same_thread=False)
        self._conn = conn
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self.db = Database(conn, execute_plugins=False)
            if not read_only:
                self.db.enable_wal()
                # FULL: a commit survives power loss before the worker commits its offset.
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
                self._create_schema()
        except BaseException:
            conn.close()
            raise

    @classmethod
    def open(cls, config: StoreConfig, data_dir: Path, *, read_only: bool = False) -> Store:
        return cls(
            config.path_in(data_dir),
            heldout_fraction=config.heldout_fraction,
            busy_timeout_s=config.busy_timeout_s,
            read_only=read_only,
        )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def _write(self) -> Iterator[Database]:
        """One IMMEDIATE transaction: the write lock is taken up front, so the reads that
        decide what to insert cannot be invalidated by another writer (no upgrade deadlock)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self._conn.execute("COMMIT")  # may fail too (disk full, busy): still roll back
            except BaseException:
                self._conn.rollback()
                raise

    def transaction(self) -> contextlib.AbstractContextManager[Database]:
        """One write transaction for several records (:meth:`record_in`) and positions."""
        return self._write()

    def positions(self, topic: str) -> dict[int, int]:
        """``{partition: next offset}`` the store writer has applied of ``topic``."""
        with self._read() as db:
            return read_positions(db, topic)

    def last_write(self, topic: str) -> float | None:
        """When the store writer last committed a batch of ``topic`` (unix time)."""
        with self._read() as db:
            row = db.execute(
                "SELECT max(updated_at) FROM positions WHERE topic = ?", (topic,)
            ).fetchone()
            return row[0] if row and row[0] is not None else None

    def forget_positions(self, topic: str) -> int:
        """Drop the saved positions of ``topic``: its log was replaced (a fresh embedded
        broker), so the next writer replays it from the beginning. Returns how many."""
        with self._write() as db:
            return db.execute("DELETE FROM positions WHERE topic = ?", (topic,)).rowcount

    @staticmethod
    def save_position(db: Database, topic: str, partition: int, next_offset: int) -> None:
        """Inside the transaction that wrote the rows up to ``next_offset``."""
        db.execute(
            "INSERT INTO positions (topic, partition, next_offset, updated_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (topic, partition) DO UPDATE SET "
            "next_offset = excluded.next_offset, updated_at = excluded.updated_at",
            (topic, partition, next_offset, time.time()),
        )

    @contextmanager
    def _read(self) -> Iterator[Database]:
        """A read transaction: several queries see one consistent snapshot."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self.db
            finally:
                self._conn.rollback()

    def _create_schema(self) -> None:
        with self._write() as db:
            create_schema(db, self.path)

    # ------------------------------------------------------------------------ writes
    def record(
        self,
        outcome: PromptOutcome,
        message: CandidatesMessage,
        *,
        policy: Policy = "first-valid",
        at: float | None = None,
    ) -> RecordResult:
        """Store one prompt's judged candidates, idempotently, in one transaction.

        See the module docstring for the redelivery rules. ``policy`` is the cascade's
        policy: under first-valid a prompt never gets a second accepted sample. ``at`` is
        the time the rows carry (the verdict's judging time; default now), so replaying the
        same verdicts gives the same rows. Raises sqlite errors (read-only, disk full, lock
        timeout) after rolling back.
        """
        with self._write() as db:
            return self.record_in(db, outcome, message, policy=policy, at=at)

    def record_in(
        self,
        db: Database,
        outcome: PromptOutcome,
        message: CandidatesMessage,
        *,
        policy: Policy = "first-valid",
        at: float | None = None,
    ) -> RecordResult:
        """:meth:`record` inside a transaction the caller holds (``transaction()``)."""
        if outcome.prompt_id != message.id:
            raise ValueError(
                f"outcome for {outcome.prompt_id!r} recorded with message {message.id!r}"
            )
        return self.record_many(db, [(outcome.candidates, message, policy, at)])[0]

    def record_many(
        self,
        db: Database,
        items: Sequence[tuple[Sequence[Judged], CandidatesMessage, Policy, float | None]],
    ) -> list[RecordResult]:
        """Record several prompts' outcomes inside the caller's transaction, in order, as
        :meth:`record` would one after the other, with one query per table to learn what
        is stored and one ``executemany`` per table to write: the store writer applies a
        whole batch of verdicts this way, with their positions, in one commit.

        Each item: a prompt's judged candidates (the cascade's ``CandidateOutcome`` or a
        verdict's ``VerdictCandidate``: the same fields), its candidates message, the
        policy, and the time its rows carry."""
        rows = Rows.load(db, {message.id for _, message, _, _ in items})
        results = [
            self._plan(rows, judged, message, policy, at) for judged, message, policy, at in items
        ]
        rows.write(db)
        return results

    def _plan(
        self,
        rows: Rows,
        judged: Sequence[Judged],
        message: CandidatesMessage,
        policy: Policy,
        at: float | None,
    ) -> RecordResult:
        """The rows one prompt adds, by the redelivery rules, given what ``rows`` knows."""
        now = time.time() if at is None else at
        pid = message.id
        chat = [m.model_dump() for m in message.messages]
        split = split_for(question_key(chat), self.heldout_fraction)
        chosen: dict[str, Judged] = {}
        for c in sorted(judged, key=lambda c: c.index):
            cid = candidate_id(pid, c.text)
            if cid not in chosen or _rank(c) > _rank(chosen[cid]):
                chosen[cid] = c
        by_text = {s.text: s for s in reversed(message.samples)}

        new_prompt = pid not in rows.prompt_ids
        if new_prompt:
            rows.prompt_ids.add(pid)
            rows.prompts.append(
                (
                    pid,
                    json.dumps(chat, ensure_ascii=False),
                    message.domain,
                    json.dumps(message.metadata, ensure_ascii=False, sort_keys=True),
                    message.adapter,
                    now,
                )
            )
        known = rows.known.setdefault(pid, set())
        new_cands = new_votes = 0
        accepted: list[str] = []
        superseded: list[str] = []
        for cid, c in chosen.items():
            if cid in known:
                continue
            known.add(cid)
            new_cands += 1
            keep = c.accepted and not (policy == "first-valid" and pid in rows.with_accepted)
            if c.accepted and not keep:
                superseded.append(cid)
            sample = (
                message.samples[c.index]
                if 0 <= c.index < len(message.samples) and message.samples[c.index].text == c.text
                else by_text.get(c.text)
            )
            calls = c.calls
            judge_tokens = sum(j.completion_tokens for j in calls)
            rows.candidates.append(
                (
                    cid,
                    pid,
                    c.index,
                    c.text,
                    c.answer,
                    sample.completion_tokens if sample else None,
                    sample.finish_reason if sample else None,
                    message.adapter,
                    int(keep),
                    "superseded" if c.accepted and not keep else c.rejected_at,
                    json.dumps([{"stage": s.stage, "passed": s.passed} for s in c.stages]),
                    judge_tokens,
                    message.created_at,
                )
            )
            ordinals: dict[tuple[str, str], int] = {}
            for j in calls:
                n = ordinals.get((j.stage, j.kind), 0)
                ordinals[(j.stage, j.kind)] = n + 1
                new_votes += 1
                rows.votes.append(
                    (
                        vote_id(cid, j.stage, j.kind, n),
                        cid,
                        pid,
                        j.stage,
                        j.kind,
                        n,
                        None if j.verdict is None else int(j.verdict),
                        j.output,
                        j.prompt_tokens,
                        j.completion_tokens,
                    )
                )
            if keep:
                rows.with_accepted.add(pid)
                accepted.append(cid)
                rows.accepted.append(
                    (
                        cid,
                        pid,
                        json.dumps(
                            [*chat, {"role": "assistant", "content": c.answer}],
                            ensure_ascii=False,
                        ),
                        message.domain,
                        message.adapter,
                        sum(1 for j in calls if j.kind == "vote" and j.verdict is True),
                        judge_tokens,
                        now,
                        split,
                    )
                )
        return RecordResult(
            prompt_id=pid,
            new_prompt=new_prompt,
            new_candidates=new_cands,
            known_candidates=len(chosen) - new_cands,
            new_votes=new_votes,
            accepted=tuple(accepted),
            superseded=tuple(superseded),
        )

    def create_snapshot(self, snapshot_id: str, split: str = "train", note: str = "") -> int:
        """Freeze the current accepted ids of ``split`` under ``snapshot_id``; returns its size.

        Idempotent: an existing snapshot is returned unchanged (a retried training run sees
        the same data), and reusing its id for another split is an error.
        """
        _check_split(split)
        with self._write() as db:
            row = db.execute(
                "SELECT split, sample_count FROM snapshots WHERE id = ?", (snapshot_id,)
            ).fetchone()
            if row is not None:
                if row[0] != split:
                    raise ValueError(f"snapshot {snapshot_id!r} exists for split {row[0]!r}")
                return int(row[1])
            db.execute(
                "INSERT INTO snapshots (id, created_at, split, sample_count, note) "
                "VALUES (?, ?, ?, 0, ?)",
                (snapshot_id, time.time(), split, note),
            )
            count = db.execute(
                "INSERT INTO snapshot_samples (snapshot_id, accepted_id) "
                "SELECT ?, id FROM accepted WHERE split = ? ORDER BY rowid",
                (snapshot_id, split),
            ).rowcount
            db.execute("UPDATE snapshots SET sample_count = ? WHERE id = ?", (count, snapshot_id))
            return count

    def copy_snapshots(self, source: Path) -> int:
        """Copy another store's snapshots (a rebuild's old file), each with the members
        this store has; returns how many snapshots were copied."""
        if not Path(source).is_file():
            raise FileNotFoundError(f"no store at {source} to copy snapshots from")
        with self._lock:  # ATTACH is refused inside a transaction
            self._conn.execute("ATTACH DATABASE ? AS old", (str(source),))
            try:
                with self._write() as db:
                    n = db.execute(
                        "INSERT OR IGNORE INTO snapshots SELECT * FROM old.snapshots"
                    ).rowcount
                    db.execute(
                        "INSERT OR IGNORE INTO snapshot_samples SELECT s.* FROM "
                        "old.snapshot_samples s JOIN accepted a ON a.id = s.accepted_id"
                    )
            finally:
                self._conn.execute("DETACH DATABASE old")
            return n

    # ------------------------------------------------------------------------- reads
    def counts(self) -> dict[str, int]:
        with self._read() as db:
            out = {
                t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("prompts", "candidates", "votes", "accepted")
            }
            for split in SPLITS:
                out[f"accepted_{split}"] = db.execute(
                    "SELECT count(*) FROM accepted WHERE split = ?", (split,)
                ).fetchone()[0]
            return out

    def accepted_samples(
        self, split: str | None = "train", since_snapshot: str | None = None
    ) -> list[dict[str, Any]]:
        """Accepted rows in insertion order (``messages`` decoded); ``split=None``: all.

        ``since_snapshot`` leaves out the rows that snapshot holds: what arrived after it.
        """
        if split is not None:
            _check_split(split)
        where, params = ["1"], []
        if split is not None:
            where.append("a.split = ?")
            params.append(split)
        with self._read() as db:
            if since_snapshot is not None:
                self._snapshot_or_raise(db, since_snapshot)
                where.append(
                    "a.id NOT IN (SELECT accepted_id FROM snapshot_samples WHERE snapshot_id = ?)"
                )
                params.append(since_snapshot)
            rows = db.query(
                f"SELECT {_ACCEPTED_COLS} FROM accepted a "
                f"WHERE {' AND '.join(where)} ORDER BY a.rowid",
                params,
            )
            return [_accepted_row(r) for r in rows]

    def new_accepted_since(self, snapshot_id: str | None = None) -> int:
        """Accepted samples of the snapshot's split (train without one) not in the snapshot:
        how much new training data arrived since the last run used that snapshot."""
        with self._read() as db:
            if snapshot_id is None:
                return db.execute("SELECT count(*) FROM accepted WHERE split = 'train'").fetchone()[
                    0
                ]
            snap = self._snapshot_or_raise(db, snapshot_id)
            return db.execute(
                "SELECT count(*) FROM accepted WHERE split = ? AND id NOT IN "
                "(SELECT accepted_id FROM snapshot_samples WHERE snapshot_id = ?)",
                (snap["split"], snapshot_id),
            ).fetchone()[0]

    def snapshot(self, snapshot_id: str) -> dict[str, Any] | None:
        with self._read() as db:
            return self._snapshot(db, snapshot_id)

    def snapshots(self) -> list[dict[str, Any]]:
        """All snapshots, oldest first."""
        with self._read() as db:
            return list(db.query("SELECT * FROM snapshots ORDER BY created_at, rowid"))

    def snapshot_samples(self, snapshot_id: str) -> list[dict[str, Any]]:
        """Exactly the accepted rows the snapshot froze, in the order they were accepted."""
        with self._read() as db:
            self._snapshot_or_raise(db, snapshot_id)
            rows = db.query(
                f"SELECT {_ACCEPTED_COLS} FROM snapshot_samples s "
                "JOIN accepted a ON a.id = s.accepted_id WHERE s.snapshot_id = ? "
                "ORDER BY a.rowid",
                [snapshot_id],
            )
            return [_accepted_row(r) for r in rows]

    def stage_funnel(self) -> dict[str, Any]:
        """How candidates flow through the cascade, for the status screen.

        ``stages[name]``: candidates that reached the stage (it has a stage outcome) and
        passed it; ``static``: rejected before any judge; ``skipped``: never needed;
        ``superseded``: passed, but their prompt kept an earlier sample (first-valid).
        """
        with self._read() as db:
            per_stage = {
                r["stage"]: {"reached": r["reached"], "passed": r["passed"]}
                for r in db.query(
                    "SELECT json_extract(j.value, '$.stage') AS stage, count(*) AS reached, "
                    "sum(json_extract(j.value, '$.passed')) AS passed "
                    "FROM candidates c, json_each(c.stages) j GROUP BY stage"
                )
            }
            # Tool stages run first, so they lead the funnel, but only where they ever ran.
            stages = {s: per_stage.pop(s) for s in TOOL_STAGES if s in per_stage}
            stages.update({s: per_stage.pop(s, {"reached": 0, "passed": 0}) for s in STAGES})
            stages.update(sorted(per_stage.items()))
            rejected = dict(
                db.execute(
                    "SELECT rejected_at, count(*) FROM candidates WHERE rejected_at IS NOT NULL "
                    "GROUP BY rejected_at"
                ).fetchall()
            )
            one = db.execute(
                "SELECT (SELECT count(*) FROM prompts), (SELECT count(*) FROM candidates), "
                "(SELECT count(*) FROM accepted), "
                "(SELECT count(DISTINCT prompt_id) FROM accepted)"
            ).fetchone()
            return {
                "prompts": one[0],
                "candidates": one[1],
                "static": rejected.get("static", 0),
                "stages": stages,
                "skipped": rejected.get("skipped", 0),
                "superseded": rejected.get("superseded", 0),
                "accepted": one[2],
                "prompts_with_accepted": one[3],
            }

    def ranking_groups(self) -> list[dict[str, Any]]:
        """Prompts whose candidates both passed and failed: ranking data (as in DuST).

        A candidate's label comes from its tool stages when any ran (checker, execution: a
        deterministic verdict, measured on every candidate of the group); otherwise from the
        cascade: accepted or superseded is a pass, rejected by the static check or a judge
        stage is a fail, and a candidate never judged (``skipped``) has no label and is left
        out. Groups are in prompt order; ``source`` says which verdict labelled them.
        """
        with self._read() as db:
            prompts = {
                r["id"]: r
                for r in db.query(
                    "SELECT id, messages, domain FROM prompts WHERE id IN "
                    "(SELECT prompt_id FROM candidates) ORDER BY rowid"
                )
            }
            cands = list(
                db.query(
                    "SELECT id, prompt_id, idx, text, answer, accepted, rejected_at, stages "
                    "FROM candidates ORDER BY prompt_id, created_at, idx, rowid"
                )
            )
        by_prompt: dict[str, list[dict[str, Any]]] = {}
        for c in cands:
            by_prompt.setdefault(c["prompt_id"], []).append(c)
        groups = []
        for pid, prompt in prompts.items():
            passed, failed, tool = [], [], False
            for c in by_prompt.get(pid, []):
                label, from_tool = _ranking_label(c)
                tool = tool or from_tool
                if label is None:
                    continue
                member = {"candidate_id": c["id"], "text": c["text"], "answer": c["answer"]}
                (passed if label else failed).append(member)
            if passed and failed:
                groups.append(
                    {
                        "prompt_id": pid,
                        "messages": json.loads(prompt["messages"]),
                        "domain": prompt["domain"],
                        "source": "tool" if tool else "cascade",
                        "passed": passed,
                        "failed": failed,
                    }
                )
        return groups

    # ----------------------------------------------------------------------- helpers
    @staticmethod
    def _snapshot(db: Database, snapshot_id: str) -> dict[str, Any] | None:
        rows = list(db.query("SELECT * FROM snapshots WHERE id = ?", [snapshot_id]))
        return rows[0] if rows else None

    def _snapshot_or_raise(self, db: Database, snapshot_id: str) -> dict[str, Any]:
        """An unknown snapshot is an error, not "everything is new": a typo must not
        silently retrain on the whole store."""
        snap = self._snapshot(db, snapshot_id)
        if snap is None:
            raise KeyError(f"no snapshot {snapshot_id!r}")
        return snap


def _ranking_label(cand: dict[str, Any]) -> tuple[bool | None, bool]:
    """(pass/fail/None, whether a tool stage decided it) for one stored candidate."""
    tools = [st for st in json.loads(cand["stages"]) if st["stage"] in TOOL_STAGES]
    if tools:
        return all(st["passed"] for st in tools), True
    if cand["accepted"] or cand["rejected_at"] == "superseded":
        return True, False
    if cand["rejected_at"] in (None, "skipped"):
        return None, False
    return False, False


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
