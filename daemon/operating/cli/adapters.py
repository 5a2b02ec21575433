"""`selfdistill adapters ...`: the registry, and the operator's levers (promote, roll back, pin)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.console import Console

from daemon.operating.cli.app import adapters_app, err, fmt_num, print_cycle, settings


# --------------------------------------------------------------------- adapters
def _registry():  # type: ignore[no-untyped-def]
    from daemon.learning.settings import open_registry

    return open_registry(settings())


@adapters_app.command("list")
def adapters_list() -> None:
    """Every adapter version: status, data, loss, gate numbers. `*` marks what serves."""
    from rich.table import Table

    from adapters.gate import HELDOUT, LABELED

    with _registry() as reg:
        records, pinned, active = reg.list(), reg.pinned(), reg.active_version()
    title = f"serving: {active}" + (f" (pinned: {pinned})" if pinned else "")
    columns = ("version", "status", "parent", "samples", "loss", LABELED, HELDOUT, "created")
    rows = []
    for r in records:
        metrics = r.eval.get("candidate", {}).get("metrics", {})
        rows.append(
            (
                ("* " if r.status == "promoted" else "  ") + r.version,
                r.status,
                r.parent or "-",
                str(r.sample_count),
                "-" if r.train_loss is None else f"{r.train_loss:.4f}",
                fmt_num(metrics.get(LABELED)),
                fmt_num(metrics.get(HELDOUT)),
                _when(r.created_at),
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


def _when(ts: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


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


def _announce(action: str, fn: object) -> None:
    from adapters.files import AdapterFileError
    from adapters.registry import RegistryError
    from streams.producer import ProduceError

    try:
        event = fn()  # type: ignore[operator]
    except (RegistryError, AdapterFileError) as exc:
        err.print(f"[red]{action} refused:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    except ProduceError as exc:
        err.print(f"[red]{action} not announced (registry unchanged):[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    typer.echo(f"{event.action} {event.version}: published to adapter-events")


@adapters_app.command("promote")
def adapters_promote(
    version: Annotated[str, typer.Argument(help="The adapter version to serve.")],
    reason: Annotated[str | None, typer.Option(help="Recorded with the promotion.")] = None,
) -> None:
    """Serve VERSION on every replica now (the gate is not consulted)."""
    from daemon.learning.promote import promote

    s = settings()
    with _registry() as reg:
        _announce(
            "promote", lambda: promote(s, reg, version, actor="cli", reason=reason or "operator")
        )


@adapters_app.command("rollback")
def adapters_rollback(
    version: Annotated[
        str | None,
        typer.Argument(help="Where to go: a version or 'base' (default: the previous one)."),
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Recorded with the rollback.")] = None,
) -> None:
    """Go back to the previously promoted adapter (or VERSION, or the base) on every replica."""
    from daemon.learning.promote import rollback

    s = settings()
    with _registry() as reg:
        _announce(
            "rollback",
            lambda: rollback(s, reg, version, actor="cli", reason=reason or "operator"),
        )


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
