"""An Engine over HTTP: any OpenAI-compatible server, typically ``vllm serve --enable-lora``.

This lets the daemon use a model that lives in another process or on another machine (a vLLM
server on a GPU box, with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` so adapters can be
hot-swapped) through the same interface as the embedded engines. Kept thin on purpose: it
translates ``ChatRequest`` into one ``POST /chat/completions`` and back, and adapter changes
into vLLM's ``/load_lora_adapter`` / ``/unload_lora_adapter``; batching is the server's job.

API facts it relies on (vLLM's ``vllm/entrypoints/openai``, and our own ``openai_server``):

* ``base_url`` ends in ``/v1`` as for the ``openai`` client; paths are relative to it.
* Chat: ``n``, ``temperature``, ``top_p``, ``max_tokens``, ``seed``, ``logprobs`` +
  ``top_logprobs`` (``choices[i].logprobs.content[0].top_logprobs`` is the first generated
  token's distribution), and vLLM's extras ``add_generation_prompt`` /
  ``continue_final_message``.
* ``usage.completion_tokens`` is the total over all ``n`` choices; OpenAI reports no
  per-choice count. Per-choice ``Completion.tokens`` is therefore exact only when the server
  returns ``choices[i].token_ids`` (vLLM's ``return_token_ids``, asked for with
  ``return_token_ids=True``); otherwise the total is split evenly, the remainder going to the
  first choices, so the sum (``ChatResult.completion_tokens``) stays exact.
* ``POST /load_lora_adapter`` ``{"lora_name", "lora_path"}`` answers 200 with plain text, or an
  error JSON; ``lora_path`` is a path on the *server's* filesystem.
* Adapters are listed by ``GET /models`` as cards whose ``parent`` is the base model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from daemon.engines.base import (
    AdapterLoadError,
    AdapterLoadUnavailable,
    AdapterMissing,
    ChatRequest,
    ChatResult,
    Completion,
    EngineError,
    EngineMisconfigured,
    EngineRejected,
    EngineUnavailable,
)
from daemon.engines.health import PROBE

log = logging.getLogger(__name__)

#: Statuses worth retrying: the server or a proxy in front of it is briefly unavailable.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Transport errors worth retrying for generation. A read timeout is not among them: the
#: server may still be generating, and sending the request again would double the load.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
)
#: For adapter changes only errors where the request cannot have reached the server are
#: retried: a load that failed half-way might have registered the name, and a second try
#: would then be refused as "already loaded".
UNSENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout)


#: Longest a probe request may take (``check``): a server that hangs is not healthy, and a
#: worker must not wait ``timeout_s`` (minutes, for long generations) to find that out.
PROBE_TIMEOUT_S = 30.0


class _RetryableStatus(Exception):
    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def error_message(response: httpx.Response) -> str:
    """The server's message from OpenAI/vLLM-style error JSON, else the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:500]
        if isinstance(err, str):
            return err
        if body.get("detail"):
            return str(body["detail"])
    return str(body)[:500]


