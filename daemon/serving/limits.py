"""The bounds of the OpenAI-compatible API, in one light module (no FastAPI import): the
server reads them, and the configuration block ``serve.http`` *is* them (``HttpConfig``
extends :class:`ApiLimits`), so each bound and its default are written once.

One request must not be able to hold the engine for long (a huge ``max_tokens`` or ``n``, a
novel-length prompt), and a burst must not pile up behind it: beyond ``max_queue`` requests
in flight or waiting, the server answers 429 at once instead of queueing without end. Nor
may one request make the server buffer and parse an unbounded body: ``max_body_bytes`` is
enforced before the body is read whole (``body_limit``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: What a 429 tells a client to wait (``Retry-After``, seconds): about one generation.
RETRY_AFTER_S = 1


#: The default ``max_body_bytes``: far above what any request within the other bounds needs
#: (``max_prompt_chars`` of the worst JSON escaping, six bytes a character, is under 200 KB).
MAX_BODY_BYTES = 4 * 1024 * 1024


class ApiLimits(BaseModel):
    """Per-request bounds (beyond them: 400 naming the parameter, its value and the limit;
    413 for the body's size) and the admission bound (beyond it: 429 with ``Retry-After``)."""

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(
        4096,
        ge=1,
        description="Largest max_tokens / max_completion_tokens a request may ask (400 beyond).",
    )
    max_n: int = Field(
        8,
        ge=1,
        le=256,
        description="Largest n a request may ask (400 beyond); at least serve's n when a "
        "replica's engine is this server.",
    )
    max_prompt_chars: int = Field(
        32_000,
        ge=1,
        description="Longest prompt, in characters over all messages (400 beyond).",
    )
    max_queue: int = Field(
        16,
        ge=1,
        description="Engine requests in flight plus waiting; one more is answered 429 at once "
        "(with Retry-After) instead of waiting.",
    )
    max_body_bytes: int = Field(
        MAX_BODY_BYTES,
        ge=1,
        description="Largest request body, in bytes: a larger one is refused 413 before it is "
        "parsed (by its Content-Length at once, or cut off there while it streams) and is "
        "never read whole.",
    )
