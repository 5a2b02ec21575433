"""The embedded OpenAI-compatible HTTP server, over any Engine.

Clients that already speak OpenAI (the ``openai`` package, curl, LangChain, ...) reach the
served model and its LoRA adapters here without knowing about Kafka. The surface mirrors
vLLM's OpenAI server, so that a client, a dashboard or our own ``OpenAIEngine`` works the
same against ``selfdistill serve --http`` and against ``vllm serve --enable-lora``:

* ``GET /v1/models``: the base model card, then one card per loaded adapter with
  ``parent`` = the base model id and ``root`` = the adapter's path (vLLM's
  ``OpenAIServingModels.show_available_models``).
* ``POST /v1/chat/completions``: non-streaming chat completions, with vLLM's extras
  ``add_generation_prompt`` / ``continue_final_message``. ``model`` picks the base model or
  an adapter by name.
* ``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` and
  ``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: vLLM's runtime LoRA endpoints
  (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``), answering 200 with vLLM's plain-text
  ``Success: LoRA adapter '<name>' added successfully.`` Behind a bearer token when one is
  set, and only ever loading from inside the adapter registry: an HTTP caller must not be
  able to make the server read arbitrary paths.
* Errors use vLLM's OpenAI-style body ``{"error": {"message", "type", "param", "code"}}``
  with ``code`` = the HTTP status, which the ``openai`` client turns into its typed errors
  (404 -> ``NotFoundError``, 400 -> ``BadRequestError``, 401 -> ``AuthenticationError``).
* ``GET /healthz`` (the process answers) and ``GET /readyz`` (an engine is there and its
  last probe answered); neither ever waits on the engine.

The engine is synchronous and CPU/GPU-bound, so every engine call runs in a worker thread:
the event loop keeps answering health checks and queuing requests while a generation runs.

Bounded, because one caller must not be able to take the engine from the others
(``serve.http``, ``ApiLimits``): a request body over ``max_body_bytes`` is refused 413 before
it is read whole or parsed, and routes read their bodies only after the token check
(``body_limit``); ``max_tokens``, ``n`` and the prompt's length have upper bounds (400
naming the limit), at most ``max_queue`` engine requests are in flight or waiting
(one more is 429 at once, with ``Retry-After``), and chat and ``/v1/models`` need a bearer
token whenever the server is bound beyond loopback. No error body carries a credential or an
exception's text: a 500 says only its error id, which the log line with the traceback (masked
by ``daemon.redact``) also carries.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from adapters.files import AdapterFileError, verify_adapter
from daemon.engines.base import (
    ChatRequest,
    ChatResult,
    Completion,
    Engine,
    EngineError,
    EngineRejected,
    EngineUnavailable,
)
from daemon.redact import redact
from daemon.serving.body_limit import BodyLimit, BodyTooLarge, read_json
from daemon.serving.limits import RETRY_AFTER_S, ApiLimits

log = logging.getLogger(__name__)

#: When a request names neither ``max_tokens`` nor ``max_completion_tokens``. OpenAI's default
#: is "up to the context length"; a bounded default keeps one careless call from holding the
#: engine (and its single lock) for minutes.
DEFAULT_MAX_TOKENS = 256
#: OpenAI accepts 0..20 ``top_logprobs``; vLLM the same by default.
MAX_TOP_LOGPROBS = 20
#: vLLM's placeholder for a log-probability it cannot report (``ChatCompletionLogProb.logprob``).
UNKNOWN_LOGPROB = -9999.0


# ----------------------------------------------------------------- errors
class APIError(Exception):
    """An error that becomes an OpenAI-style JSON body with this status and type."""

    def __init__(
        self,
        status: int,
        message: str,
        err_type: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.param = param
        self.headers = headers


def error_response(
    status: int,
    message: str,
    err_type: str,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    """vLLM's ``ErrorResponse``: the OpenAI envelope, with the HTTP status as ``code``.

    The message is masked (``redact``): it often quotes an engine's error, and an engine
    over HTTP names its URL, credentials included.
    """
    body = {"error": {"message": redact(message), "type": err_type, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


def too_large(exc: BodyTooLarge) -> JSONResponse:
    """413 naming the limit and its key; the connection closes after it, so the server
    reads no more of a body it refused."""
    return error_response(413, str(exc), "RequestTooLargeError", headers={"Connection": "close"})


def internal_error(exc: BaseException) -> JSONResponse:
    """A 500 that tells the client only an error id; the log line has the id and the
    traceback (masked), for the operator."""
    err_id = uuid.uuid4().hex[:12]
    tb = "".join(traceback.format_exception(exc))
    log.error("unhandled error %s in the OpenAI server:\n%s", err_id, redact(tb))
    return error_response(
        500,
        f"internal server error (error id {err_id}; the server's log has the details)",
        "InternalServerError",
    )


class _SafeRoute(APIRoute):
    """Turns an unexpected exception into ``internal_error`` inside the route.

    An ``exception_handler(Exception)`` alone answers the client but Starlette re-raises the
    exception afterwards, and uvicorn then logs its text (secrets and all) on its own.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def safe(request: Request) -> Response:
            try:
                return await handler(request)
            except (APIError, StarletteHTTPException, RequestValidationError, BodyTooLarge):
                raise
            except Exception as exc:
                return internal_error(exc)

        return safe


