"""Every worker's observability endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

One small HTTP server per worker process (FastAPI + uvicorn on a thread), bound to
127.0.0.1 by default, one port per worker (``[metrics]``), so Prometheus scrapes each
worker and ``selfdistill status`` asks each one whether it is up:

* ``/metrics`` — the Prometheus text format of the process's registry (all ``selfdistill_*``
  metrics of ``daemon/metrics.py`` and ``streams/metrics.py``, plus the client's process
  metrics);
* ``/healthz`` — 200 while the process runs (liveness: restart it if this fails);
* ``/readyz`` — 200 once the worker does its job (joined its consumer group, scheduler
  started), 503 before (readiness: don't count it as serving yet). Its body is masked
  (``daemon.redact``): a failing check's text can quote an engine's URL or key, and probes
  come without a token.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import threading
import time
from collections.abc import Callable, Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from daemon.redact import redact_data

log = logging.getLogger(__name__)

Worker = Literal["serve", "verify", "train", "store"]


class MetricsConfig(BaseModel):
    """Where each worker serves /metrics, /healthz and /readyz."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve the endpoints (false: no HTTP at all).")
    host: str = Field(
        "127.0.0.1",
        description="Address to bind; 0.0.0.0 exposes the endpoints (read-only) to the network.",
    )
    serve_port: int = Field(9101, ge=1, le=65535, description="Port of `selfdistill serve`.")
    verify_port: int = Field(9102, ge=1, le=65535, description="Port of `selfdistill verify`.")
    train_port: int = Field(9103, ge=1, le=65535, description="Port of `selfdistill train`.")
    store_port: int = Field(
        9104, ge=1, le=65535, description="Port of `selfdistill store` (the store writer alone)."
    )

    def port(self, worker: Worker) -> int:
        return {
            "serve": self.serve_port,
            "verify": self.verify_port,
            "train": self.train_port,
            "store": self.store_port,
        }[worker]


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as pkg_version

    try:
        return pkg_version("selfdistill")
    except PackageNotFoundError:
        return "0+unknown"


def set_build_info(worker: str) -> None:
    from daemon.operating.metrics import BUILD_INFO

    BUILD_INFO.info({"version": version(), "python": platform.python_version(), "worker": worker})


#: A readiness check: a bool, or a bool and what to say about it (shown by ``status``).
Readiness = Callable[[], "bool | tuple[bool, dict[str, object]]"]


def create_app(  # type: ignore[no-untyped-def]
    worker: str, ready: Readiness, *, metrics: bool = True
):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    started = time.time()
    app = FastAPI(title=f"selfdistill {worker}", docs_url=None, redoc_url=None)

    if metrics:  # off for the health-only endpoints of workers sharing one process

        @app.get("/metrics")
        def prometheus_metrics() -> Response:
            return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz() -> dict[str, object]:
        return {"status": "ok", "worker": worker, "uptime_s": round(time.time() - started, 1)}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        try:
            answer = ready()
        except Exception as exc:  # a readiness probe must answer, not crash
            body = {"ready": False, "error": repr(exc)}
            return JSONResponse(redact_data(body), status_code=503)
        ok, detail = answer if isinstance(answer, tuple) else (answer, {})
        body = {"ready": bool(ok), "worker": worker, **detail}
        return JSONResponse(redact_data(body), status_code=200 if ok else 503)

    return app


@contextlib.contextmanager
def observability(
    config: MetricsConfig,
    worker: Worker,
    ready: Readiness = lambda: True,
    *,
    metrics: bool = True,
) -> Iterator[int | None]:
    """Serve the endpoints on the worker's port while the block runs; yields the port.

    ``metrics=False``: health only. ``selfdistill up`` runs every worker in one process,
    whose one registry is served on the serve port; a copy on each port would be scraped
    (and summed) three times.

    A port already taken is logged and the worker runs without endpoints: losing metrics
    must not stop a worker from serving traffic.
    """
    set_build_info(worker)
    if not config.enabled:
        yield None
        return
    import uvicorn

    port = config.port(worker)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(worker, ready, metrics=metrics),
            host=config.host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            log_config=None,  # uvicorn logs through the process's masked logging
        )
    )
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, name=f"{worker}-metrics", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    if server.started:
        log.info("%s: /metrics, /healthz, /readyz on http://%s:%d", worker, config.host, port)
    else:
        log.error(
            "%s: could not serve metrics on %s:%d; running without", worker, config.host, port
        )
    try:
        yield port if server.started else None
    finally:
        server.should_exit = True
        thread.join(5)
