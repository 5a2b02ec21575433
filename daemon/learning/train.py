"""The train worker: on a schedule, turn new accepted samples into a gated adapter.

One cycle (:func:`run_cycle`), in order:

1. take the registry's training lock (a second scheduler or a manual ``--once`` skips
   instead of overlapping) and :meth:`Registry.recover` what a crashed run left behind;
2. count accepted train-split samples not in the last adapter's snapshot; fewer than
   ``train.min_new_samples`` → nothing to do (a crashed run registered nothing, so its
   samples are still new and the next cycle retries them);
   with ``train.verifier`` on, measure the verifier's precision on the labeled held-out set
   (``daemon/learning/verifier_gate.py``; cached while judge and settings are unchanged) and record
   it; below ``train.verifier.floor`` the cycle stops here, ``paused``: the accepted data is
   not better than what the model already does, and training on it would teach noise;
3. reserve the next version name, freeze the data as a store snapshot named after it, train
   a LoRA adapter (``adapters.training``) into a staging directory, rename it into place,
   register it as a candidate;
4. score the candidate and the active adapter (``daemon/evaluate.py``) and apply the gate
   (``adapters.gate``); the numbers and the decision are stored with the candidate;
5. promote (publish to ``adapter-events``, ``daemon/promote.py``) if the gate says so,
   ``auto_promote`` is on and no operator pinned the registry.

The scheduler (:func:`run_scheduler`) is APScheduler with ``max_instances=1`` and
``coalesce``: a run that outlasts its interval delays the next one instead of stacking.
A failed cycle is logged and retried at the next tick; the daemon keeps running.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator

from adapters.gate import GateConfig, decide
from adapters.registry import BASE, AdapterRecord, Registry, RegistryBusy
from adapters.training import TrainingConfig
from daemon.learning.evaluate import (
    EvalConfig,
    NewestVersions,
    adapter_loaded,
    eval_cascade_config,
    evaluate,
    fingerprint,
    item_scores,
    load_eval_data,
)
from daemon.learning.metrics import (
    EVAL_SCORE,
    GATE_DECISIONS,
    TRAINING_LOSS,
    TRAINING_RUNS,
    TRAINING_SECONDS,
    TRAINING_TOKENS_PER_SECOND,
)
from daemon.learning.promote import PublishSettings
from daemon.learning.settings import VerifierSettings, model_label, open_registry
from daemon.learning.verifier_gate import VerifierGateConfig

if TYPE_CHECKING:
    from daemon.engines.base import Engine
    from daemon.verifying.store import Store, StoreConfig

log = logging.getLogger(__name__)

Outcome = Literal["skipped", "busy", "paused", "promoted", "rejected", "candidate", "failed"]


class TrainConfig(BaseModel):
    """The train worker: when it trains, how, and how a new adapter is judged."""

    model_config = ConfigDict(extra="forbid")

    interval_s: float = Field(
        3600.0, gt=0, description="Check for new samples every this many seconds."
    )
    cron: str | None = Field(
        None,
        description="A crontab expression ('0 3 * * *': 03:00 daily); overrides interval_s.",
    )
    min_new_samples: int = Field(
        50, ge=1, description="Train only when at least this many new accepted samples exist."
    )
    lora: TrainingConfig = Field(
        default_factory=TrainingConfig, description="LoRA hyperparameters."
    )
    eval: EvalConfig = Field(default_factory=EvalConfig, description="What the gate measures.")
    gate: GateConfig = Field(default_factory=GateConfig, description="The promotion rule.")
    verifier: VerifierGateConfig = Field(
        default_factory=VerifierGateConfig,
        description="Measure the verifier's precision each cycle (on verify.eval's labeled "
        "set) and pause training below a floor.",
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, v: str | None) -> str | None:
        if v is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(v)
            except ValueError as exc:
                raise ValueError(f"not a crontab expression: {exc}") from None
        return v


class TrainSettings(VerifierSettings, PublishSettings, Protocol):
    """What the train cycle reads of the daemon's settings (``Settings`` is one): the model
    and its registry, the verifier's settings for its gate, where promotions are published,
    and its own part: the store and the schedule."""

    @property
    def store(self) -> StoreConfig: ...
    @property
    def train(self) -> TrainConfig: ...


@dataclass
class CycleReport:
    """What one cycle did, for the log, the CLI and the tests."""

    outcome: Outcome
    reason: str
    version: str | None = None
    new_samples: int = 0
    trained_on: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    candidate: dict[str, Any] = field(default_factory=dict)  # metrics
    active: dict[str, Any] = field(default_factory=dict)  # metrics of what it was compared to
    against: str | None = None
    decision: dict[str, Any] = field(default_factory=dict)
    verifier: dict[str, Any] = field(default_factory=dict)  # the verifier's measured quality
    recovered: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------- the cycle
def run_cycle(
    settings: TrainSettings,
    *,
    engine: Engine | None = None,
    force: bool = False,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> CycleReport:
    """One training cycle, start to gate decision. ``force`` ignores ``min_new_samples``.

    ``engine`` (optional) scores the adapters; without one, the configured engine is built
    for the evaluation and closed after it. ``should_stop`` is polled between training
    steps: a shutdown interrupts training (the run is recorded as failed, nothing is left
    on disk) instead of waiting for it to finish.
    """
    from daemon.verifying.store import Store

    started = time.monotonic()
    registry = open_registry(settings)
    try:
        with registry.training_lock():
            recovered = registry.recover()
            for line in recovered:
                log.warning("recovery: %s", line)
            recovered += _finish_announcements(settings, registry)
            with Store.open(settings.store, settings.data_dir) as store:
                report = _cycle(settings, registry, store, engine, force, progress, should_stop)
            report.recovered = recovered
    except RegistryBusy as exc:
        report = CycleReport("busy", str(exc))
    except BaseException:
        TRAINING_RUNS.labels("failed").inc()
        raise
    finally:
        registry.close()
    report.seconds = round(time.monotonic() - started, 2)
    TRAINING_RUNS.labels(report.outcome).inc()
    if report.version is not None:
        TRAINING_SECONDS.observe(report.seconds)
        if report.training.get("final_loss") is not None:
            TRAINING_LOSS.set(report.training["final_loss"])
        TRAINING_TOKENS_PER_SECOND.set(report.training.get("tokens_per_s") or 0.0)
    log.info("train cycle: %s (%s)", report.outcome, report.reason)
    return report


def _finish_announcements(settings: TrainSettings, registry: Registry) -> list[str]:
    """A promotion a crash left half-done is finished before anything new is gated (the
    gate compares against the active adapter, which must be what the replicas serve)."""
    from adapters import outbox
    from daemon.learning.promote import reconcile

    if not outbox.pending(registry):
        return []
    try:
        return reconcile(settings, registry)
    except Exception as exc:  # the broker is down: the next cycle tries again
        log.error("could not finish a pending adapter announcement: %s", exc)
        return []


def _cycle(
    settings: TrainSettings,
    registry: Registry,
    store: Store,
    engine: Engine | None,
    force: bool,
    progress: bool,
    should_stop: Callable[[], bool] | None,
) -> CycleReport:
    cfg = settings.train
    last = registry.last_trained()
    since = last.snapshot_id if last is not None else None
    if since is not None and store.snapshot(since) is None:
        # A store rebuilt from verdicts has the samples, not the trainer's snapshots.
        log.warning(
            "snapshot %s (of %s) is not in the store (rebuilt from verdicts?): every "
            "accepted train sample counts as new",
            since,
            last.version if last is not None else "?",
        )
        since = None
    new = store.new_accepted_since(since)
    if new == 0 or (new < cfg.min_new_samples and not force):
        return CycleReport(
            "skipped",
            f"{new} new accepted samples since {since or 'the start'}; "
            f"training needs {cfg.min_new_samples}",
            new_samples=new,
        )
    verifier: dict[str, Any] = {}
    # A floor implies measure; the validator says so, but a model_copy (the demo's) skips it.
    if cfg.verifier.measure or cfg.verifier.floor is not None:
        if engine is None:  # one engine for the verifier's measurement and the gate
            from daemon.engines import make_engine

            with contextlib.closing(make_engine(settings.model, settings.engine)) as own:
                return _cycle(settings, registry, store, own, force, progress, should_stop)
        paused, verifier = _verifier_gate(settings, registry, engine)
        if paused is not None:
            paused.new_samples = new
            return paused
    active = registry.active()
    parent = active.version if cfg.lora.init == "active" and active is not None else None
    version = registry.next_version(model_label(settings))
    run_id = registry.begin_run(version, parent)
    log.info("training %s on %d new samples (init from %s)", version, new, parent or "base")
    try:
        count = store.create_snapshot(version, "train", note=f"training run {run_id}")
        rows = store.snapshot_samples(version)
        if (
            parent is not None
            and active is not None
            and active.snapshot_id
            and store.snapshot(active.snapshot_id) is not None
        ):
            # Continuing from the active adapter: it has seen its own snapshot already.
            seen = {r["id"] for r in store.snapshot_samples(active.snapshot_id)}
            rows = [r for r in rows if r["id"] not in seen]
        registry.set_run_data(run_id, version, count)
        training = _train(
            settings, registry, version, rows, active if parent else None, progress, should_stop
        )
        from adapters.files import adapter_digest

        registry.register(
            version,
            parent=parent,
            base_model=settings.model.path,
            sha256=adapter_digest(registry.root / version),
            snapshot_id=version,
            sample_count=len(rows),
            hyperparams=cfg.lora.model_dump(mode="json"),
            training=training,
        )
        registry.finish_run(run_id, "done")
    except BaseException as exc:
        registry.finish_run(run_id, "failed", repr(exc)[:2000])
        raise
    report = gate_candidate(settings, registry, store, version, engine=engine)
    report.new_samples = new
    report.trained_on = len(rows)
    report.training = training
    report.verifier = verifier
    return report


def _verifier_gate(
    settings: TrainSettings, registry: Registry, engine: Engine
) -> tuple[CycleReport | None, dict[str, Any]]:
    """Measure (or recall) the verifier's precision; a report when training must pause."""
    from daemon.learning.verifier_gate import measure_verifier

    vg = settings.train.verifier
    report = measure_verifier(
        settings, engine, registry, kind="gate", max_items=vg.max_items, candidates=vg.candidates
    )
    summary = {
        k: getattr(report, k)
        for k in ("judge", "precision", "recall", "auc", "base_rate", "accepted", "candidates")
    }
    summary["floor"] = vg.floor
    precision = report.precision
    if vg.floor is None or (precision is not None and precision >= vg.floor):
        return None, summary
    shown = "undefined (it accepted nothing)" if precision is None else f"{precision:.3f}"
    reason = (
        f"training paused: the verifier's precision on the labeled held-out set is {shown}, "
        f"below train.verifier.floor {vg.floor:.3f} ({report.accepted} accepted of "
        f"{report.candidates} candidates, base rate {report.base_rate or 0.0:.3f}): the data it "
        "accepts is not better than what the model already does"
    )
    return CycleReport("paused", reason, verifier=summary), summary


