"""``selfdistill up``: every worker in one process, sharing one model, until a bound.

serve, verify, the store writer and the train scheduler run as threads around ONE engine (on a CPU there is
no room for three copies of the model and their threads; on a GPU the same sharing keeps
one copy in memory), optionally beside the embedded broker. Each part is the same code the
separate worker commands run; ``up`` only composes them and decides when to stop:

* ``until_promotion`` — a training cycle promoted an adapter and serve swapped to it;
* ``max_cycles`` — that many training cycles reached a gate decision (or paused on the
  verifier's floor);
* ``max_minutes`` — wall-clock bound;
* SIGTERM / SIGINT.

The process serves ``/metrics`` (all workers: one registry) on the serve port and
``/healthz``, ``/readyz`` on every worker's port, so ``selfdistill status`` sees all three.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from daemon.operating.observe import observability

if TYPE_CHECKING:
    from daemon.engines.base import Engine
    from daemon.learning.train import CycleReport
    from daemon.operating.config import Settings
    from daemon.serving.worker import ServeWorker
    from daemon.verifying.store_writer import StoreWriter
    from daemon.verifying.worker import VerifyWorker

log = logging.getLogger(__name__)


@dataclass
class UpState:
    """What the loop has done so far: the progress line and the final report read it."""

    started: float = field(default_factory=time.monotonic)
    training: str = "idle"  # "waiting: ..." once a tick found too few new samples
    cycles: list[CycleReport] = field(default_factory=list)
    promoted: str | None = None
    swapped: bool = False
    stopped_by: str = ""
    train_errors: int = 0

    @property
    def minutes(self) -> float:
        return (time.monotonic() - self.started) / 60


class Up:
    """The workers of one process. Use as a context manager; :meth:`wait` blocks."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        until_promotion: bool = False,
        max_cycles: int | None = None,
        max_minutes: float | None = None,
        train_when: Callable[[], bool] | None = None,
        train: bool = True,
    ) -> None:
        from daemon.serving.worker import ServeWorker
        from daemon.verifying.store_writer import StoreWriter
        from daemon.verifying.worker import VerifyWorker

        self.settings = settings
        self.engine = engine
        self.until_promotion = until_promotion
        self.max_cycles = max_cycles
        self.max_minutes = max_minutes
        self.train_when = train_when  # None: the schedule and min_new_samples decide
        self.train = train  # False: no scheduler; the caller runs the cycles (the demo)
        self.state = UpState()
        self.serve: ServeWorker = ServeWorker(settings, engine)
        self.verify: VerifyWorker = VerifyWorker(settings, engine)
        # verdicts -> the store; off where `selfdistill store` runs elsewhere.
        self.store_writer: StoreWriter | None = (
            StoreWriter(settings) if settings.store.writer_in_train else None
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._scheduler: Any = None
        self._passes = 0

    # -------------------------------------------------------------- lifecycle
    def __enter__(self) -> Up:
        from apscheduler.schedulers.background import BackgroundScheduler

        from daemon.learning.train import add_training_job

        for name, worker in self._workers():
            t = threading.Thread(
                target=worker.run, kwargs={"handle_signals": False}, name=name, daemon=True
            )
            t.start()
            self._threads.append(t)
        if self.train:
            self._scheduler = BackgroundScheduler()
            add_training_job(self._scheduler, self.settings, self._train_tick)
            self._scheduler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop within ``kafka.shutdown_timeout_s``, as the separate workers do.

        The loops abandon a batch still running at their deadline (it is redelivered); a
        training run stops at its next forward pass (``_should_stop_training``). What is
        still running when the time is up (a gate evaluation midway) is left to the
        caller: :attr:`unfinished` says so, and ``run_up`` then exits the process.
        """
        self.stop("exit")
        deadline = time.monotonic() + self.settings.kafka.shutdown_timeout_s
        for _name, w in self._workers():
            w.stop()
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        for t in self._threads:
            t.join(max(0.1, deadline - time.monotonic()))
        while self.state.training.startswith("training") and time.monotonic() < deadline:
            time.sleep(0.1)

    def _workers(self) -> list[tuple[str, Any]]:
        workers: list[tuple[str, Any]] = [("serve", self.serve), ("verify", self.verify)]
        if self.store_writer is not None:
            workers.append(("store", self.store_writer))
        return workers

    @property
    def stored(self) -> int:
        """Verdicts the store writer applied so far (0 without one here)."""
        return self.store_writer.handler.totals.applied if self.store_writer else 0

    @property
    def unfinished(self) -> list[str]:
        """What is still running after :meth:`__exit__` gave up waiting for it."""
        left = [t.name for t in self._threads if t.is_alive()]
        return left + (["train"] if self.state.training.startswith("training") else [])

    def stop(self, why: str) -> None:
        if not self._stop.is_set():
            self.state.stopped_by = self.state.stopped_by or why
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @contextlib.contextmanager
    def endpoints(self) -> Iterator[None]:
        """/metrics on the serve port; /healthz and /readyz on each worker's port."""
        m = self.settings.metrics
        with (
            observability(m, "serve", self.serve.readiness),
            observability(m, "verify", self.verify.readiness, metrics=False),
            observability(
                m, "train", lambda: not self.train or self._scheduler is not None, metrics=False
            ),
        ):
            yield

    # -------------------------------------------------------------- training
    def _should_stop_training(self) -> bool:
        """Polled by the trainer before every forward pass: progress, and a prompt stop."""
        self._passes += 1
        self.state.training = f"training (forward pass {self._passes})"
        return self._stop.is_set()

    def _train_tick(self) -> None:
        from daemon.learning.train import run_cycle

        if self._stop.is_set() or (self.train_when is not None and not self.train_when()):
            return
        self._passes = 0
        self.state.training = "training"
        try:
            report = run_cycle(
                self.settings,
                engine=self.engine,
                force=self.train_when is not None,
                should_stop=self._should_stop_training,
            )
        except Exception as exc:
            self.state.train_errors += 1
            self.state.training = f"last cycle failed: {exc!r}"[:120]
            log.exception("train cycle failed; retrying at the next tick")
            return
        if report.outcome == "paused":  # a decision too: the verifier is below its floor
            self.state.cycles.append(report)
            self.state.training = f"paused: {report.reason}"[:160]
            return
        if report.version is None:
            self.state.training = f"waiting: {report.reason}"
            return
        self.state.cycles.append(report)
        self.state.training = f"{report.version}: {report.outcome}"
        if report.outcome == "promoted":
            self.state.promoted = report.version

    # ------------------------------------------------------------------ wait
    def wait(self, tick: Callable[[Up], None] | None = None, every_s: float = 0.5) -> UpState:
        """Block until a bound is reached or :meth:`stop`; ``tick`` runs every ``every_s``."""
        while not self._stop.wait(every_s):
            if tick is not None:
                tick(self)
            if self.state.promoted and self.serve.router.active == self.state.promoted:
                self.state.swapped = True
            decided = len(self.state.cycles)
            if self.until_promotion and self.state.swapped:
                self.stop("an adapter was promoted and swapped into serving")
            elif self.max_cycles is not None and decided >= self.max_cycles:
                if self.state.promoted and not self.state.swapped:
                    continue  # let serve finish the swap first
                self.stop(f"{decided} training cycle(s) decided")
            elif self.max_minutes is not None and self.state.minutes >= self.max_minutes:
                self.stop(f"max {self.max_minutes:g} minutes")
        return self.state

    def progress(self) -> str:
        """One line for a status display or a log: every worker's count and, while a long
        step runs (training, the gate's evaluation), how far it is."""
        from daemon import progress

        s, v = self.serve.loop.stats, self.verify.loop.stats
        step = progress.current()
        return (
            f"serve: {s.processed} answered | verify: {v.processed} judged, "
            f"{self.verify.handler.accepted} accepted | store: {self.stored} written | "
            f"train: {step or self.state.training} | {self.state.minutes:.1f} min"
        )


def run_up(
    settings: Settings,
    *,
    until_promotion: bool = False,
    max_cycles: int | None = None,
    max_minutes: float | None = None,
) -> UpState:
    """`selfdistill up` on the configured Kafka cluster (see `selfdistill demo` for one with
    the embedded broker)."""
    import signal

    from daemon.engines import make_engine
    from streams.topics import ensure_topics

    if settings.topics.create:
        ensure_topics(settings.kafka, settings.topics)
    engine = make_engine(settings.model, settings.engine)
    last_log = [0.0]

    def tick(up: Up) -> None:
        if time.monotonic() - last_log[0] >= 30:
            last_log[0] = time.monotonic()
            log.info("%s", up.progress())

    try:
        with (
            Up(
                settings,
                engine,
                until_promotion=until_promotion,
                max_cycles=max_cycles,
                max_minutes=max_minutes,
            ) as up,
            up.endpoints(),
        ):
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda signum, _f: up.stop(f"signal {signum}"))
            state = up.wait(tick)
        log.info("up stopped: %s", state.stopped_by)
        if up.unfinished:  # past shutdown_timeout_s: nothing uncommitted is lost by going now
            log.warning(
                "up: %s still running %.0fs after the stop (kafka.shutdown_timeout_s); exiting "
                "without it, uncommitted work is redelivered",
                ", ".join(up.unfinished),
                settings.kafka.shutdown_timeout_s,
            )
            logging.shutdown()
            os._exit(0)
        return state
    finally:
        engine.close()
