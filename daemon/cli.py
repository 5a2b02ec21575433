"""The ``selfdistill`` command line: one entry point for operators, workers and the demo."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from daemon.config import ConfigError, Settings, config_path, load_settings, render_toml
from daemon.logs import setup_logging
from daemon.signals import wait_for_stop_signal

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

err = Console(stderr=True)


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


# ----------------------------------------------------------------------- broker
@app.command()
def broker(
    port: Annotated[int | None, typer.Option(help="Port (default: broker.port).")] = None,
    host: Annotated[
        str | None, typer.Option(help="Address (default: broker.host, 127.0.0.1).")
    ] = None,
    create_topics: Annotated[
        bool, typer.Option("--create-topics/--no-create-topics", help="Create the daemon's topics.")
    ] = True,
) -> None:
    """Run the embedded Kafka-protocol broker (Tansu) on loopback until SIGINT/SIGTERM.

    Memory-only: topics and offsets are gone when it stops. Production uses a real Kafka
    cluster (kafka.bootstrap_servers) and never runs this.
    """
    import logging

    from streams.broker import BrokerError, EmbeddedBroker
    from streams.topics import ensure_topics

    s = settings()
    cfg = s.broker.model_copy(
        update={k: v for k, v in {"port": port, "host": host}.items() if v is not None}
    )
    log = logging.getLogger("selfdistill.broker")
    try:
        b = EmbeddedBroker(cfg).start()
    except BrokerError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    try:
        log.info("listening on %s (memory-only storage); stop with Ctrl-C or SIGTERM", b.bootstrap)
        if create_topics:
            kafka = s.kafka.model_copy(update={"bootstrap_servers": b.bootstrap})
            made = ensure_topics(kafka, s.topics)
            log.info("topics: %s", ", ".join(f"{t} ({st})" for t, st in made.items()))
        signum = wait_for_stop_signal()
        log.info("%s received; stopping the broker", signal.Signals(signum).name)
    finally:
        b.stop()


# ----------------------------------------------------------------------- topics
@topics_app.command("create")
def topics_create() -> None:
    """Create any missing topic (data topics, adapter-events, and their dead-letter topics)."""
    from streams.topics import ensure_topics

    s = settings()
    for topic, status in ensure_topics(s.kafka, s.topics).items():
        typer.echo(f"{topic}\t{status}")


@topics_app.command("list")
def topics_list() -> None:
    """List the topics the daemon uses and whether each exists on the cluster."""
    from kafka import KafkaAdminClient

    from streams.connection import connect

    s = settings()
    admin = connect(lambda: KafkaAdminClient(**s.kafka.client_kwargs("admin")), s.kafka, "admin")
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    for topic, parts in s.topics.layout().items():
        typer.echo(f"{topic}\t{parts} partitions\t{'exists' if topic in existing else 'MISSING'}")


# ---------------------------------------------------------------------- produce
@app.command()
def produce(
    file: Annotated[str, typer.Argument(help="JSONL file of prompts, or - for stdin.")],
    topic: Annotated[str | None, typer.Option(help="Topic (default: topics.prompts).")] = None,
) -> None:
    """Publish prompts: one JSON object per line with `prompt` or `messages`, and optional
    `id`, `domain`, `metadata`.

    A line that fails validation is reported with its number and skipped; the rest go out.
    Exit code 0 when every line was published, 1 when any failed.
    """
    from daemon.produce import produce_prompts
    from streams.producer import Producer

    s = settings()
    if file == "-":
        lines = sys.stdin
    else:
        path = Path(file)
        if not path.is_file():
            err.print(f"[red]error:[/] {file}: no such file", highlight=False)
            raise typer.Exit(1)
        lines = path.open(encoding="utf-8", errors="replace")
    producer = Producer(s.kafka, name="produce")
    try:
        report = produce_prompts(producer, topic or s.topics.prompts, lines)
    finally:
        producer.close()
    for number, reason in report.failed:
        err.print(f"line {number}: {reason}", highlight=False, markup=False)
    if report.send_error:
        err.print(f"[red]error:[/] {report.send_error}", highlight=False)
    err.print(
        f"produced {len(report.produced)} prompt(s) to '{topic or s.topics.prompts}'"
        + (f"; {len(report.failed)} line(s) failed" if report.failed else ""),
        highlight=False,
    )
    raise typer.Exit(0 if report.ok else 1)


# ------------------------------------------------------------------------- tail
@app.command("tail")
def tail_cmd(
    topic: Annotated[
        str, typer.Argument(help="Topic name; a dead-letter topic shows the reasons.")
    ],
    max_messages: Annotated[
        int | None, typer.Option("--max", "-n", help="Stop after this many messages.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep waiting for new messages.")
    ] = False,
    idle_timeout: Annotated[
        float, typer.Option(help="Without --follow, stop after this many seconds with nothing new.")
    ] = 2.0,
) -> None:
    """Print a topic's messages, from the beginning, as JSON lines (no consumer group joined)."""
    from daemon.tail import tail

    s = settings()
    dead = topic.endswith(s.topics.dlq_suffix)
    try:
        for rec in tail(
            s.kafka,
            topic,
            dead_letter=dead,
            max_messages=max_messages,
            follow=follow,
            idle_timeout_s=idle_timeout,
        ):
            sys.stdout.write(json.dumps(rec, ensure_ascii=False) + "\n")
            sys.stdout.flush()
    except LookupError as exc:
        err.print(f"[red]error:[/] {exc.args[0]}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass


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


# ------------------------------------------------------------------------ serve
@app.command()
def serve(
    http: Annotated[
        bool,
        typer.Option(
            "--http/--no-http",
            help="Also expose the OpenAI-compatible API (serve.http: 127.0.0.1:8000 by default).",
        ),
    ] = False,
    worker: Annotated[
        bool,
        typer.Option(
            "--worker/--no-worker",
            help="Run the Kafka serve worker (--http --no-worker: the API only).",
        ),
    ] = True,
) -> None:
    """Answer prompts from Kafka: one answer to `responses` and every sample to `candidates`
    per prompt, in one transaction; follow `adapter-events` and hot-swap adapters.

    A swap loads the new adapter beside the old one, checks its sha256 and a canary
    generation, then routes new requests to it; a refused adapter leaves the old one serving.
    """
    from daemon.serve import run_serve

    s = settings()
    if not (worker or http):
        err.print("[red]error:[/] nothing to run (--no-worker without --http)", highlight=False)
        raise typer.Exit(2)
    try:
        run_serve(s, worker=worker, http=http)
    except ValueError as exc:  # e.g. an exposed API without an admin token
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None


# ----------------------------------------------------------------------- verify
@app.command()
def verify() -> None:
    """Judge candidates from Kafka with the model's own unanimous cascade (cycle-consistency,
    factuality, correctness) and store what passes in SQLite.

    Each prompt's outcome is one SQLite transaction, written before the offset is committed;
    redelivery after a crash changes nothing. A store that cannot be written (full disk,
    read-only) stops the commits and is retried with backoff: nothing is lost.
    """
    from daemon.verify import VerifyWorker

    VerifyWorker(settings()).run()


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write (atomically).")],
    split: Annotated[
        str, typer.Option(help="train, heldout, or all: which accepted samples.")
    ] = "train",
    snapshot: Annotated[
        str | None, typer.Option(help="Exactly the samples a training run used.")
    ] = None,
) -> None:
    """Write accepted samples as chat `messages` records (TRL / HF datasets read them as they
    are) with provenance: prompt id, candidate id, generating adapter, votes, judge tokens."""
    from daemon.export import export_accepted
    from daemon.store import Store

    s = settings()
    path = s.store.path_in(s.data_dir)
    if not path.exists():
        err.print(
            f"[red]error:[/] no store at {path} (has `selfdistill verify` run?)", highlight=False
        )
        raise typer.Exit(1)
    if split not in ("train", "heldout", "all"):
        err.print("[red]error:[/] --split must be train, heldout or all", highlight=False)
        raise typer.Exit(2)
    with Store.open(s.store, s.data_dir, read_only=True) as store:
        try:
            n = export_accepted(
                store, out, split=None if split == "all" else split, snapshot=snapshot
            )
        except (KeyError, ValueError) as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None
    err.print(f"wrote {n} sample(s) to {out}", highlight=False)


# ------------------------------------------------------------------------- demo
@app.command()
def demo() -> None:
    """Run the main job on the embedded defaults and say what it did (see the README)."""
    from daemon.demo import run_demo

    s = settings()
    if state.log_level is None:  # the demo narrates itself; worker logs only when asked
        setup_logging("WARNING")
    report = run_demo(s, Console())
    ok = report.produced > 0 and report.answered_once
    raise typer.Exit(0 if ok else 1)


if __name__ == "__main__":  # pragma: no cover
    app()
