"""Reading a whole multi-partition topic from its beginning to its end, outside any group.

``selfdistill store rebuild`` replays ``verdicts`` into a fresh store with it. The end is
the high watermark each partition's own fetches report (``at_end``), never ListOffsets,
which the embedded broker answers wrongly. A ``read_committed`` reader stops below an open
transaction (a verify batch in flight) until it commits or aborts; the end not reached by
the deadline is a ``TimeoutError``, so a partial replay never passes for the whole log.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from streams.adapter_events import at_end
from streams.connection import KafkaSettings, connect


def replay(
    kafka: KafkaSettings,
    topic: str,
    who: str,
    timeout_s: float,
    poll_ms: int = 500,
    positions: dict[int, int] | None = None,
    missing_ok: bool = False,
) -> Iterator[list[Any]]:
    """Batches of records of every partition of ``topic``, oldest first per partition,
    from ``positions`` (a partition absent from them: from its beginning). ``missing_ok``:
    a topic with no partitions is empty, not waited for."""
    kw = kafka.reader_kwargs(who)
    consumer = connect(lambda: KafkaConsumer(**kw), kafka, f"{who} reader")
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while not partitions:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                if missing_ok:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {topic} has no partitions (does it exist?)")
                time.sleep(0.2)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        for tp in tps:
            if positions and tp.partition in positions:
                consumer.seek(tp, positions[tp.partition])
            else:
                consumer.seek_to_beginning(tp)
        while True:
            polled = consumer.poll(timeout_ms=poll_ms, max_records=kafka.batch_size * 16)
            for tp in sorted(polled, key=lambda t: t.partition):
                yield polled[tp]
            if not polled and all(at_end(consumer, tp) for tp in tps):
                return
            if time.monotonic() > deadline:
                behind = {
                    tp.partition: (consumer.position(tp), consumer.highwater(tp))
                    for tp in tps
                    if not at_end(consumer, tp)
                }
                raise TimeoutError(
                    f"{topic}: the end was not reached in {timeout_s:.0f}s; partition: "
                    f"(position, high watermark) = {behind} (an open transaction, or a "
                    "broker that answers no fetch)"
                )
    finally:
        with contextlib.suppress(Exception):
            consumer.close(autocommit=False)


def records_after(
    kafka: KafkaSettings, topic: str, positions: dict[int, int], who: str, timeout_s: float
) -> tuple[int, bool]:
    """How many committed records ``topic`` holds at or past ``positions`` (a partition
    absent from them: from its beginning), and whether the count reached every end.

    Counted, not subtracted from the high watermark: transaction markers take offsets too,
    so a difference of offsets is never zero on a topic written in transactions. A backlog
    too long to read within ``timeout_s`` gives a floor (``False``)."""
    count = 0
    try:
        for batch in replay(
            kafka, topic, who, timeout_s, 200, positions=positions, missing_ok=True
        ):
            count += len(batch)
    except TimeoutError:
        return count, False
    return count, True
