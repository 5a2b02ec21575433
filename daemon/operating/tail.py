"""``selfdistill tail``: print what is on a topic as JSON lines, for operators and scripts."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from streams.connection import KafkaSettings, connect
from streams.deadletter import DeadLetter, render_bytes


def record_json(r: Any, dead_letter: bool) -> dict[str, Any]:
    """One record as a JSON-ready dict: the value parsed when it is JSON, else text or base64."""
    out: dict[str, Any] = {
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        **render_bytes("key", r.key),
    }
    if dead_letter:
        out.update(DeadLetter.from_record(r.headers, r.key, r.value).as_json())
        return out
    try:
        out["value"] = json.loads(r.value) if r.value is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        out.update(render_bytes("value", r.value))
    if r.headers:
        out["headers"] = {k: v.decode("utf-8", "replace") for k, v in r.headers}
    return out


def tail(
    kafka: KafkaSettings,
    topic: str,
    *,
    dead_letter: bool = False,
    max_messages: int | None = None,
    follow: bool = False,
    idle_timeout_s: float = 2.0,
) -> Iterator[dict[str, Any]]:
    """Every record of ``topic`` from the beginning, without joining a consumer group.

    It reads from the start because "the end" would come from ListOffsets, which the
    embedded broker answers wrongly; without ``follow`` it stops after ``idle_timeout_s``
    with nothing new.
    """
    kw = kafka.reader_kwargs("tail")
    consumer = connect(lambda: KafkaConsumer(**kw), kafka, "tail consumer")
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise LookupError(f"topic {topic!r} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen = 0
        last = time.monotonic()
        while True:
            polled = consumer.poll(timeout_ms=200)
            records = sorted(
                (r for recs in polled.values() for r in recs),
                key=lambda r: (r.timestamp, r.partition),
            )
            for r in records:
                yield record_json(r, dead_letter)
                seen += 1
                if max_messages is not None and seen >= max_messages:
                    return
            if records:
                last = time.monotonic()
            elif not follow and time.monotonic() - last > idle_timeout_s:
                return
    finally:
        consumer.close(autocommit=False)
