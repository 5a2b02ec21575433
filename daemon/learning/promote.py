"""Promotion and rollback: tell every serve replica which adapter to use, and record it.

The order is publish, then record. ``adapter-events`` is what the replicas act on, so an
announcement that did not reach the broker (``Producer.flush`` raises) must leave the
registry unchanged; the reverse failure (published, then the registry write fails) is
reported loudly and fixed by re-running the same command, which publishes the same state
again (replicas treat a repeat of the active version as a no-op).

Files are verified (inside the registry, safetensors only, sha256 as registered) before
anything is announced: a replica would refuse a corrupt adapter anyway and keep the old one,
but the operator should hear it here, at the command, not from a dashboard later.
"""

from __future__ import annotations

import logging
from typing import Protocol

from adapters.files import verify_adapter
from adapters.registry import BASE, Registry
from daemon.learning.metrics import ADAPTER_EVENTS
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import AdapterEvent
from streams.topics import TopicsConfig

log = logging.getLogger(__name__)


class PublishSettings(Protocol):
    """Where announcements go (``Settings`` is one): the cluster and the topic names."""

    @property
    def kafka(self) -> KafkaSettings: ...
    @property
    def topics(self) -> TopicsConfig: ...


def _actor(actor: str) -> str:
    return actor if actor in ("train", "cli") else "other"  # a bounded label


def publish(settings: PublishSettings, event: AdapterEvent) -> None:
    """Send one adapter event and wait until the broker has it (raises ProduceError if not)."""
    producer = Producer(settings.kafka, name="adapter-events-writer")
    try:
        producer.send(settings.topics.adapter_events, event, key="adapters")
        producer.flush()
    finally:
        producer.close()


def _event(registry: Registry, action: str, version: str, reason: str | None) -> AdapterEvent:
    if version == BASE:
        return AdapterEvent(action=action, version=BASE, reason=reason)  # type: ignore[arg-type]
    rec = registry.require(version)
    verify_adapter(registry.root, rec.path, rec.sha256)
    return AdapterEvent(
        action=action,  # type: ignore[arg-type]
        version=version,
        path=rec.path,
        sha256=rec.sha256,
        reason=reason,
    )


def promote(
    settings: PublishSettings,
    registry: Registry,
    version: str,
    *,
    actor: str,
    reason: str | None = None,
) -> AdapterEvent:
    """Announce ``version`` as the active adapter and record the promotion."""
    if registry.active_version() == version:
        from adapters.registry import RegistryError

        raise RegistryError(f"{version} is already active")
    event = _event(registry, "promote", version, reason)
    publish(settings, event)
    previous = registry.promote(version, actor=actor, reason=reason)
    ADAPTER_EVENTS.labels("promote", _actor(actor)).inc()
    log.info("promoted %s (was %s) by %s: %s", version, previous, actor, reason or "-")
    return event


def rollback(
    settings: PublishSettings,
    registry: Registry,
    target: str | None = None,
    *,
    actor: str,
    reason: str | None = None,
) -> AdapterEvent:
    """Go back to the previous promoted adapter, or ``target`` (a version or 'base')."""
    version = registry.plan_rollback(target)
    event = _event(registry, "rollback", version, reason)
    publish(settings, event)
    previous = registry.rollback(version, actor=actor, reason=reason)
    ADAPTER_EVENTS.labels("rollback", _actor(actor)).inc()
    log.warning("rolled back %s → %s by %s: %s", previous, version, actor, reason or "-")
    return event
