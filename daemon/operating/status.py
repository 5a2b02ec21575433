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
alerting); :func:`render_status` draws it with rich tables.
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import socket
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.table import Table

from adapters.gate import HELDOUT, LABELED
from adapters.registry import BASE, DB_FILE, AdapterRecord
from daemon.observe import Worker

if TYPE_CHECKING:
    from adapters.registry import Registry
    from daemon.config import Settings


WORKERS: tuple[Worker, ...] = ("serve", "verify", "train")
RUNS_SHOWN = 5
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
        **{
            f"worker:{w}": run(f"worker:{w}", _probe_worker, settings, w, http_timeout_s)
            for w in WORKERS
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
        **{f"worker:{w}": 3 * http_timeout_s + 1.0 for w in WORKERS},
    }
    for name, t in threads.items():
        t.join(max(0.0, started + budget[name] - time.monotonic()))
        if t.is_alive():
            slots[name] = {"error": f"no answer within {budget[name]:g}s"}

    workers = {}
    for w in WORKERS:
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
        "workers": workers,
        "collected_in_s": round(time.monotonic() - started, 2),
    }


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
    from daemon.train import open_registry

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
                f"training paused: verifier precision {_num(precision)} < floor {floor:.3f} "
                f"(measured {_when(gate['at'])})"
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
    from daemon.store import Store

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
    kafka = settings.kafka.model_copy(
        update={"connect_timeout_s": min(connect_timeout_s, settings.kafka.connect_timeout_s)}
    )
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
            out["ready"] = ready.status_code == 200 and bool(ready.json().get("ready"))
        except (httpx.HTTPError, ValueError) as exc:
            out.update(ready=False, error=_err(exc))
    out["state"] = "ready" if out["ready"] else "not ready"
    return out


# ------------------------------------------------------------------------- rendering
def render_status(data: dict[str, Any], console: Console) -> None:
    """Draw the status, most urgent question first: what serves, then what changed it."""
    stamp = (
        datetime.datetime.fromtimestamp(data["generated_at"]).strftime("%Y-%m-%d %H:%M:%S")
        if data.get("generated_at")
        else "?"
    )
    console.print(
        f"[bold]selfdistill status[/] on {data.get('host', '?')} at {stamp}  "
        f"(data_dir {data.get('data_dir')}, collected in {data.get('collected_in_s')}s)",
        highlight=False,
    )
    _render_adapter(data.get("adapter") or {}, console)
    _render_runs(data.get("runs") or [], console)
    _render_verifier(data.get("verifier") or {}, console)
    _render_store(data.get("store") or {}, console)
    _render_dead_letters(data.get("dead_letters") or {}, console)
    _render_workers(data.get("workers") or {}, console)


def _table(*columns: str, **kw: Any) -> Table:
    """A borderless table: the screen must fit 100 columns with full version names."""
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, **kw)
    for col in columns:
        table.add_column(col)
    return table


def _render_adapter(a: dict[str, Any], console: Console) -> None:
    console.print()
    if "error" in a:
        console.print(f"[bold]serving[/]: [red]registry unreadable[/]: {a['error']}")
        return
    pin = f"  [yellow](pinned to {a['pinned']}: no automatic promotion)[/]" if a["pinned"] else ""
    console.print(f"[bold]serving[/]: [bold green]{a['serving']}[/]{pin}", highlight=False)
    if not a.get("registry_present"):
        console.print(
            f"  no adapter registry yet at {a['registry']}: the base model serves", highlight=False
        )
        return
    counts = ", ".join(f"{n} {s}" for s, n in sorted(a.get("counts", {}).items()))
    console.print(f"  registry {a['registry']}: {counts or 'empty'}", highlight=False)
    cols = [(role, rec) for role, rec in (("serving", a["active"]), ("newest", a["newest"])) if rec]
    if not cols:
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, show_header=True)
    table.add_column("", style="bold", no_wrap=True)
    for role, _ in cols:
        table.add_column(
            "serving adapter" if role == "serving" else "newest candidate", overflow="fold"
        )

    def row(label: str, cell: Any) -> None:
        values = [cell(rec) for _, rec in cols]
        if any(v not in (None, "", "-") for v in values):
            table.add_row(label, *[v or "-" for v in values])

    def metric(name: str) -> Any:
        def cell(rec: dict[str, Any]) -> str:
            mine, theirs = rec["metrics"].get(name), rec["compared_metrics"].get(name)
            return _num(mine) + (f" vs {_num(theirs)}" if theirs is not None else "")

        return cell

    def gate(rec: dict[str, Any]) -> str:
        g = rec.get("gate")
        if not g:
            return "no decision recorded"
        return f"{'passed' if g.get('promote') else 'rejected'}: {g.get('reason')}"

    row("version", lambda r: r["version"])
    row("status", lambda r: r["status"])
    row("promoted", lambda r: _when(r["promoted_at"]) if r["status"] == "promoted" else None)
    row("trained", lambda r: _when(r["created_at"]))
    row("samples", lambda r: str(r["sample_count"]))
    row("train loss", lambda r: _num(r["train_loss"], 4))
    row("compared with", lambda r: r["compared_to"])
    row(LABELED, metric(LABELED))
    row(HELDOUT, metric(HELDOUT))
    row("gate", gate)

    def made_active(rec: dict[str, Any]) -> str | None:
        if rec["status"] != "promoted" or not rec.get("promoted_by"):
            return None
        why = rec.get("promote_reason")
        same = why == (rec.get("gate") or {}).get("reason")  # the gate's words, shown above
        return rec["promoted_by"] + ("" if not why or same else f": {why}")

    row("made active by", made_active)
    console.print(table)


