"""Noticing a broker that lost a partition's log, instead of carrying on silently.

On a healthy broker a group is redelivered from its committed offset, never below it:
records that come back below it mean the broker lost the log and the group's offsets (the
embedded broker keeps everything in memory; a re-created topic does the same), and the
client has quietly started again from ``auto_offset_reset``. What the loop knew was there
and had not finished (up to the highest high watermark it saw) is lost with it; outputs
already produced may be gone too. Say so, loudly and in numbers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from kafka import TopicPartition

from streams.metrics import LOG_RESETS, RECORDS_LOST

log = logging.getLogger(__name__)


@dataclass
class LogWatch:
    """What a loop knows of each partition's log: its last commit and the highest watermark."""

    group_id: str
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    high: dict[TopicPartition, int] = field(default_factory=dict)

    def check(self, tp: TopicPartition, first_offset: int, highwater: int | None) -> int | None:
        """Records known lost when a fetch of ``tp`` starts at ``first_offset``; None if none."""
        committed = self.committed.get(tp, 0)
        seen = max(self.high.get(tp, 0), committed)
        lost: int | None = None
        if first_offset < committed:
            lost = seen - committed
            LOG_RESETS.labels(tp.topic).inc()
            RECORDS_LOST.labels(tp.topic).inc(lost)
            log.error(
                "%s[%d]: the broker lost this partition's log (records restart at offset %d, "
                "below offset %d that group %s had committed; was the broker restarted with "
                "memory-only storage, or the topic re-created?): %d record(s) past it, up to "
                "the high watermark %d it had seen, were not committed as processed and are "
                "lost; outputs of the earlier ones may be gone from the broker too",
                tp.topic,
                tp.partition,
                first_offset,
                committed,
                self.group_id,
                lost,
                seen,
            )
            self.committed.pop(tp, None)
            seen = 0
        self.high[tp] = max(seen, highwater or 0)
        return lost
