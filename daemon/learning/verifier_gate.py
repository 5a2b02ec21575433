"""The verifier gate: the verifier measured on the labeled set before training on its data.

``daemon/verifying/quality.py`` measures (candidates sampled, judged, graded); this module
decides what is measured (the active adapter's candidates, judged as ``verify.judge`` says,
on ``verify.eval``'s labeled set), reuses a stored measurement with the same fingerprint
from the registry, stores new ones there (``verifier_evals``), and exports the
``selfdistill_verifier_*`` gauges. The train cycle pauses while the precision it measures is
below ``train.verifier.floor``; ``selfdistill eval verifier`` runs the same measurement.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapters.registry import BASE
from daemon.engines.base import Engine
from daemon.learning.evaluate import NewestVersions, adapter_loaded, load_items, path_or_bundled
from daemon.learning.metrics import (
    VERIFIER_AUC,
    VERIFIER_BASE_RATE,
    VERIFIER_CALLS_PER_CANDIDATE,
    VERIFIER_PRECISION,
    VERIFIER_RECALL,
)
from daemon.learning.settings import VerifierSettings, model_label
from daemon.verifying.cascade import CascadeConfig
from daemon.verifying.graders import LabeledItem
from daemon.verifying.quality import (
    CASCADE,
    Kind,
    SweepReport,
    VerifierReport,
    evaluate_verifier,
    fingerprint,
    fmt,
    grid,
    measurement_config,
    sample_candidates,
    sweep,
    sweep_report,
)

if TYPE_CHECKING:
    from adapters.registry import Registry

log = logging.getLogger(__name__)


class VerifierGateConfig(BaseModel):
    """The train cycle's watch on the verifier: its precision on the labeled set, per cycle."""

    model_config = ConfigDict(extra="forbid")

    measure: bool = Field(
        False,
        description="Measure the verifier's precision on the labeled held-out set "
        "(verify.eval.heldout) each training cycle, and record it.",
    )
    floor: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Pause training while the verifier's precision is below this (setting it "
        "implies measure).",
    )
    max_items: int = Field(16, ge=1, description="Labeled items per measurement.")
    candidates: int = Field(4, ge=1, le=64, description="Candidates sampled per item.")

    @model_validator(mode="after")
    def _floor_implies_measure(self) -> VerifierGateConfig:
        if self.floor is not None and not self.measure:
            self.measure = True
        return self


# ---------------------------------------------------------------------------- metrics
_EXPORTED = NewestVersions()  # versions with verifier series, and their stage labels


def export_verifier_metrics(report: VerifierReport) -> None:
    """Set ``selfdistill_verifier_*{version, stage}`` from ``report`` (version: the adapter
    whose candidates were judged). An undefined number removes its series (no NaN), and only
    the newest ``_EXPORTED.keep`` versions keep series, so the label set stays bounded."""
    version = report.adapter
    rows = [(CASCADE, report.precision, report.recall, report.auc)] + [
        (s.stage, s.precision, s.recall, s.auc) for s in report.stages
    ]
    dropped, evicted = _EXPORTED.update(version, (r[0] for r in rows))
    for stage in dropped:
        _remove_stage(version, stage)
    for stage, precision, recall, area in rows:
        for gauge, value in (
            (VERIFIER_PRECISION, precision),
            (VERIFIER_RECALL, recall),
            (VERIFIER_AUC, area),
        ):
            _set(gauge, value, version, stage)
    _set(VERIFIER_BASE_RATE, report.base_rate, version)
    _set(VERIFIER_CALLS_PER_CANDIDATE, report.calls_per_candidate, version)
    for old, old_stages in evicted:
        for stage in old_stages:
            _remove_stage(old, stage)
        for gauge in (VERIFIER_BASE_RATE, VERIFIER_CALLS_PER_CANDIDATE):
            with contextlib.suppress(KeyError):
                gauge.remove(old)


def _set(gauge: Any, value: float | None, *labels: str) -> None:
    if value is None:
        with contextlib.suppress(KeyError):
            gauge.remove(*labels)
    else:
        gauge.labels(*labels).set(value)


def _remove_stage(version: str, stage: str) -> None:
    for gauge in (VERIFIER_PRECISION, VERIFIER_RECALL, VERIFIER_AUC):
        with contextlib.suppress(KeyError):
            gauge.remove(version, stage)


# ------------------------------------------------------------------- the measurement
@dataclass
class Plan:
    """Everything a measurement needs except the engine: resolved before a model loads, so
    a bad labeled set fails fast."""

    items: list[LabeledItem]
    heldout: Path
    n: int
    adapter: str  # whose candidates: the active version or "base"
    judge: str  # who judges: "base" or the active version
    cascade: CascadeConfig
    sampling: dict[str, Any]
    model: str
    batch_size: int

    def fingerprint(
        self, *, ns: Sequence[int] | None = None, vs: Sequence[int] | None = None
    ) -> str:
        return fingerprint(
            model=self.model,
            judge=self.judge,
            adapter=self.adapter,
            cascade=self.cascade,
            items=self.items,
            n=self.n if ns is None else ns,
            sampling=self.sampling,
            what="report" if ns is None else "sweep",
            votes=vs,
        )


