"""How every Kafka client of the daemon connects: one settings block, passed to kafka-python.

Production brokers need SASL/SSL; the embedded one needs nothing. Both go through the same
``client_kwargs`` so a worker never builds a client by hand and forgets the TLS settings.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal, TypeVar

from kafka.errors import KafkaConnectionError, KafkaTimeoutError
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator
from tenacity import (
    RetryError,
    Retrying,
    before_sleep_log,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class KafkaSettings(BaseModel):
    """Connection and consumer-group settings shared by every worker."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        description="Comma-separated host:port list of the Kafka cluster (or the embedded broker).",
    )
    client_id: str = Field("selfdistill", description="Client id prefix reported to the brokers.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="PLAINTEXT for the embedded broker; SASL_SSL for most clusters."
    )
    sasl_mechanism: (
        Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "GSSAPI", "OAUTHBEARER"] | None
    ) = Field(None, description="SASL mechanism; required when security_protocol is SASL_*.")
    sasl_plain_username: str | None = Field(None, description="SASL username (PLAIN/SCRAM).")
    sasl_plain_password: SecretStr | None = Field(
        None,
        description="SASL password; prefer the env var SELFDISTILL_KAFKA__SASL_PLAIN_PASSWORD.",
    )
    ssl_cafile: str | None = Field(
        None, description="CA bundle that signed the brokers' certificates."
    )
    ssl_certfile: str | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_keyfile: str | None = Field(None, description="Client private key for mutual TLS.")
    ssl_check_hostname: bool = Field(
        True, description="Verify the brokers' hostnames against their certs."
    )
    session_timeout_ms: int = Field(
        6000,
        ge=1000,
        description="Consumer-group session timeout. 6000 lets a group join in ~3 s on the "
        "embedded "
        "broker (the kafka-python default, 45000, takes ~23 s).",
    )
    heartbeat_interval_ms: int = Field(
        1000, ge=100, description="Heartbeat interval; must be under a third of session_timeout_ms."
    )
    max_poll_interval_ms: int = Field(
        300000,
        ge=1000,
        description="Longest gap between polls before the group evicts a member. Workers keep "
        "polling (with partitions paused) while a slow batch runs, so this need not cover a batch.",
    )
    batch_size: int = Field(
        8, ge=1, le=10000, description="Most records handed to a worker's handler in one batch."
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new consumer group starts: earliest loses no prompt."
    )
    isolation_level: Literal["read_committed", "read_uncommitted"] = Field(
        "read_committed", description="read_committed hides records of aborted transactions."
    )
    max_message_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Largest message a worker accepts; larger ones go to the dead-letter topic.",
    )
    max_output_bytes: int | None = Field(
        None,
        ge=1024,
        description="Largest message a worker writes (key, value, headers); an input whose "
        "output is larger is dead-lettered (output-too-large), never retried. Topics are "
        "created to take it; start-up fails on a smaller existing one. Unset: twice "
        "max_message_bytes.",
    )
    connect_timeout_s: float = Field(
        60.0, gt=0, description="How long start-up retries an unreachable cluster before failing."
    )
    max_handler_attempts: int = Field(
        3,
        ge=1,
        le=100,
        description="Tries (with backoff) of a batch whose handler raises before the batch is "
        "split to isolate the records that fail on their own; those go to <topic>.dlq with "
        "reason handler-error, the rest are processed. An unavailable engine is waited for "
        "instead and never counts here.",
    )
    shutdown_timeout_s: float = Field(
        20.0,
        gt=0,
        description="Longest a worker takes to stop on SIGTERM. A batch still running then is "
        "abandoned uncommitted and redelivered (Kubernetes kills after 30 s by default).",
    )
    client_options: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra kafka-python options passed verbatim to every client "
        "(e.g. sasl_oauth_token_provider).",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, v: str) -> str:
        servers = [s.strip() for s in v.split(",") if s.strip()]
        if not servers:
            raise ValueError("needs at least one host:port")
        for s in servers:
            host, sep, port = s.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{s!r} is not host:port")
        return ",".join(servers)

    @field_validator("heartbeat_interval_ms")
    @classmethod
    def _heartbeat(cls, v: int, info: ValidationInfo) -> int:
        session = info.data.get("session_timeout_ms")
        if session is not None and v * 3 > session:
            raise ValueError(f"{v} must be at most a third of session_timeout_ms ({session})")
        return v

    @field_validator("sasl_mechanism")
    @classmethod
    def _sasl(cls, v: str | None, info: ValidationInfo) -> str | None:
        if str(info.data.get("security_protocol", "")).startswith("SASL") and v is None:
            raise ValueError("required when security_protocol is SASL_PLAINTEXT or SASL_SSL")
        return v

    @property
    def output_limit(self) -> int:
        """Most bytes (key + value + headers) of one message a worker writes.

        Twice the input limit by default: a verdict carries the candidates it judged and
        every judge output, so it outgrows its input; the store writer reads verdicts up to
        that (``daemon.verifying.store_writer.verdict_reader``).
        """
        return self.max_output_bytes or 2 * self.max_message_bytes

    @property
    def servers(self) -> list[str]:
        return self.bootstrap_servers.split(",")

    def client_kwargs(self, suffix: str = "") -> dict[str, Any]:
        """Options every kafka-python client takes (producer, consumer, admin)."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.servers,
            "client_id": f"{self.client_id}-{suffix}" if suffix else self.client_id,
            "security_protocol": self.security_protocol,
            # One bootstrap attempt; `connect` retries with backoff up to connect_timeout_s.
            "bootstrap_timeout_ms": int(min(5.0, self.connect_timeout_s) * 1000),
        }
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_plain_username
            if self.sasl_plain_password is not None:
                kw["sasl_plain_password"] = self.sasl_plain_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kw.update(
                ssl_cafile=self.ssl_cafile,
                ssl_certfile=self.ssl_certfile,
                ssl_keyfile=self.ssl_keyfile,
                ssl_check_hostname=self.ssl_check_hostname,
            )
        kw.update(self.client_options)
        return kw

    def reader_kwargs(self, suffix: str = "") -> dict[str, Any]:
        """A consumer outside any group (assigned partitions, nothing committed): tail, followers."""
        kw = self.client_kwargs(suffix)
        kw.update(enable_auto_commit=False, isolation_level=self.isolation_level)
        return kw

    def consumer_kwargs(self, group_id: str | None, suffix: str = "") -> dict[str, Any]:
        kw = self.client_kwargs(suffix)
        kw.update(
            group_id=group_id,
            enable_auto_commit=False,
            auto_offset_reset=self.auto_offset_reset,
            isolation_level=self.isolation_level,
            max_poll_records=self.batch_size,
            session_timeout_ms=self.session_timeout_ms,
            heartbeat_interval_ms=self.heartbeat_interval_ms,
            max_poll_interval_ms=self.max_poll_interval_ms,
            # max_partition_fetch_bytes stays at kafka-python's 1 MiB: brokers still return a
            # larger first record (so oversize messages reach the DLQ), and larger fetches
            # measured 40% slower here (bench/streams.py).
        )
        return kw


class KafkaUnavailable(RuntimeError):
    """The cluster could not be reached within ``connect_timeout_s``."""


def connect(factory: Callable[[], T], settings: KafkaSettings, what: str) -> T:
    """Build a client, retrying with backoff while the brokers are unreachable.

    Workers are often started before (or restarted beside) the broker; failing on the
    first refused connection would turn a routine restart into an outage.
    """
    try:
        for attempt in Retrying(
            retry=retry_if_exception_type((KafkaTimeoutError, KafkaConnectionError)),
            wait=wait_exponential(multiplier=0.2, max=5),
            stop=stop_after_delay(settings.connect_timeout_s),
            before_sleep=before_sleep_log(log, logging.WARNING),
            reraise=False,
        ):
            with attempt:
                return factory()
    except RetryError as exc:
        cause = exc.last_attempt.exception()
        raise KafkaUnavailable(
            f"could not reach Kafka at {settings.bootstrap_servers} for the {what} "
            f"within {settings.connect_timeout_s:g}s (kafka.connect_timeout_s): {cause}"
        ) from cause
    raise AssertionError("unreachable")  # pragma: no cover
