"""The ``selfdistill`` command line: one entry point for operators, workers and the demo."""

from __future__ import annotations

import json
import logging
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
adapters_app = typer.Typer(
    help="The adapter registry: list, inspect, promote, roll back, pin.", no_args_is_help=True
)
task_app = typer.Typer(help="The bundled offline task (seed prompts + labeled held-out set).")
app.add_typer(adapters_app, name="adapters")
app.add_typer(task_app, name="task")
eval_app = typer.Typer(help="Measure the model against labeled data.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

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
    from daemon.observe import observability
    from daemon.verify import VerifyWorker

    s = settings()
    worker = VerifyWorker(s)
    with observability(s.metrics, "verify", worker.loop.ready.is_set):
        worker.run()


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write (atomically).")],
    split: Annotated[
        str, typer.Option(help="train, heldout, or all: which accepted samples.")
    ] = "train",
    snapshot: Annotated[
        str | None, typer.Option(help="Exactly the samples a training run used.")
    ] = None,
    ranking: Annotated[
        bool,
        typer.Option(
            "--ranking",
            help="Instead: groups of candidates with both passing and failing members.",
        ),
    ] = False,
    ranking_format: Annotated[
        str, typer.Option("--format", help="With --ranking: groups, or pairs (TRL preference).")
    ] = "groups",
) -> None:
    """Write accepted samples as chat `messages` records (TRL / HF datasets read them as they
    are) with provenance: prompt id, candidate id, generating adapter, votes, judge tokens.
    With --ranking: the verifier's ranking data (DuST), as groups or chosen/rejected pairs."""
    from daemon.export import export_accepted, export_ranking
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
    if ranking:
        with Store.open(s.store, s.data_dir, read_only=True) as store:
            try:  # the format is checked where it is used
                n = export_ranking(store, out, ranking_format)  # type: ignore[arg-type]
            except ValueError as exc:
                err.print(f"[red]error:[/] --format: {exc}", highlight=False)
                raise typer.Exit(2) from None
        err.print(f"wrote {n} ranking {ranking_format} to {out}", highlight=False)
        return
    with Store.open(s.store, s.data_dir, read_only=True) as store:
        try:
            n = export_accepted(
                store, out, split=None if split == "all" else split, snapshot=snapshot
            )
        except (KeyError, ValueError) as exc:
            err.print(f"[red]error:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None
    err.print(f"wrote {n} sample(s) to {out}", highlight=False)


# ------------------------------------------------------------------------ train
@app.command()
def train(
    once: Annotated[
        bool, typer.Option("--once", help="Run one cycle now and exit (no scheduler).")
    ] = False,
    force: Annotated[
        bool, typer.Option(help="With --once: train even below train.min_new_samples.")
    ] = False,
) -> None:
    """Train LoRA adapters on new accepted samples, gate them on held-out data, promote.

    Without --once, runs on train.interval_s / train.cron until SIGTERM; runs never overlap
    (a file lock in the registry), and a failed or killed run is retried at the next tick.
    """
    from daemon.train import run_cycle, run_scheduler

    s = settings()
    if not once:
        run_scheduler(s, progress=sys.stderr.isatty())
        return
    try:
        report = run_cycle(s, force=force, progress=sys.stderr.isatty())
    except Exception as exc:
        err.print(f"[red]training cycle failed:[/] {exc!r}", highlight=False)
        raise typer.Exit(1) from None
    _print_cycle(report)
    raise typer.Exit(1 if report.outcome == "busy" else 0)


def _print_cycle(report: object) -> None:
    from daemon.train import CycleReport

    assert isinstance(report, CycleReport)
    out = Console()
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
                f"  {check['metric']}: candidate {_num(check['candidate'])} vs "
                f"{report.against} {_num(check['active'])} → "
                f"{'ok' if check['passed'] else 'skipped' if check['passed'] is None else 'FAIL'}"
                f" ({check['rule']})",
                highlight=False,
            )
    for line in report.recovered:
        out.print(f"  recovered: {line}", highlight=False)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


# --------------------------------------------------------------------- adapters
def _registry():  # type: ignore[no-untyped-def]
    from daemon.train import open_registry

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
                _num(metrics.get(LABELED)),
                _num(metrics.get(HELDOUT)),
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
    from daemon.promote import promote

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
    from daemon.promote import rollback

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
    from daemon.store import Store
    from daemon.train import gate_candidate

    s = settings()
    with _registry() as reg, Store.open(s.store, s.data_dir) as store:
        try:
            report = gate_candidate(s, reg, store, version)
        except Exception as exc:
            err.print(f"[red]gate failed:[/] {exc}", highlight=False)
            raise typer.Exit(1) from None
    _print_cycle(report)


