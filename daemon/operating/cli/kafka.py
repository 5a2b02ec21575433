"""`selfdistill broker`, `topics`, `produce`, `tail`: the Kafka side, for operators and tests."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from daemon.operating.cli.app import app, err, settings, topics_app
from daemon.operating.signals import wait_for_stop_signal


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
    from daemon.operating.produce import produce_prompts
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
    from daemon.operating.tail import json_line, tail

    s = settings()
    encoding = getattr(sys.stdout, "encoding", None)
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
            sys.stdout.write(json_line(rec, encoding))
            sys.stdout.flush()
    except LookupError as exc:
        err.print(f"[red]error:[/] {exc.args[0]}", highlight=False)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        pass
