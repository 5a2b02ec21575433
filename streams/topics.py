"""Topic names and their creation.

Topics are created explicitly at start-up because a broker that auto-creates them on first
produce picks its own partition count (Tansu: 4). The two state topics are different from
the data topics: ``adapter-events`` (what should serve) and ``adapter-status`` (what each
replica serves) must have exactly one partition, so every reader sees one order, and are
compacted with no time retention, so a replica started after any number of days still finds
the current adapter. A state topic with another partition count stops the worker at start-up
(``TopicLayoutError``) instead of splitting promotions across partitions nobody reads.

Topics the workers write are created with a ``max.message.bytes`` that takes what they may
write (:func:`message_bytes`): a stock broker takes about 1 MB, and a larger verdict refused
by the broker would be retried for ever. Where the broker answers DescribeConfigs, existing
topics are checked at start-up too, and one that is too small stops the worker, named with
its limit (``TopicLayoutError``). A broker that does not answer leaves that unknown (logged).
"""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError
from pydantic import BaseModel, ConfigDict, Field

from streams.connection import KafkaSettings, connect
from streams.deadletter import BROKER_MESSAGE_BYTES, HEADROOM_BYTES

log = logging.getLogger(__name__)

_NAME = r"^[A-Za-z0-9._-]{1,200}$"

#: The state topics keep the newest record per key for ever (Kafka's defaults would delete
#: a promotion after 7 days, and a replica started later would serve the base model), and so
#: does ``verdicts``, the log the store is materialised (and rebuilt) from.
COMPACTED = {"cleanup.policy": "compact", "retention.ms": "-1"}

#: The topic config bounding one record batch (compressed, with framing); where a topic does
#: not set it, the broker's ``message.max.bytes`` (1,048,588 by default) applies.
MAX_MESSAGE_BYTES = "max.message.bytes"


class TopicLayoutError(ValueError):
    """A topic exists with a layout the daemon cannot work with (a start-up error)."""


class TopicsConfig(BaseModel):
    """Topic names (defaults from DESIGN.md) and how they are created."""

    model_config = ConfigDict(extra="forbid")

    prompts: str = Field("prompts", pattern=_NAME, description="Unlabeled prompts from producers.")
    responses: str = Field(
        "responses", pattern=_NAME, description="The answer the production caller gets."
    )
    candidates: str = Field(
        "candidates", pattern=_NAME, description="All samples for one prompt, for the verifier."
    )
    verdicts: str = Field(
        "verdicts",
        pattern=_NAME,
        description="Each prompt's judged outcome, for the store writer (compacted, kept: "
        "the store is rebuilt from it).",
    )
    adapter_events: str = Field(
        "adapter-events", pattern=_NAME, description="Adapter promotions and rollbacks."
    )
    adapter_status: str = Field(
        "adapter-status",
        pattern=_NAME,
        description="What each serve replica serves, keyed by replica (compacted).",
    )
    dlq_suffix: str = Field(
        ".dlq",
        pattern=r"^[A-Za-z0-9._-]{1,20}$",
        description="Dead-letter topic = <topic><suffix>.",
    )
    partitions: int = Field(
        4, ge=1, le=1000, description="Partitions of the data topics (created if missing)."
    )
    replication_factor: int = Field(
        1, ge=1, le=10, description="Replication factor for created topics (3 on a real cluster)."
    )
    create: bool = Field(
        True, description="Create missing topics at start-up; turn off where an admin owns topics."
    )

    def dlq(self, topic: str) -> str:
        return f"{topic}{self.dlq_suffix}"

    def data_topics(self) -> list[str]:
        return [self.prompts, self.responses, self.candidates, self.verdicts]

    def kept_topics(self) -> list[str]:
        """Compacted with no time retention: the state topics, and ``verdicts`` (the store's
        source: a store lost with its disk is rebuilt from it)."""
        return [*self.state_topics(), self.verdicts]

    def output_topics(self) -> list[str]:
        """What the workers write from their inputs (each output measured before it is sent,
        against ``kafka.output_limit``)."""
        return [self.responses, self.candidates, self.verdicts]

    def state_topics(self) -> list[str]:
        """Single-partition, compacted: the newest record per key is the state."""
        return [self.adapter_events, self.adapter_status]

    def layout(self) -> dict[str, int]:
        """Every topic the daemon uses, with its partition count."""
        parts = {t: self.partitions for t in self.data_topics()}
        parts[self.adapter_events] = 1
        for t in list(parts):
            parts[self.dlq(t)] = 1
        parts[self.adapter_status] = 1  # no dead letters: it is written only by replicas
        return parts

    def topic_configs(self, topic: str) -> dict[str, str]:
        """Topic-level configs the daemon creates ``topic`` with."""
        return dict(COMPACTED) if topic in self.kept_topics() else {}


