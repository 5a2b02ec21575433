"""Prometheus metrics of the learning loop: train cycles, the eval gate, promotions, and the
verifier's measured quality (the train cycle's verifier gate and `selfdistill eval verifier`).

Labels carry bounded values only: results, decisions, adapter versions (one per training run;
only the newest versions keep series).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TRAINING_RUNS = Counter(
    "selfdistill_training_runs_total",
    "Train cycles by result (promoted, rejected, candidate, skipped, busy, failed, paused: the "
    "verifier's precision was below the floor).",
    ["result"],
)
TRAINING_SECONDS = Histogram(
    "selfdistill_training_seconds",
    "Duration of a cycle that trained an adapter (training, eval and gate).",
    buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400),
)
TRAINING_LOSS = Gauge("selfdistill_training_loss", "Final training loss of the newest adapter.")
TRAINING_TOKENS_PER_SECOND = Gauge(
    "selfdistill_training_tokens_per_second", "Training throughput of the newest adapter."
)
EVAL_SCORE = Gauge(
    "selfdistill_eval_score",
    "Eval gate scores in [0, 1] by adapter version ('base' included) and metric "
    "(labeled_pass@1, heldout_cascade_pass); the train worker keeps the newest versions only.",
    ["version", "metric"],
)
GATE_DECISIONS = Counter(
    "selfdistill_gate_decisions_total",
    "Eval gate decisions on candidates (promote, reject, held: passed but pinned or "
    "auto_promote off).",
    ["decision"],
)
ADAPTER_EVENTS = Counter(
    "selfdistill_adapter_events_total",
    "Promotions and rollbacks published to adapter-events, by action and actor (train, cli).",
    ["action", "actor"],
)

# Every bounded label value exists from the start at 0: a counter series that first appears
# at 1 is invisible to rate()/increase().
for _result in ("promoted", "rejected", "candidate", "skipped", "busy", "failed", "paused"):
    TRAINING_RUNS.labels(_result)
for _decision in ("promote", "reject", "held"):
    GATE_DECISIONS.labels(_decision)
for _action in ("promote", "rollback"):
    for _actor in ("train", "cli"):
        ADAPTER_EVENTS.labels(_action, _actor)

# The verifier measured against a labeled set (daemon/learning/verifier_gate.py: the train cycle's
# verifier gate and `selfdistill eval verifier`). version: the adapter whose candidates were
# judged; stage: "cascade" for the whole, else the stage. Only the newest versions keep series.
VERIFIER_PRECISION = Gauge(
    "selfdistill_verifier_precision",
    "Share of the candidates the verifier accepted that are correct (labeled set), by adapter "
    "version and stage ('cascade' or a stage; a stage's numbers are over the candidates that "
    "reached it).",
    ["version", "stage"],
)
VERIFIER_RECALL = Gauge(
    "selfdistill_verifier_recall",
    "Share of the correct candidates the verifier accepted (labeled set), by version and stage.",
    ["version", "stage"],
)
VERIFIER_AUC = Gauge(
    "selfdistill_verifier_auc",
    "How well the verifier's votes rank correct candidates above wrong ones (0.5: chance), by "
    "version and stage.",
    ["version", "stage"],
)
VERIFIER_BASE_RATE = Gauge(
    "selfdistill_verifier_base_rate",
    "Share of sampled candidates that are correct on the labeled set (precision of accepting "
    "everything), by adapter version.",
    ["version"],
)
VERIFIER_CALLS_PER_CANDIDATE = Gauge(
    "selfdistill_verifier_judge_calls_per_candidate",
    "Judge calls per candidate when the verifier was measured (all-valid), by adapter version.",
    ["version"],
)
