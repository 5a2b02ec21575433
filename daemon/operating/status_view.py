"""How ``selfdistill status`` looks: the data ``status.collect_status`` gathered, drawn with
rich tables, most urgent question first (what serves, then what changed it).

Every section draws from plain data and copes with a part that is missing or reported an
error: the screen must come up when the system is half broken, which is when it is read.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from adapters.gate import HELDOUT, LABELED

RUNS_SHOWN = 5  # training runs on the screen (and collected)


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
    _render_replicas(
        data.get("replicas") or {}, (data.get("adapter") or {}).get("serving"), console
    )
    _render_runs(data.get("runs") or [], console)
    _render_verifier(data.get("verifier") or {}, console)
    _render_store(data.get("store") or {}, console)
    _render_store_writer(data.get("store_writer") or {}, console)
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
    for p in a.get("pending") or []:
        console.print(
            f"  [red]unfinished {p['action']} of {p['version']}[/] (since {show_when(p['at'])}): "
            "run `selfdistill adapters reconcile`",
            highlight=False,
        )
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
            return show_num(mine) + (f" vs {show_num(theirs)}" if theirs is not None else "")

        return cell

    def gate(rec: dict[str, Any]) -> str:
        g = rec.get("gate")
        if not g:
            return "no decision recorded"
        return f"{'passed' if g.get('promote') else 'rejected'}: {g.get('reason')}"

    def interval(rec: dict[str, Any]) -> str | None:
        checks = (rec.get("gate") or {}).get("checks") or []
        c = checks[0] if checks else {}
        if c.get("low") is None:
            return None
        return (
            f"{c['metric']} delta {c['delta']:+.3f}, {c['level']:.0%} interval "
            f"[{c['low']:+.3f}, {c['high']:+.3f}] on {c['items']} paired items"
        )

    row("version", lambda r: r["version"])
    row("status", lambda r: r["status"])
    row("promoted", lambda r: show_when(r["promoted_at"]) if r["status"] == "promoted" else None)
    row("trained", lambda r: show_when(r["created_at"]))
    row("samples", lambda r: str(r["sample_count"]))
    row("train loss", lambda r: show_num(r["train_loss"], 4))
    row("compared with", lambda r: r["compared_to"])
    row(LABELED, metric(LABELED))
    row(HELDOUT, metric(HELDOUT))
    row("gate", gate)
    row("evidence", interval)

    def made_active(rec: dict[str, Any]) -> str | None:
        if rec["status"] != "promoted" or not rec.get("promoted_by"):
            return None
        why = rec.get("promote_reason")
        same = why == (rec.get("gate") or {}).get("reason")  # the gate's words, shown above
        return rec["promoted_by"] + ("" if not why or same else f": {why}")

    row("made active by", made_active)
    console.print(table)


def _render_replicas(r: dict[str, Any], should: str | None, console: Console) -> None:
    """What the replicas say they serve, against what the registry says should serve."""
    if "error" in r:
        console.print(f"  replicas: [red]unknown[/] ({r['error']})", highlight=False)
        return
    replicas = r.get("replicas") or []
    live = [x for x in replicas if x["live"]]
    on_it = [x for x in live if x["serving"] == should]
    colour = "green" if live and len(on_it) == len(live) else "red" if live else "yellow"
    console.print(
        f"  replicas: [{colour}]{len(on_it)} of {len(live)} live serve {should}[/]"
        + ("" if live else " (no live replica reports on adapter-status)"),
        highlight=False,
    )
    if not replicas:
        return
    table = _table("replica", "serving", "last swap", "age", "state")
    for x in replicas:
        swap = "-"
        if x.get("requested"):
            if x["ok"]:
                outcome = "ok"
            elif x.get("retrying"):
                outcome = f"retrying (attempt {x.get('attempts', 1)}): {x.get('error')}"
            else:
                outcome = f"refused: {x.get('error')}"
            swap = f"{x['requested']}: {outcome}"
        state = "live" if x["live"] else x["state"] if x["state"] == "stopped" else "silent"
        table.add_row(
            x["replica"], x["serving"], _clip(swap, 60), _duration(x["age_s"]) + " ago", state
        )
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
            show_when(r["started_at"]),
            "-" if r["duration_s"] is None else _duration(r["duration_s"]),
            "-" if r["sample_count"] is None else str(r["sample_count"]),
            r["adapter_status"] or "-",
            show_num(r["train_loss"], 4),
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
        f"[bold]verifier[/] (judge {latest['judge']}, {latest['kind']} {show_when(latest['at'])}): "
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
        show_num(latest["precision"]),
        show_num(latest["recall"]),
        show_num(latest["auc"]),
    )
    for st in latest["stages"]:
        if not st["reached"]:  # configured, but no candidate met it (another domain's list)
            continue
        table.add_row(
            st["stage"],
            str(st["reached"]),
            str(st["passed"]),
            show_num(st["precision"]),
            show_num(st["recall"]),
            show_num(st["auc"]),
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
        f"n{p['n']}v{p['v']} {show_num(p['precision'], 2)} @{show_num(p['judge_calls_per_item'], 1)}"
        for p in sweep["points"]
    )
    console.print(
        f"  sweep {show_when(sweep['at'])} (precision @ judge calls per item): {cells}",
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


def _render_store_writer(w: dict[str, Any], console: Console) -> None:
    """One line: how far the store is behind verdicts, and when it last took a batch."""
    if not w:
        return
    if "error" in w:
        console.print(f"  store writer: [yellow]lag unknown[/] ({w['error']})", highlight=False)
        return
    lag = w.get("lag")
    where = "inside train" if w.get("runs_in") == "train" else "selfdistill store"
    if lag is None:
        text = f"[yellow]{w.get('topic')} not read[/]"
    elif lag == 0:
        text = f"[green]up to date[/] with {w.get('topic')}"
    else:
        more = "" if w.get("lag_complete", True) else " or more"
        text = f"[yellow]{lag}{more} verdicts behind[/] {w.get('topic')}"
    console.print(
        f"  store writer ({where}): {text}; last write {show_when(w.get('last_write_at'))}",
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
            show_when(t["last_at"]),
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
            _clip(h.get("error") or "", 400),  # folded: the whole cause is the point
        )
    console.print(table)


# ------------------------------------------------------------------ formatting
def _desc(item: tuple[str, int]) -> tuple[int, str]:
    return (-item[1], item[0])


def show_num(x: float | None, digits: int = 3) -> str:
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


def show_when(ts: float | None) -> str:
    """Clock time and how long ago: at 3 a.m., "2h05m ago" is what matters."""
    if not ts:
        return "-"
    at = datetime.datetime.fromtimestamp(ts)
    fmt = "%H:%M:%S" if at.date() == datetime.date.today() else "%Y-%m-%d %H:%M"
    return f"{at.strftime(fmt)} ({_duration(max(0.0, time.time() - ts))} ago)"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
