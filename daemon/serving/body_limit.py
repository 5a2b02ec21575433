"""A request body is bounded before anything reads or parses it (``serve.http.max_body_bytes``).

Without a bound, one request carrying a gigabyte of JSON makes the server buffer and parse
it all, before the token check and before ``max_prompt_chars`` could say no. Two parts:

* :class:`BodyLimit`, an ASGI middleware in front of the whole app: a request whose
  ``Content-Length`` is over the limit is answered 413 at once, from its headers alone (no
  byte of its body is read, no token checked); any other body is counted while it streams
  and cut off at the limit (a chunked request without ``Content-Length`` included), raising
  :class:`BodyTooLarge` to whoever is reading it. The server holds at most the limit, plus
  what uvicorn reads ahead (64 KiB before it pauses the socket).
* :func:`read_json`: routes read their bodies themselves, after their dependencies. FastAPI
  reads and parses a declared body parameter *before* any dependency runs, so a token check
  written as a dependency would come after the parse; here it comes first, and a caller
  without a token gets 401 without a byte of its body read.

Order, then: a declared length over the limit is 413 (one header, cheaper than the token
check); otherwise a missing or wrong token is 401 before the body is read; a body that
streams past the limit is 413 when it does; only then is it parsed (400 for bad JSON or
parameters, ``max_prompt_chars`` included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

KEY = "serve.http.max_body_bytes"
M = TypeVar("M", bound=BaseModel)


class BodyTooLarge(Exception):
    """A request body over the limit: declared so by its ``Content-Length``, or seen so
    while it streamed (``declared`` None)."""

    def __init__(self, limit: int, declared: int | None = None) -> None:
        size = f"{declared} bytes" if declared is not None else f"more than {limit} bytes"
        super().__init__(
            f"the request body is {size}, over this server's limit of {limit} bytes ({KEY})"
        )
        self.limit = limit
        self.declared = declared


def declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``, or None without one (chunked) or with a malformed
    one (the HTTP server refuses those itself; the stream is counted all the same)."""
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimit:
    """ASGI middleware: bodies over ``max_bytes`` never reach the app whole.

    ``refuse`` makes the response to a declared-too-large request (the app's error body);
    a body that grows too large while the app reads it raises :class:`BodyTooLarge` from
    ``receive``, for the app's exception handler to answer.
    """

    def __init__(
        self, app: ASGIApp, *, max_bytes: int, refuse: Callable[[BodyTooLarge], ASGIApp]
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self.refuse(BodyTooLarge(self.max_bytes, declared))(scope, receive, send)
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, bounded, send)


async def read_json(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model``; call it after the route's token check.

    The body arrives bounded (:class:`BodyLimit`); a ``model`` that does not validate is a
    ``RequestValidationError``, answered 400 naming the field, as FastAPI's own body
    parameters are.
    """
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
