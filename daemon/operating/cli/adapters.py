"""`selfdistill adapters ...`: the registry, and the operator's levers (promote, roll back, pin)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from daemon.operating.cli.app import adapters_app, err, fmt_num, print_cycle, settings

if TYPE_CHECKING:
    from adapters.registry import Registry
    from daemon.operating.config import Settings


# --------------------------------------------------------------------- adapters
def _registry():  # type: ignore[no-untyped-def]
    from daemon.learning.settings import open_registry

    return open_registry(settings())


@adapters_app.command("list")
def adapters_list() -> None:
    """Every adapter version: the name model servers know it by, status, data, loss, gate
    numbers, and the live replicas that serve it (from adapter-status). `*` marks what the
    registry says serves."""
    from rich.table import Table

    from adapters.files import served_name
    from adapters.gate import HELDOUT, LABELED

    s = settings()
    with _registry() as reg:
        records, pinned, active = reg.list(), reg.pinned(), reg.active_version()
    fleet, fleet_note = _fleet(s)
    title = f"serving: {active}" + (f" (pinned: {pinned})" if pinned else "") + fleet_note
    columns = (
        "version",
        "served as",
        "status",
        "replicas",
        "parent",
        "samples",
        "loss",
        LABELED,
        HELDOUT,
    )
    rows = []
    if active == "base" or "base" in fleet:  # the base row only when something serves it
        serving = active == "base"
        rows.append(
            (
                ("* " if serving else "  ") + "base",
                "-",
                "promoted" if serving else "-",
                _replicas_cell(fleet.get("base")),
                *["-"] * 5,
            )
        )
    for r in records:
        metrics = r.eval.get("candidate", {}).get("metrics", {})
        rows.append(
            (
                ("* " if r.status == "promoted" else "  ") + r.version,
                served_name(r.version, r.sha256),
                r.status,
                _replicas_cell(fleet.get(r.version)),
                r.parent or "-",
                str(r.sample_count),
                "-" if r.train_loss is None else f"{r.train_loss:.4f}",
                fmt_num(metrics.get(LABELED)),
                fmt_num(metrics.get(HELDOUT)),
            )
        )
    if not sys.stdout.isatty():  # piped: one tab-separated line per adapter, for scripts
        typer.echo(title)
        for row in [columns, *rows]:
            typer.echo("\t".join(row))
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def _fleet(s) -> tuple[dict[str, dict[str, list[str]]], str]:  # type: ignore[no-untyped-def]
    """Per version, the live replicas serving and refusing it; a note when unknown."""
    from streams.adapter_status import fleet_summary, read_statuses

    try:
        replicas = read_statuses(s.kafka, s.topics.adapter_status, timeout_s=10)
    except Exception as exc:
        return {}, f" (replicas unknown: {type(exc).__name__})"
    live = sum(r.live for r in replicas)
    return fleet_summary(replicas), f"; {live} live replica(s)"


def _replicas_cell(entry: dict[str, list[str]] | None) -> str:
    if not entry:
        return "-"
    parts = []
    if entry["serving"]:
        parts.append(f"{len(entry['serving'])} serving")
    if entry["refused"]:
        parts.append(f"refused by {', '.join(entry['refused'])}")
    if entry.get("retrying"):
        parts.append(f"retrying on {', '.join(entry['retrying'])}")
    return "; ".join(parts) or "-"


@adapters_app.command("show")
def adapters_show(version: Annotated[str, typer.Argument(help="An adapter version.")]) -> None:
    """One adapter in full (JSON): provenance, hyperparameters, training, every eval number,
    the gate's decision, and its promotion history."""
    from adapters.registry import RegistryError

    with _registry() as reg:
        try:
            rec = reg.require(version)
        except RegistryError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None
        data = rec.as_dict()
        data["events"] = reg.events(version)
    typer.echo(json.dumps(data, indent=2, default=str))


