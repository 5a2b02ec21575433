"""What a worker's handler is given and what it gives back: records in, outputs out."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


@dataclass(slots=True)
class Record(Generic[M]):
    """A validated message and where it came from."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: M
    timestamp_ms: int = 0


@dataclass(frozen=True)
class Output:
    """A message the handler wants produced as part of its batch's effect.

    ``source``: the input record it was made from. An output larger than the worker may
    write (``kafka.output_limit``) is then that record's fault: the record is dead-lettered
    (``output-too-large``) with none of its outputs, and the rest of the batch commits.
    Without a source nobody can be blamed, and the loop stops (:mod:`streams.outputs`).
    """

    topic: str
    value: BaseModel | bytes
    key: str | None = None
    headers: list[tuple[str, bytes]] | None = None
    source: Record[Any] | None = field(default=None, compare=False, repr=False)


@dataclass
class BatchResult:
    """What a handler returns: messages to produce, and records it refuses (dead-lettered)."""

    outputs: list[Output] = field(default_factory=list)
    rejected: list[tuple[Record[Any], str]] = field(default_factory=list)

    def extend(self, other: BatchResult) -> BatchResult:
        self.outputs.extend(other.outputs)
        self.rejected.extend(other.rejected)
        return self


Handler = Callable[[list[Record[M]]], BatchResult | None]


@dataclass
class LoopStats:
    """What one worker loop did, for its log line on exit and for tests."""

    consumed: int = 0
    processed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    commits: int = 0
    commit_failures: int = 0
    handler_failures: int = 0
    isolated: int = 0
    unavailable_waits: int = 0
    abandoned: int = 0
    undecodable_runs: int = 0
    records_skipped: int = 0
    log_resets: int = 0
    records_lost: int = 0
