"""The store's tables and the rows a write adds (``store.py`` says what each row means,
how it is keyed, and which rows a verdict adds).

``create_schema`` runs in the opener's write transaction; every table and index is created
if missing, so a store written by an older release gains the newer tables (``positions``)
in place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlite_utils import Database

SCHEMA_VERSION = 1


def create_schema(db: Database, path: Path) -> None:
    """Create what is missing; refuse a store written by a newer release."""
    if db.execute("PRAGMA user_version").fetchone()[0] > SCHEMA_VERSION:
        raise RuntimeError(f"{path} was written by a newer selfdistill")
    strict = db.supports_strict
    db["prompts"].create(
        {
            "id": str,
            "messages": str,
            "domain": str,
            "metadata": str,
            "adapter": str,
            "first_seen_at": float,
        },
        pk="id",
        not_null=["messages", "first_seen_at"],
        if_not_exists=True,
        strict=strict,
    )
    db["candidates"].create(
        {
            "id": str,
            "prompt_id": str,
            "idx": int,
            "text": str,
            "answer": str,
            "completion_tokens": int,
            "finish_reason": str,
            "adapter": str,
            "accepted": int,
            "rejected_at": str,
            "stages": str,
            "judge_tokens": int,
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("prompt_id", "prompts", "id")],
        not_null=["prompt_id", "idx", "text", "answer", "accepted", "stages"],
        if_not_exists=True,
        strict=strict,
    )
    db["votes"].create(
        {
            "id": str,
            "candidate_id": str,
            "prompt_id": str,
            "stage": str,
            "kind": str,
            "ordinal": int,
            "verdict": int,
            "output": str,
            "prompt_tokens": int,
            "completion_tokens": int,
        },
        pk="id",
        foreign_keys=[("candidate_id", "candidates", "id"), ("prompt_id", "prompts", "id")],
        not_null=["candidate_id", "prompt_id", "stage", "kind", "ordinal", "output"],
        if_not_exists=True,
        strict=strict,
    )
    db["accepted"].create(
        {
            "id": str,
            "prompt_id": str,
            "messages": str,
            "domain": str,
            "adapter": str,
            "votes": int,
            "judge_tokens": int,
            "accepted_at": float,
            "split": str,
        },
        pk="id",
        foreign_keys=[("id", "candidates", "id"), ("prompt_id", "prompts", "id")],
        not_null=["prompt_id", "messages", "votes", "judge_tokens", "accepted_at", "split"],
        if_not_exists=True,
        strict=strict,
    )
    db["snapshots"].create(
        {"id": str, "created_at": float, "split": str, "sample_count": int, "note": str},
        pk="id",
        not_null=["created_at", "split", "sample_count", "note"],
        if_not_exists=True,
        strict=strict,
    )
    db["snapshot_samples"].create(
        {"snapshot_id": str, "accepted_id": str},
        pk=("snapshot_id", "accepted_id"),
        foreign_keys=[
            ("snapshot_id", "snapshots", "id"),
            ("accepted_id", "accepted", "id"),
        ],
        if_not_exists=True,
        strict=strict,
    )
    # Where the store writer is in each partition of ``verdicts`` (the next offset
    # to apply), committed with the rows those offsets produced.
    db["positions"].create(
        {"topic": str, "partition": int, "next_offset": int, "updated_at": float},
        pk=("topic", "partition"),
        not_null=["next_offset"],
        if_not_exists=True,
        strict=strict,
    )
    for table, cols in (
        ("candidates", ["prompt_id"]),
        ("votes", ["candidate_id"]),
        ("votes", ["prompt_id"]),
        ("accepted", ["prompt_id"]),
        ("accepted", ["split"]),
        ("snapshot_samples", ["accepted_id"]),
    ):
        db[table].create_index(cols, if_not_exists=True)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def read_positions(db: Database, topic: str) -> dict[int, int]:
    """``{partition: next offset}`` of ``topic`` (inside the caller's transaction)."""
    return {
        int(p): int(o)
        for p, o in db.execute(
            "SELECT partition, next_offset FROM positions WHERE topic = ?", (topic,)
        )
    }


_COLUMNS = {
    "prompts": ("id", "messages", "domain", "metadata", "adapter", "first_seen_at"),
    "candidates": (
        "id",
        "prompt_id",
        "idx",
        "text",
        "answer",
        "completion_tokens",
        "finish_reason",
        "adapter",
        "accepted",
        "rejected_at",
        "stages",
        "judge_tokens",
        "created_at",
    ),
    "votes": (
        "id",
        "candidate_id",
        "prompt_id",
        "stage",
        "kind",
        "ordinal",
        "verdict",
        "output",
        "prompt_tokens",
        "completion_tokens",
    ),
    "accepted": (
        "id",
        "prompt_id",
        "messages",
        "domain",
        "adapter",
        "votes",
        "judge_tokens",
        "accepted_at",
        "split",
    ),
}


@dataclass
class Rows:
    """What one write adds, table by table, and what the store already holds of its
    prompts (so a prompt twice in one batch is decided as if recorded one after the other)."""

    prompt_ids: set[str]
    known: dict[str, set[str]]  # prompt id -> candidate ids stored or added
    with_accepted: set[str]  # prompt ids with an accepted sample
    prompts: list[tuple[Any, ...]] = field(default_factory=list)
    candidates: list[tuple[Any, ...]] = field(default_factory=list)
    votes: list[tuple[Any, ...]] = field(default_factory=list)
    accepted: list[tuple[Any, ...]] = field(default_factory=list)

    @classmethod
    def load(cls, db: Database, pids: set[str]) -> Rows:
        rows = cls(set(), {}, set())
        ids = sorted(pids)
        for i in range(0, len(ids), 500):  # under SQLite's bound on query parameters
            chunk = ids[i : i + 500]
            marks = ", ".join("?" * len(chunk))
            rows.prompt_ids.update(
                r[0] for r in db.execute(f"SELECT id FROM prompts WHERE id IN ({marks})", chunk)
            )
            for pid, cid in db.execute(
                f"SELECT prompt_id, id FROM candidates WHERE prompt_id IN ({marks})", chunk
            ):
                rows.known.setdefault(pid, set()).add(cid)
            rows.with_accepted.update(
                r[0]
                for r in db.execute(
                    f"SELECT DISTINCT prompt_id FROM accepted WHERE prompt_id IN ({marks})", chunk
                )
            )
        return rows

    def write(self, db: Database) -> None:
        """Parents first (foreign keys). OR IGNORE although every id is new: a no-op guard,
        never an overwrite."""
        for table in ("prompts", "candidates", "votes", "accepted"):
            values = getattr(self, table)
            if values:
                cols = _COLUMNS[table]
                db.conn.executemany(
                    f"INSERT OR IGNORE INTO {table} ({', '.join(cols)}) "
                    f"VALUES ({', '.join('?' * len(cols))})",
                    values,
                )
