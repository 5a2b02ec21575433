"""What a worker loop does when the group moves its partitions (kafka-python's IO loop).

Revoked: the in-flight batch is void, and offsets processed but not yet committed are
committed first (non-transactional loops). Assigned: a loop that keeps its own positions
(the store writer, in SQLite) seeks to them, so where it resumes never depends on the
group's committed offsets. Lost: like revoked, without the commit (it would be refused). A batch that lost a
partition while it ran is void (:func:`void_batch`): nothing of it is sent or committed.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from kafka import TopicPartition
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from streams.metrics import BATCHES_ABANDONED

if TYPE_CHECKING:
    from streams.consumer import ConsumerLoop

log = logging.getLogger(__name__)


class Rebalance(AsyncConsumerRebalanceListener):
    """Runs on kafka-python's IO loop: must await, never block (that would stop heartbeats)."""

    def __init__(self, loop: ConsumerLoop[Any]) -> None:
        self.loop = loop

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.loop._mark_revoked(revoked)  # before anything else: an in-flight batch is void
        pending = self.loop._take_processed(revoked)
        if pending and self.loop.consumer is not None:
            try:
                await self.loop.consumer.commit_async(pending)
                self.loop.stats.commits += 1
                log.info("committed %s before giving up partitions", _fmt(pending))
            except Exception as exc:
                log.warning("commit before rebalance failed (%r); records will be redelivered", exc)
        if revoked:
            log.info("partitions revoked: %s", sorted(f"{t.topic}[{t.partition}]" for t in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned: %s", sorted(f"{t.topic}[{t.partition}]" for t in assigned))
        if assigned:
            self.loop.seek_owned(assigned)

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # Evicted: the commit would be refused. The new owner redoes the batch; handlers
        # are idempotent (or transactional), so that costs time, not correctness.
        self.loop._mark_revoked(lost)
        self.loop._take_processed(lost)
        log.warning("partitions lost (evicted from group): %s", sorted(map(str, lost)))


def void_batch(
    loop: ConsumerLoop[Any],
    before: dict[TopicPartition, int],
    first: dict[TopicPartition, int],
    why: str,
) -> None:
    """Give a batch up uncommitted; rewind its partitions this member owns now.

    Kept throughout: back to the batch's first offset. Revoked and come back: to the
    group's committed offset (someone may have done them meanwhile), because kafka-python
    keeps a re-assigned partition's position, past the voided batch, and reading on
    from there skipped those records for good (the next batch committed past them).
    """
    assert loop.consumer is not None
    reason = "revoked" if loop._revoked(before) else "stopped"
    loop.stats.abandoned += 1
    BATCHES_ABANDONED.labels(loop.topic, reason).inc()
    owned = loop.consumer.assignment()
    rewound: dict[TopicPartition, int] = {}
    for tp in loop.seek_owned({tp for tp in first if tp in owned and loop._revoked(before)}):
        rewound[tp] = -1  # back to the handler's own position
    for tp, off in first.items():
        if tp not in owned or tp in rewound:
            continue
        with contextlib.suppress(Exception):
            if loop._revoked({tp: before[tp]}):
                committed = loop.consumer.committed(tp)
                if committed is None:  # as a new owner would: the group has no offset
                    reset = loop.kafka.auto_offset_reset == "earliest"
                    (loop.consumer.seek_to_beginning if reset else loop.consumer.seek_to_end)(tp)
                    continue
                off = committed
            loop.consumer.seek(tp, off)
            rewound[tp] = off
    log.warning(
        "%s: batch from %s given up uncommitted (%s); it is redelivered from the "
        "committed offsets%s",
        loop.name,
        loop.topic,
        why,
        f", rewound {sorted(f'{tp.partition}@{o}' for tp, o in rewound.items())}"
        if rewound
        else "",
    )


def _fmt(offsets: dict[TopicPartition, OffsetAndMetadata]) -> str:
    return ", ".join(
        f"{tp.topic}[{tp.partition}]@{om.offset}" for tp, om in sorted(offsets.items())
    )
