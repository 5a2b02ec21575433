"""`selfdistill config show | init | check`: the configuration, documented and validated."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from daemon.operating.cli.app import config_app, err, settings, state
from daemon.operating.config import Settings, config_path, render_toml


# ----------------------------------------------------------------------- config
@config_app.command("show")
def config_show(
    defaults: Annotated[bool, typer.Option(help="Include the documentation comments.")] = False,
) -> None:
    """Print the effective configuration (file + environment + defaults) as TOML; secrets masked."""
    s = settings()
    source = config_path(state.config)
    err.print(f"# from {source or 'defaults'} + SELFDISTILL_* environment", highlight=False)
    typer.echo(render_toml(s, comments=defaults), nl=False)


@config_app.command("init")
def config_init(
    path: Annotated[Path, typer.Argument(help="Where to write it.")] = Path("selfdistill.toml"),
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a configuration file with every key, its default and what it does."""
    if path.exists() and not force:
        err.print(f"[red]error:[/] {path} exists (use --force to overwrite)", highlight=False)
        raise typer.Exit(1)
    path.write_text(render_toml(Settings()))
    err.print(f"wrote {path}", highlight=False)


@config_app.command("check")
def config_check() -> None:
    """Validate the configuration and exit 0, or name every bad key and exit 2."""
    settings()
    err.print(f"configuration OK ({config_path(state.config) or 'defaults'})", highlight=False)
