"""`selfdistill eval verifier`: the verifier measured (or an identical stored measurement
recalled) and shown: per stage, or as the n × v sweep.

When the measured cascade runs the ``checker`` stage (in ``stages`` or in any domain's),
the report adds one line (and ``checker_consistency`` in ``--json``): the checker's
false-accept rate on the bundled corpus of right answers given for a wrong reason, and its
false-reject rate on consistent controls, each with n and a 95% Wilson interval
(:func:`daemon.verifying.checkers.measure_consistency`). It is measured afresh every time:
it needs no model and takes milliseconds. Not stored with the measurement, so a stored
report stays what it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.learning.settings import open_registry
from daemon.learning.verifier_gate import (
    export_verifier_metrics,
    plan_measurement,
    run_plan,
    run_sweep,
)
from daemon.verifying.checkers import measure_consistency
from daemon.verifying.quality import SweepReport, VerifierReport, ratio

if TYPE_CHECKING:
    from rich.console import Console

    from daemon.engines.base import Engine
    from daemon.operating.config import Settings
    from daemon.verifying.cascade import CascadeConfig
    from daemon.verifying.consistency import ConsistencyReport


def run_eval_verifier(
    settings: Settings,
    *,
    heldout: Path | None,
    sweep: bool,
    as_json: bool,
    console: Console,
    max_items: int | None = None,
    candidates: int | None = None,
    fresh: bool = False,
    engine: Engine | None = None,
) -> int:
    """``selfdistill eval verifier``: measure (or recall an identical stored measurement,
    unless ``fresh``), store, print. Returns the exit code (2: a labeled set that cannot be
    used; 1: the engine failed). ``engine``: use this one instead of building the configured
    engine. Errors are printed as they are: the CLI's console masks credentials."""
    from rich.markup import escape

    from daemon.engines.base import EngineError
    from daemon.verifying.graders import LabeledSetError

    cfg = settings.verify.eval
    with open_registry(settings) as registry:
        try:
            plan = plan_measurement(
                settings, registry, heldout=heldout, max_items=max_items, candidates=candidates
            )
        except LabeledSetError as exc:
            err = _stderr(console)
            err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            return 2
        ns, vs = cfg.sweep_candidates, cfg.sweep_votes
        fp = plan.fingerprint(ns=ns, vs=vs) if sweep else plan.fingerprint()
        cached = None if fresh else registry.cached_verifier_eval(plan.judge, fp)
        result: VerifierReport | SweepReport
        if cached is not None:  # no model needed
            if sweep:
                result = SweepReport.from_dict(cached)
            else:
                result = VerifierReport.from_dict(cached)
                export_verifier_metrics(result)
        else:
            own = engine is None
            if engine is None:
                from daemon.engines import make_engine

                engine = make_engine(settings.model, settings.engine)
            try:
                if sweep:
                    result = run_sweep(engine, registry, plan, ns, vs, use_cache=False)
                else:
                    result = run_plan(engine, registry, plan, kind="eval", use_cache=False)
            except EngineError as exc:  # the engine's fault, not a bug: one line, no traceback
                err = _stderr(console)
                err.print(f"[red]error:[/] the engine failed: {escape(str(exc))}", highlight=False)
                return 1
            finally:
                if own:
                    engine.close()
    consistency = checker_consistency(plan.cascade)
    if as_json:
        data = result.as_dict()
        if consistency is not None:
            data["checker_consistency"] = (
                consistency if isinstance(consistency, dict) else consistency.as_dict()
            )
        print(json.dumps(data, indent=2), file=console.file)
        return 0
    if isinstance(result, SweepReport):
        render_sweep(result, console)
    else:
        render_report(result, console)
    if consistency is not None:
        render_consistency(consistency, console)
    if cached is not None:
        console.print(
            f"(an identical measurement stored earlier, fingerprint {fp}; --fresh measures again)",
            highlight=False,
        )
    return 0


def uses_checker(cascade: CascadeConfig) -> bool:
    """Whether ``cascade`` runs the checker stage on any prompt (its stages or a domain's)."""
    return "checker" in cascade.stages or any("checker" in s for s in cascade.domains.values())


