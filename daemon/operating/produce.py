"""``selfdistill produce``: JSONL prompts from producers onto the ``prompts`` topic.

A bad line is reported with its number and skipped; the others still go out, because one
malformed record in a batch of ten thousand should cost one record, not the batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pydantic import ValidationError

from streams.producer import ProduceError, Producer
from streams.schemas import PromptInput, PromptMessage, validation_summary


@dataclass
class ProduceReport:
    produced: list[str] = field(default_factory=list)
    failed: list[tuple[int, str]] = field(default_factory=list)
    send_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.send_error is None


def parse_lines(lines: Iterable[str]) -> Iterator[tuple[int, PromptMessage | str]]:
    """(line number, message) for good lines, (line number, reason) for bad ones."""
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield number, f"not JSON ({exc.msg} at column {exc.colno})"
            continue
        if not isinstance(data, dict):
            yield number, f"expected a JSON object, got {type(data).__name__}"
            continue
        try:
            yield number, PromptInput.model_validate(data).to_message()
        except ValidationError as exc:
            yield number, validation_summary(exc)


def produce_prompts(
    producer: Producer, topic: str, lines: Iterable[str], flush_every: int = 1000
) -> ProduceReport:
    report = ProduceReport()
    pending: list[str] = []
    try:
        for number, item in parse_lines(lines):
            if isinstance(item, str):
                report.failed.append((number, item))
                continue
            producer.send(topic, item, key=item.id)
            pending.append(item.id)
            if len(pending) >= flush_every:
                producer.flush()
                report.produced += pending
                pending = []
        producer.flush()
        report.produced += pending
    except ProduceError as exc:
        report.send_error = str(exc)
    return report