def _render_runs(runs: list[dict[str, Any]], console: Console) -> None:
    console.print()
    if not runs:
        console.print("[bold]training runs[/]: none yet")
        return
    console.print(f"[bold]last training runs[/] (newest first, up to {RUNS_SHOWN})")
    table = _table("version", "state", "started", "took", "samples", "adapter", "loss")
    table.columns[0].no_wrap = True
    for r in runs:
        style = {"failed": "red", "crashed": "red", "running": "yellow"}.get(r["state"], "")
        table.add_row(
            r["version"],
            f"[{style}]{r['state']}[/]" if style else r["state"],
            _when(r["started_at"]),
            "-" if r["duration_s"] is None else _duration(r["duration_s"]),
            "-" if r["sample_count"] is None else str(r["sample_count"]),
            r["adapter_status"] or "-",
            _num(r["train_loss"], 4),
        )
    console.print(table)
    for r in runs:
        if r.get("error"):
            console.print(
                f"  {r['version']} {r['state']}: {_clip(r['error'], 300)}", highlight=False
            )


def _render_verifier(v: dict[str, Any], console: Console) -> None:
    console.print()
    if "error" in v:
        console.print(f"[bold]verifier[/]: [red]unreadable[/]: {v['error']}", highlight=False)
        return
    latest = v.get("latest")
    if latest is None:
        console.print(
            "[bold]verifier[/]: never measured against labeled truth "
            "(run `selfdistill eval verifier`, or set train.verifier.measure)"
        )
        _render_sweep(v.get("sweep"), console)
        return
    console.print(
        f"[bold]verifier[/] (judge {latest['judge']}, {latest['kind']} {_when(latest['at'])}): "
        f"{latest['items']} labeled items x {latest['n']} candidates, v={latest['votes']}; "
        f"base rate {_pct(latest['base_rate'])} correct",
        highlight=False,
    )
    table = _table("stage", "reached", "passed", "precision", "recall", "AUC")
    for col in table.columns[1:]:
        col.justify = "right"
    table.add_row(
        "[bold]cascade[/]",
        str(latest["candidates"]),
        str(latest["accepted"]),
        _num(latest["precision"]),
        _num(latest["recall"]),
        _num(latest["auc"]),
    )
    for st in latest["stages"]:
        if not st["reached"]:  # configured, but no candidate met it (another domain's list)
            continue
        table.add_row(
            st["stage"],
            str(st["reached"]),
            str(st["passed"]),
            _num(st["precision"]),
            _num(st["recall"]),
            _num(st["auc"]),
        )
    console.print(table)
    if v.get("paused"):
        console.print(f"  [red]{v['reason']}[/]", highlight=False)
    elif v.get("floor") is not None:
        console.print(f"  training proceeds: precision floor {v['floor']:.3f}", highlight=False)
    _render_sweep(v.get("sweep"), console)


def _render_sweep(sweep: dict[str, Any] | None, console: Console) -> None:
    if not sweep:
        return
    cells = ", ".join(
        f"n{p['n']}v{p['v']} {_num(p['precision'], 2)} @{_num(p['judge_calls_per_item'], 1)}"
        for p in sweep["points"]
    )
    console.print(
        f"  sweep {_when(sweep['at'])} (precision @ judge calls per item): {cells}",
        highlight=False,
    )