def message_bytes(kafka: KafkaSettings, topics: TopicsConfig) -> dict[str, int]:
    """The ``max.message.bytes`` each topic the workers write needs, by topic.

    Outputs (responses, candidates, verdicts): ``kafka.output_limit`` (checked before a
    worker sends) plus :data:`HEADROOM_BYTES` for framing. Dead-letter topics: the largest
    dead letter (:func:`streams.deadletter.whole_limit` plus headers), at most
    ``max(kafka.max_message_bytes, 1 MiB)``, which a stock broker takes. ``prompts``
    (written by producers) and the state topics (small records) keep the cluster's default.
    """
    outputs = kafka.output_limit + HEADROOM_BYTES
    need = dict.fromkeys(topics.output_topics(), outputs)
    dead = max(kafka.max_message_bytes, BROKER_MESSAGE_BYTES)
    need.update((topics.dlq(t), dead) for t in topics.layout() if topics.dlq(t) in topics.layout())
    return need


def creation_configs(kafka: KafkaSettings, topics: TopicsConfig, topic: str) -> dict[str, str]:
    """Every topic-level config ``topic`` is created with: retention and message size."""
    configs = topics.topic_configs(topic)
    need = message_bytes(kafka, topics).get(topic)
    if need is not None:
        configs[MAX_MESSAGE_BYTES] = str(need)
    return configs


def ensure_topics(kafka: KafkaSettings, topics: TopicsConfig) -> dict[str, str]:
    """Create the missing topics; returns ``{topic: "created" | "exists"}``."""
    layout = topics.layout()
    admin = connect(lambda: KafkaAdminClient(**kafka.client_kwargs("admin")), kafka, "admin client")
    try:
        existing = set(admin.list_topics())
        result = {t: "exists" for t in layout if t in existing}
        missing = [
            NewTopic(
                t, n, topics.replication_factor, topic_configs=creation_configs(kafka, topics, t)
            )
            for t, n in layout.items()
            if t not in existing
        ]
        for nt in missing:
            try:
                admin.create_topics([nt])
                result[nt.name] = "created"
                log.info("created topic %s (%d partitions)", nt.name, nt.num_partitions)
            except TopicAlreadyExistsError:  # another worker won the race
                result[nt.name] = "exists"
        _check_topics(admin, kafka, topics, existing | set(result))
        return result
    finally:
        admin.close()


def prepare_topics(kafka: KafkaSettings, topics: TopicsConfig) -> None:
    """What a worker does at start-up: create missing topics (unless ``topics.create`` is
    off, where an admin owns them) and check the topics either way: the state topics'
    layout and retention, and that each topic takes the largest message written to it."""
    if topics.create:
        ensure_topics(kafka, topics)
        return
    admin = connect(lambda: KafkaAdminClient(**kafka.client_kwargs("admin")), kafka, "admin client")
    try:
        _check_topics(admin, kafka, topics, set(admin.list_topics()))
    finally:
        admin.close()


def _check_topics(
    admin: KafkaAdminClient, kafka: KafkaSettings, topics: TopicsConfig, existing: set[str]
) -> None:
    """Raise ``TopicLayoutError`` for a topic the workers cannot use; warn about retention."""
    _check_state_topics(admin, topics, existing)
    need = {t: n for t, n in message_bytes(kafka, topics).items() if t in existing}
    configs = _describe_configs(admin, sorted({*need, *topics.kept_topics()} & existing))
    _warn_retention(topics, configs)
    _check_message_bytes(kafka, topics, need, configs)


