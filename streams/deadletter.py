"""Dead letters: a message no worker can use, kept whole on ``<topic>.dlq`` with the reason.

The value is the original bytes, untouched, so an operator can fix the producer and replay
it as it was; the why and where travel in headers (the convention Kafka Connect uses), so a
dead letter is never bigger than the message it preserves.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

HEADER_PREFIX = "selfdistill."


@dataclass(frozen=True)
class DeadLetter:
    """Where a message came from and why it was set aside."""

    source_topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    key: bytes | None
    value: bytes | None
    worker: str = ""

    def headers(self) -> list[tuple[str, bytes]]:
        fields = {
            "reason": self.reason,
            "error": self.detail,
            "source.topic": self.source_topic,
            "source.partition": str(self.partition),
            "source.offset": str(self.offset),
            "worker": self.worker,
        }
        return [(HEADER_PREFIX + k, v.encode()) for k, v in fields.items()]

    @classmethod
    def from_record(
        cls, headers: list[tuple[str, bytes]], key: bytes | None, value: bytes | None
    ) -> DeadLetter:
        """Read a dead letter back off a DLQ topic (for ``tail``, tests and replay tools)."""
        h = {k.removeprefix(HEADER_PREFIX): v.decode("utf-8", "replace") for k, v in headers or []}
        return cls(
            source_topic=h.get("source.topic", ""),
            partition=int(h.get("source.partition", "-1")),
            offset=int(h.get("source.offset", "-1")),
            reason=h.get("reason", ""),
            detail=h.get("error", ""),
            key=key,
            value=value,
            worker=h.get("worker", ""),
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "source": {
                "topic": self.source_topic,
                "partition": self.partition,
                "offset": self.offset,
            },
            "reason": self.reason,
            "error": self.detail,
            "worker": self.worker,
            **render_bytes("key", self.key),
            **render_bytes("value", self.value),
        }


def render_bytes(name: str, data: bytes | None) -> dict[str, Any]:
    """Bytes for a JSON line: the text when it is UTF-8, else base64 under ``<name>_b64``."""
    if data is None:
        return {name: None}
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_b64": base64.b64encode(data).decode()}