def _render_store(s: dict[str, Any], console: Console) -> None:
    console.print()
    if "error" in s:
        console.print(f"[bold]store[/]: [red]unreadable[/]: {s['error']}", highlight=False)
        return
    if not s.get("present"):
        console.print(f"[bold]store[/]: {s.get('message')} ({s.get('path')})", highlight=False)
        return
    size = s["size_bytes"]
    parts = " + ".join(f"{k} {_bytes(v)}" for k, v in size.items() if k != "total")
    c = s["counts"]
    console.print(f"[bold]store[/] {s['path']}", highlight=False)
    console.print(
        f"  {_bytes(size['total'])} ({parts}); {c['prompts']} prompts, {c['candidates']} "
        f"candidates, {c['votes']} votes, {c['accepted']} accepted "
        f"({c['accepted_train']} train / {c['accepted_heldout']} held out)",
        highlight=False,
    )
    f, acc = s["funnel"], s["acceptance"]
    console.print()
    console.print("[bold]cascade funnel[/] (judged candidates → accepted)")
    stage_cols = [f"{name} ok" for name in f["stages"]]
    table = _table("judged", "static ok", *stage_cols, "accepted", "acceptance", "prompts")
    for col in table.columns:
        col.justify = "right"
    table.add_row(
        str(f["judged"]),
        str(f["static_ok"]),
        *[str(v["passed"] or 0) for v in f["stages"].values()],
        str(f["accepted"]),
        _pct(acc["rate"]),
        f"{acc['prompts_with_accepted']}/{acc['prompts']} ({_pct(acc['prompt_rate'])})",
    )
    console.print(table)
    console.print(
        f"  acceptance rate {_pct(acc['rate'])} of judged candidates; "
        f"{_pct(acc['prompt_rate'])} of prompts have an accepted sample "
        f"(not judged: {f['skipped']} skipped, {f['superseded']} superseded)",
        highlight=False,
    )


def _render_dead_letters(d: dict[str, Any], console: Console) -> None:
    console.print()
    if not d.get("reachable"):
        console.print(
            f"[bold]dead letters[/]: [red]broker unreachable[/] at "
            f"{d.get('bootstrap_servers', '?')}: {d.get('error')}",
            highlight=False,
        )
        return
    note = "" if d.get("complete") else " [yellow](read timed out: counts are lower bounds)[/]"
    console.print(f"[bold]dead letters[/]: {d.get('total')} in all{note}", highlight=False)
    table = _table("topic", "count", "last", "reasons")
    table.columns[0].no_wrap = True
    table.columns[3].overflow = "fold"
    for name, t in d.get("topics", {}).items():
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(t["reasons"].items(), key=_desc))
        table.add_row(
            name,
            str(t["count"]) if t["exists"] else "no topic",
            _when(t["last_at"]),
            reasons or "-",
            style="red" if t["count"] else None,
        )
    console.print(table)
    if d.get("error"):
        console.print(f"  [red]error[/]: {d['error']}", highlight=False)


def _render_workers(w: dict[str, Any], console: Console) -> None:
    console.print()
    console.print("[bold]workers[/] (/healthz, /readyz)")
    table = _table("worker", "state", "uptime", "endpoint", "note")
    table.columns[4].overflow = "fold"
    colour = {"ready": "green", "not ready": "yellow", "unknown": "yellow"}
    for name, h in w.items():
        state = h.get("state", "down")
        up = h.get("uptime_s")
        table.add_row(
            name,
            f"[{colour.get(state, 'red')}]{state}[/]",
            "-" if up is None else _duration(up),
            h.get("url", "-"),
            _clip(h.get("error") or "", 120),
        )
    console.print(table)


# ------------------------------------------------------------------ formatting
def _desc(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{seconds:.0f}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d"


def _when(ts: float | None) -> str:
    """Clock time and how long ago: at 3 a.m., "2h05m ago" is what matters."""
    if not ts:
        return "-"
    at = datetime.datetime.fromtimestamp(ts)
    fmt = "%H:%M:%S" if at.date() == datetime.date.today() else "%Y-%m-%d %H:%M"
    return f"{at.strftime(fmt)} ({_duration(max(0.0, time.time() - ts))} ago)"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


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


__all__ = ["collect_status", "dlq_topics", "render_status", "run_status"]
