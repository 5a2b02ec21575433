"""`selfdistill status`: the one screen an operator reads."""

from __future__ import annotations

from typing import Annotated

import typer

from daemon.operating.cli.app import app, settings


# ----------------------------------------------------------------------- status
@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """One screen: the active adapter and its eval numbers, the last training runs, the
    cascade funnel and acceptance rate, store size, dead letters, and each worker's health."""
    from daemon.operating.status import run_status

    raise typer.Exit(run_status(settings(), as_json=as_json))
