"""A producer that knows whether its messages arrived.

kafka-python's ``send`` is fire-and-forget until someone looks at the future. Workers must
not commit an input offset while an output may still be lost, so ``flush`` here waits for
every pending send and raises :class:`ProduceError` if any failed.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from kafka import KafkaProducer
from kafka.errors import ProducerFencedError
from kafka.producer.future import FutureRecordMetadata
from pydantic import BaseModel

from streams.connection import KafkaSettings, connect
from streams.deadletter import HEADROOM_BYTES, DeadLetter, whole_limit
from streams.metrics import MESSAGES_PRODUCED, PRODUCE_FAILURES
from streams.schemas import encode

log = logging.getLogger(__name__)


class ProduceError(RuntimeError):
    """One or more sends were not acknowledged; nothing depending on them may be committed."""

    def __init__(self, failures: list[tuple[str, BaseException]]) -> None:
        topic, exc = failures[0]
        super().__init__(
            f"{len(failures)} message(s) not acknowledged; first on {topic!r}: {exc!r}"
        )
        self.failures = failures


class ProducerFenced(RuntimeError):
    """Another process uses this worker's transactional id; this one stopped."""


def is_fenced(exc: BaseException) -> bool:
    """A newer producer with our transactional id exists: going on would fight it forever
    (each retry's fresh producer fences the other one in turn)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ProducerFencedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Producer:
    """Thin wrapper over ``KafkaProducer``: typed values, tracked futures, optional transactions."""

    def __init__(
        self,
        kafka: KafkaSettings,
        *,
        transactional_id: str | None = None,
        name: str = "producer",
        **overrides: Any,
    ) -> None:
        kw = kafka.client_kwargs(name)
        # Room for any output a worker may write (``kafka.output_limit``, checked before it is
        # sent) with its framing, and for any dead letter (bounded by ``whole_limit``).
        request = max(kafka.max_message_bytes * 2, kafka.output_limit + HEADROOM_BYTES, 1048576)
        kw.update(acks="all", linger_ms=5, max_request_size=request)
        if transactional_id:
            kw["transactional_id"] = transactional_id
        kw.update(overrides)
        self.kafka = kafka
        self.transactional = bool(transactional_id)
        self._producer: KafkaProducer = connect(lambda: KafkaProducer(**kw), kafka, name)
        if transactional_id:
            # Fences any earlier instance with this id and aborts its open transaction.
            self._producer.init_transactions()
        self._pending: list[tuple[str, FutureRecordMetadata]] = []

    @property
    def raw(self) -> KafkaProducer:
        return self._producer

    def send(
        self,
        topic: str,
        value: BaseModel | bytes | Mapping[str, Any] | None,
        key: str | bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> FutureRecordMetadata:
        if isinstance(value, BaseModel):
            data = encode(value)
        elif isinstance(value, Mapping):
            data = json.dumps(value).encode()
        else:
            data = value
        kbytes = key.encode() if isinstance(key, str) else key
        fut = self._producer.send(
            topic, value=data, key=kbytes, headers=headers, partition=partition
        )
        self._pending.append((topic, fut))
        return fut

    def send_dead_letter(self, dlq_topic: str, dl: DeadLetter) -> FutureRecordMetadata:
        """Send ``dl`` to ``dlq_topic``, bounded so that its size can never make the send fail.

        A worker commits past a bad record only once its dead letter is acknowledged, so one
        that is too big to send would wedge the partition: key and value beyond
        :func:`streams.deadletter.whole_limit` (for this producer's ``max_request_size``) are
        cut to a prefix, with the original's size and sha256 in the headers.
        """
        limit = whole_limit(self.kafka.max_message_bytes, self._producer.config["max_request_size"])
        dl = dl.bounded(limit)
        return self.send(dlq_topic, dl.value, key=dl.key, headers=dl.headers())

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait for every pending send; return how many arrived, or raise ProduceError."""
        pending, self._pending = self._pending, []
        try:
            self._producer.flush(timeout=timeout_s)
        except Exception as exc:  # a timeout here means nothing is known about any of them
            raise ProduceError([(t, exc) for t, _ in pending] or [("?", exc)]) from exc
        failures: list[tuple[str, BaseException]] = []
        acked: Counter[str] = Counter()
        for topic, fut in pending:
            if fut.succeeded():
                acked[topic] += 1
            else:
                exc = fut.exception if fut.is_done else TimeoutError("no acknowledgement")
                failures.append((topic, exc or RuntimeError("send failed")))
        for topic, n in acked.items():  # one metric update per topic, not per message
            MESSAGES_PRODUCED.labels(topic).inc(n)
        for topic, _ in failures:
            PRODUCE_FAILURES.labels(topic).inc()
        if failures:
            for topic, exc in failures[:3]:
                log.error("send to %s failed: %r", topic, exc)
            raise ProduceError(failures)
        return len(pending)

    # Transactions: the outputs of a batch and its input offsets commit together or not at all.
    def begin(self) -> None:
        self._producer.begin_transaction()

    def commit_transaction(
        self, offsets: dict[Any, Any] | None = None, group_metadata: Any = None
    ) -> int:
        if offsets:
            self._producer.send_offsets_to_transaction(offsets, group_metadata)
        self._producer.commit_transaction()
        return self.flush()

    def abort(self) -> None:
        self._pending = []
        try:
            self._producer.abort_transaction()
        except Exception as exc:  # the next init/commit reports a fatal state
            log.warning("abort_transaction failed: %r", exc)

    def close(self, timeout_s: float = 10.0) -> None:
        try:
            if self._pending and not self.transactional:
                self.flush(timeout_s)
        finally:
            self._producer.close(timeout=timeout_s)
