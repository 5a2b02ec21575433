"""The adapter registry: every adapter version ever trained, its provenance and its fate.

One SQLite file (``registry.db``) inside the registry directory, next to the adapter
directories it describes. It answers the operator's questions at 3 a.m. — what is serving,
what was it trained on, why was the last candidate rejected, what do I roll back to — and it
keeps the on-disk state consistent when a training run dies at any point:

* **Versions are immutable and never reused.** A run reserves its name (``<model>-sd-v0007``)
  in ``runs`` before it writes a byte, so even a run that crashed keeps its number: serving
  engines cache adapters by name, and a reused name could serve stale weights.
* **Files appear whole or not at all.** Training writes into a hidden staging directory
  inside the registry (same filesystem), every file and the directory are fsynced, and one
  ``rename`` puts the version in place. Only then is the ``adapters`` row written.
* **Recovery** (``recover()``, run under the training lock before each run) marks runs that
  were left ``running`` as ``crashed``, deletes staging directories, and deletes a version
  directory whose run never registered it (a crash between the rename and the row): that
  version was never served, and its number stays reserved.

Status of an adapter: ``candidate`` (trained, not promoted: awaiting the gate, or held back
by a pin), ``promoted`` (what serves now; at most one), ``rejected`` (failed the gate),
``retired`` (was promoted, superseded by a newer promotion), ``rolled-back`` (was promoted,
an operator rolled it back). Rollback without a target returns to the most recently retired
version — a stack: rolling back twice from v3 goes to v2, then to v1, then to the base.

``adapters`` knows nothing of Kafka: the daemon publishes the adapter-event and records it
here (``daemon/learning/promote.py``), through the ``outbox`` table (``adapters/outbox.py``)
so that a crash between the two cannot leave them disagreeing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from sqlite_utils import Database

from adapters.files import resolve_in_registry

DB_FILE = "registry.db"
LOCK_FILE = ".train.lock"
STAGING_PREFIX = ".staging-"
BASE = "base"
STATUSES = ("candidate", "promoted", "rejected", "retired", "rolled-back")
RUN_STATES = ("running", "done", "failed", "crashed")
SCHEMA_VERSION = 1
VERIFIER_EVAL_KINDS = ("eval", "sweep", "gate")
_VERSION_RE = re.compile(r"^(?P<stem>[a-z0-9][a-z0-9._-]*)-sd-v(?P<n>\d{4,})$")


class AdaptersConfig(BaseModel):
    """The adapter registry on disk."""

    model_config = {"extra": "forbid"}

    registry_dir: Path | None = Field(
        None,
        description="Directory of adapter versions; nothing outside it is ever loaded. "
        "Default: <data_dir>/adapters.",
    )

    db_path: Path | None = Field(
        None,
        description="The registry's SQLite file. Default: <registry_dir>/registry.db. Set it "
        "to the trainer's local disk where registry_dir is shared storage (SQLite's WAL is "
        "not safe on a network file system); serve and verify never open it.",
    )

    def path(self, data_dir: Path) -> Path:
        return self.registry_dir if self.registry_dir is not None else data_dir / "adapters"


class RegistryError(RuntimeError):
    """An operation the registry's rules forbid (unknown version, nothing to roll back to)."""


class RegistryBusy(RegistryError):
    """Another training run holds the registry's training lock."""


def model_stem(model_name: str) -> str:
    """``SmolLM2-135M-Instruct`` → ``smollm2-135m-instruct``: a safe prefix for version names."""
    stem = re.sub(r"[^a-z0-9._-]+", "-", Path(model_name).name.lower()).strip("-._")
    return stem or "model"


def version_number(version: str) -> int | None:
    m = _VERSION_RE.match(version)
    return int(m["n"]) if m else None