# ----------------------------------------------------------------- request bodies
class TextPart(BaseModel):
    """A text content part; images and audio are refused by the union below."""

    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def as_engine_message(self) -> dict[str, str]:
        """Engines take ``{"role", "content"}`` with string content; text parts are joined."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        return {"role": self.role, "content": content or ""}


class ChatCompletionBody(BaseModel):
    """The subset of OpenAI's chat request an Engine can honour; the rest is refused or ignored.

    Fields that would change what is generated but which the engine cannot do (``stop``,
    ``tools``, ``response_format``, ``stream``) are refused with 400 rather than silently
    dropped; unknown fields are ignored, as vLLM does.
    """

    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessageIn] = Field(min_length=1)
    n: int = Field(default=1, ge=1)  # upper bound: ApiLimits.max_n
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)  # upper bound: ApiLimits.max_tokens
    max_completion_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    stream: bool = False
    # vLLM's chat-template extras (vllm/entrypoints/openai/protocol.py ChatCompletionRequest).
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    # Accepted so that they can be refused explicitly.
    stop: str | list[str] | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> ChatCompletionBody:
        if self.stream:
            raise ValueError("stream=true is not supported by this server; send stream=false")
        if self.stop:
            raise ValueError("'stop' sequences are not supported by this server")
        if self.tools:
            raise ValueError("'tools' are not supported by this server")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise ValueError("only response_format {'type': 'text'} is supported")
        if self.top_logprobs and not self.logprobs:
            raise ValueError("'top_logprobs' needs 'logprobs': true")
        if self.continue_final_message and self.add_generation_prompt:
            raise ValueError(
                "cannot set both 'continue_final_message' and 'add_generation_prompt' to true"
            )
        if not self.continue_final_message and not self.add_generation_prompt:
            raise ValueError(
                "'add_generation_prompt': false is only supported with "
                "'continue_final_message': true"
            )
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("'continue_final_message' needs the last message to be 'assistant'")
        return self

    def check_limits(self, limits: ApiLimits) -> None:
        """400 naming the parameter, its value and the limit, for a request that would hold
        the engine longer than this server allows."""
        asked = [("max_tokens", self.max_tokens, limits.max_tokens, "max_tokens")]
        asked.append(
            ("max_completion_tokens", self.max_completion_tokens, limits.max_tokens, "max_tokens")
        )
        asked.append(("n", self.n, limits.max_n, "max_n"))
        chars = sum(len(m.as_engine_message()["content"]) for m in self.messages)
        asked.append(("messages", chars, limits.max_prompt_chars, "max_prompt_chars"))
        for param, value, limit, key in asked:
            if value is not None and value > limit:
                what = f"{value} characters of prompt" if param == "messages" else f"{value}"
                raise APIError(
                    400,
                    f"'{param}' is {what}, over this server's limit of {limit} (serve.http.{key})",
                    "BadRequestError",
                    param=param,
                )

    def to_engine_request(self, adapter: str | None, limits: ApiLimits) -> ChatRequest:
        default = min(DEFAULT_MAX_TOKENS, limits.max_tokens)
        max_tokens = self.max_completion_tokens or self.max_tokens or default
        # logprobs without top_logprobs still needs the first token's distribution to say
        # how likely the generated token was: ask the engine for one alternative.
        k = max(1, self.top_logprobs or 0) if self.logprobs else 0
        return ChatRequest(
            messages=[m.as_engine_message() for m in self.messages],
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=max_tokens,
            seed=self.seed,
            adapter=adapter,
            continue_final=self.continue_final_message,
            logprobs=k,
        )


class LoadLoRAAdapterBody(BaseModel):
    """vLLM's ``LoadLoRAAdapterRequest``."""

    lora_name: str = Field(min_length=1)
    lora_path: str = Field(min_length=1)


