"""Message schemas of every topic, and the one place raw bytes become a validated message.

Every message carries a schema version ``v``. A worker reads exactly the versions it knows;
anything else is a :class:`DecodeError` with a reason code, which the consumer loop turns into
a dead letter instead of a crash.

Fields that carry the daemon's diagnostic text (an ``error``, a ``reason``, a tool's output)
are masked when a message is serialized (:mod:`streams.masking`): they often quote an
exception, and exceptions quote credentials. Still plain strings on the wire.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    model_validator,
)

from streams.masking import MaskedText, mask

SCHEMA_VERSION = 1
M = TypeVar("M", bound=BaseModel)

#: Bounded set of reasons a message can be dead-lettered (used as a metric label).
DecodeReason = Literal[
    "empty", "oversize", "not_utf8", "invalid_json", "unsupported_version", "invalid_schema"
]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    v: Literal[1] = 1


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


PromptId = str


def content_id(messages: list[ChatMessage]) -> str:
    """A stable id for a prompt that came without one: the hash of its chat messages.

    The same text produced twice gets the same id, so redelivery and re-production are
    both recognised downstream as the same prompt.
    """
    canon = json.dumps([m.model_dump() for m in messages], sort_keys=True, ensure_ascii=False)
    return "h-" + hashlib.sha256(canon.encode()).hexdigest()[:32]


class CheckSpec(BaseModel):
    """A checkable form of a prompt's answer, for the verifier's tool stages.

    ``checker`` names a registered deterministic checker (``daemon/verifying/checkers.py``: exact,
    numeric, regex, choice, arithmetic) that the ``checker`` stage applies to the final
    answer; ``tests`` is Python test code that the ``execution`` stage runs against a code
    candidate in a sandbox. A prompt may carry either or both. The schema only carries the
    form: whether a checker name is known is decided where it runs, so a producer on an older
    daemon is not refused for a checker the verifier has.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    checker: str | None = Field(None, min_length=1, max_length=64)
    answer: str | None = Field(
        None, description="the reference: a value, a regex pattern, or a choice letter"
    )
    choices: list[str] | None = None
    tolerance: float = Field(0.0, ge=0, allow_inf_nan=False)
    expression: str | None = Field(
        None, max_length=512, description="arithmetic checker: the expression to compute"
    )
    tests: str | None = Field(
        None, min_length=1, max_length=100_000, description="execution stage: Python tests"
    )

    @model_validator(mode="after")
    def _something_to_check(self) -> CheckSpec:
        if self.checker is None and self.tests is None:
            raise ValueError("a check needs 'checker' or 'tests'")
        return self


class PromptMessage(_Message):
    """``prompts``: one unlabeled prompt, as a plain string or as chat messages."""

    id: str = Field(min_length=1, max_length=256, pattern=r"^[^\s]+$")
    prompt: str | None = Field(None, min_length=1)
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    domain: str | None = Field(None, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict)
    check: CheckSpec | None = None

    @model_validator(mode="after")
    def _one_form(self) -> PromptMessage:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of 'prompt' or 'messages' is required")
        if self.messages is not None and self.messages[-1].role != "user":
            raise ValueError("the last of 'messages' must have role 'user'")
        return self

    def chat(self) -> list[ChatMessage]:
        if self.messages is not None:
            return list(self.messages)
        return [ChatMessage(role="user", content=self.prompt or "")]


class PromptInput(BaseModel):
    """A line of ``selfdistill produce`` input: like a prompt message, id and v optional."""

    model_config = ConfigDict(extra="forbid")

    v: Literal[1] = 1
    id: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[^\s]+$")
    prompt: str | None = Field(None, min_length=1)
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    domain: str | None = Field(None, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict)
    check: CheckSpec | None = None

    def to_message(self) -> PromptMessage:
        data = self.model_dump(exclude={"id"})
        probe = PromptMessage(id="probe", **data)  # validates the prompt/messages rule
        return PromptMessage(id=self.id or content_id(probe.chat()), **data)


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    seed: int | None = None


class ResponseMessage(_Message):
    """``responses``: the answer the production caller gets for one prompt."""

    id: str
    text: str
    adapter: str | None = Field(None, description="adapter version that answered; None = base")
    latency_s: float = Field(ge=0)
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    created_at: float = Field(default_factory=time.time)


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str
    completion_tokens: int = Field(ge=0)
    finish_reason: str | None = None


class CandidatesMessage(_Message):
    """``candidates``: every sample generated for one prompt, for the verifier."""

    id: str
    messages: list[ChatMessage] = Field(min_length=1)
    domain: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    check: CheckSpec | None = None
    samples: list[Sample] = Field(min_length=1)
    answer_index: int = Field(0, ge=0, description="which sample was served as the response")
    sampling: SamplingParams
    adapter: str | None = None
    created_at: float = Field(default_factory=time.time)


