"""Promotion and rollback: tell every serve replica which adapter to use, and record it.

The registry and ``adapter-events`` are kept in step by the outbox (``adapters/outbox.py``):
intent recorded, then published, then applied to the registry and marked done, all under
the promotion lock, so the trainer and an operator never interleave. Before each new
announcement, and at the start of each training cycle, :func:`reconcile` finishes whatever
a crash left half-done and re-announces the registry's state when the topic lost it (a
broker that restarted with memory-only storage). A publish that raised is reported as
``AnnounceUnknown``: the event may have reached the broker, so the intent stays pending and
the next reconcile settles it, never leaving the registry and the replicas disagreeing.

A pending intent can also be *abandoned* (:func:`abandon`, ``adapters reconcile --abandon``):
the fleet ends where the registry was before it. An intent never published is dropped; one
whose event did reach the topic (the outcome was unknown) is undone by a corrective event
that announces the registry's version again. :func:`reannounce` repeats the registry's
version on its own, for replicas that drifted (``adapters reconcile`` decides when).

Files are verified (inside the registry, safetensors only, sha256 as registered) before
anything is announced: a replica would refuse a corrupt adapter anyway and keep the old one,
but the operator should hear it here, at the command, not from a dashboard later.
"""

from __future__ import annotations

import logging
from typing import Protocol

from adapters import outbox
from adapters.files import verify_adapter
from adapters.registry import BASE, Registry, RegistryError
from daemon.learning.metrics import ADAPTER_EVENTS
from streams.adapter_events import read_events, read_last_event
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


class AnnounceUnknown(RuntimeError):
    """Publishing raised: the event may or may not be on ``adapter-events``. The intent stays
    pending; the next promote, rollback, training cycle or ``adapters reconcile`` settles it."""


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


def reconcile(settings: PublishSettings, registry: Registry) -> list[str]:
    """Make the registry and ``adapter-events`` agree; returns what was done (for the log)."""
    with outbox.promotion_lock(registry):
        return _reconcile(settings, registry)


def _reconcile(settings: PublishSettings, registry: Registry) -> list[str]:
    done: list[str] = []
    topic = settings.topics.adapter_events
    last = read_last_event(settings.kafka, topic)
    for intent in outbox.pending(registry):
        event = AdapterEvent.model_validate_json(intent.event)
        if last != event:
            _publish_or_unknown(settings, event, intent.action)
            done.append(f"{intent.action} {intent.version}: published the pending announcement")
            last = event
        else:
            done.append(f"{intent.action} {intent.version}: was published; recorded it")
        previous = outbox.complete(registry, intent)
        ADAPTER_EVENTS.labels(intent.action, _actor(intent.actor or "")).inc()
        log.warning("reconcile: %s (was %s)", done[-1], previous)
    active = registry.active_version()
    if (last.version if last else BASE) != active:
        action = "rollback" if active == BASE else "promote"
        said = last.version if last else "nothing"
        event = _event(registry, action, active, f"reconcile: adapter-events said {said}")
        _publish_or_unknown(settings, event, action)
        done.append(f"re-announced {active}: adapter-events said {said}")
        log.warning("reconcile: %s", done[-1])
    return done


