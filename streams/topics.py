"""Topic names and their creation.

Topics are created explicitly at start-up because a broker that auto-creates them on first
produce picks its own partition count (Tansu: 4), and ``adapter-events`` must have exactly
one partition so every replica sees promotions in order.
"""

from __future__ import annotations

import logging

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from pydantic import BaseModel, ConfigDict, Field

from streams.connection import KafkaSettings, connect

log = logging.getLogger(__name__)

_NAME = r"^[A-Za-z0-9._-]{1,200}$"


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
    adapter_events: str = Field(
        "adapter-events", pattern=_NAME, description="Adapter promotions and rollbacks."
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
        return [self.prompts, self.responses, self.candidates]

    def layout(self) -> dict[str, int]:
        """Every topic the daemon uses, with its partition count."""
        parts = {t: self.partitions for t in self.data_topics()}
        parts[self.adapter_events] = 1
        for t in list(parts):
            parts[self.dlq(t)] = 1
        return parts


def ensure_topics(kafka: KafkaSettings, topics: TopicsConfig) -> dict[str, str]:
    """Create the missing topics; returns ``{topic: "created" | "exists"}``."""
    layout = topics.layout()
    admin = connect(lambda: KafkaAdminClient(**kafka.client_kwargs("admin")), kafka, "admin client")
    try:
        existing = set(admin.list_topics())
        result = {t: "exists" for t in layout if t in existing}
        missing = [
            NewTopic(t, n, topics.replication_factor)
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
        return result
    finally:
        admin.close()