@dataclass(frozen=True)
class AdapterRecord:
    """One row of ``adapters``, with its JSON columns decoded."""

    version: str
    status: str
    parent: str | None
    base_model: str
    path: str
    sha256: str
    snapshot_id: str | None
    sample_count: int
    hyperparams: dict[str, Any]
    training: dict[str, Any]
    eval: dict[str, Any]
    decision: dict[str, Any]
    created_at: float
    updated_at: float
    promoted_at: float | None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> AdapterRecord:
        return cls(
            version=row["version"],
            status=row["status"],
            parent=row["parent"],
            base_model=row["base_model"],
            path=row["path"],
            sha256=row["sha256"],
            snapshot_id=row["snapshot_id"],
            sample_count=row["sample_count"],
            hyperparams=json.loads(row["hyperparams"] or "{}"),
            training=json.loads(row["training"] or "{}"),
            eval=json.loads(row["eval"] or "{}"),
            decision=json.loads(row["decision"] or "{}"),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            promoted_at=row["promoted_at"],
        )

    @property
    def train_loss(self) -> float | None:
        return self.training.get("final_loss")

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Registry:
    """The registry directory and its database. Cheap to open; safe across processes (WAL)."""

    def __init__(
        self,
        root: Path,
        *,
        db_path: Path | None = None,
        busy_timeout_s: float = 30.0,
        read_only: bool = False,
    ) -> None:
        """``read_only`` (for ``selfdistill status``) opens with SQLite's ``mode=ro``: it
        takes no write lock and creates nothing; the database must exist. ``db_path``: the
        database elsewhere than ``root/registry.db`` (local disk, when ``root`` is shared)."""
        self.root = Path(root)
        self.db_path = Path(db_path) if db_path is not None else self.root / DB_FILE
        self._lock = threading.RLock()
        if read_only:
            if not self.db_path.is_file():
                raise FileNotFoundError(f"no adapter registry at {self.db_path}")
            uri = self.db_path.resolve().as_uri() + "?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, check_same_thread=False)
            self.db = Database(conn, execute_plugins=False)
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.db_path, timeout=busy_timeout_s, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a promotion must survive a power cut
        self.db = Database(conn, execute_plugins=False)
        self._create_schema()

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Database]:
        with self._lock:
            self.db.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.conn.execute("COMMIT")
            except BaseException:
                self.db.conn.rollback()
                raise

    def _create_schema(self) -> None:
        with self._tx() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] > SCHEMA_VERSION:
                raise RegistryError(f"{self.db_path} was written by a newer selfdistill")
            db["adapters"].create(
                {
                    "version": str,
                    "status": str,
                    "parent": str,
                    "base_model": str,
                    "path": str,
                    "sha256": str,
                    "snapshot_id": str,
                    "sample_count": int,
                    "hyperparams": str,
                    "training": str,
                    "eval": str,
                    "decision": str,
                    "created_at": float,
                    "updated_at": float,
                    "promoted_at": float,
                },
                pk="version",
                not_null=["status", "base_model", "path", "sha256", "created_at", "updated_at"],
                if_not_exists=True,
            )
            db["runs"].create(
                {
                    "id": int,
                    "version": str,
                    "parent": str,
                    "state": str,
                    "pid": int,
                    "started_at": float,
                    "finished_at": float,
                    "snapshot_id": str,
                    "sample_count": int,
                    "error": str,
                },
                pk="id",
                not_null=["version", "state", "started_at"],
                if_not_exists=True,
            )
            db["events"].create(
                {
                    "id": int,
                    "at": float,
                    "action": str,
                    "version": str,
                    "previous": str,
                    "actor": str,
                    "reason": str,
                },
                pk="id",
                not_null=["at", "action", "version"],
                if_not_exists=True,
            )
            db["state"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
            db["outbox"].create(  # adapters/outbox.py: announcements not yet known published
                {
                    "id": int,
                    "at": float,
                    "action": str,
                    "version": str,
                    "event": str,
                    "actor": str,
                    "reason": str,
                    "state": str,
                    "done_at": float,
                },
                pk="id",
                not_null=["at", "action", "version", "event", "state"],
                if_not_exists=True,
            )
            db["evals"].create(
                {"version": str, "fingerprint": str, "metrics": str, "at": float},
                pk=("version", "fingerprint"),
                if_not_exists=True,
            )
            db["verifier_evals"].create(
                {
                    "id": int,
                    "at": float,
                    "judge": str,
                    "kind": str,
                    "fingerprint": str,
                    "report": str,
                },
                pk="id",
                not_null=["at", "judge", "kind", "fingerprint", "report"],
                if_not_exists=True,
            )
            db["verifier_evals"].create_index(["judge", "fingerprint"], if_not_exists=True)
            db["runs"].create_index(["version"], unique=True, if_not_exists=True)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # --------------------------------------------------------------- reads
    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """A read of this database (for modules that own a table in it: the outbox)."""
        with self._lock:
            return self.db.execute(sql, params).fetchall()

    def get(self, version: str) -> AdapterRecord | None:
        with self._lock:
            rows = list(self.db.query("SELECT * FROM adapters WHERE version = ?", [version]))
        return AdapterRecord.from_row(rows[0]) if rows else None

    def require(self, version: str) -> AdapterRecord:
        rec = self.get(version)
        if rec is None:
            raise RegistryError(f"no adapter {version!r} in the registry")
        return rec

    def list(self) -> list[AdapterRecord]:
        """Every adapter, oldest first."""
        with self._lock:
            rows = list(self.db.query("SELECT * FROM adapters ORDER BY created_at, rowid"))
        return [AdapterRecord.from_row(r) for r in rows]

    def active(self) -> AdapterRecord | None:
        """The promoted adapter, or None when the base model serves."""
        with self._lock:
            rows = list(self.db.query("SELECT * FROM adapters WHERE status = 'promoted'"))
        return AdapterRecord.from_row(rows[0]) if rows else None

    def active_version(self) -> str:
        rec = self.active()
        return rec.version if rec else BASE

    def pinned(self) -> str | None:
        """The version (or 'base') automatic promotion is pinned to, or None."""
        with self._lock:
            row = self.db.execute("SELECT value FROM state WHERE key = 'pinned'").fetchone()
        return row[0] if row else None

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        """Training runs, newest first."""
        with self._lock:
            return list(self.db.query("SELECT * FROM runs ORDER BY id DESC LIMIT ?", [int(limit)]))

    def events(self, version: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """Promotions, rollbacks, pins and rejections, newest first; with ``version``, those
        that made it active or replaced it."""
        where, params = ("WHERE ? IN (version, previous)", [version]) if version else ("", [])
        with self._lock:
            return list(
                self.db.query(
                    f"SELECT * FROM events {where} ORDER BY id DESC LIMIT ?", [*params, int(limit)]
                )
            )

    def last_trained(self) -> AdapterRecord | None:
        """The newest registered adapter (its snapshot marks what "new samples" are new to)."""
        adapters = self.list()
        return adapters[-1] if adapters else None

    def full_path(self, record: AdapterRecord) -> Path:
        return resolve_in_registry(self.root, record.path)

    # ---------------------------------------------------------- eval cache
    def cached_eval(self, version: str, fingerprint: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.execute(
                "SELECT metrics FROM evals WHERE version = ? AND fingerprint = ?",
                (version, fingerprint),
            ).fetchone()
        return json.loads(row[0]) if row else None

    def store_eval(self, version: str, fingerprint: str, metrics: dict[str, Any]) -> None:
        with self._tx() as db:
            db["evals"].upsert(
                {
                    "version": version,
                    "fingerprint": fingerprint,
                    "metrics": json.dumps(metrics),
                    "at": time.time(),
                },
                pk=("version", "fingerprint"),
            )

    # ------------------------------------------------- verifier measurements
    def record_verifier_eval(
        self, judge: str, kind: str, fingerprint: str, report: dict[str, Any]
    ) -> int:
        """Store one measurement of the verifier (``judge``: who judged, a version or
        'base'; ``kind``: eval (CLI), sweep (CLI --sweep) or gate (a train cycle)).
        Returns its row id; every measurement is kept, newest last."""
        if kind not in VERIFIER_EVAL_KINDS:
            raise ValueError(f"verifier eval kind must be one of {VERIFIER_EVAL_KINDS}")
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO verifier_evals (at, judge, kind, fingerprint, report) "
                "VALUES (?, ?, ?, ?, ?)",
                (time.time(), judge, kind, fingerprint, json.dumps(report)),
            )
            return int(cur.lastrowid or 0)

    def verifier_evals(self, limit: int = 20, kind: str | None = None) -> list[dict[str, Any]]:
        """Verifier measurements, newest first (``kind``: only those), with the report decoded:
        ``{id, at, judge, kind, fingerprint, report}``. Empty for a registry written before
        the table existed (opened read-only, it cannot be created)."""
        where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
        try:
            with self._lock:
                rows = list(
                    self.db.query(
                        f"SELECT * FROM verifier_evals {where} ORDER BY id DESC LIMIT ?",
                        [*params, int(limit)],
                    )
                )
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        for row in rows:
            row["report"] = json.loads(row["report"])
        return rows

    def cached_verifier_eval(self, judge: str, fingerprint: str) -> dict[str, Any] | None:
        """The newest stored report of ``judge`` with this fingerprint, or None."""
        try:
            with self._lock:
                row = self.db.execute(
                    "SELECT report FROM verifier_evals WHERE judge = ? AND fingerprint = ? "
                    "ORDER BY id DESC LIMIT 1",
                    (judge, fingerprint),
                ).fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise
        return json.loads(row[0]) if row else None

    # --------------------------------------------------------- training runs
    @contextlib.contextmanager
    def training_lock(self) -> Iterator[None]:
        """Exclusive right to train into this registry; raises RegistryBusy if taken.

        An OS file lock, so it is released when the holder dies however it dies, and a
        second scheduler (another host sharing the directory, a manual ``--once``) skips
        instead of overlapping.
        """
        fh = self.db_path.with_name(LOCK_FILE).open("a+")  # local, beside the database
        try:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RegistryBusy("another training run holds the registry") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n")
            fh.flush()
            yield
        finally:
            fh.close()  # closing releases the lock

    def next_version(self, model_name: str) -> str:
        """A version name never used before: one past every number in the rows and on disk."""
        stem = model_stem(model_name)
        numbers = [0]
        with self._lock:
            for (v,) in self.db.execute(
                "SELECT version FROM adapters UNION SELECT version FROM runs"
            ).fetchall():
                numbers.append(version_number(v) or 0)
        for p in self.root.iterdir():
            name = p.name.removeprefix(STAGING_PREFIX).split(".")[0]
            numbers.append(version_number(name) or 0)
        return f"{stem}-sd-v{max(numbers) + 1:04d}"

    def begin_run(self, version: str, parent: str | None) -> int:
        """Reserve ``version`` for a run (the reservation outlives a crash)."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO runs (version, parent, state, pid, started_at) "
                "VALUES (?, ?, 'running', ?, ?)",
                (version, parent, os.getpid(), time.time()),
            )
            return int(cur.lastrowid or 0)

    def set_run_data(self, run_id: int, snapshot_id: str, sample_count: int) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET snapshot_id = ?, sample_count = ? WHERE id = ?",
                (snapshot_id, sample_count, run_id),
            )

    def finish_run(self, run_id: int, state: str, error: str | None = None) -> None:
        if state not in RUN_STATES:
            raise ValueError(f"run state must be one of {RUN_STATES}")
        with self._tx() as db:
            db.execute(
                "UPDATE runs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
                (state, time.time(), error, run_id),
            )

    @contextlib.contextmanager
    def staging(self, version: str) -> Iterator[Path]:
        """A private directory to write ``version`` into; renamed into place only on success.

        On an exception the staging directory is removed and nothing appears under the
        version's name. A kill -9 leaves only a hidden ``.staging-*`` directory, which
        :meth:`recover` deletes.
        """
        if version_number(version) is None:
            raise RegistryError(f"{version!r} is not a version name")
        final = self.root / version
        if final.exists():
            raise RegistryError(f"{final} already exists: versions are immutable")
        tmp = self.root / f"{STAGING_PREFIX}{version}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
            _fsync_tree(tmp)
            os.rename(tmp, final)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def recover(self) -> list[str]:
        """Make the directory and the tables agree after a crash; returns what was done.

        Call only while holding :meth:`training_lock`: then no run can still be alive.
        """
        done: list[str] = []
        for p in self.root.iterdir():
            if p.name.startswith(STAGING_PREFIX):
                shutil.rmtree(p, ignore_errors=True)
                done.append(f"removed staging directory {p.name}")
        with self._tx() as db:
            registered = {r[0] for r in db.execute("SELECT version FROM adapters").fetchall()}
            for run_id, version in db.execute(
                "SELECT id, version FROM runs WHERE state = 'running'"
            ).fetchall():
                db.execute(
                    "UPDATE runs SET state = 'crashed', finished_at = ?, error = ? WHERE id = ?",
                    (time.time(), "the training process died before finishing", run_id),
                )
                done.append(f"run {run_id} ({version}) marked crashed")
            unregistered = {
                r[0]
                for r in db.execute("SELECT version FROM runs WHERE state != 'done'").fetchall()
            } - registered
        for version in sorted(unregistered):
            d = self.root / version
            if d.is_dir():
                shutil.rmtree(d)
                done.append(f"removed unregistered directory {version}")
        return done

    def register(
        self,
        version: str,
        *,
        parent: str | None,
        base_model: str,
        sha256: str,
        snapshot_id: str | None,
        sample_count: int,
        hyperparams: dict[str, Any],
        training: dict[str, Any],
    ) -> AdapterRecord:
        """Record a version whose files are in place (as a candidate)."""
        if not (self.root / version).is_dir():
            raise RegistryError(f"{version} has no directory in {self.root}")
        now = time.time()
        with self._tx() as db:
            db["adapters"].insert(
                {
                    "version": version,
                    "status": "candidate",
                    "parent": parent,
                    "base_model": base_model,
                    "path": version,
                    "sha256": sha256,
                    "snapshot_id": snapshot_id,
                    "sample_count": sample_count,
                    "hyperparams": json.dumps(hyperparams),
                    "training": json.dumps(training),
                    "eval": "{}",
                    "decision": "{}",
                    "created_at": now,
                    "updated_at": now,
                    "promoted_at": None,
                }
            )
        return self.require(version)

    def record_decision(
        self, version: str, metrics: dict[str, Any], decision: dict[str, Any], *, rejected: bool
    ) -> None:
        """Store the gate's numbers and decision; a rejected candidate becomes ``rejected``."""
        with self._tx() as db:
            self._require_row(db, version)
            db.execute(
                "UPDATE adapters SET eval = ?, decision = ?, updated_at = ?, "
                "status = CASE WHEN ? THEN 'rejected' ELSE status END WHERE version = ?",
                (json.dumps(metrics), json.dumps(decision), time.time(), int(rejected), version),
            )
            if rejected:
                self._event(db, "reject", version, None, "gate", decision.get("reason"))

    # -------------------------------------------------- promotion and rollback
    def plan_rollback(self, target: str | None = None) -> str:
        """What ``rollback [target]`` would make active (a version or 'base'), or raise."""
        current = self.active_version()
        if target is None:
            with self._lock:
                row = self.db.execute(
                    "SELECT version FROM adapters WHERE status = 'retired' "
                    "ORDER BY promoted_at DESC, rowid DESC LIMIT 1"
                ).fetchone()
            target = row[0] if row else BASE
        elif target != BASE:
            self.require(target)
        if target == current:
            raise RegistryError(f"{target} is already active")
        return target

    def promote(self, version: str, *, actor: str, reason: str | None = None) -> str:
        """Make ``version`` the active adapter; the one it replaces is retired. Returns it."""
        with self._tx() as db:
            return self.activate_in(db, version, "promote", actor, reason)

    def rollback(self, target: str, *, actor: str, reason: str | None = None) -> str:
        """Make ``target`` (a version or 'base') active; the current one becomes rolled-back."""
        with self._tx() as db:
            return self.activate_in(db, target, "rollback", actor, reason)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """One write transaction (``BEGIN IMMEDIATE``), for the outbox's compound steps."""
        with self._tx() as db:
            yield db

    def activate_in(
        self, db: Database, target: str, action: str, actor: str, reason: str | None
    ) -> str:
        """Inside the caller's transaction: the active adapter is retired (promote) or
        rolled-back (rollback), ``target`` (unless the base) becomes promoted, and the event
        is recorded. Returns what was active."""
        if action not in ("promote", "rollback"):
            raise ValueError(f"action must be promote or rollback, not {action!r}")
        if action == "promote" and target == BASE:
            raise RegistryError("the base model is not promoted: roll back to it")
        old_status = "retired" if action == "promote" else "rolled-back"
        if target != BASE:
            self._require_row(db, target)
        previous = self.active_in(db)
        if previous == target:
            raise RegistryError(f"{target} is already active")
        now = time.time()
        db.execute(
            "UPDATE adapters SET status = ?, updated_at = ? WHERE status = 'promoted'",
            (old_status, now),
        )
        if target != BASE:
            db.execute(
                "UPDATE adapters SET status = 'promoted', promoted_at = ?, updated_at = ? "
                "WHERE version = ?",
                (now, now, target),
            )
        self._event(db, action, target, previous, actor, reason)
        return previous

    def pin(self, version: str, *, actor: str, reason: str | None = None) -> None:
        """Stop automatic promotion (``version``: what it is pinned to, for the record)."""
        with self._tx() as db:
            db["state"].upsert({"key": "pinned", "value": version}, pk="key")
            self._event(db, "pin", version, None, actor, reason)

    def unpin(self, *, actor: str, reason: str | None = None) -> str | None:
        with self._tx() as db:
            row = db.execute("SELECT value FROM state WHERE key = 'pinned'").fetchone()
            db.execute("DELETE FROM state WHERE key = 'pinned'")
            if row:
                self._event(db, "unpin", row[0], None, actor, reason)
            return row[0] if row else None

    # ------------------------------------------------------------- helpers
    @staticmethod
    def active_in(db: Database) -> str:
        row = db.execute("SELECT version FROM adapters WHERE status = 'promoted'").fetchone()
        return row[0] if row else BASE

    @staticmethod
    def _require_row(db: Database, version: str) -> None:
        if db.execute("SELECT 1 FROM adapters WHERE version = ?", (version,)).fetchone() is None:
            raise RegistryError(f"no adapter {version!r} in the registry")

    @staticmethod
    def _event(
        db: Database,
        action: str,
        version: str,
        previous: str | None,
        actor: str,
        reason: str | None,
    ) -> None:
        db.execute(
            "INSERT INTO events (at, action, version, previous, actor, reason) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (time.time(), action, version, previous, actor, reason),
        )


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
