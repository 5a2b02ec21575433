"""The ``selfdistill`` application: its command groups, global options, the settings every
command loads once, and the output helpers two groups share (a training cycle's report).
The commands live beside it, one module per group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from daemon import redact
from daemon.operating.config import ConfigError, Settings, load_settings
from daemon.operating.logs import setup_logging

app = typer.Typer(
    name="selfdistill",
    help="Make a production LLM better from its own traffic (self-verified distillation).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect and write the configuration.", no_args_is_help=True)
topics_app = typer.Typer(help="Create and list the daemon's Kafka topics.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(topics_app, name="topics")
adapters_app = typer.Typer(
    help="The adapter registry: list, inspect, promote, roll back, pin.", no_args_is_help=True
)
task_app = typer.Typer(help="The bundled offline task (seed prompts + labeled held-out set).")
app.add_typer(adapters_app, name="adapters")
app.add_typer(task_app, name="task")
eval_app = typer.Typer(help="Measure the model against labeled data.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
store_app = typer.Typer(
    help="The store writer (verdicts -> the SQLite store), and rebuilding the store.",
    invoke_without_command=True,
)
app.add_typer(store_app, name="store")
sandbox_app = typer.Typer(
    help="The execution stage's sandbox: check what it measures here, or serve it to workers.",
    no_args_is_help=True,
)
app.add_typer(sandbox_app, name="sandbox")

err = Console(stderr=True, soft_wrap=True)


def lines() -> Console:
    """A console for result lines: never wrapped at the terminal's width, so a script (or an
    operator's grep) sees each result whole on one line, however long its paths."""
    return Console(soft_wrap=True)


class _State:
    config: Path | None = None
    log_level: str | None = None
    settings: Settings | None = None


state = _State()


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="TOML config file (default: $SELFDISTILL_CONFIG, "
            "else ./selfdistill.toml if present).",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option("--log-level", help="Override log_level (DEBUG, INFO, ...).")
    ] = None,
) -> None:
    # Before anything is printed: every line of this process's console is masked.
    redact.mask_console()
    state.config = config
    state.log_level = log_level
    state.settings = None


def settings() -> Settings:
    """Load and validate the configuration once; a bad one ends the command with exit code 2."""
    if state.settings is None:
        overrides = {"log_level": state.log_level.upper()} if state.log_level else {}
        try:
            state.settings = load_settings(state.config, **overrides)
        except ConfigError as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False)
            raise typer.Exit(2) from None
        setup_logging(state.settings.log_level)
    return state.settings


def print_cycle(report: object) -> None:
    from daemon.learning.train import CycleReport

    assert isinstance(report, CycleReport)
    out = lines()
    out.print(f"[bold]{report.outcome}[/]: {report.reason}", highlight=False)
    if report.version:
        out.print(
            f"version {report.version}: {report.trained_on} samples "
            f"({report.new_samples} new), loss {report.training.get('final_loss', float('nan')):.4f}, "
            f"{report.training.get('seconds', 0):.0f}s training",
            highlight=False,
        )
        for check in report.decision.get("checks", []):
            out.print(
                f"  {check['metric']}: candidate {fmt_num(check['candidate'])} vs "
                f"{report.against} {fmt_num(check['active'])}{fmt_interval(check)} → "
                f"{'ok' if check['passed'] else 'skipped' if check['passed'] is None else 'FAIL'}"
                f" ({check['rule']})",
                highlight=False,
            )
    for line in report.recovered:
        out.print(f"  recovered: {line}", highlight=False)


def fmt_num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def fmt_interval(check: dict[str, Any]) -> str:
    """`` on 200 items, delta +0.19 [+0.12, +0.26] (95%)`` for a gate check with an interval."""
    if check.get("low") is None or check.get("delta") is None:
        return ""
    return (
        f" on {check['items']} items, delta {check['delta']:+.3f} "
        f"[{check['low']:+.3f}, {check['high']:+.3f}] ({check['level']:.0%})"
    )
