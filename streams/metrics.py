"""Prometheus metrics of the streams layer (every worker's Kafka I/O).

Labels are topic names and bounded reason codes only, never keys or ids.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_CONSUMED = Counter(
    "selfdistill_messages_consumed_total", "Records read from a topic by a worker loop.", ["topic"]
)
MESSAGES_PRODUCED = Counter(
    "selfdistill_messages_produced_total", "Records acknowledged by the brokers.", ["topic"]
)
PRODUCE_FAILURES = Counter(
    "selfdistill_produce_failures_total", "Records the brokers did not acknowledge.", ["topic"]
)
DLQ_MESSAGES = Counter(
    "selfdistill_dlq_messages_total",
    "Messages sent to a dead-letter topic, by source topic and reason.",
    ["topic", "reason"],
)
OFFSET_COMMITS = Counter(
    "selfdistill_offset_commits_total",
    "Offset commits after a batch's effect was durable.",
    ["topic"],
)
HANDLER_FAILURES = Counter(
    "selfdistill_handler_failures_total",
    "Batches whose handler raised; they are retried, never committed.",
    ["topic"],
)
BATCH_SECONDS = Histogram(
    "selfdistill_batch_seconds",
    "Time a worker's handler spent on one batch.",
    ["topic"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 180, 600, 1800),
)
CONSUMER_LAG = Gauge(
    "selfdistill_consumer_lag_messages",
    "Records behind the partition's high watermark, summed per topic, as the broker reported "
    "it in fetch responses (not ListOffsets, which the embedded broker answers wrongly).",
    ["topic"],
)
FOLLOWER_ERRORS = Counter(
    "selfdistill_adapter_follower_errors_total",
    "Errors the adapter-events follower survived (an engine or broker blip during a swap); "
    "while the latest round failed, the replica is not ready.",
)
REPLICA_STATUS_FAILURES = Counter(
    "selfdistill_adapter_status_failures_total",
    "adapter-status records this replica could not publish (operators then do not see it).",
)
LOG_RESETS = Counter(
    "selfdistill_log_resets_total",
    "Partitions whose records restarted below the offset the worker's group had committed: "
    "the broker lost the log (a memory-only broker restarted, the topic was re-created).",
    ["topic"],
)
RECORDS_LOST = Counter(
    "selfdistill_records_lost_total",
    "Records a worker knew were on a partition (up to the high watermark it saw) but had not "
    "committed as processed when the broker lost that partition's log.",
    ["topic"],
)
UNDECODABLE_BATCHES = Counter(
    "selfdistill_undecodable_batches_total",
    "Runs of records the client could not decode (an unknown codec, a corrupt or undecompressable "
    "batch), skipped with their offsets logged and a dead letter saying where.",
    ["topic"],
)
RECORDS_SKIPPED = Counter(
    "selfdistill_records_skipped_total",
    "Offsets skipped because the batch holding them could not be decoded.",
    ["topic"],
)
HANDLER_ISOLATED = Counter(
    "selfdistill_handler_isolated_total",
    "Records the handler failed on by themselves, after bounded retries and splitting the "
    "batch; each went to the dead-letter topic (reason handler-error).",
    ["topic"],
)
DEPENDENCY_UNAVAILABLE = Gauge(
    "selfdistill_dependency_unavailable",
    "1 while a worker waits for a dependency (the engine) that is unreachable or answers 5xx: "
    "nothing is dead-lettered, /readyz answers 503, the batch resumes when it is back.",
    ["topic"],
)
DEPENDENCY_FAILURES = Counter(
    "selfdistill_dependency_failures_total",
    "Batches that failed because a dependency (the engine) was unavailable; retried, never "
    "blamed on a record.",
    ["topic"],
)
BATCHES_ABANDONED = Counter(
    "selfdistill_batches_abandoned_total",
    "Batches given up uncommitted (redelivered): a stop that ran out of shutdown_timeout_s, or "
    "a partition revoked while the batch ran.",
    ["topic", "why"],
)