# ------------------------------------------------------------------------- task
@task_app.command("generate")
def task_generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write into.")],
    prompts: Annotated[int, typer.Option(help="Unlabeled seed prompts.")] = 200,
    heldout: Annotated[int, typer.Option(help="Labeled held-out problems.")] = 40,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write prompts.jsonl (for `selfdistill produce`) and heldout.jsonl (for
    train.eval.labeled_set): arithmetic and unit-conversion problems with exact answers."""
    from daemon.tasks import build_task

    p, h = build_task(out, n_prompts=prompts, n_heldout=heldout, seed=seed)
    typer.echo(f"wrote {p} and {h}")


# ------------------------------------------------------------------------- eval
@eval_app.command("verifier")
def eval_verifier(
    heldout: Annotated[
        Path | None,
        typer.Option(
            "--heldout",
            help="Labeled JSONL (default: verify.eval.heldout, else the bundled held-out set).",
        ),
    ] = None,
    sweep: Annotated[
        bool,
        typer.Option(
            "--sweep",
            help="Compare candidates per prompt x votes per stage (verify.eval.sweep_candidates "
            "x sweep_votes): first-valid's precision against judge cost.",
        ),
    ] = False,
    max_items: Annotated[
        int | None, typer.Option("--max-items", min=1, help="Use only the first N items.")
    ] = None,
    candidates: Annotated[
        int | None,
        typer.Option(
            "--candidates",
            min=1,
            max=64,
            help="Candidates per item (default: verify.eval.candidates, else serve's n).",
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option("--fresh", help="Measure again even if an identical measurement is stored."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """How good are the model's verdicts on its own candidates? Sample candidates with the
    serving settings for a labeled set, judge them with the cascade, and report precision,
    recall and AUC of acceptance against the graded truth, per stage and for the whole
    cascade, with the judge calls and tokens it took and the base rate of correct candidates.

    Results are stored in the adapter registry (shown by `status`).
    """
    from daemon.verifier_eval import run_eval_verifier

    code = run_eval_verifier(
        settings(),
        heldout=heldout,
        sweep=sweep,
        as_json=as_json,
        console=Console(),
        max_items=max_items,
        candidates=candidates,
        fresh=fresh,
    )
    raise typer.Exit(code)


# ----------------------------------------------------------------------- status
@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """One screen: the active adapter and its eval numbers, the last training runs, the
    cascade funnel and acceptance rate, store size, dead letters, and each worker's health."""
    from daemon.status import run_status

    raise typer.Exit(run_status(settings(), as_json=as_json))


# --------------------------------------------------------------------------- up
@app.command()
def up(
    until_promotion: Annotated[
        bool,
        typer.Option("--until-promotion", help="Stop once an adapter is promoted and serving."),
    ] = False,
    max_minutes: Annotated[float | None, typer.Option(help="Stop after this many minutes.")] = None,
    max_cycles: Annotated[
        int | None, typer.Option(help="Stop after this many training cycles decided.")
    ] = None,
) -> None:
    """Run serve, verify and the train scheduler together in one process on one model
    (a single machine; in production run the three commands separately)."""
    from daemon.up import run_up

    state = run_up(
        settings(), until_promotion=until_promotion, max_cycles=max_cycles, max_minutes=max_minutes
    )
    err.print(
        f"stopped ({state.stopped_by}); {len(state.cycles)} training cycle(s), "
        f"promoted: {state.promoted or 'none'}",
        highlight=False,
    )


# ------------------------------------------------------------------------- demo
@app.command()
def demo() -> None:
    """Run the main job on the embedded defaults and say what it did (see the README)."""
    from daemon.demo import run_demo

    s = settings()
    if state.log_level is None:  # the demo narrates itself; worker logs only when asked
        setup_logging("WARNING")
        # A tick skipped while training runs is the scheduler keeping runs from overlapping,
        # as designed; in the demo's narration it is noise.
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
    report = run_demo(s, Console())
    ok = report.produced > 0 and report.answered_once
    raise typer.Exit(0 if ok else 1)


if __name__ == "__main__":  # pragma: no cover
    app()
