"""The bounds of the OpenAI-compatible API, in one light module (no FastAPI import) that both
the server and its configuration block (``serve.http``) read, so their defaults are one.

One request must not be able to hold the engine for long (a huge ``max_tokens`` or ``n``, a
novel-length prompt), and a burst must not pile up behind it: beyond ``max_queue`` requests
in flight or waiting, the server answers 429 at once instead of queueing without end.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_TOKENS_LIMIT = 4096
DEFAULT_MAX_N = 8
DEFAULT_MAX_PROMPT_CHARS = 32_000
DEFAULT_MAX_QUEUE = 16
#: What a 429 tells a client to wait (``Retry-After``, seconds): about one generation.
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class ApiLimits:
    """Per-request bounds (beyond them: 400 naming the parameter, its value and the limit)
    and the admission bound (beyond it: 429 with ``Retry-After``)."""

    max_tokens: int = DEFAULT_MAX_TOKENS_LIMIT
    max_n: int = DEFAULT_MAX_N
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    max_queue: int = DEFAULT_MAX_QUEUE

    def __post_init__(self) -> None:
        for name in ("max_tokens", "max_n", "max_prompt_chars", "max_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