def _describe_configs(admin: KafkaAdminClient, names: list[str]) -> dict[str, dict[str, str]]:
    """``{topic: {config: value}}`` as the broker reports them; a topic it says nothing
    about (no DescribeConfigs, no permission, or an embedded broker's unset config) is
    absent or empty: unknown, not wrong.

    Every config is asked for (no key filter): Tansu drops the connection on a filtered
    request, and answers an unfiltered one."""
    if not names:
        return {}
    try:  # {resource type: {topic: {key: {"value": ..., ...}}}}
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in names], config_filter="all"
        )
    except Exception as exc:  # an old or partial broker: what can be checked without it holds
        log.info("the broker did not answer DescribeConfigs (%r); topic configs unchecked", exc)
        return {}
    return {
        topic: {k: str(c.get("value")) for k, c in entries.items() if c.get("value") is not None}
        for topic, entries in (described.get("topic") or {}).items()
    }


def _check_message_bytes(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    need: dict[str, int],
    configs: dict[str, dict[str, str]],
) -> None:
    """Raise ``TopicLayoutError`` for the first topic whose ``max.message.bytes`` is below
    what the workers may write to it (``need``: the existing ones); log those unknown."""
    unknown = []
    for topic in sorted(need):
        value = (configs.get(topic) or {}).get(MAX_MESSAGE_BYTES, "")
        if not value.strip().isdigit():
            unknown.append(topic)
            continue
        if int(value) >= need[topic]:
            continue
        if topic in topics.output_topics():
            what = f"an output of up to {kafka.output_limit} bytes (kafka.max_output_bytes)"
            what += f" and {HEADROOM_BYTES} of framing"
            alt = " or lower kafka.max_output_bytes"
        else:
            what, alt = "a dead letter of up to max(kafka.max_message_bytes, 1 MiB)", ""
        raise TopicLayoutError(
            f"topic {topic} takes messages up to {int(value)} bytes (max.message.bytes), but "
            f"the workers may write {need[topic]} bytes to it: {what}. Raise its "
            f"max.message.bytes to at least {need[topic]} (kafka-configs.sh --alter "
            f"--entity-type topics --entity-name {topic} "
            f"--add-config max.message.bytes={need[topic]}){alt}"
        )
    if unknown:
        log.info("max.message.bytes not reported by the broker for %s: unchecked", unknown)


def _check_state_topics(admin: KafkaAdminClient, topics: TopicsConfig, existing: set[str]) -> None:
    """Raise ``TopicLayoutError`` for a state topic with other than one partition."""
    names = [t for t in topics.state_topics() if t in existing]
    for desc in admin.describe_topics(names) if names else []:
        n = len(desc.get("partitions") or [])
        if n != 1:
            field = "adapter_events" if desc["name"] == topics.adapter_events else "adapter_status"
            raise TopicLayoutError(
                f"topic {desc['name']} has {n} partitions; it must have exactly 1 (every "
                "replica reads one ordered history). Delete and re-create it with 1 partition, "
                f"or set topics.{field} to a new topic name"
            )


def _warn_retention(topics: TopicsConfig, described: dict[str, dict[str, str]]) -> None:
    """Warn when the broker reports a retention that would delete the current state."""
    for topic in topics.kept_topics():
        configs = described.get(topic) or {}
        policy = configs.get("cleanup.policy") or "delete"
        retention = configs.get("retention.ms")
        if configs and "delete" in policy and retention != "-1":  # deleted by age
            lost = (
                "verdicts, and a store rebuilt from it misses them"
                if topic == topics.verdicts
                else "the current adapter state, and a replica started after that serves "
                "the base model"
            )
            log.warning(
                "topic %s has cleanup.policy=%s retention.ms=%s: the broker will delete %s; "
                "set cleanup.policy=compact and retention.ms=-1",
                topic,
                policy,
                retention,
                lost,
            )