def _train(
    settings: TrainSettings,
    registry: Registry,
    version: str,
    rows: list[dict[str, Any]],
    init: AdapterRecord | None,
    progress: bool,
    should_stop: Callable[[], bool] | None,
) -> dict[str, Any]:
    from adapters.training import train_lora
    from daemon import progress as steps
    from daemon.engines.model_files import resolve_model_dir

    model_dir = resolve_model_dir(settings.model.path, settings.model.cache_dir)
    init_dir = registry.full_path(init) if init is not None else None
    with registry.staging(version) as tmp, steps.track(f"training {version}", None, "steps") as t:

        def on_step(step: int, total: int, loss: float, tokens_per_s: float) -> None:
            t.total = total
            t.advance(1, loss=f"{loss:.4f}", tokens_s=f"{tokens_per_s:.0f}")

        result = train_lora(
            model_dir,
            [r["messages"] for r in rows],
            tmp,
            settings.train.lora,
            init_adapter=init_dir,
            progress=progress,
            should_stop=should_stop,
            threads=settings.engine.torch_threads,
            device=settings.model.device,
            on_step=None if progress else on_step,  # progress: the trainer's own bar
        )
    return result.as_dict()


# ---------------------------------------------------------------------- the gate
def gate_candidate(
    settings: TrainSettings,
    registry: Registry,
    store: Store,
    version: str,
    *,
    engine: Engine | None = None,
) -> CycleReport:
    """Score ``version`` and the active adapter, record the decision, promote if it passes."""
    cfg = settings.train
    registry.require(version)
    active = registry.active()
    against = active.version if active is not None else BASE
    items, heldout = load_eval_data(cfg.eval, store.accepted_samples("heldout"))
    cascade = eval_cascade_config(settings.verify, cfg.eval)
    fp = fingerprint(items, heldout, cfg.eval, cascade, settings.model.path)

    with contextlib.ExitStack() as stack:
        if engine is None:
            from daemon.engines import make_engine

            engine = make_engine(settings.model, settings.engine)
            stack.callback(engine.close)
        eng = engine

        def score(name: str) -> dict[str, Any]:
            cached = registry.cached_eval(name, fp)
            if cached is not None:
                log.info("eval %s: cached %s", name, cached["metrics"])
                return cached
            with adapter_loaded(eng, registry, name) as adapter:
                report = evaluate(
                    eng, adapter, items, heldout, cfg.eval, cascade, fingerprint_=fp, version=name
                ).as_dict()
            registry.store_eval(name, fp, report)
            return report

        cand_eval = score(version)
        active_eval = score(against)

    _export_scores(version, cand_eval["metrics"])
    _export_scores(against, active_eval["metrics"])
    decision = decide(item_scores(cand_eval), item_scores(active_eval), cfg.gate)
    pinned = registry.pinned()
    record = {
        **decision.as_dict(),
        "against": against,
        "fingerprint": fp,
        "pinned": pinned,
        "auto_promote": cfg.gate.auto_promote,
    }
    registry.record_decision(
        version,
        {"candidate": cand_eval, "active": active_eval},
        record,
        rejected=not decision.promote,
    )
    outcome: Outcome = "rejected"
    reason = decision.reason
    if decision.promote:
        if pinned is not None:
            outcome, reason = "candidate", f"passed the gate, but pinned to {pinned}: {reason}"
        elif not cfg.gate.auto_promote:
            outcome, reason = "candidate", f"passed the gate (auto_promote off): {reason}"
        else:
            from daemon.learning.promote import promote

            promote(settings, registry, version, actor="train", reason=decision.reason)
            outcome = "promoted"
    GATE_DECISIONS.labels(
        "promote" if outcome == "promoted" else "held" if outcome == "candidate" else "reject"
    ).inc()
    return CycleReport(
        outcome,
        reason,
        version=version,
        candidate=cand_eval["metrics"],
        active=active_eval["metrics"],
        against=against,
        decision=record,
    )