def abandon(settings: PublishSettings, registry: Registry, *, actor: str) -> list[str]:
    """Drop every pending intent so that the fleet ends where the registry is (it was never
    changed by them); returns what was done, one line per intent and per event published.

    An intent whose event is not on ``adapter-events`` was never published: it is dropped.
    One whose event is there (its publish raised after the broker took it) reached the
    replicas, so the registry's version is announced again (a ``rollback`` to it) before the
    intent is dropped. That event's publish failing raises ``AnnounceUnknown`` and keeps the
    intents pending: running this again settles it.
    """
    with outbox.promotion_lock(registry):
        intents = outbox.pending(registry)
        if not intents:
            return []
        active = registry.active_version()
        events = read_events(settings.kafka, settings.topics.adapter_events)
        said = events[-1].version if events else BASE
        done, reached = [], []
        for intent in intents:
            if AdapterEvent.model_validate_json(intent.event) in events:
                reached.append(intent)
                done.append(
                    f"abandoned {intent.action} {intent.version}: its event had reached "
                    "adapter-events (the replicas may serve it)"
                )
            else:
                done.append(f"abandoned {intent.action} {intent.version}: never published; dropped")
        if reached and said != active:
            names = ", ".join(f"{i.action} {i.version}" for i in reached)
            event = _event(registry, "rollback", active, f"abandoned {names}")
            _publish_or_unknown(settings, event, "rollback")
            ADAPTER_EVENTS.labels("rollback", _actor(actor)).inc()
            done.append(f"announced {active} again (rollback), undoing {said} on the replicas")
        elif reached:
            done.append(f"adapter-events already ends on {active}: nothing to undo")
        outbox.abandon(registry, intents, actor=actor, active=active)
    for line in done:
        log.warning("abandon: %s", line)
    return done


def reannounce(
    settings: PublishSettings, registry: Registry, *, reason: str | None = None
) -> AdapterEvent:
    """Publish the registry's active version again (nothing in the registry changes): a
    replica that refused it, or never heard of it, tries again; the others, serving it
    already, take the repeat as a no-op. Pending intents are settled first."""
    with outbox.promotion_lock(registry):
        for line in _reconcile(settings, registry):
            log.warning("before re-announcing: %s", line)
        active = registry.active_version()
        event = _event(registry, "rollback" if active == BASE else "promote", active, reason)
        _publish_or_unknown(settings, event, event.action)
    log.warning("re-announced %s: %s", active, reason or "-")
    return event


def _publish_or_unknown(settings: PublishSettings, event: AdapterEvent, action: str) -> None:
    try:
        publish(settings, event)
    except Exception as exc:
        raise AnnounceUnknown(
            f"{action} {event.version}: the publish raised, so whether adapter-events has it "
            f"is unknown ({exc}); the registry is unchanged and the intent is kept: run "
            "`selfdistill adapters reconcile` (or promote/rollback again) once the broker "
            "is reachable"
        ) from exc


def _announce(
    settings: PublishSettings,
    registry: Registry,
    action: str,
    target: str | None,
    actor: str,
    reason: str | None,
) -> AdapterEvent:
    with outbox.promotion_lock(registry):
        for line in _reconcile(settings, registry):
            log.warning("before %s: %s", action, line)
        if action == "promote":
            assert target is not None
            if registry.active_version() == target:
                raise RegistryError(f"{target} is already active")
            version = target
        else:
            version = registry.plan_rollback(target)
        event = _event(registry, action, version, reason)
        intent = outbox.record(registry, action, version, event.model_dump_json(), actor, reason)
        _publish_or_unknown(settings, event, action)
        previous = outbox.complete(registry, intent)
    ADAPTER_EVENTS.labels(action, _actor(actor)).inc()
    if action == "promote":
        log.info("promoted %s (was %s) by %s: %s", version, previous, actor, reason or "-")
    else:
        log.warning("rolled back %s → %s by %s: %s", previous, version, actor, reason or "-")
    return event


def promote(
    settings: PublishSettings,
    registry: Registry,
    version: str,
    *,
    actor: str,
    reason: str | None = None,
) -> AdapterEvent:
    """Announce ``version`` as the active adapter and record the promotion."""
    return _announce(settings, registry, "promote", version, actor, reason)


def rollback(
    settings: PublishSettings,
    registry: Registry,
    target: str | None = None,
    *,
    actor: str,
    reason: str | None = None,
) -> AdapterEvent:
    """Go back to the previous promoted adapter, or ``target`` (a version or 'base')."""
    return _announce(settings, registry, "rollback", target, actor, reason)
