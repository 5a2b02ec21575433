"""``selfdistill sandbox``: what the execution stage's sandbox measures on this machine, and
the sandbox server that isolated workers send their runs to (``sandbox_server.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from daemon.operating.cli.app import err, lines, sandbox_app, settings


@sandbox_app.command("check")
def check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Probe the sandbox as `verify` would (an empty run, no candidate code): the isolation
    properties it measures, and whether verify.sandbox.require is met. Exit 1 if it is not:
    the execution stage would refuse to judge here."""
    from daemon.verifying.sandbox_health import health_of
    from daemon.verifying.sandbox_server import run_candidate

    config = settings().verify.sandbox
    result = run_candidate("", "", config)  # sandbox_health.probe, keeping the result's layers
    available = health_of(result).available
    data = {
        "available": available,
        "require": list(config.require),
        "properties": list(result.properties),
        "missing": list(result.missing),
        "layers": list(result.layers),
        "via": config.socket or "this process",
        "detail": result.detail,
    }
    if as_json:
        lines().print(json.dumps(data, indent=2), highlight=False)
    else:
        state = "[green]available[/]" if available else "[red]unavailable[/]"
        lines().print(f"sandbox: {state} (via {data['via']})")
        lines().print(f"  required: {', '.join(config.require) or '(nothing)'}")
        lines().print(f"  measured: {', '.join(result.properties) or '(nothing)'}")
        lines().print(f"  layers:   {', '.join(result.layers) or '(none)'}", highlight=False)
        if not available:
            lines().print(f"  {result.detail}", highlight=False)
    if not available:
        raise typer.Exit(1)


@sandbox_app.command("serve")
def serve(
    socket: Annotated[
        Path,
        typer.Option(
            "--socket", help="Unix socket to listen on (its directory gates who may connect)."
        ),
    ],
) -> None:
    """Run candidates for verify workers that cannot isolate them themselves (non-root, no
    namespaces): point their verify.sandbox.socket here. Runs under this process's own
    verify.sandbox limits and requirements as well as the worker's."""
    from daemon.verifying.sandbox_health import probe
    from daemon.verifying.sandbox_server import serve as serve_socket

    own = settings().verify.sandbox.model_copy(update={"socket": None})
    health = probe(own)
    if not health.available:
        err.print(
            f"[yellow]warning:[/] {health.detail}; every run will be refused", highlight=False
        )
    serve_socket(socket, own)
