"""``selfdistill status``: the one screen an operator reads at 3 a.m.

What serves and why (the active adapter, its eval numbers and the gate's reason), what the
last training runs did, whether the verifier is any good (its last measured precision against
labeled truth, per stage, and whether training is paused below the floor), how the cascade's
funnel looks and what share of candidates it accepts, how big the store is, how many messages
were dead-lettered, and whether each worker answers its health probes.

It is built to answer even when parts of the system are broken, because that is when it is
run: every section is collected on its own and a failure becomes a line in that section,
never a traceback; Kafka and the workers' endpoints are asked with short timeouts and in
parallel with the local reads, so an unreachable broker costs seconds, not the default
minute of retries. It changes nothing: the store is opened read-only, nothing joins a
consumer group or commits an offset, and a registry or store that does not exist yet is
reported as missing, not created.

:func:`collect_status` returns plain JSON-ready data (``--json`` prints it for scripts and
alerting); ``daemon/operating/status_view.py`` draws it with rich tables.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from rich.console import Console

from adapters import outbox
from adapters.gate import HELDOUT, LABELED
from adapters.registry import BASE, DB_FILE, AdapterRecord
from daemon.operating.observe import Worker
from daemon.operating.status_view import RUNS_SHOWN, render_status, show_num, show_when

if TYPE_CHECKING:
    from adapters.registry import Registry
    from daemon.operating.config import Settings
    from streams.connection import KafkaSettings


WORKERS: tuple[Worker, ...] = ("serve", "verify", "train")
KAFKA_CONNECT_TIMEOUT_S = 3.0  # the workers' 60 s default is for start-up, not for a glance
DLQ_READ_TIMEOUT_S = 10.0  # reading every dead letter stops here; the count is then a floor
DLQ_IDLE_S = 1.0  # nothing new for this long after the positions are known: the end
HTTP_TIMEOUT_S = 1.0


# ---------------------------------------------------------------------- collection
def collect_status(
    settings: Settings,
    *,
    kafka_connect_timeout_s: float = KAFKA_CONNECT_TIMEOUT_S,
    dlq_timeout_s: float = DLQ_READ_TIMEOUT_S,
    http_timeout_s: float = HTTP_TIMEOUT_S,
) -> dict[str, Any]:
    """Everything the status screen shows, as JSON-serialisable data.

    The network sections (dead letters, worker health) run on daemon threads while the
    local files are read; a thread still stuck past its budget is abandoned and its section
    says so, so the call returns within about ``kafka_connect_timeout_s + dlq_timeout_s``.
    """
    started = time.monotonic()
    slots: dict[str, Any] = {}
    # The store writer has its own endpoint only when it runs alone (`selfdistill store`).
    names: tuple[Worker, ...] = WORKERS + (() if settings.store.writer_in_train else ("store",))

    def run(name: str, fn: Any, *args: Any) -> threading.Thread:
        def target() -> None:
            try:
                slots[name] = fn(*args)
            except Exception as exc:  # a section fails alone; the screen still renders
                slots[name] = {"error": _err(exc)}

        t = threading.Thread(target=target, name=f"status-{name}", daemon=True)
        t.start()
        return t

    threads = {
        "dead_letters": run(
            "dead_letters", _dead_letters, settings, kafka_connect_timeout_s, dlq_timeout_s
        ),
        "replicas": run("replicas", _replicas, settings, kafka_connect_timeout_s, dlq_timeout_s),
        "store_writer": run(
            "store_writer", _store_writer, settings, kafka_connect_timeout_s, dlq_timeout_s
        ),
        **{
            f"worker:{w}": run(f"worker:{w}", _probe_worker, settings, w, http_timeout_s)
            for w in names
        },
    }
    try:
        adapter, runs, measured = _registry_sections(settings)
    except Exception as exc:
        adapter, runs, measured = {"error": _err(exc)}, [], None
    try:
        verifier = (
            adapter if measured is None else _verifier_section(settings, measured)
        )  # the registry's error, when it could not be read
    except Exception as exc:
        verifier = {"error": _err(exc)}
    try:
        store = _store_section(settings)
    except Exception as exc:
        store = {"error": _err(exc)}

    budget = {
        "dead_letters": kafka_connect_timeout_s + dlq_timeout_s + 5.0,
        "replicas": kafka_connect_timeout_s + dlq_timeout_s + 5.0,
        "store_writer": kafka_connect_timeout_s + dlq_timeout_s + 5.0,
        **{f"worker:{w}": 3 * http_timeout_s + 1.0 for w in names},
    }
    for name, t in threads.items():
        t.join(max(0.0, started + budget[name] - time.monotonic()))
        if t.is_alive():
            slots[name] = {"error": f"no answer within {budget[name]:g}s"}

    workers = {}
    for w in names:
        entry = slots[f"worker:{w}"]
        if "state" not in entry:  # the probe itself failed or timed out
            entry = {"state": "down", "up": False, "ready": None, **entry}
        workers[w] = entry
    dead = slots["dead_letters"]
    if "reachable" not in dead:  # the reader itself failed or timed out
        dead = {
            "bootstrap_servers": settings.kafka.bootstrap_servers,
            "reachable": False,
            "complete": False,
            "total": None,
            "topics": {},
            **dead,
        }
    return {
        "generated_at": time.time(),
        "host": socket.gethostname(),
        "data_dir": str(settings.data_dir),
        "adapter": adapter,
        "runs": runs,
        "verifier": verifier,
        "store": store,
        "dead_letters": dead,
        "replicas": slots["replicas"],
        "store_writer": slots["store_writer"],
        "workers": workers,
        "collected_in_s": round(time.monotonic() - started, 2),
    }


def _glance(settings: Settings, connect_timeout_s: float) -> KafkaSettings:
    """The cluster settings for a status read: a glance gives up sooner than a worker."""
    return settings.kafka.model_copy(
        update={"connect_timeout_s": min(connect_timeout_s, settings.kafka.connect_timeout_s)}
    )


def _replicas(settings: Settings, connect_timeout_s: float, timeout_s: float) -> dict[str, Any]:
    """What each replica says it serves (``adapter-status``), newest record per replica."""
    from streams.adapter_status import fleet_summary, read_statuses

    replicas = read_statuses(
        _glance(settings, connect_timeout_s), settings.topics.adapter_status, timeout_s
    )
    return {
        "replicas": [
            {**r.status.model_dump(), "age_s": round(r.age_s, 1), "live": r.live} for r in replicas
        ],
        "by_version": fleet_summary(replicas),
    }


def _store_writer(settings: Settings, connect_timeout_s: float, timeout_s: float) -> dict[str, Any]:
    """How far the store is behind ``verdicts``: the committed verdicts past its saved
    positions (what the writer has still to apply)."""
    from daemon.verifying.store import Store
    from streams.replay import records_after

    topic = settings.topics.verdicts
    path = settings.store.path_in(settings.data_dir)
    out: dict[str, Any] = {
        "topic": topic,
        "runs_in": "train" if settings.store.writer_in_train else "store",
    }
    positions: dict[int, int] = {}
    if path.is_file():
        with Store.open(settings.store, settings.data_dir, read_only=True) as store:
            positions = store.positions(topic)
            out["last_write_at"] = store.last_write(topic)
    lag, complete = records_after(
        _glance(settings, connect_timeout_s), topic, positions, "status-verdicts", timeout_s
    )
    out["positions"] = positions
    out["lag"] = lag
    out["lag_complete"] = complete  # False: a floor, the backlog was longer than the glance
    return out


def _err(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ------------------------------------------------------------------ adapter and runs
def _registry_sections(
    settings: Settings,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The adapter section, the last training runs and the verifier's newest measurements,
    from one read of the registry.

    A registry that was never created means the base model serves and nothing was
    trained; it is not created here (opening a :class:`Registry` would).
    """
    root = settings.adapters.path(settings.data_dir)
    if not (root / DB_FILE).is_file():
        adapter = {
            "registry": str(root),
            "registry_present": False,
            "serving": BASE,
            "pinned": None,
            "active": None,
            "newest": None,
            "counts": {},
        }
        return adapter, [], []
    from daemon.learning.settings import open_registry

    with open_registry(settings, read_only=True) as reg:
        active = reg.active()
        newest = reg.last_trained()
        records = reg.list()
        adapter = {
            "registry": str(root),
            "registry_present": True,
            "serving": active.version if active else BASE,
            "pinned": reg.pinned(),
            "active": _adapter(reg, active) if active else None,
            "newest": (
                _adapter(reg, newest)
                if newest is not None and (active is None or newest.version != active.version)
                else None
            ),
            "counts": dict(Counter(r.status for r in records)),
            "pending": [
                {"action": i.action, "version": i.version, "at": i.at, "actor": i.actor}
                for i in outbox.pending(reg)
            ],
        }
        by_version = {r.version: r for r in records}
        runs = []
        for run in reg.runs(limit=RUNS_SHOWN):
            rec = by_version.get(run["version"])
            finished = run.get("finished_at")
            runs.append(
                {
                    "id": run["id"],
                    "version": run["version"],
                    "state": run["state"],
                    "started_at": run["started_at"],
                    "finished_at": finished,
                    "duration_s": round(finished - run["started_at"], 1) if finished else None,
                    "sample_count": run.get("sample_count"),
                    "error": run.get("error"),
                    "adapter_status": rec.status if rec else None,
                    "train_loss": rec.train_loss if rec else None,
                }
            )
        measured = reg.verifier_evals(limit=20)
    return adapter, runs, measured


