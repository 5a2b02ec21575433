"""Prometheus metrics of the verify worker: the cascade's funnel, votes, judge cost, the store.

Labels carry bounded values only (stages, results, verdicts), never prompt ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CANDIDATES_JUDGED = Counter(
    "selfdistill_candidates_judged_total", "Candidates that entered the cascade (not skipped)."
)
STAGE_RESULTS = Counter(
    "selfdistill_stage_results_total",
    "Cascade stage outcomes per candidate: the funnel (static, checker, execution, cycle, "
    "factuality, correctness).",
    ["stage", "result"],
)
JUDGE_CALLS = Counter(
    "selfdistill_judge_calls_total", "Judge generations (votes and inferred questions).", ["stage"]
)
JUDGE_TOKENS = Counter(
    "selfdistill_judge_tokens_total", "Prompt + completion tokens spent by the judge.", ["stage"]
)
SAMPLES_ACCEPTED = Counter(
    "selfdistill_samples_accepted_total",
    "Samples the cascade accepted, newly stored by the store writer (a replay adds none).",
)
VERIFY_SECONDS = Histogram(
    "selfdistill_verify_batch_seconds",
    "Time to judge and store one batch of candidate groups.",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 180, 600, 1800),
)
VOTES = Counter(
    "selfdistill_votes_total",
    "Judge votes by stage and verdict (yes, no, unparsed: an unparseable vote counts as no).",
    ["stage", "verdict"],
)
STORE_SAMPLES = Gauge(
    "selfdistill_store_samples",
    "Accepted samples in the store, by split (train, heldout); set by the store writer.",
    ["split"],
)
STORE_PROMPTS = Gauge("selfdistill_store_prompts", "Prompts recorded in the store.")
VERDICTS_PUBLISHED = Counter(
    "selfdistill_verdicts_published_total",
    "Prompt outcomes verify published on the verdicts topic (committed with their offsets).",
)
STORE_VERDICTS = Counter(
    "selfdistill_store_verdicts_total",
    "Verdicts the store writer read: applied (written in one SQLite transaction with their "
    "offset) or already (at or below the offset the store had saved: replayed, skipped).",
    ["outcome"],
)
STORE_LAST_WRITE = Gauge(
    "selfdistill_store_last_write_timestamp_seconds",
    "Unix time of the store writer's last committed SQLite transaction (0: none yet).",
)
STORE_WRITER_UP = Gauge(
    "selfdistill_store_writer_up",
    "1 while this process's store writer is consuming verdicts, 0 when it stopped or failed.",
)


# Every bounded label value exists from the start at 0: a counter series that first appears
# at 1 is invisible to rate()/increase().
for _outcome in ("applied", "already"):
    STORE_VERDICTS.labels(_outcome)
STAGE_RESULTS.labels("static", "pass")
STAGE_RESULTS.labels("static", "fail")
for _stage in ("cycle", "factuality", "correctness"):
    for _result in ("pass", "fail"):
        STAGE_RESULTS.labels(_stage, _result)
    for _verdict in ("yes", "no", "unparsed"):
        VOTES.labels(_stage, _verdict)
for _stage in ("checker", "execution"):  # tool stages: one deterministic verdict, no votes
    for _result in ("pass", "fail"):
        STAGE_RESULTS.labels(_stage, _result)

# The static stage's rejections by reason: an empty final answer, or an answer that talks to
# its judge (the injection family, daemon/verifying/injection.py). A rise in the families is
# someone, or the model itself, trying to talk the judges into a yes.
from daemon.verifying.injection import STATIC_REASONS  # noqa: E402

STATIC_REJECTIONS = Counter(
    "selfdistill_static_rejections_total",
    "Candidates the static stage rejected, by reason (empty, verdict-marker, control-token, "
    "judge-address, instruction-override); those never reached a judge.",
    ["reason"],
)
for _reason in STATIC_REASONS:
    STATIC_REJECTIONS.labels(_reason)

# The execution stage's sandbox, which fails closed (daemon/verifying/sandbox_health.py):
# 0 means candidates with tests are not being judged at all, and why is in the refusals.
SANDBOX_AVAILABLE = Gauge(
    "selfdistill_sandbox_available",
    "1 while the execution stage's sandbox has every required isolation property "
    "(verify.sandbox.require), 0 while it refuses to run candidate code. Only workers whose "
    "cascade runs code have the series (from their first probe on).",
    ["stage"],
)
SANDBOX_REFUSED = Counter(
    "selfdistill_sandbox_refused_total",
    "Execution-stage runs refused because a required isolation property was missing (or the "
    "sandbox server was unreachable), by what was missing; those candidates were not accepted.",
    ["missing"],
)
