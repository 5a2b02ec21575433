"""`selfdistill serve`, `verify`, `store`, `train`, `up`, `demo`: the workers, one per process or
all in one."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from daemon.operating.cli.app import app, err, lines, print_cycle, settings, state, store_app
from daemon.operating.logs import setup_logging


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
    from daemon.operating.processes import run_serve

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
    factuality, correctness) and publish each prompt's outcome to `verdicts`.

    Outcomes and the consumed offsets commit in one Kafka transaction: a crash leaves no
    visible verdict and the batch is judged again. Verify opens no SQLite file, so run as
    many as the judging needs, on any machines, in one group (each its own
    verify.transactional_id). The store writer puts the verdicts into the store.
    """
    from daemon.operating.processes import run_verify

    run_verify(settings())


# ------------------------------------------------------------------------ store
@store_app.callback()
def store(ctx: typer.Context) -> None:
    """Write `verdicts` into the SQLite store, until SIGTERM (the store writer alone).

    By default the writer runs inside `selfdistill train`; run this instead where train
    does not (store.writer_in_train = false there). One writer per store file: each batch
    and its offsets commit in one SQLite transaction, and it resumes where the store says.
    """
    if ctx.invoked_subcommand is not None:
        return
    from daemon.operating.processes import run_store
    from daemon.verifying.store_writer import WriterBusy

    try:
        run_store(settings())
    except WriterBusy as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None


@store_app.command("rebuild")
def store_rebuild(
    out: Annotated[
        Path, typer.Option("--out", help="The fresh store file to write (must not exist).")
    ],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to reach the end of verdicts.")
    ] = 600.0,
    snapshots_from: Annotated[
        Path | None,
        typer.Option(
            "--snapshots-from",
            help="The old store, if still readable: copy the trainer's snapshots from it "
            "(they are not in verdicts).",
        ),
    ] = None,
) -> None:
    """Replay `verdicts` from its beginning into a fresh store file (the store's disk was
    lost, or a check). The result equals the live store row for row and carries its
    positions: stop the writer, move the file into place (store.path), start it again.
    """
    from daemon.verifying.store_writer import rebuild

    s = settings()
    try:
        result = rebuild(s, out, timeout_s=timeout, snapshots_from=snapshots_from)
    except (FileExistsError, FileNotFoundError, TimeoutError) as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(1) from None
    c = result.counts
    lines().print(
        f"rebuilt {result.path} from {result.verdicts} verdicts"
        f"{f' ({result.undecodable} undecodable, skipped)' if result.undecodable else ''}: "
        f"{c['prompts']} prompts, {c['candidates']} candidates, {c['votes']} votes, "
        f"{c['accepted']} accepted ({c['accepted_train']} train, "
        f"{c['accepted_heldout']} held out)"
        f"{f'; {result.snapshots} snapshots copied' if snapshots_from else ''}",
        highlight=False,
    )


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
    from daemon.learning.train import run_cycle
    from daemon.operating.processes import run_scheduler

    s = settings()
    if not once:
        run_scheduler(s, progress=sys.stderr.isatty())
        return
    try:
        report = run_cycle(s, force=force, progress=sys.stderr.isatty())
    except Exception as exc:
        err.print(f"[red]training cycle failed:[/] {exc!r}", highlight=False)
        raise typer.Exit(1) from None
    print_cycle(report)
    raise typer.Exit(1 if report.outcome == "busy" else 0)


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
    """Run serve, verify, the store writer and the train scheduler together in one process
    on one model (a single machine; in production run the commands separately)."""
    from daemon.operating.up import run_up
    from daemon.verifying.store_writer import WriterBusy

    try:
        state = run_up(
            settings(),
            until_promotion=until_promotion,
            max_cycles=max_cycles,
            max_minutes=max_minutes,
        )
    except WriterBusy as exc:  # a `train` or `store` already writes this store
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
    err.print(
        f"stopped ({state.stopped_by}); {len(state.cycles)} training cycle(s), "
        f"promoted: {state.promoted or 'none'}",
        highlight=False,
    )


# ------------------------------------------------------------------------- demo
@app.command()
def demo() -> None:
    """Run the main job on the embedded defaults and say what it did (see the README)."""
    from daemon.operating.demo import run_demo

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