def _announce(action: str, fn: object, wait_s: float) -> None:
    """Run a promotion or rollback, say how it went, and (``wait_s`` > 0) wait until every
    live replica reports serving it on adapter-status; exit 1 if any did not."""
    import time

    from adapters.files import AdapterFileError
    from adapters.registry import RegistryError
    from daemon.learning.promote import AnnounceUnknown
    from streams.adapter_status import wait_for_fleet

    started = time.time()
    try:
        event = fn()  # type: ignore[operator]
    except (RegistryError, AdapterFileError) as exc:
        err.print(f"[red]{action} refused:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except AnnounceUnknown as exc:
        err.print(f"[red]{action} outcome unknown:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    except Exception as exc:  # the broker unreachable before anything was recorded
        err.print(f"[red]{action} not announced (registry unchanged):[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    typer.echo(f"{event.action} {event.version}: published to adapter-events")
    if wait_s <= 0:
        return
    s = settings()
    ok, pending = wait_for_fleet(
        s.kafka, s.topics.adapter_status, event.version, wait_s, since=started
    )
    for r in ok:
        typer.echo(f"  {r.name}: serving {event.version}")
    for r in pending:
        why = f"refused: {r.status.error}" if r.refused == event.version else "no confirmation"
        if r.retrying == event.version:
            why = f"retrying, attempt {r.status.attempts}: {r.status.error}"
        typer.echo(f"  {r.name}: still serving {r.status.serving} ({why})")
    if pending:
        err.print(
            f"[red]{len(pending)} of {len(ok) + len(pending)} live replica(s) did not confirm "
            f"{event.version} within {wait_s:g}s[/]",
            highlight=False,
        )
        raise typer.Exit(1)
    typer.echo(f"all {len(ok)} live replica(s) serve {event.version}")


WAIT_HELP = (
    "Seconds to wait until every live replica reports serving it on adapter-status "
    "(0: do not wait). Exits 1 naming the replicas that did not confirm."
)


@adapters_app.command("promote")
def adapters_promote(
    version: Annotated[str, typer.Argument(help="The adapter version to serve.")],
    reason: Annotated[str | None, typer.Option(help="Recorded with the promotion.")] = None,
    wait: Annotated[float, typer.Option(help=WAIT_HELP)] = 60.0,
) -> None:
    """Serve VERSION on every replica now (the gate is not consulted)."""
    from daemon.learning.promote import promote

    s = settings()
    with _registry() as reg:
        _announce(
            "promote",
            lambda: promote(s, reg, version, actor="cli", reason=reason or "operator"),
            wait,
        )


@adapters_app.command("rollback")
def adapters_rollback(
    version: Annotated[
        str | None,
        typer.Argument(help="Where to go: a version or 'base' (default: the previous one)."),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Recorded with the rollback.")] = None,
    wait: Annotated[float, typer.Option(help=WAIT_HELP)] = 60.0,
) -> None:
    """Go back to the previously promoted adapter (or VERSION, or the base) on every replica."""
    from daemon.learning.promote import rollback

    s = settings()
    with _registry() as reg:
        _announce(
            "rollback",
            lambda: rollback(s, reg, version, actor="cli", reason=reason or "operator"),
            wait,
        )


RECONCILE_WAIT_HELP = (
    "Seconds to wait for live replicas that serve something other than the registry's "
    "version to converge (0: report at once)."
)


@adapters_app.command("reconcile")
def adapters_reconcile(
    abandon: Annotated[
        bool,
        typer.Option(
            "--abandon",
            help="Drop a pending promotion or rollback instead of publishing it: the fleet "
            "ends where the registry was before it (re-announced if its event had reached "
            "adapter-events).",
        ),
    ] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair/--no-repair",
            help="Re-announce the registry's version when a live replica serves another one "
            "and is not retrying on its own (it refused it, or never heard of it).",
        ),
    ] = True,
    wait: Annotated[float, typer.Option(help=RECONCILE_WAIT_HELP)] = 30.0,
) -> None:
    """Make the registry, adapter-events and the replicas agree.

    Finishes (or with --abandon drops) a promotion or rollback that a crash or a broker
    outage left half-done, re-announces what the registry says serves if adapter-events lost
    it, then reads adapter-status: every live replica that serves another version is named
    with what it serves and its last error. Exits 1 while any drift remains, 2 when a publish
    had an unknown outcome."""
    from daemon.learning import promote
    from daemon.learning.promote import AnnounceUnknown

    s = settings()
    with _registry() as reg:
        try:
            done = promote.abandon(s, reg, actor="cli") if abandon else []
            if abandon and not done:
                typer.echo("nothing pending to abandon")
            done += promote.reconcile(s, reg)
        except AnnounceUnknown as exc:
            err.print(f"[red]reconcile outcome unknown:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
        active = reg.active_version()
        for line in done:
            typer.echo(line)
        typer.echo(f"registry and adapter-events agree: {active}")
        _reconcile_fleet(s, reg, active, repair, wait)


def _reconcile_fleet(s: Settings, reg: Registry, active: str, repair: bool, wait_s: float) -> None:
    """Compare the live replicas with ``active``; re-announce it (``repair``) for those that
    will not get there on their own, wait up to ``wait_s``, and exit 1 naming what drifts."""
    import time

    from daemon.learning.promote import AnnounceUnknown, reannounce
    from streams.adapter_status import drifting, read_statuses, wait_for_fleet

    try:
        replicas = read_statuses(s.kafka, s.topics.adapter_status, timeout_s=10)
    except Exception as exc:
        err.print(f"[red]replicas unknown:[/] adapter-status unreadable: {exc}", highlight=False)
        raise typer.Exit(1) from None
    live = [r for r in replicas if r.live]
    drift = drifting(live, active)
    since = 0.0  # without a new announcement a refusal already reported is final
    stuck = [r for r in drift if r.retrying != active]
    if stuck and repair:
        names = ", ".join(r.name for r in stuck)
        since = time.time()
        try:
            reannounce(s, reg, reason=f"reconcile: {names} did not serve it")
        except AnnounceUnknown as exc:
            err.print(f"[red]re-announce outcome unknown:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
        typer.echo(f"re-announced {active}: {len(stuck)} live replica(s) served another ({names})")
    if drift and wait_s > 0:
        _ok, drift = wait_for_fleet(s.kafka, s.topics.adapter_status, active, wait_s, since=since)
    if not drift:
        typer.echo(
            f"all {len(live)} live replica(s) serve {active}"
            if live
            else "no live replica reports on adapter-status"
        )
        return
    for r in drift:
        st = r.status
        if r.retrying == active:
            why = f"retrying, attempt {st.attempts}: {st.error}"
        elif r.refused == active:
            why = f"refused: {st.error}"
        else:
            why = f"last asked for {st.requested or '-'}" + (f": {st.error}" if st.error else "")
        typer.echo(f"  {r.name}: serves {st.serving}, not {active} ({why})")
    err.print(
        f"[red]{len(drift)} live replica(s) drift from the registry ({active})[/]", highlight=False
    )
    raise typer.Exit(1)


@adapters_app.command("pin")
def adapters_pin(
    reason: Annotated[str | None, typer.Option(help="Recorded with the pin.")] = None,
) -> None:
    """Keep the active adapter: the train worker stops promoting until `unpin`."""
    with _registry() as reg:
        active = reg.active_version()
        reg.pin(active, actor="cli", reason=reason)
    typer.echo(f"pinned to {active}: automatic promotion is off until `selfdistill adapters unpin`")


@adapters_app.command("unpin")
def adapters_unpin() -> None:
    """Allow automatic promotion again."""
    with _registry() as reg:
        was = reg.unpin(actor="cli")
    typer.echo("unpinned" if was else "was not pinned")


@adapters_app.command("gate")
def adapters_gate(
    version: Annotated[str, typer.Argument(help="A candidate adapter version.")],
) -> None:
    """Score VERSION against the active adapter again and apply the gate (promoting it if it
    passes, unless pinned) — e.g. after an evaluation failed or the eval set changed."""
    from daemon.learning.train import gate_candidate
    from daemon.verifying.store import Store

    s = settings()
    with _registry() as reg, Store.open(s.store, s.data_dir) as store:
        try:
            report = gate_candidate(s, reg, store, version)
        except Exception as exc:
            err.print(f"[red]gate failed:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None
    print_cycle(report)