class UnloadLoRAAdapterBody(BaseModel):
    """vLLM's ``UnloadLoRAAdapterRequest`` (``lora_int_id`` is accepted and ignored)."""

    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None


# ----------------------------------------------------------------- responses
def _logprobs_block(body: ChatCompletionBody, c: Completion) -> dict[str, Any] | None:
    """OpenAI's ``choices[i].logprobs`` for the first generated token only.

    Engines report the top-k distribution of the first generated token, not of every token,
    so ``content`` holds exactly one entry. Its ``token``/``logprob`` name the generated token:
    under greedy decoding that is the most likely one; when sampling, the most likely
    alternative the text starts with, or vLLM's placeholder (``""``, -9999.0) when the sampled
    token is not among the alternatives.
    """
    if not body.logprobs or c.top_logprobs is None:
        return None
    items = list(c.top_logprobs.items())
    if not items:
        return None
    if body.temperature == 0:
        chosen: tuple[str, float] = items[0]
    else:
        chosen = next(
            ((t, lp) for t, lp in items if t and c.text.startswith(t)), ("", UNKNOWN_LOGPROB)
        )
    top = [
        {"token": t, "logprob": lp, "bytes": list(t.encode())}
        for t, lp in items[: body.top_logprobs or 0]
    ]
    entry = {
        "token": chosen[0],
        "logprob": chosen[1],
        "bytes": list(chosen[0].encode()),
        "top_logprobs": top,
    }
    return {"content": [entry]}


def _completion_response(body: ChatCompletionBody, result: ChatResult) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": c.text},
            "logprobs": _logprobs_block(body, c),
            "finish_reason": c.finish_reason,
            "stop_reason": None,
        }
        for i, c in enumerate(result.completions)
    ]
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": choices,
        "usage": {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        },
    }


def _model_card(
    model_id: str, *, root: str | None, parent: str | None, created: int
) -> dict[str, Any]:
    """vLLM's ``ModelCard`` (id, object, created, owned_by, root, parent, max_model_len)."""
    return {
        "id": model_id,
        "object": "model",
        "created": created,
        "owned_by": "selfdistill",
        "root": root,
        "parent": parent,
        "max_model_len": None,
        "permission": [],
    }


# ----------------------------------------------------------------- app
def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IPs; any other name counts as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _bearer_ok(request: Request, tokens: list[str]) -> bool:
    """Whether the request carries one of ``tokens`` as its bearer token (constant time)."""
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    ok = False
    for token in tokens:  # every one compared: no early exit to time
        ok |= hmac.compare_digest(given.strip().encode(), token.encode())
    return scheme.lower() == "bearer" and ok


def _unauthorized(what: str) -> StarletteHTTPException:
    return StarletteHTTPException(
        401, f"a valid {what} token is required", headers={"WWW-Authenticate": "Bearer"}
    )


