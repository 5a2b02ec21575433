"""`selfdistill export`, `task generate`, `eval verifier`: data out of the loop, and into it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from daemon.operating.cli.app import app, err, eval_app, settings, task_app


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
    from daemon.learning.export import export_accepted, export_ranking
    from daemon.verifying.store import Store

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
    from daemon.learning.tasks import build_task

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
    from daemon.operating.eval_verifier import run_eval_verifier

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