class VerdictCall(BaseModel):
    """One judge generation or tool check the cascade ran on a candidate, as published."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str = Field(min_length=1, max_length=40)
    kind: Literal["infer", "vote", "tool"]
    verdict: bool | None = None
    output: str
    prompt_tokens: int = Field(0, ge=0)
    completion_tokens: int = Field(0, ge=0)

    @field_serializer("output")
    def _mask_tool_output(self, output: str) -> str:
        """A tool's output is the daemon's text (a checker's or the sandbox's detail, which
        can quote an exception); a judge's is the model's, kept as generated."""
        return mask(output) if self.kind == "tool" else output


class VerdictStage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: str = Field(min_length=1, max_length=40)
    passed: bool
    calls: list[VerdictCall] = Field(default_factory=list)


class VerdictCandidate(BaseModel):
    """One candidate's way through the cascade: its stages, and where it stopped."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0)
    text: str
    answer: str
    accepted: bool = False
    rejected_at: str | None = None
    stages: list[VerdictStage] = Field(default_factory=list)

    @property
    def calls(self) -> list[VerdictCall]:
        """Everything the cascade ran on this candidate, in order (as the cascade's own)."""
        return [c for s in self.stages for c in s.calls]


class VerdictMessage(_Message):
    """``verdicts``: one prompt's whole outcome, what the store writer materialises.

    It carries the candidates message it judged (so the store needs nothing else to write
    the prompt, its candidates, every vote and the accepted sample), the policy it was judged
    under, and when (``judged_at``: the store's timestamps come from here, so a store rebuilt
    from this topic equals the live one row for row). Keyed by prompt id.
    """

    id: str
    question: str
    candidates: CandidatesMessage
    outcomes: list[VerdictCandidate]
    policy: Literal["first-valid", "all-valid"] = "first-valid"
    judge_adapter: str | None = Field(None, description="who judged: None = the frozen base")
    judged_at: float = Field(default_factory=time.time)

    @model_validator(mode="after")
    def _one_prompt(self) -> VerdictMessage:
        if self.candidates.id != self.id:
            raise ValueError(f"verdict {self.id!r} carries candidates of {self.candidates.id!r}")
        return self


#: ``AdapterEvent.version`` of "no adapter": the base model (the wire format's name for it;
#: ``adapters.registry.BASE`` is the same name, in a library streams does not import).
BASE_VERSION = "base"


class AdapterEvent(_Message):
    """``adapter-events``: tells every serve replica which adapter to route to."""

    action: Literal["promote", "rollback"]
    version: str = Field(description="immutable adapter version name, or 'base'")
    path: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    reason: MaskedText | None = None
    at: float = Field(default_factory=time.time)


class AdapterStatus(BaseModel):
    """``adapter-status``, keyed by replica: what one replica serves and how its last swap went.

    Each replica writes its own key after every swap attempt and on a heartbeat, and a
    ``stopped`` record when it shuts down cleanly; the compacted topic therefore holds one
    current record per replica. Unknown fields are ignored (not refused, as elsewhere): in a
    rolling update, readers of one release meet records of the next.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1] = 1
    replica: str = Field(min_length=1, max_length=200)
    role: str = "serve"
    state: Literal["serving", "stopped"] = "serving"
    serving: str = Field(description="the version this replica routes new requests to, or 'base'")
    requested: str | None = Field(None, description="the version the last event asked for")
    ok: bool = True
    error: MaskedText | None = Field(None, description="why the last swap was refused")
    retrying: bool = Field(
        False,
        description="the last swap failed for a passing reason (the engine unavailable) and "
        "is being tried again; added in v1 (older readers ignore it)",
    )
    attempts: int = Field(1, ge=1, description="attempts at ``requested`` in a row so far")
    swapped_at: float | None = None
    started_at: float = Field(default_factory=time.time)
    at: float = Field(default_factory=time.time)
    heartbeat_s: float = 15.0


class DecodeError(ValueError):
    """A message that no worker can use; carries a bounded reason code and a detail."""

    def __init__(self, reason: DecodeReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: DecodeReason = reason
        self.detail = detail


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json(exclude_none=False).encode()


def decode(schema: type[M], raw: bytes | None, max_bytes: int) -> M:
    """Bytes off a topic → a validated message, or :class:`DecodeError` saying why not."""
    if raw is None or len(raw) == 0:
        raise DecodeError("empty", "message has no value")
    if len(raw) > max_bytes:
        raise DecodeError(
            "oversize", f"{len(raw)} bytes exceeds kafka.max_message_bytes={max_bytes}"
        )
    try:  # fast path: pydantic parses and validates in one pass (half the cost of json.loads)
        return schema.model_validate_json(raw)
    except ValueError:
        pass  # the slow path below names the precise reason
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(
            "not_utf8", f"value is not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DecodeError(
            "invalid_json", f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise DecodeError("invalid_json", f"expected a JSON object, got {type(data).__name__}")
    version = data.get("v")
    if version != SCHEMA_VERSION:
        got = "missing" if "v" not in data else repr(version)
        raise DecodeError(
            "unsupported_version", f"schema version v={got}; this worker reads v={SCHEMA_VERSION}"
        )
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise DecodeError("invalid_schema", validation_summary(exc)) from None


def validation_summary(exc: ValidationError, limit: int = 5) -> str:
    """One line per problem, ``field.path: message``, for logs, DLQ headers and CLI output."""
    parts = []
    for err in exc.errors()[:limit]:
        loc = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    more = len(exc.errors()) - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