def _adapter(reg: Registry, rec: AdapterRecord) -> dict[str, Any]:
    """One adapter as the operator needs it: numbers, the gate's verdict, who promoted it."""
    cand = rec.eval.get("candidate", {})
    against = rec.eval.get("active", {})
    decision = rec.decision
    made_active = next(
        (
            e
            for e in reg.events(rec.version, limit=20)
            if e["version"] == rec.version and e["action"] in ("promote", "rollback")
        ),
        None,
    )
    return {
        "version": rec.version,
        "status": rec.status,
        "parent": rec.parent,
        "created_at": rec.created_at,
        "promoted_at": rec.promoted_at,
        "promoted_by": made_active["actor"] if made_active else None,
        "promote_reason": made_active["reason"] if made_active else None,
        "sample_count": rec.sample_count,
        "train_loss": rec.train_loss,
        "metrics": {
            LABELED: cand.get("metrics", {}).get(LABELED),
            HELDOUT: cand.get("metrics", {}).get(HELDOUT),
        },
        "compared_to": decision.get("against"),
        "compared_metrics": {
            LABELED: against.get("metrics", {}).get(LABELED),
            HELDOUT: against.get("metrics", {}).get(HELDOUT),
        },
        "gate": (
            {
                "promote": decision.get("promote"),
                "reason": decision.get("reason"),
                "pinned": decision.get("pinned"),
                "checks": decision.get("checks", []),
                "resolution": decision.get("resolution"),
            }
            if decision
            else None
        ),
    }