_SCORED = NewestVersions()  # versions with eval_score series, and their metrics


def _export_scores(version: str, metrics: dict[str, Any]) -> None:
    """``selfdistill_eval_score{version, metric}`` for the newest versions only: one series
    per version per metric, so old versions are dropped to keep the label set bounded."""
    for metric, value in metrics.items():
        if value is not None:
            EVAL_SCORE.labels(version, metric).set(value)
    _, evicted = _SCORED.update(version, metrics)
    for old, old_metrics in evicted:
        for metric in old_metrics:
            with contextlib.suppress(KeyError):
                EVAL_SCORE.remove(old, metric)


# ------------------------------------------------------------------ the scheduler
def add_training_job(scheduler: Any, settings: TrainSettings, job: Callable[[], None]) -> None:
    """Schedule ``job`` on the configured interval or cron: never two at once
    (``max_instances=1``), missed ticks collapse into one (``coalesce``), the first tick
    at once on an interval schedule."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    cfg = settings.train
    trigger = (
        CronTrigger.from_crontab(cfg.cron) if cfg.cron else IntervalTrigger(seconds=cfg.interval_s)
    )
    scheduler.add_job(
        job,
        trigger,
        id="train",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=None,
        next_run_time=None if cfg.cron else _now(),
    )
    log.info(
        "train scheduler: %s, min_new_samples=%d",
        f"cron {cfg.cron!r}" if cfg.cron else f"every {cfg.interval_s:g}s",
        cfg.min_new_samples,
    )


def _now() -> Any:
    from datetime import datetime

    return datetime.now(UTC)