def plan_measurement(
    settings: VerifierSettings,
    registry: Registry,
    *,
    heldout: Path | None = None,
    max_items: int | None = None,
    candidates: int | None = None,
) -> Plan:
    """Resolve the labeled set (raises ``LabeledSetError``), n, who generates and who judges."""
    cfg = settings.verify.eval
    path = heldout or path_or_bundled(cfg.heldout)
    items = load_items(path, max_items if max_items is not None else cfg.max_items)
    active = registry.active_version()
    serve = settings.serve
    return Plan(
        items=items,
        heldout=path,
        n=candidates or cfg.candidates or serve.n,
        adapter=active,
        judge=BASE if settings.verify.judge == "base" else active,
        cascade=measurement_config(settings.verify),
        sampling={
            "temperature": serve.temperature,
            "top_p": serve.top_p,
            "max_tokens": serve.max_tokens,
            "seed": serve.seed,
        },
        model=model_label(settings),
        batch_size=cfg.batch_size,
    )


def _sample(engine: Engine, plan: Plan, n: int, adapter: str | None) -> list[list[str]]:
    return sample_candidates(
        engine, plan.items, n, adapter=adapter, batch_size=plan.batch_size, **plan.sampling
    )


def run_plan(
    engine: Engine,
    registry: Registry,
    plan: Plan,
    *,
    kind: Kind = "gate",
    use_cache: bool = True,
) -> VerifierReport:
    """Measure (or reuse a stored measurement with the same fingerprint), store, export."""
    fp = plan.fingerprint()
    cached = registry.cached_verifier_eval(plan.judge, fp) if use_cache else None
    if cached is not None:
        report = VerifierReport.from_dict(cached)
        log.info("verifier eval %s: cached (precision %s)", fp, fmt(report.precision))
    else:
        with (
            adapter_loaded(engine, registry, plan.adapter) as gen,
            adapter_loaded(engine, registry, plan.judge) as judge,
        ):
            started = time.monotonic()
            candidates = _sample(engine, plan, plan.n, gen)
            report = evaluate_verifier(
                engine,
                plan.items,
                plan.cascade,
                candidates,
                judge_adapter=judge,
                judge=plan.judge,
                adapter=plan.adapter,
                heldout=str(plan.heldout),
                batch_size=plan.batch_size,
                fingerprint_=fp,
            )
            report.seconds = round(time.monotonic() - started, 2)
        registry.record_verifier_eval(plan.judge, kind, fp, report.as_dict())
    export_verifier_metrics(report)
    return report


def measure_verifier(
    settings: VerifierSettings,
    engine: Engine,
    registry: Registry,
    *,
    kind: Kind = "gate",
    max_items: int | None = None,
    candidates: int | None = None,
    heldout: Path | None = None,
    use_cache: bool = True,
) -> VerifierReport:
    """The verifier's numbers on ``verify.eval``'s labeled set, for the active adapter's
    candidates (sampled with the serve settings) judged as ``verify.judge`` says.

    A measurement with the same fingerprint (model, judge, adapter, cascade, items, n,
    sampling) is reused from the registry; a new one is stored there (``kind``: "gate" for
    the train cycle, "eval" for the CLI). Either way the metrics are exported. Raises
    ``LabeledSetError`` for a bad labeled set.
    """
    plan = plan_measurement(
        settings, registry, heldout=heldout, max_items=max_items, candidates=candidates
    )
    return run_plan(engine, registry, plan, kind=kind, use_cache=use_cache)


def run_sweep(
    engine: Engine,
    registry: Registry,
    plan: Plan,
    ns: Sequence[int],
    vs: Sequence[int],
    *,
    use_cache: bool = True,
) -> SweepReport:
    """:func:`sweep` on ``plan``'s items with ``max(ns)`` fresh candidates each; stored as
    kind "sweep" (and reused by fingerprint)."""
    ns, vs = grid(list(ns)), grid(list(vs))
    fp = plan.fingerprint(ns=ns, vs=vs)
    cached = registry.cached_verifier_eval(plan.judge, fp) if use_cache else None
    if cached is not None:
        return SweepReport.from_dict(cached)
    with (
        adapter_loaded(engine, registry, plan.adapter) as gen,
        adapter_loaded(engine, registry, plan.judge) as judge,
    ):
        started = time.monotonic()
        candidates = _sample(engine, plan, ns[-1], gen)
        points = sweep(
            engine,
            plan.items,
            plan.cascade,
            candidates,
            ns,
            vs,
            judge_adapter=judge,
            batch_size=plan.batch_size,
        )
        seconds = time.monotonic() - started
    report = sweep_report(
        plan.items,
        plan.cascade,
        candidates,
        ns,
        vs,
        points,
        judge=plan.judge,
        adapter=plan.adapter,
        heldout=str(plan.heldout),
        seconds=seconds,
        fingerprint_=fp,
    )
    registry.record_verifier_eval(plan.judge, "sweep", fp, report.as_dict())
    return report