def create_app(
    engine: Engine,
    *,
    registry_dir: Path,
    admin_token: str | None = None,
    api_token: str | None = None,
    exposed: bool = False,
    limits: ApiLimits | None = None,
) -> FastAPI:
    """The FastAPI app over ``engine``.

    ``registry_dir``: adapters may only be loaded from inside it (``verify_adapter``).
    ``admin_token``: when set, the adapter endpoints need ``Authorization: Bearer <token>``.
    ``api_token``: when set, chat and ``/v1/models`` need it (or the admin token).
    ``exposed``: the server is reachable beyond loopback, so chat and ``/v1/models`` need a
    token even without ``api_token`` (the admin token): a network caller must not get free
    generations on the operator's GPU. ``limits``: the bounds of a request and of the queue.
    """
    for name, token in (("admin_token", admin_token), ("api_token", api_token)):
        if token is not None and not token:
            raise ValueError(f"{name} must be None or a non-empty string")
    client_tokens = [t for t in (api_token, admin_token) if t]
    if exposed and not client_tokens:
        raise ValueError("an exposed server needs an admin or API token")
    limits = limits or ApiLimits()
    app = FastAPI(title="selfdistill OpenAI-compatible server", docs_url=None, redoc_url=None)
    app.router.route_class = _SafeRoute
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, refuse=too_large)
    app.state.engine = engine
    app.state.registry_dir = Path(registry_dir)
    # Adapter paths as loaded through this server; adapters loaded by other means (the serve
    # worker's hot-swap) are still listed, with root None, since Engine exposes names only.
    app.state.adapter_paths = {}
    # What /readyz reports without calling the engine: the adapters last seen, whether the
    # last probe of the engine failed, and whether a probe is running now.
    app.state.adapters_seen = []
    app.state.engine_failing = False
    app.state.probing = False
    app.state.in_queue = 0  # engine requests in flight or waiting for a thread
    started = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.err_type, exc.headers, exc.param)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(_: Request, exc: BodyTooLarge) -> JSONResponse:
        return too_large(exc)  # it grew past the limit while a route read it

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        # 400, as the OpenAI API answers a bad parameter (not FastAPI's 422); the message
        # names the field, so a client sees what to fix.
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}" if loc else msg)
        return error_response(400, "; ".join(parts) or "invalid request", "BadRequestError")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), "HTTPError", exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return internal_error(exc)  # outside a route (middleware); routes use _SafeRoute

    def require_admin(request: Request) -> None:
        """Bearer-token check for the adapter endpoints."""
        if admin_token is not None and not _bearer_ok(request, [admin_token]):
            raise _unauthorized("admin")

    def require_client(request: Request) -> None:
        """Bearer-token check for chat and models: the API or the admin token, needed when
        an API token is set or the server is exposed; loopback without one stays open."""
        if (api_token is not None or exposed) and not _bearer_ok(request, client_tokens):
            raise _unauthorized("API")

    @contextlib.asynccontextmanager
    async def admitted() -> AsyncIterator[None]:
        """A place in the engine's queue, or 429 at once: a request never waits for one.

        Counted on the event loop (one thread), so no lock; held until the engine call ends.
        """
        if app.state.in_queue >= limits.max_queue:
            raise APIError(
                429,
                f"the server is busy: {limits.max_queue} engine requests are in flight or "
                f"waiting (serve.http.max_queue); retry after {RETRY_AFTER_S} s",
                "RateLimitError",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        app.state.in_queue += 1
        try:
            yield
        finally:
            app.state.in_queue -= 1

    async def engine_adapters(eng: Engine) -> list[str]:
        names = list(await run_in_threadpool(eng.adapters))
        app.state.adapters_seen = names
        return names

    def probe(eng: Engine) -> None:
        """Refresh what /readyz reports, on a thread of its own (never the request pool)."""
        try:
            app.state.adapters_seen = list(eng.adapters())
            app.state.engine_failing = False
        except EngineError as exc:
            app.state.engine_failing = True
            log.warning("readiness probe: the engine did not answer: %s", redact(str(exc)))
        except Exception as exc:  # a race inside the engine: not a verdict on it
            log.warning("readiness probe failed: %s", redact(f"{type(exc).__name__}: {exc}"))
        finally:
            app.state.probing = False

    def current_engine(request: Request) -> Engine:
        eng = request.app.state.engine
        if eng is None:
            raise APIError(503, "the engine is not loaded", "ServiceUnavailableError")
        return eng

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(request: Request) -> JSONResponse:
        """Answers from the last probe and starts the next one: a busy or hung engine (all
        request threads held) cannot make the probe itself hang."""
        eng = request.app.state.engine
        if eng is None:
            return JSONResponse({"status": "not ready"}, status_code=503)
        if not app.state.probing:
            app.state.probing = True
            threading.Thread(target=probe, args=(eng,), name="readyz", daemon=True).start()
        if app.state.engine_failing:
            body = {"status": "not ready", "error": "the engine did not answer (see the log)"}
            return JSONResponse(body, status_code=503)
        return JSONResponse(
            {"status": "ready", "model": eng.model_name, "adapters": app.state.adapters_seen}
        )

    @app.get("/v1/models", dependencies=[Depends(require_client)])
    async def list_models(request: Request) -> dict[str, Any]:
        eng = current_engine(request)
        async with admitted():
            names = await engine_adapters(eng)
        paths: dict[str, str] = request.app.state.adapter_paths
        cards = [_model_card(eng.model_name, root=eng.model_name, parent=None, created=started)]
        cards += [
            _model_card(n, root=paths.get(n), parent=eng.model_name, created=started) for n in names
        ]
        return {"object": "list", "data": cards}

    # Bodies are read inside the routes (read_json), after the token check: see body_limit.
    @app.post("/v1/chat/completions", dependencies=[Depends(require_client)])
    async def chat_completions(request: Request) -> dict[str, Any]:
        body = await read_json(request, ChatCompletionBody)
        eng = current_engine(request)
        body.check_limits(limits)
        async with admitted():
            return await _chat(eng, body)

    async def _chat(eng: Engine, body: ChatCompletionBody) -> dict[str, Any]:
        adapter: str | None = None
        if body.model != eng.model_name:
            if body.model not in await engine_adapters(eng):
                raise APIError(404, f"The model `{body.model}` does not exist.", "NotFoundError")
            adapter = body.model
        try:
            request = body.to_engine_request(adapter, limits)
            [result] = await run_in_threadpool(eng.generate, [request])
        except EngineError as exc:
            # The usual cause: the adapter was unloaded between the check above and generate.
            if adapter is not None and adapter not in await engine_adapters(eng):
                raise APIError(
                    404, f"The model `{adapter}` does not exist.", "NotFoundError"
                ) from exc
            if isinstance(exc, EngineRejected):  # the request's fault: a prompt too long
                raise APIError(400, str(exc), "BadRequestError") from exc
            if isinstance(exc, EngineUnavailable):
                raise APIError(503, str(exc), "ServiceUnavailableError") from exc
            raise APIError(500, str(exc), "InternalServerError") from exc
        return _completion_response(body, result)

    @app.post("/v1/load_lora_adapter", dependencies=[Depends(require_admin)])
    async def load_lora_adapter(request: Request) -> PlainTextResponse:
        body = await read_json(request, LoadLoRAAdapterBody)
        eng = current_engine(request)
        if body.lora_name == eng.model_name:
            raise APIError(400, "an adapter cannot take the base model's name", "InvalidUserInput")
        try:
            path = verify_adapter(request.app.state.registry_dir, body.lora_path, None)
        except AdapterFileError as exc:
            raise APIError(400, str(exc), "InvalidUserInput") from exc
        async with admitted():
            try:
                await run_in_threadpool(eng.load_adapter, body.lora_name, str(path))
            except EngineError as exc:  # AdapterLoadError, and any other refusal by the engine
                raise APIError(400, str(exc), "BadRequestError") from exc
            await engine_adapters(eng)
        request.app.state.adapter_paths[body.lora_name] = str(path)
        log.info("adapter %s loaded over HTTP from %s", body.lora_name, path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter", dependencies=[Depends(require_admin)])
    async def unload_lora_adapter(request: Request) -> PlainTextResponse:
        body = await read_json(request, UnloadLoRAAdapterBody)
        eng = current_engine(request)
        async with admitted():
            if body.lora_name not in await engine_adapters(eng):
                raise APIError(
                    404, f"The lora adapter '{body.lora_name}' cannot be found.", "NotFoundError"
                )
            try:
                await run_in_threadpool(eng.unload_adapter, body.lora_name)
            except EngineError as exc:
                raise APIError(400, str(exc), "BadRequestError") from exc
            await engine_adapters(eng)
        request.app.state.adapter_paths.pop(body.lora_name, None)
        log.info("adapter %s unloaded over HTTP", body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    return app


def build_server(
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    registry_dir: Path,
    admin_token: str | None = None,
    api_token: str | None = None,
    limits: ApiLimits | None = None,
    log_level: str = "info",
) -> uvicorn.Server:
    """A configured uvicorn server, not yet running: ``.run()`` blocks, or run it in a thread.

    Refuses a non-loopback ``host`` without ``admin_token``: anyone who can reach the port
    could otherwise load adapters into the serving model. Bound beyond loopback, chat and
    ``/v1/models`` need a token too (``create_app``'s ``exposed``). uvicorn logs through the
    process's own logging (``log_config=None``), so its lines are masked like the daemon's.
    """
    exposed = not is_loopback(host)
    if admin_token is None and exposed:
        raise ValueError(
            f"refusing to serve on {host!r} without an admin token: the adapter endpoints "
            "would be open to the network; set an admin token or bind to 127.0.0.1"
        )
    app = create_app(
        engine,
        registry_dir=registry_dir,
        admin_token=admin_token,
        api_token=api_token,
        exposed=exposed,
        limits=limits,
    )
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False, log_config=None
    )
    return uvicorn.Server(config)


def run_server(
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    registry_dir: Path,
    admin_token: str | None = None,
    api_token: str | None = None,
    limits: ApiLimits | None = None,
) -> None:
    """Serve until interrupted (blocking). See ``build_server`` for the exposure rule."""
    build_server(
        engine,
        host=host,
        port=port,
        registry_dir=registry_dir,
        admin_token=admin_token,
        api_token=api_token,
        limits=limits,
    ).run()
