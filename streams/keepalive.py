"""Staying a live group member while not consuming: a slow batch, a backoff, a probe.

The consumer pauses every assigned partition and keeps polling in short rounds. The polls
return nothing, but they keep ``max_poll_interval_ms`` honest and let a rebalance or a
rejoin complete: kafka-python completes a group (re)join only while a poll waits for it,
and sends a join that finished between polls again, so a member that must rejoin during a
long batch (a rebalance, a restarted broker) would otherwise not get back in until the
batch ends. A judge batch that takes ten minutes on a CPU thus does not get the member
evicted and the batch run twice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from kafka import KafkaConsumer


def wait(
    consumer: KafkaConsumer, fut: Future[Any], keepalive_s: float, check: Callable[[], None]
) -> None:
    """Until ``fut`` is done: the first ``keepalive_s`` in a plain wait, then inside short
    polls. ``check()`` runs each round and may raise to give the wait up (a stop's
    deadline); the partitions are resumed either way."""
    try:
        if fut.done():
            return
        with contextlib.suppress(TimeoutError):
            fut.exception(timeout=keepalive_s)
        while not fut.done():
            _poll_paused(consumer, timeout_ms=50)
            check()
    finally:
        _resume(consumer)


def sleep(
    consumer: KafkaConsumer, seconds: float, keepalive_s: float, stopped: Callable[[], bool]
) -> None:
    """``seconds`` of backoff spent polling (cut short when ``stopped()``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stopped():
        _poll_paused(consumer, int(min(keepalive_s, deadline - time.monotonic()) * 1000))
    _resume(consumer)


def _resume(consumer: KafkaConsumer) -> None:
    paused = consumer.paused()
    if paused:
        consumer.resume(*paused)


def _poll_paused(consumer: KafkaConsumer, timeout_ms: int = 0) -> None:
    assigned = consumer.assignment()
    if assigned:
        consumer.pause(*assigned)
    stray = consumer.poll(timeout_ms=max(timeout_ms, 0))
    for tp, recs in stray.items():  # defensive: never skip a record we did not process
        consumer.seek(tp, recs[0].offset)
