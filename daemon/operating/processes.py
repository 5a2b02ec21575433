"""Each worker as its own process: its /metrics, /healthz and /readyz endpoint, then the
worker until SIGTERM/SIGINT (`selfdistill serve`, `verify`, `train`).

The stages build the workers; this module only runs them the way a process manager
(systemd, Kubernetes, compose) expects: ready when the worker is, a clean exit on a signal.
Each function imports only its own stage, so a serve process never loads the trainer.
``up`` runs every worker in one process instead.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

from daemon.operating.observe import observability
from daemon.operating.signals import wait_for_stop_signal

if TYPE_CHECKING:
    from daemon.engines.base import Engine
    from daemon.operating.config import Settings
    from daemon.serving.worker import ServeWorker
    from streams.consumer import ConsumerLoop

log = logging.getLogger(__name__)


def run_serve(settings: Settings, *, worker: bool = True, http: bool = False) -> None:
    """`selfdistill serve`: the worker and/or the OpenAI-compatible API until SIGTERM/SIGINT."""
    from daemon.engines import make_engine
    from daemon.serving.worker import ServeWorker

    cfg = settings.serve.http
    token = cfg.admin_token.get_secret_value() if cfg.admin_token else None
    if http:
        from daemon.serving.openai_server import is_loopback

        if not token and not is_loopback(cfg.host):  # before minutes of model loading
            raise ValueError(
                f"serve.http.admin_token is required when serve.http.host ({cfg.host}) is not "
                "a loopback address: the adapter endpoints would be open to the network"
            )
    if worker:  # a state topic with the wrong layout is a start-up error, before the model
        from streams.topics import prepare_topics

        prepare_topics(settings.kafka, settings.topics)
    engine = make_engine(settings.model, settings.engine)
    serve_worker = ServeWorker(settings, engine) if worker else None

    def ready() -> tuple[bool, dict[str, object]]:
        return serve_worker.readiness() if serve_worker is not None else (True, {})

    with observability(settings.metrics, "serve", ready):
        _run_serve(settings, engine, serve_worker, http, token)
    if serve_worker is not None:
        exit_if_abandoned(serve_worker.loop, "serve")


def _run_serve(
    settings: Settings,
    engine: Engine,
    serve_worker: ServeWorker | None,
    http: bool,
    token: str | None,
) -> None:
    cfg = settings.serve.http
    if not http:
        assert serve_worker is not None
        serve_worker.run(topics_ready=True)
        return
    from daemon.serving.openai_server import build_server

    registry = settings.adapters.path(settings.data_dir)
    registry.mkdir(parents=True, exist_ok=True)
    server = build_server(
        engine,
        host=cfg.host,
        port=cfg.port,
        registry_dir=registry,
        admin_token=token,
        api_token=cfg.api_token.get_secret_value() if cfg.api_token else None,
        limits=cfg,  # serve.http is an ApiLimits
        log_level=settings.log_level.lower(),
    )
    # In a thread, stopped by us: uvicorn in the main thread re-raises SIGTERM after its
    # graceful shutdown, which would make a clean stop look like a crash (exit -15).
    thread = threading.Thread(target=server.run, daemon=True, name="http")
    thread.start()
    log.info("OpenAI-compatible API on http://%s:%d/v1", cfg.host, cfg.port)
    try:
        if serve_worker is not None:
            serve_worker.run(topics_ready=True)
        else:
            wait_for_stop_signal()
            log.info("stop signal received; shutting the API down")
    finally:
        server.should_exit = True
        thread.join(10)


def run_verify(settings: Settings) -> None:
    """`selfdistill verify`: the verify worker until SIGTERM/SIGINT."""
    from daemon.verifying.worker import VerifyWorker

    worker = VerifyWorker(settings)
    with observability(settings.metrics, "verify", worker.readiness):
        worker.run()
    exit_if_abandoned(worker.loop, "verify")


def run_store(settings: Settings) -> None:
    """`selfdistill store`: the store writer alone (``store.writer_in_train`` off in train)."""
    from daemon.verifying.store_writer import StoreWriter

    writer = StoreWriter(settings)
    with observability(settings.metrics, "store", writer.is_ready):
        writer.run()
    exit_if_abandoned(writer.loop, "store")


def exit_if_abandoned(loop: ConsumerLoop[Any], name: str) -> None:
    """Exit now when the loop left a batch running at its stop deadline.

    The batch is uncommitted (it is redelivered), but the engine call it waits on may hold
    non-daemon threads (an HTTP request pool, a generation) that the interpreter would join
    on exit, minutes past ``kafka.shutdown_timeout_s``. Everything durable is done by now.
    """
    if not loop.busy:
        return
    log.warning("%s: exiting with an abandoned batch still running (it is redelivered)", name)
    logging.shutdown()
    os._exit(0)


def _reconcile_at_start(settings: Settings) -> None:
    """The trainer owns promotion: on start it makes the registry and adapter-events agree
    (a crash mid-promotion, a broker that lost its log). A failure is logged, not fatal:
    each cycle with a pending intent, and each promotion, reconcile again."""
    from daemon.learning.promote import reconcile
    from daemon.learning.settings import open_registry

    try:
        with open_registry(settings) as registry:
            for line in reconcile(settings, registry):
                log.warning("reconcile at start: %s", line)
    except Exception as exc:
        log.error("could not reconcile the registry with adapter-events at start: %s", exc)


def run_scheduler(settings: Settings, *, progress: bool = False) -> None:
    """Run cycles on the configured interval or cron until SIGTERM/SIGINT."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    from daemon.learning.train import add_training_job, run_cycle

    scheduler = BlockingScheduler()
    stopping = threading.Event()

    def job() -> None:
        try:
            run_cycle(settings, progress=progress, should_stop=stopping.is_set)
        except Exception:
            log.exception("train cycle failed; retrying at the next tick")

    add_training_job(scheduler, settings, job)
    writer = None
    if settings.store.writer_in_train:  # verdicts -> the store, beside the trainer that reads it
        from daemon.verifying.store_writer import WriterThread

        writer = WriterThread(settings).start()
    # Beside the scheduler, not before it: a broker that is down must not hold up /readyz.
    threading.Thread(
        target=_reconcile_at_start, args=(settings,), name="reconcile", daemon=True
    ).start()

    def stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping the scheduler (a training run is interrupted)", signum)
        stopping.set()
        threading.Thread(target=scheduler.shutdown, kwargs={"wait": True}, daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    with observability(settings.metrics, "train", lambda: scheduler.running):
        try:
            scheduler.start()
        finally:
            if writer is not None:  # within kafka.shutdown_timeout_s, as the workers stop
                writer.stop(settings.kafka.shutdown_timeout_s)