# ------------------------------------------------------------------------- the store
_VERIFIER_FIELDS = (
    "judge",
    "adapter",
    "items",
    "candidates",
    "correct",
    "base_rate",
    "accepted",
    "accepted_correct",
    "precision",
    "recall",
    "auc",
    "judge_calls",
    "calls_per_candidate",
    "n",
    "votes",
    "heldout",
)


def _verifier_section(settings: Settings, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The verifier's newest measurement against labeled truth, and whether it pauses training.

    ``rows``: the registry's verifier measurements, newest first: ``selfdistill eval
    verifier`` (kind ``eval``), the train worker's per-cycle check (``gate``) and ``--sweep``.
    """
    floor = settings.train.verifier.floor
    out: dict[str, Any] = {"floor": floor, "latest": None, "sweep": None, "paused": False}
    latest = next((r for r in rows if r["kind"] in ("eval", "gate")), None)
    if latest is not None:
        rep = latest["report"]
        out["latest"] = {
            "kind": latest["kind"],
            "at": latest["at"],
            **{k: rep.get(k) for k in _VERIFIER_FIELDS},
            "stages": [
                {k: st.get(k) for k in ("stage", "reached", "passed", "precision", "recall", "auc")}
                for st in rep.get("stages", [])
            ],
        }
    gate = next((r for r in rows if r["kind"] == "gate"), None)
    if floor is not None and gate is not None:
        precision = gate["report"].get("precision")
        if precision is None or precision < floor:
            out["paused"] = True
            out["reason"] = (
                f"training paused: verifier precision {show_num(precision)} < floor {floor:.3f} "
                f"(measured {show_when(gate['at'])})"
            )
    sweep = next((r for r in rows if r["kind"] == "sweep"), None)
    if sweep is not None:
        out["sweep"] = {
            "at": sweep["at"],
            "points": [
                {k: p.get(k) for k in ("n", "v", "coverage", "precision", "judge_calls_per_item")}
                for p in sweep["report"].get("points", [])
            ],
        }
    return out


def _store_section(settings: Settings) -> dict[str, Any]:
    """Counts, the cascade funnel, acceptance rates and file sizes of the sample store."""
    from daemon.verifying.store import Store

    path = settings.store.path_in(settings.data_dir)
    out: dict[str, Any] = {"path": str(path), "present": path.is_file()}
    if not path.is_file():
        out["message"] = "no store yet (has verify run?)"
        return out
    sizes = {
        kind: p.stat().st_size
        for kind, p in (
            ("db", path),
            ("wal", path.with_name(path.name + "-wal")),
            ("shm", path.with_name(path.name + "-shm")),
        )
        if p.is_file()
    }
    out["size_bytes"] = {**sizes, "total": sum(sizes.values())}
    with Store.open(settings.store, settings.data_dir, read_only=True) as store:
        counts = store.counts()
        funnel = store.stage_funnel()
    judged = funnel["candidates"] - funnel["skipped"] - funnel["superseded"]
    out["counts"] = counts
    out["funnel"] = {**funnel, "judged": judged, "static_ok": judged - funnel["static"]}
    out["acceptance"] = {
        "accepted": funnel["accepted"],
        "judged": judged,
        "rate": _rate(funnel["accepted"], judged),
        "prompts": funnel["prompts"],
        "prompts_with_accepted": funnel["prompts_with_accepted"],
        "prompt_rate": _rate(funnel["prompts_with_accepted"], funnel["prompts"]),
    }
    return out


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den > 0 else None


# ---------------------------------------------------------------------- dead letters
def dlq_topics(settings: Settings) -> list[str]:
    """Every dead-letter topic the daemon may write (one per topic it reads or writes)."""
    t = settings.topics
    return [t.dlq(name) for name in (*t.data_topics(), t.adapter_events)]


def _dead_letters(
    settings: Settings, connect_timeout_s: float, total_timeout_s: float
) -> dict[str, Any]:
    """Count the dead letters on each DLQ topic by reading them from the beginning.

    Not from ``end_offsets``: the embedded broker answers ListOffsets wrongly, and on a
    real cluster an end offset also counts aborted transactional records. The read stops
    after ``DLQ_IDLE_S`` without new records, or at ``total_timeout_s`` (then ``complete``
    is false and each count is a lower bound). No consumer group, nothing committed, and
    no topic auto-created by asking for it.
    """
    from kafka import KafkaConsumer, TopicPartition

    from streams.connection import connect
    from streams.deadletter import DeadLetter

    names = dlq_topics(settings)
    out: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap_servers,
        "reachable": False,
        "complete": False,
        "error": None,
        "total": None,
        "topics": {},
    }
    kafka = _glance(settings, connect_timeout_s)
    kw = kafka.reader_kwargs("status")
    kw["allow_auto_create_topics"] = False
    quiet = logging.getLogger("kafka")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # an unreachable broker is reported once, below
    try:
        try:
            consumer = connect(lambda: KafkaConsumer(**kw), kafka, "status reader")
        except Exception as exc:
            out["error"] = _err(exc)
            return out
        try:
            existing = consumer.topics()
            out["reachable"] = True
            tps = []
            for name in names:
                parts = consumer.partitions_for_topic(name) if name in existing else None
                out["topics"][name] = {
                    "exists": bool(parts),
                    "count": 0,
                    "reasons": {},
                    "last_at": None,
                }
                tps += [TopicPartition(name, p) for p in sorted(parts or ())]
            deadline = time.monotonic() + total_timeout_s
            complete = True
            if tps:
                consumer.assign(tps)
                consumer.seek_to_beginning(*tps)
                for tp in tps:  # resolve the start now, so the idle clock times data only
                    consumer.position(tp, timeout_ms=int(total_timeout_s * 1000))
                last = time.monotonic()
                while time.monotonic() - last < DLQ_IDLE_S:
                    if time.monotonic() >= deadline:
                        complete = False
                        break
                    polled = consumer.poll(timeout_ms=200)
                    for records in polled.values():
                        for r in records:
                            entry = out["topics"][r.topic]
                            entry["count"] += 1
                            reason = DeadLetter.from_record(r.headers, r.key, r.value).reason
                            reasons = entry["reasons"]
                            reasons[reason or "?"] = reasons.get(reason or "?", 0) + 1
                            at = r.timestamp / 1000 if r.timestamp and r.timestamp > 0 else None
                            if at is not None and (entry["last_at"] or 0) < at:
                                entry["last_at"] = at
                            last = time.monotonic()
            out["complete"] = complete
            out["total"] = sum(e["count"] for e in out["topics"].values())
        finally:
            consumer.close(autocommit=False)
    except Exception as exc:
        out["error"] = _err(exc)
    finally:
        quiet.setLevel(level)
    return out


# ------------------------------------------------------------------ workers' health
def _probe_host(host: str) -> str:
    """Where to reach an endpoint bound to ``host`` from this machine."""
    if host in ("0.0.0.0", "", "*"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _probe_worker(settings: Settings, worker: Worker, timeout_s: float) -> dict[str, Any]:
    """Ask a worker's /healthz (alive?) and /readyz (doing its job?)."""
    import httpx

    cfg = settings.metrics
    url = f"http://{_probe_host(cfg.host)}:{cfg.port(worker)}"
    out: dict[str, Any] = {"url": url, "state": "down", "up": False, "ready": None}
    if not cfg.enabled:
        out.update(state="unknown", error="metrics.enabled = false: no endpoints to ask")
        return out
    # trust_env=False: an operator's HTTP(S)_PROXY must not route a loopback probe away.
    with httpx.Client(timeout=timeout_s, trust_env=False) as client:
        try:
            health = client.get(f"{url}/healthz")
        except httpx.HTTPError as exc:
            out["error"] = _err(exc)
            return out
        if health.status_code != 200:
            out.update(state="unhealthy", error=f"/healthz answered {health.status_code}")
            return out
        try:
            body = health.json()
        except ValueError:
            body = {}
        out.update(up=True, uptime_s=body.get("uptime_s"), reported_worker=body.get("worker"))
        if body.get("worker") not in (None, worker):
            out["error"] = f"port {cfg.port(worker)} answers as {body.get('worker')!r}"
        try:
            ready = client.get(f"{url}/readyz")
            answer = ready.json()
            out["ready"] = ready.status_code == 200 and bool(answer.get("ready"))
            # What the worker waits on (its engine) or refuses to judge (the sandbox fails
            # closed) is the note to see.
            notes = []
            if waiting := answer.get("waiting_on"):
                out["waiting_on"] = waiting
                notes.append(f"waiting: {waiting}")
            if unavailable := answer.get("unavailable"):
                out["unavailable"] = unavailable
                notes += [
                    f"{stage} stage unavailable: {why.get('detail', '?')}"
                    for stage, why in unavailable.items()
                ]
            if notes:
                out["error"] = "; ".join(notes)
        except (httpx.HTTPError, ValueError) as exc:
            out.update(ready=False, error=_err(exc))
    out["state"] = "ready" if out["ready"] else "not ready"
    return out


# ------------------------------------------------------------------------ entry
def run_status(settings: Settings, *, as_json: bool = False) -> int:
    """``selfdistill status``: print the screen (or ``--json``); 0 once it is printed.

    Missing parts (no store, no registry, a worker down, the broker unreachable) are
    shown, not turned into an exit code: the command answers "what is the state", and a
    script that wants to alert on a part reads it from ``--json``.
    """
    data = collect_status(settings)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    width = shutil.get_terminal_size((100, 40)).columns
    console = Console(width=max(100, width))
    render_status(data, console)
    return 0


__all__ = ["collect_status", "dlq_topics", "run_status"]
