"""``selfdistill tail``: print what is on a topic as JSON lines, for operators and scripts.

Any bytes print: a record's key, value and headers are shown as text when they are UTF-8,
else as base64 (``key_b64``, ``value_b64``, ``headers_b64``), and :func:`json_line` writes
each record as strict JSON that encodes in the output's encoding, even when a JSON value
holds a lone surrogate escape (``"\\ud800"``, valid JSON whose Python string has no UTF-8).
"""

from __future__ import annotations

import json
import math
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
        out["value"] = None if r.value is None else json.loads(r.value, **_STRICT)
    except ValueError:  # not UTF-8, not JSON, or NaN/Infinity/1e999 (strict JSON has none)
        out.update(render_bytes("value", r.value))
    if r.headers:
        text: dict[str, str | None] = {}
        binary: dict[str, str] = {}
        for k, v in r.headers:
            shown = render_bytes(k, v)
            if k in shown:
                text[k] = shown[k]
            else:
                binary[k] = shown[f"{k}_b64"]
        if text:
            out["headers"] = text
        if binary:
            out["headers_b64"] = binary
    return out


def json_line(rec: dict[str, Any], encoding: str | None = "utf-8") -> str:
    """``rec`` as one line of strict JSON that encodes in ``encoding``, whatever it holds.

    Readable (non-ASCII characters as themselves) when the line encodes; otherwise, for a
    lone surrogate or a stdout that is not UTF-8, every non-ASCII character is escaped.
    """
    line = json.dumps(rec, ensure_ascii=False, allow_nan=False, default=repr)
    try:
        line.encode(encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        line = json.dumps(rec, ensure_ascii=True, allow_nan=False, default=repr)
    return line + "\n"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} does not fit a float")
    return value


_STRICT: dict[str, Any] = {"parse_constant": _no_constant, "parse_float": _finite}


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
