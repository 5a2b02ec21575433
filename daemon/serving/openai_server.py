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
* ``GET /healthz`` (the process answers) and ``GET /readyz`` (an engine is there and answers).

The engine is synchronous and CPU/GPU-bound, so every engine call runs in a worker thread:
the event loop keeps answering health checks and queuing requests while a generation runs.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
import uuid
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.files import AdapterFileError, verify_adapter
from daemon.engines.base import (
    ChatRequest,
    ChatResult,
    Completion,
    Engine,
    EngineError,
)

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

    def __init__(self, status: int, message: str, err_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type


def error_response(
    status: int, message: str, err_type: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """vLLM's ``ErrorResponse``: the OpenAI envelope, with the HTTP status as ``code``."""
    body = {"error": {"message": message, "type": err_type, "param": None, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


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
    n: int = Field(default=1, ge=1, le=64)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
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

    def to_engine_request(self, adapter: str | None) -> ChatRequest:
        max_tokens = self.max_completion_tokens or self.max_tokens or DEFAULT_MAX_TOKENS
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


def create_app(engine: Engine, *, registry_dir: Path, admin_token: str | None = None) -> FastAPI:
    """The FastAPI app over ``engine``.

    ``registry_dir``: adapters may only be loaded from inside it (``verify_adapter``).
    ``admin_token``: when set, the adapter endpoints need ``Authorization: Bearer <token>``.
    """
    if admin_token is not None and not admin_token:
        raise ValueError("admin_token must be None or a non-empty string")
    app = FastAPI(title="selfdistill OpenAI-compatible server", docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.state.registry_dir = Path(registry_dir)
    # Adapter paths as loaded through this server; adapters loaded by other means (the serve
    # worker's hot-swap) are still listed, with root None, since Engine exposes names only.
    app.state.adapter_paths = {}
    started = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.err_type)

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
        log.exception("unhandled error in the OpenAI server")
        return error_response(500, f"{type(exc).__name__}: {exc}", "InternalServerError")

    def require_admin(request: Request) -> None:
        """Bearer-token check for the adapter endpoints (constant-time compare)."""
        if admin_token is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), admin_token.encode()
        ):
            raise StarletteHTTPException(
                401, "a valid admin token is required", headers={"WWW-Authenticate": "Bearer"}
            )

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
        eng = request.app.state.engine
        if eng is None:
            return JSONResponse({"status": "not ready"}, status_code=503)
        try:
            adapters = await run_in_threadpool(eng.adapters)
        except Exception as exc:
            return JSONResponse({"status": "not ready", "error": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready", "model": eng.model_name, "adapters": adapters})

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        eng = current_engine(request)
        names = await run_in_threadpool(eng.adapters)
        paths: dict[str, str] = request.app.state.adapter_paths
        cards = [_model_card(eng.model_name, root=eng.model_name, parent=None, created=started)]
        cards += [
            _model_card(n, root=paths.get(n), parent=eng.model_name, created=started) for n in names
        ]
        return {"object": "list", "data": cards}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionBody, request: Request) -> dict[str, Any]:
        eng = current_engine(request)
        adapter: str | None = None
        if body.model != eng.model_name:
            if body.model not in await run_in_threadpool(eng.adapters):
                raise APIError(404, f"The model `{body.model}` does not exist.", "NotFoundError")
            adapter = body.model
        try:
            [result] = await run_in_threadpool(eng.generate, [body.to_engine_request(adapter)])
        except EngineError as exc:
            # The usual cause: the adapter was unloaded between the check above and generate.
            if adapter is not None and adapter not in await run_in_threadpool(eng.adapters):
                raise APIError(
                    404, f"The model `{adapter}` does not exist.", "NotFoundError"
                ) from exc
            raise APIError(500, str(exc), "InternalServerError") from exc
        return _completion_response(body, result)

    @app.post("/v1/load_lora_adapter", dependencies=[Depends(require_admin)])
    async def load_lora_adapter(body: LoadLoRAAdapterBody, request: Request) -> PlainTextResponse:
        eng = current_engine(request)
        if body.lora_name == eng.model_name:
            raise APIError(400, "an adapter cannot take the base model's name", "InvalidUserInput")
        try:
            path = verify_adapter(request.app.state.registry_dir, body.lora_path, None)
        except AdapterFileError as exc:
            raise APIError(400, str(exc), "InvalidUserInput") from exc
        try:
            await run_in_threadpool(eng.load_adapter, body.lora_name, str(path))
        except EngineError as exc:  # AdapterLoadError, and any other refusal by the engine
            raise APIError(400, str(exc), "BadRequestError") from exc
        request.app.state.adapter_paths[body.lora_name] = str(path)
        log.info("adapter %s loaded over HTTP from %s", body.lora_name, path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter", dependencies=[Depends(require_admin)])
    async def unload_lora_adapter(
        body: UnloadLoRAAdapterBody, request: Request
    ) -> PlainTextResponse:
        eng = current_engine(request)
        if body.lora_name not in await run_in_threadpool(eng.adapters):
            raise APIError(
                404, f"The lora adapter '{body.lora_name}' cannot be found.", "NotFoundError"
            )
        try:
            await run_in_threadpool(eng.unload_adapter, body.lora_name)
        except EngineError as exc:
            raise APIError(400, str(exc), "BadRequestError") from exc
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
    log_level: str = "info",
) -> uvicorn.Server:
    """A configured uvicorn server, not yet running: ``.run()`` blocks, or run it in a thread.

    Refuses a non-loopback ``host`` without ``admin_token``: anyone who can reach the port
    could otherwise load adapters into the serving model.
    """
    if admin_token is None and not is_loopback(host):
        raise ValueError(
            f"refusing to serve on {host!r} without an admin token: the adapter endpoints "
            "would be open to the network; set an admin token or bind to 127.0.0.1"
        )
    app = create_app(engine, registry_dir=registry_dir, admin_token=admin_token)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False)
    return uvicorn.Server(config)


def run_server(
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    registry_dir: Path,
    admin_token: str | None = None,
) -> None:
    """Serve until interrupted (blocking). See ``build_server`` for the exposure rule."""
    build_server(
        engine, host=host, port=port, registry_dir=registry_dir, admin_token=admin_token
    ).run()
