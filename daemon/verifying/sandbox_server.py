"""A sandbox in its own process, user and container: ``selfdistill sandbox serve``.

A verify worker that runs as a non-root user with namespaces forbidden (the shipped
Kubernetes pod, the systemd unit) cannot isolate candidate code from itself: whatever it
starts is its own uid, in its own network, beside its own files and environment. So it does
not try. With ``verify.sandbox.socket`` set it sends each run over a unix socket to this
server, which runs elsewhere: a sidecar container with no volumes but the socket's, no
secrets, no service-account token and a read-only root; or a systemd unit with a private
network and the state directory made inaccessible (``deploy/``). The server runs the run
with :func:`daemon.verifying.sandbox.run_tests` under the same measured requirements, now
against *both* identities (the worker's, sent with the request, and its own): the candidate
must own nothing of either and share neither's network.

The requirement list is the worker's; the server adds its own (``verify.sandbox.require``
in its config), so neither side can lower the other's floor, and the worker checks again
that every property it requires is among those the run reports. An unreachable server is
a refused run ("unavailable"), never a run without isolation.

Anyone who can connect to the socket can have code run in the sandbox (bounded as any
candidate is), so the socket's directory is the access control: deploy/ makes it
reachable by the verify worker only.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, TypeAdapter

from daemon.verifying.sandbox import (
    SandboxConfig,
    SandboxResult,
    one_line,
    run_tests,
    unavailable_detail,
    worker_identity,
)

log = logging.getLogger(__name__)

#: Seconds a request may take beyond the run's own time limit (start-up, cleanup).
_GRACE_S = 15.0
#: A run's result on the wire, both ways (the dataclass, validated and typed by pydantic).
_RESULT = TypeAdapter(SandboxResult)


class RunRequest(BaseModel):
    """One run, as the worker sends it."""

    model_config = ConfigDict(extra="forbid")

    code: str
    tests: str
    config: SandboxConfig
    worker: dict[str, Any]


def _bounded(asked: SandboxConfig, own: SandboxConfig) -> SandboxConfig:
    """The worker's limits, never looser than the server's own, and both requirement lists."""
    require = list(dict.fromkeys([*own.require, *asked.require]))
    return own.model_copy(
        update={
            "timeout_s": min(asked.timeout_s, own.timeout_s),
            "memory_mb": min(asked.memory_mb, own.memory_mb),
            "max_output_bytes": min(asked.max_output_bytes, own.max_output_bytes),
            "max_processes": min(asked.max_processes, own.max_processes),
            "disk_mb": min(asked.disk_mb, own.disk_mb),
            "audit_hook": own.audit_hook or asked.audit_hook,
            "require": require,
            "socket": None,
        }
    )


def create_app(own: SandboxConfig) -> Any:
    """The server's FastAPI app: ``POST /run`` and ``GET /healthz``."""
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool

    app = FastAPI(title="selfdistill sandbox", docs_url=None, redoc_url=None)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "identity": worker_identity()}

    @app.post("/run")
    async def run(request: RunRequest) -> dict[str, Any]:
        config = _bounded(request.config, own)
        result = await run_in_threadpool(
            run_tests, request.code, request.tests, config, worker=request.worker
        )
        return _RESULT.dump_python(result, mode="json")

    return app


def serve(socket_path: Path, own: SandboxConfig) -> None:
    """Serve on ``socket_path`` until interrupted (blocking)."""
    import uvicorn

    socket_path.parent.mkdir(parents=True, exist_ok=True)
    if socket_path.exists():
        socket_path.unlink()  # a stale socket of an earlier run
    config = uvicorn.Config(
        create_app(own), uds=str(socket_path), log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    log.info("sandbox: serving on %s as uid %d", socket_path, os.getuid())
    server.run()


def run_candidate(code: str, tests: str, config: SandboxConfig) -> SandboxResult:
    """The execution stage's entry point: on the sandbox server at ``verify.sandbox.socket``
    when one is set, else in this process's own sandbox; never raises."""
    if config.socket is None:
        return run_tests(code, tests, config)
    return run_remote(code, tests, config)


def run_remote(code: str, tests: str, config: SandboxConfig) -> SandboxResult:
    """One run on the sandbox server at ``config.socket``; never raises."""
    import httpx

    started = time.monotonic()

    def unavailable(detail: str, missing: tuple[str, ...] = ()) -> SandboxResult:
        return SandboxResult(
            passed=False,
            reason="unavailable",
            detail=one_line(detail),
            returncode=None,
            seconds=round(time.monotonic() - started, 3),
            missing=missing,
        )

    assert config.socket is not None
    body = RunRequest(
        code=code,
        tests=tests,
        config=config.model_copy(update={"socket": None}),
        worker=worker_identity(),
    )
    try:
        transport = httpx.HTTPTransport(uds=config.socket)
        with httpx.Client(transport=transport, timeout=config.timeout_s + _GRACE_S) as client:
            response = client.post(
                "http://sandbox/run",
                content=body.model_dump_json(),
                headers={"content-type": "application/json"},
            )
        response.raise_for_status()
        # The seconds the worker waited, the round trip included, as for a local run.
        result = replace(
            _RESULT.validate_json(response.content),
            seconds=round(time.monotonic() - started, 3),
        )
    except (httpx.HTTPError, ValueError) as exc:  # pydantic's ValidationError included
        return unavailable(
            f"unavailable: the sandbox server at {config.socket} did not run it "
            f"({type(exc).__name__}: {exc}); the candidate's code was not run here"
        )
    lacking = tuple(p for p in config.require if p not in result.properties)
    if result.reason != "unavailable" and lacking:  # trust, but check what it reports
        return unavailable(unavailable_detail(lacking), lacking)
    return result