def _model_cards(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """``(id, card)`` for each model card of a ``GET /models`` answer; any other status or
    shape is an EngineError."""
    if response.status_code != 200:
        raise EngineError(
            f"GET /models failed (HTTP {response.status_code}): {error_message(response)}"
        )
    try:
        return [(str(c["id"]), c) for c in response.json()["data"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise EngineError(f"malformed /models response: {exc}") from exc


def _not_served(model: str, served: list[str]) -> EngineMisconfigured:
    return EngineMisconfigured(
        f"the model server does not serve `{model}`; it serves {sorted(served)} "
        "(model.name must be one of the server's --served-model-name)"
    )


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` integers that differ by at most one and sum to ``total``."""
    q, r = divmod(max(total, 0), parts)
    return [q + 1 if i < r else q for i in range(parts)]


class OpenAIEngine:
    """An Engine backed by an OpenAI-compatible server reached over HTTP.

    ``shared``: other replicas use the same server, so the adapter router never unloads
    (another replica may still route to the adapter) and leaves eviction to the server.
    """

    shared = True

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 600,
        concurrency: int = 8,
        retries: int = 3,
        backoff_s: float = 0.5,
        return_token_ids: bool = False,
    ) -> None:
        """``model``: the server's base model id. ``api_key``: sent as a bearer token (vLLM's
        ``--api-key``, or our server's admin token). ``concurrency``: requests in flight at
        once, so the server can batch them. ``retries``: attempts per request for transient
        failures, with exponential backoff from ``backoff_s``. ``return_token_ids``: ask vLLM
        (0.10.2 and later) for per-choice token ids, for exact per-completion token counts;
        servers that do not know the field ignore it or, if strict, refuse the request.
        """
        if concurrency < 1 or retries < 1:
            raise ValueError("concurrency and retries must be at least 1")
        self.model_name = model
        self.base_url = base_url.rstrip("/")
        self.return_token_ids = return_token_ids
        self._attempts = retries
        self._backoff_s = backoff_s
        self._has_key = bool(api_key)
        self._timeout_s = timeout_s
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="openai-engine")

    # ------------------------------------------------------------- transport
    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        transient: tuple[type[Exception], ...],
        retry_statuses: frozenset[int],
        timeout_s: float | None = None,
    ) -> httpx.Response:
        """One request with bounded retries; transport failure -> EngineError."""

        def attempt() -> httpx.Response:
            extra = {} if timeout_s is None else {"timeout": timeout_s}
            response = self._client.request(method, path, json=body, **extra)
            if response.status_code in retry_statuses:
                raise _RetryableStatus(response)
            return response

        retrying = Retrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff_s, max=10),
            retry=retry_if_exception(lambda e: isinstance(e, (*transient, _RetryableStatus))),
            reraise=True,
        )
        try:
            return retrying(attempt)
        except _RetryableStatus as exc:
            r = exc.response
            raise EngineUnavailable(
                f"{method} {path}: HTTP {r.status_code} after {self._attempts} attempts: "
                f"{error_message(r)}"
            ) from exc
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # down, or no such host
            raise EngineUnavailable(
                f"the model server at {self.base_url} cannot be reached ({type(exc).__name__}: "
                f"{exc}): is it running, and is engine.base_url right?"
            ) from exc
        except httpx.HTTPError as exc:  # reset, timed out: the engine's side
            raise EngineUnavailable(
                f"{method} {self.base_url}{path}: {type(exc).__name__}: {exc}"
            ) from exc

    def _deployment_fault(self, response: httpx.Response, model: str) -> EngineMisconfigured:
        """What is wrong with the deployment when the server answers 401, 403 or 404, in words
        an operator acts on (``/readyz`` shows them as they are)."""
        code, said = response.status_code, error_message(response)
        if code == 401:
            key = "is not accepted" if self._has_key else "is not set and the server wants one"
            return EngineMisconfigured(
                f"the model server refuses the API key (HTTP 401 from {self.base_url}: {said}): "
                f"engine.api_key {key}"
            )
        if code == 403:
            return EngineMisconfigured(
                f"the model server denies this API key access (HTTP 403 from {self.base_url}: "
                f"{said}): check engine.api_key and the server's permissions"
            )
        try:
            served = self.served_models()
        except EngineMisconfigured as exc:
            return exc
        except EngineError:
            served = None
        if served is not None and model not in served:
            return _not_served(model, served)
        return EngineMisconfigured(
            f"the model server answered HTTP 404 for {response.request.url.path} with model "
            f"`{model}` ({said}): is engine.base_url the server's /v1 URL ({self.base_url})?"
        )

    def served_models(self, timeout_s: float | None = None) -> list[str]:
        """Every model id ``GET /models`` lists (the base model, its aliases, adapters).

        401/403, or no ``/models`` at all, is the deployment's fault (EngineMisconfigured)."""
        response = self._send("GET", "/models", None, TRANSIENT_ERRORS, RETRY_STATUSES, timeout_s)
        if response.status_code in (401, 403):
            raise self._deployment_fault(response, self.model_name)
        if response.status_code == 404:
            raise EngineMisconfigured(
                f"the model server has no {response.request.url.path} (HTTP 404): is "
                f"engine.base_url the server's /v1 URL ({self.base_url})?"
            )
        return [model for model, _ in _model_cards(response)]

    def check(self) -> None:
        """The probe workers ask at start, while waiting, and before blaming a record: the
        server answers, accepts the key, lists the base model, and generates one token.
        Raises EngineUnavailable (EngineMisconfigured for the deployment's faults)."""
        timeout_s = min(self._timeout_s, PROBE_TIMEOUT_S)  # a hung server is not "fine"
        served = self.served_models(timeout_s)
        if self.model_name not in served:
            raise _not_served(self.model_name, served)
        self._one(PROBE, timeout_s)

    # ------------------------------------------------------------- generation
    def generate(self, requests: Sequence[ChatRequest]) -> list[ChatResult]:
        """One HTTP call per request, ``concurrency`` at a time; results in request order."""
        futures: list[Future[ChatResult]] = [self._pool.submit(self._one, r) for r in requests]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise

    def _body(self, r: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": r.adapter or self.model_name,
            "messages": [dict(m) for m in r.messages],
            "n": r.n,
            "temperature": r.temperature,
            "top_p": r.top_p,
            "max_tokens": r.max_tokens,
        }
        if r.seed is not None:
            body["seed"] = r.seed
        if r.logprobs > 0:
            body["logprobs"] = True
            body["top_logprobs"] = r.logprobs
        if r.continue_final:
            body["add_generation_prompt"] = False
            body["continue_final_message"] = True
        if self.return_token_ids:
            body["return_token_ids"] = True
        return body

    def _one(self, r: ChatRequest, timeout_s: float | None = None) -> ChatResult:
        response = self._send(
            "POST", "/chat/completions", self._body(r), TRANSIENT_ERRORS, RETRY_STATUSES, timeout_s
        )
        code = response.status_code
        if code == 404 and r.adapter is not None:
            raise AdapterMissing(
                r.adapter,
                f"the server does not know adapter {r.adapter!r} (HTTP 404; restarted?): "
                f"{error_message(response)}",
            )
        if code in (401, 403, 404):  # about the deployment, whatever the prompt
            raise self._deployment_fault(response, r.adapter or self.model_name)
        if code != 200:
            kind = EngineRejected if 400 <= code < 500 and code != 408 else EngineUnavailable
            raise kind(
                f"chat completion for model {r.adapter or self.model_name!r} refused "
                f"(HTTP {response.status_code}): {error_message(response)}"
            )
        try:
            return self._parse(r, response.json())
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"malformed chat completion response: {exc}") from exc

    def _parse(self, r: ChatRequest, data: dict[str, Any]) -> ChatResult:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        if len(choices) != r.n:
            raise EngineError(f"asked for n={r.n} choices, the server returned {len(choices)}")
        usage = data.get("usage") or {}
        ids = [c.get("token_ids") for c in choices]
        if all(isinstance(t, list) for t in ids):
            counts = [len(t) for t in ids if isinstance(t, list)]
        else:
            counts = split_evenly(int(usage.get("completion_tokens") or 0), len(choices))
        completions = []
        for choice, tokens in zip(choices, counts, strict=True):
            completions.append(
                Completion(
                    text=(choice.get("message") or {}).get("content") or "",
                    tokens=tokens,
                    finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
                    top_logprobs=self._top_logprobs(choice) if r.logprobs > 0 else None,
                )
            )
        return ChatResult(completions, int(usage.get("prompt_tokens") or 0), r.adapter)

    @staticmethod
    def _top_logprobs(choice: dict[str, Any]) -> dict[str, float] | None:
        """The first generated token's alternatives, as ``{token: logprob}`` (first wins)."""
        content = (choice.get("logprobs") or {}).get("content") or []
        if not content:
            return None
        top: dict[str, float] = {}
        for alt in content[0].get("top_logprobs") or []:
            top.setdefault(alt["token"], float(alt["logprob"]))
        return top

    # ------------------------------------------------------------- adapters
    def load_adapter(self, name: str, path: str) -> None:
        """Load through vLLM's runtime-LoRA endpoint, then confirm in ``/models``.

        A name the server already lists counts as loaded: several replicas share one server,
        and vLLM refuses a second load of a name with 400 "has already been loaded" (it
        compares names only). That shortcut is safe because the router loads under served
        names (``adapters.files.served_name``: the version plus the weights' digest), so one
        name is one set of weights even across registries that share the server.

        Failures are told apart for the router: the server unreachable, a 5xx/429/408 or a
        timeout is *passing* (``AdapterLoadUnavailable``, retried with backoff by the
        follower); any other refusal is final for that event (``AdapterLoadError``).

        The listing check exists because a 200 alone has not always meant "loaded": a proxy or
        gateway may answer for the server, and vLLM before 0.7 (until PR #11727, "Validate
        lora adapters to avoid crashing server") answered 200 without reading the files at
        all. The check proves the server registered the name; on those old releases a bad
        path still surfaces only at the first generation, as an EngineError there.
        """
        body = {"lora_name": name, "lora_path": path}
        try:
            response = self._send("POST", "/load_lora_adapter", body, UNSENT_ERRORS, frozenset())
        except EngineUnavailable as exc:  # unreachable, reset, timed out: the server's side
            raise AdapterLoadUnavailable(f"adapter {name!r}: {exc}") from exc
        except EngineError as exc:
            raise AdapterLoadError(f"adapter {name!r}: {exc}") from exc
        if response.status_code != 200:
            refusal = (
                f"adapter {name!r} refused by the server (HTTP {response.status_code}): "
                f"{error_message(response)}"
            )
            if response.status_code in RETRY_STATUSES or response.status_code == 408:
                raise AdapterLoadUnavailable(refusal)
            try:
                already = response.status_code == 400 and name in self.adapters()
            except EngineUnavailable as exc:  # "already loaded?" cannot be asked just now
                raise AdapterLoadUnavailable(f"{refusal}; listing /models failed: {exc}") from exc
            except EngineError:
                already = False
            if not already:
                raise AdapterLoadError(refusal)
            log.info("adapter %s was already loaded on %s (another replica)", name, self.base_url)
            return
        try:
            listed = self.adapters()
        except EngineError as exc:
            kind = (
                AdapterLoadUnavailable if isinstance(exc, EngineUnavailable) else AdapterLoadError
            )
            raise kind(f"adapter {name!r}: could not confirm the load: {exc}") from exc
        if name not in listed:
            raise AdapterLoadError(
                f"adapter {name!r}: the server answered 200 but does not list it in /models"
            )
        log.info("adapter %s loaded on %s from %s", name, self.base_url, path)

    def unload_adapter(self, name: str) -> None:
        response = self._send(
            "POST", "/unload_lora_adapter", {"lora_name": name}, UNSENT_ERRORS, frozenset()
        )
        if response.status_code != 200:
            raise EngineError(
                f"unloading adapter {name!r} failed (HTTP {response.status_code}): "
                f"{error_message(response)}"
            )
        log.info("adapter %s unloaded on %s", name, self.base_url)

    def adapters(self) -> list[str]:
        """Adapter ids from ``/models``: cards other than the base model.

        vLLM gives adapter cards ``parent`` = base model and base cards (including extra
        ``--served-model-name`` aliases) ``parent`` = null; servers without ``parent`` at all
        are read as "everything but the base model".
        """
        response = self._send("GET", "/models", None, TRANSIENT_ERRORS, RETRY_STATUSES)
        return [
            model
            for model, card in _model_cards(response)
            if model != self.model_name and card.get("parent", "") is not None
        ]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