def checker_consistency(cascade: CascadeConfig) -> ConsistencyReport | dict[str, str] | None:
    """The checker's consistency report where ``cascade`` uses the checker stage, else None;
    ``{"error": ...}`` when the corpus cannot be read (an install without its data)."""
    if not uses_checker(cascade):
        return None
    try:
        return measure_consistency()
    except (OSError, ValueError) as exc:
        return {"error": f"the consistency corpus cannot be used: {exc}"}


def render_consistency(report: ConsistencyReport | dict[str, str], console: Console) -> None:
    if isinstance(report, dict):
        console.print(f"checker consistency: not measured ({report['error']})", highlight=False)
    else:
        console.print(report.line(), highlight=False, soft_wrap=True)


def _stderr(console: Console) -> Console:
    from rich.console import Console

    return Console(stderr=True, no_color=console.no_color)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def render_report(report: VerifierReport, console: Console) -> None:
    from rich.table import Table

    console.print(
        f"[bold]verifier[/]: judge {report.judge} on {report.adapter}'s candidates; "
        f"{report.items} items x n={report.n} = {report.candidates} candidates, "
        f"{report.correct} correct (base rate {_pct(report.base_rate)}); "
        f"v={report.votes} votes per stage; {report.seconds:.1f}s",
        highlight=False,
    )
    table = Table()
    table.add_column("stage", no_wrap=True)
    for col in ("reached", "passed", "precision", "recall", "AUC", "judge calls", "tokens"):
        table.add_column(col, justify="right")
    table.add_row(
        "cascade",
        str(report.candidates - report.static_rejected),
        str(report.accepted),
        _pct(report.precision),
        _pct(report.recall),
        _num(report.auc),
        str(report.judge_calls),
        str(report.judge_tokens),
    )
    for s in report.stages:
        table.add_row(
            f"  {s.stage}" + (" (tool)" if s.tool else ""),
            str(s.reached),
            str(s.passed),
            _pct(s.precision),
            _pct(s.recall),
            _num(s.auc),
            str(s.judge_calls),
            str(s.judge_tokens),
        )
    console.print(table)
    fv = report.first_valid
    if fv is not None:
        console.print(
            f"first-valid at n={fv.n}, v={fv.v}: keeps {fv.items_kept}/{fv.items} items "
            f"({_pct(fv.coverage)}), precision {_pct(fv.precision)}, "
            f"{_num(fv.judge_calls_per_item, 1)} judge calls per item "
            f"(stage numbers are conditional on reaching the stage)",
            highlight=False,
        )
    console.print(
        f"judge cost: {_num(report.calls_per_candidate, 2)} calls and "
        f"{_num(report.tokens_per_candidate, 0)} tokens per candidate; "
        f"held-out {report.heldout}",
        highlight=False,
    )


def render_sweep(report: SweepReport, console: Console) -> None:
    from rich.table import Table

    console.print(
        f"[bold]verifier sweep[/]: judge {report.judge} on {report.adapter}'s candidates; "
        f"{report.items} items, up to {report.candidates} candidates each "
        f"(base rate {_pct(report.base_rate)}); first-valid policy; {report.seconds:.1f}s",
        highlight=False,
    )
    table = Table()
    for col in (
        "n",
        "v",
        "kept",
        "coverage",
        "precision",
        "pass@n",
        "judge calls/item",
        "tokens/item",
    ):
        table.add_column(col, justify="right")
    for p in report.points:
        table.add_row(
            str(p.n),
            str(p.v),
            f"{p.kept_correct}/{p.items_kept}",
            _pct(p.coverage),
            _pct(p.precision),
            _pct(ratio(p.items_with_correct, p.items)),
            _num(p.judge_calls_per_item, 1),
            _num(p.judge_tokens_per_item, 0),
        )
    console.print(table)
    console.print(
        "kept: correct/kept items; pass@n: items with any correct candidate (the ceiling "
        "for coverage x precision)",
        highlight=False,
    )
