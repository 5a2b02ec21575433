"""What a batch may write: each output measured against the limit the workers write under.

Producers allow what ``kafka.output_limit`` says (plus framing), and topics are created to
take it (:mod:`streams.topics`), but a handler can still make a message larger than that: a
verdict over many long candidates, a response to a prompt that asked for a book. Sent, it
is refused by the producer or the broker, the batch's commit fails, and the loop would redo
the batch forever, stalling the partition behind one prompt. Measured before sending, it is
an error about the input it came from (``Output.source``): that input is dead-lettered with
reason :data:`OUTPUT_TOO_LARGE` (the output topic, size and limit in the detail) and none
of its outputs are sent, so its effect is all or nothing (serve's response and candidates
for one prompt go together); the rest of the batch is written and committed as usual.

An oversize output without a source cannot be blamed on any record; guessing (the whole
batch) would dead-letter good records. :class:`OutputTooLarge` is raised instead and the
loop stops with it, uncommitted, naming the topic and sizes: a handler to fix (set
``source``) or a limit to raise, never an endless retry.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from streams.records import Output, Record
from streams.schemas import encode

#: The dead-letter reason of an input whose output is larger than the workers may write.
OUTPUT_TOO_LARGE = "output-too-large"


class OutputTooLarge(ValueError):
    """An output over the limit that no input record can be blamed for; the worker stops."""


def output_size(o: Output) -> int:
    """The bytes of ``o`` as sent: key, value (encoded) and headers."""
    value = o.value if isinstance(o.value, bytes) else encode(o.value)
    key = len(o.key.encode()) if o.key is not None else 0
    headers = sum(len(k.encode()) + len(v or b"") for k, v in o.headers or [])
    return key + len(value) + headers


def fit_outputs(
    outputs: list[Output], limit: int
) -> tuple[list[Output], list[tuple[Record[Any], str]]]:
    """The outputs to send (values encoded once, here) and the inputs to dead-letter.

    Every output of an input with one oversize output is dropped. Raises
    :class:`OutputTooLarge` for an oversize output without a ``source``.
    """
    encoded: list[tuple[Output, int]] = []
    blamed: dict[tuple[str, int, int], tuple[Record[Any], str]] = {}
    for o in outputs:
        if not isinstance(o.value, bytes):
            o = replace(o, value=encode(o.value))
        size = output_size(o)
        encoded.append((o, size))
        if size <= limit:
            continue
        why = (
            f"its output to {o.topic} is {size} bytes; workers write at most {limit} "
            "(kafka.max_output_bytes)"
        )
        if o.source is None:
            raise OutputTooLarge(
                f"an output to {o.topic} is {size} bytes, over the {limit} bytes workers write "
                "(kafka.max_output_bytes), and names no input record to dead-letter for it "
                "(Output.source). Nothing was committed; raise kafka.max_output_bytes (and "
                "the topic's max.message.bytes) or have the handler set Output.source"
            )
        src = o.source
        blamed.setdefault((src.topic, src.partition, src.offset), (src, why))
    if not blamed:
        return [o for o, _ in encoded], []
    kept = [
        o
        for o, _ in encoded
        if o.source is None or (o.source.topic, o.source.partition, o.source.offset) not in blamed
    ]
    return kept, list(blamed.values())
