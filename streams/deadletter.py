"""Dead letters: a message no worker can use, set aside on ``<topic>.dlq`` with the reason.

A dead letter must always be deliverable. A worker commits past a bad record only once its
dead letter is acknowledged, so a dead letter that the producer or the broker refuses makes
the worker retry that batch forever: the partition is wedged behind one bad record. Hence:

- The value is the original bytes, untouched, whenever the record fits what any producer
  here can send and a default broker accepts (:func:`whole_limit`), so an operator can fix
  the producer and replay it as it was. The why and where travel in headers (the convention
  Kafka Connect uses), so a dead letter is hardly bigger than the message it preserves.
- A record too big for that (a 2 MB prompt the broker accepted from a client with a raised
  limit, dead-lettered as ``oversize``) keeps only a bounded prefix of its value
  (:data:`TRUNCATED_VALUE_BYTES`), and of its key if the key itself is huge
  (:data:`TRUNCATED_KEY_BYTES`), with headers saying so: ``selfdistill.truncated: true``,
  ``selfdistill.original.size`` and ``selfdistill.original.sha256`` (byte length and hex
  digest of the full value) and ``selfdistill.original.key.size`` / ``.key.sha256`` when the
  key was cut. With the source topic, partition and offset, that finds and identifies the
  original for as long as the source topic retains it.
- Header texts are bounded too (the error detail, often an exception's text, to
  :data:`MAX_DETAIL_BYTES`) and encoded so that any Python string encodes.
- The error detail is masked when a dead letter is made (:mod:`streams.masking`): an
  exception's text quotes what it failed on, credentials included, and a dead-letter topic
  is kept for weeks and read by operators.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, replace
from typing import Any, overload

from streams.masking import mask

HEADER_PREFIX = "selfdistill."

BROKER_MESSAGE_BYTES = 1_048_576
"""What every producer here may send and a default broker accepts: Kafka's default
``message.max.bytes`` is 1,048,588 bytes per record batch, framing included, and
:class:`streams.producer.Producer` never allows less than 1 MiB (``max_request_size`` is
``max(kafka.max_message_bytes * 2, 1048576)``). A cluster configured for larger messages says
so with a larger ``kafka.max_message_bytes``."""

HEADROOM_BYTES = 16 * 1024
"""Room kept below the limit for the dead letter's headers (bounded below: at most ~6 KiB)
and the record and batch framing (about 100 bytes)."""

TRUNCATED_VALUE_BYTES = 64 * 1024
"""How much of a value too big to keep whole a dead letter keeps: enough to see what it was
(the start of its JSON, its id) at a size every broker and producer accepts."""

TRUNCATED_KEY_BYTES = 4 * 1024
"""How much of a key a too-big dead letter keeps (keys are ids; a longer one is cut)."""

MAX_DETAIL_BYTES = 4 * 1024
"""Most bytes of the ``error`` header: exception texts can quote a whole input."""

MAX_FIELD_BYTES = 1024
"""Most bytes of any other header (topic names are at most 249 characters)."""


def whole_limit(max_message_bytes: int, max_request_size: int | None = None) -> int:
    """Most bytes of key + value a dead letter carries whole; bigger ones are truncated.

    ``max(max_message_bytes, BROKER_MESSAGE_BYTES)`` (a record a worker accepts, or any a
    default broker takes, and never more than the sending producer's ``max_request_size``)
    less :data:`HEADROOM_BYTES` for the headers and framing. With the default
    ``kafka.max_message_bytes`` (1,000,000) every record a worker accepts fits whole; an
    oversize one fits whole only if it is within what the broker takes by default.
    """
    limit = max(max_message_bytes, BROKER_MESSAGE_BYTES)
    if max_request_size is not None:
        limit = min(limit, max_request_size)
    return max(limit - HEADROOM_BYTES, 0)


@dataclass(frozen=True)
class DeadLetter:
    """Where a message came from and why it was set aside.

    ``key`` and ``value`` are the original bytes unless ``truncated``; then they are prefixes
    and ``original_*`` give the full ones' byte length and sha256 (``None`` for a part that
    was kept whole).
    """

    source_topic: str
    partition: int
    offset: int
    reason: str
    detail: str
    key: bytes | None
    value: bytes | None
    worker: str = ""
    truncated: bool = False
    original_size: int | None = None
    original_sha256: str | None = None
    original_key_size: int | None = None
    original_key_sha256: str | None = None

    def __post_init__(self) -> None:
        # Masked once, here, so the headers, ``as_json`` and any log of it agree.
        object.__setattr__(self, "detail", mask(self.detail))

    def bounded(self, limit: int) -> DeadLetter:
        """This dead letter if its key and value fit ``limit`` bytes, else a truncated copy."""
        key, value = self.key or b"", self.value or b""
        if self.truncated or len(key) + len(value) <= limit:
            return self
        changes: dict[str, Any] = {"truncated": True}
        if len(key) > min(TRUNCATED_KEY_BYTES, limit):
            changes.update(
                key=key[: min(TRUNCATED_KEY_BYTES, limit)],
                original_key_size=len(key),
                original_key_sha256=hashlib.sha256(key).hexdigest(),
            )
        kept_key = len(changes.get("key", key))
        room = min(TRUNCATED_VALUE_BYTES, max(limit - kept_key, 0))
        if len(value) > room:
            changes.update(
                value=value[:room],
                original_size=len(value),
                original_sha256=hashlib.sha256(value).hexdigest(),
            )
        return replace(self, **changes)

    def headers(self) -> list[tuple[str, bytes]]:
        fields = {
            "reason": self.reason,
            "error": self.detail,
            "source.topic": self.source_topic,
            "source.partition": str(self.partition),
            "source.offset": str(self.offset),
            "worker": self.worker,
        }
        if self.truncated:
            fields["truncated"] = "true"
            for name, v in (
                ("original.size", self.original_size),
                ("original.sha256", self.original_sha256),
                ("original.key.size", self.original_key_size),
                ("original.key.sha256", self.original_key_sha256),
            ):
                if v is not None:
                    fields[name] = str(v)
        return [
            (
                HEADER_PREFIX + k,
                _bounded_text(v, MAX_DETAIL_BYTES if k == "error" else MAX_FIELD_BYTES),
            )
            for k, v in fields.items()
        ]

    @classmethod
    def from_record(
        cls, headers: list[tuple[str, bytes]], key: bytes | None, value: bytes | None
    ) -> DeadLetter:
        """Read a dead letter back off a DLQ topic (for ``tail``, tests and replay tools).

        Any record reads: a missing or malformed header gives the field's default.
        """
        h = {
            k.removeprefix(HEADER_PREFIX): (v or b"").decode("utf-8", "replace")
            for k, v in headers or []
        }
        return cls(
            source_topic=h.get("source.topic", ""),
            partition=_int(h.get("source.partition"), -1),
            offset=_int(h.get("source.offset"), -1),
            reason=h.get("reason", ""),
            detail=h.get("error", ""),
            key=key,
            value=value,
            worker=h.get("worker", ""),
            truncated=h.get("truncated", "").strip().lower() == "true",
            original_size=_int(h.get("original.size")),
            original_sha256=h.get("original.sha256"),
            original_key_size=_int(h.get("original.key.size")),
            original_key_sha256=h.get("original.key.sha256"),
        )

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": {
                "topic": self.source_topic,
                "partition": self.partition,
                "offset": self.offset,
            },
            "reason": self.reason,
            "error": self.detail,
            "worker": self.worker,
            "truncated": self.truncated,
        }
        if self.truncated:
            out.update(
                {
                    k: v
                    for k, v in (
                        ("original_size", self.original_size),
                        ("original_sha256", self.original_sha256),
                        ("original_key_size", self.original_key_size),
                        ("original_key_sha256", self.original_key_sha256),
                    )
                    if v is not None
                }
            )
        return {**out, **render_bytes("key", self.key), **render_bytes("value", self.value)}


def render_bytes(name: str, data: bytes | None) -> dict[str, Any]:
    """Bytes for a JSON line: the text when it is UTF-8, else base64 under ``<name>_b64``."""
    if data is None:
        return {name: None}
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        return {f"{name}_b64": base64.b64encode(data).decode()}


def _bounded_text(text: str, max_bytes: int) -> bytes:
    """``text`` as UTF-8 (a lone surrogate as ``\\udXXX``), cut to ``max_bytes`` with a marker."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= max_bytes:
        return data
    marker = f"... [{len(data)} bytes, truncated]".encode()
    head = data[: max(max_bytes - len(marker), 0)].decode("utf-8", "ignore").encode()
    return head + marker


@overload
def _int(text: str | None) -> int | None: ...
@overload
def _int(text: str | None, default: int) -> int: ...
def _int(text: str | None, default: int | None = None) -> int | None:
    """A header's integer, or ``default`` when it is missing or not an integer."""
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default
