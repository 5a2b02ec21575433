"""One engine interface for serving and judging, whatever runs the model.

Engines know no Kafka and no SQLite: they take chat requests and return completions. The
serve worker, the verifier's cascade and the OpenAI-compatible server all talk to this
interface, so swapping transformers for vLLM (in-process or over HTTP) changes one config
key, not the workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

#: An OpenAI-style chat message: {"role": "user" | "system" | "assistant", "content": str}.
Message = dict[str, str]


class EngineError(RuntimeError):
    """The engine could not do what was asked (bad adapter, backend down, bad request)."""


class EngineUnavailable(EngineError):
    """The engine cannot be reached, timed out, or answered 5xx/429: not the request's fault.

    Workers wait for it (``/readyz`` 503, a gauge, an alert) and retry; they never
    dead-letter a record because of it.
    """


class EngineMisconfigured(EngineUnavailable):
    """The deployment's fault, not the request's: the model server refuses the API key
    (HTTP 401/403), does not serve the configured base model, or has no such path (a
    ``base_url`` that does not end in ``/v1``). Waited for like a server that is down (an
    operator fixes the key, the name or the server, and work resumes); the message says what
    is wrong and which setting to look at, since ``/readyz`` shows it as it is."""


class EngineRejected(EngineError, ValueError):
    """The engine refused this request (HTTP 4xx other than 401/403/404/408/429: a prompt
    longer than the context, a chat template that refuses the roles): the record's fault, so
    a worker dead-letters it without retrying."""


class AdapterMissing(EngineUnavailable):
    """The engine does not know the adapter a request named (HTTP 404 on a model that is an
    adapter): a shared server restarted and forgot it. Not the record's fault; the worker
    has the router load it again (``AdapterRouter.restore``) and retries."""

    def __init__(self, adapter: str, message: str) -> None:
        super().__init__(message)
        self.adapter = adapter


class AdapterLoadError(EngineError):
    """An adapter was refused or failed to load; whatever served before keeps serving."""


class AdapterLoadUnavailable(AdapterLoadError, EngineUnavailable):
    """A load that failed for a passing reason (the server restarting, a 5xx or a timeout):
    not a verdict on the adapter, so the router tries it again with backoff, whereas a plain
    ``AdapterLoadError`` (bad files, a 4xx refusal) is final for that event."""


@dataclass(frozen=True)
class ChatRequest:
    """One prompt and how to sample it.

    ``n`` samples come from one batched call. ``adapter`` names a loaded adapter (None: the
    base model). With ``continue_final`` the last message is an assistant turn to continue
    rather than a new turn to answer (the verdict prefix of a fast judge). ``logprobs`` asks
    for the top-k log-probabilities of the first generated token.
    """

    messages: Sequence[Message]
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int | None = None
    adapter: str | None = None
    continue_final: bool = False
    logprobs: int = 0

    def sampling_key(self) -> tuple[object, ...]:
        """Requests with equal keys can share one batched generate call."""
        return (
            self.adapter,
            self.n,
            self.temperature,
            self.top_p,
            self.max_tokens,
            self.seed,
            self.continue_final,
            self.logprobs,
        )


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int
    finish_reason: str  # "stop" (end of turn) or "length" (hit max_tokens)
    top_logprobs: dict[str, float] | None = None  # first generated token, when asked


@dataclass(frozen=True)
class ChatResult:
    completions: list[Completion]
    prompt_tokens: int
    adapter: str | None = None

    @property
    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.completions)


@runtime_checkable
class Engine(Protocol):
    """What serve, verify and the HTTP server need from a model backend."""

    model_name: str

    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One result per request, in order. Batches internally as the backend allows."""
        ...

    def load_adapter(self, name: str, path: str) -> None:
        """Load a LoRA adapter under an immutable name; raise AdapterLoadError if refused."""
        ...

    def unload_adapter(self, name: str) -> None: ...

    def adapters(self) -> list[str]:
        """Names of the adapters loaded now."""
        ...

    def close(self) -> None: ...


def generate_batched(
    engine: Engine, requests: Sequence[ChatRequest], batch_size: int
) -> list[ChatResult]:
    """``engine.generate`` over ``requests``, ``batch_size`` at a time."""
    out: list[ChatResult] = []
    for i in range(0, len(requests), batch_size):
        out += engine.generate(requests[i : i + batch_size])
    return out
