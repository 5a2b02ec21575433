"""The streams layer against the real embedded broker: round trips, commits, dead letters.

Malformed messages on every consumed topic: tests/reliability/test_dead_letters.py.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

from streams.connection import KafkaSettings
from streams.consumer import BatchResult, ConsumerLoop, Output, Record
from streams.deadletter import HEADROOM_BYTES, DeadLetter
from streams.outputs import OutputTooLarge
from streams.producer import Producer
from streams.schemas import PromptMessage, ResponseMessage
from streams.topics import TopicLayoutError, TopicsConfig, ensure_topics, prepare_topics
from tests.conftest import committed_total, read_topic, run_in_thread, wait_for

TOPIC_FIELDS = (
    "prompts",
    "responses",
    "candidates",
    "verdicts",
    "adapter_events",
    "adapter_status",
)


def _produce_prompts(kafka: KafkaSettings, topic: str, n: int, prefix: str = "p") -> list[str]:
    producer = Producer(kafka)
    ids = [f"{prefix}{i}" for i in range(n)]
    for pid in ids:
        producer.send(topic, PromptMessage(id=pid, prompt=f"question {pid}"), key=pid)
    assert producer.flush() == n
    producer.close()
    return ids


def _loop(kafka: KafkaSettings, topics: TopicsConfig, handler, group: str, **kw) -> ConsumerLoop:
    return ConsumerLoop(
        kafka,
        topic=topics.prompts,
        group_id=group,
        schema=PromptMessage,
        handler=handler,
        dlq_topic=topics.dlq(topics.prompts),
        **kw,
    )


def test_round_trip_commits_offset_plus_one(kafka: KafkaSettings, topics: TopicsConfig) -> None:
    ids = _produce_prompts(kafka, topics.prompts, 30)
    seen: list[str] = []

    def handle(batch: list[Record[PromptMessage]]) -> None:
        assert len(batch) <= kafka.batch_size
        seen.extend(r.value.id for r in batch)

    loop = _loop(kafka, topics, handle, "g-roundtrip")
    t, _ = run_in_thread(loop)
    wait_for(lambda: len(seen) >= 30)
    loop.request_stop()
    t.join(30)
    assert sorted(seen) == sorted(ids)
    # Committed offsets are "next to read": their sum over partitions is the record count.
    assert committed_total(kafka, "g-roundtrip", topics.prompts) == 30

    # A restarted member of the same group finds nothing left to do.
    again: list[str] = []
    loop2 = _loop(kafka, topics, lambda b: again.extend(r.value.id for r in b), "g-roundtrip")
    loop2.run(max_idle_s=1.5, handle_signals=False)
    assert again == []


def test_handler_rejections_go_to_the_dlq(kafka: KafkaSettings, topics: TopicsConfig) -> None:
    _produce_prompts(kafka, topics.prompts, 6)

    def handle(batch: list[Record[PromptMessage]]) -> BatchResult:
        return BatchResult(rejected=[(r, "refused: odd") for r in batch if int(r.value.id[1:]) % 2])

    _loop(kafka, topics, handle, "g-reject").run(max_idle_s=1.5, handle_signals=False)
    dead = [
        DeadLetter.from_record(r.headers, r.key, r.value)
        for r in read_topic(kafka, topics.dlq(topics.prompts))
    ]
    assert sorted(d.key.decode() for d in dead) == ["p1", "p3", "p5"]
    assert {d.reason for d in dead} == {"handler_rejected"}
    assert all(PromptMessage.model_validate_json(d.value).id == d.key.decode() for d in dead)


def test_failing_handler_is_retried_and_never_committed_early(
    kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    _produce_prompts(kafka, topics.prompts, 5)
    calls = {"n": 0}
    done: list[str] = []

    def handle(batch: list[Record[PromptMessage]]) -> None:
        calls["n"] += 1
        if calls["n"] <= 2:  # e.g. the store's disk is full for a while
            raise OSError("disk full")
        done.extend(r.value.id for r in batch)

    loop = _loop(kafka, topics, handle, "g-retry")
    t, _ = run_in_thread(loop)
    wait_for(lambda: loop.stats.handler_failures >= 1)
    assert committed_total(kafka, "g-retry", topics.prompts) == 0  # nothing committed while failing
    wait_for(lambda: len(done) == 5, timeout=30)
    loop.request_stop()
    t.join(30)
    assert sorted(done) == [f"p{i}" for i in range(5)]
    assert loop.stats.handler_failures >= 2
    assert committed_total(kafka, "g-retry", topics.prompts) == 5


def test_slow_handler_does_not_lose_group_membership(
    kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    """A batch slower than max_poll_interval_ms runs once: the loop keeps polling meanwhile."""
    settings = kafka.model_copy(update={"max_poll_interval_ms": 2000, "batch_size": 3})
    _produce_prompts(kafka, topics.prompts, 6)
    calls: list[str] = []

    def handle(batch: list[Record[PromptMessage]]) -> None:
        calls.extend(r.value.id for r in batch)
        time.sleep(5)  # 2.5 x the poll interval

    loop = _loop(settings, topics, handle, "g-slow")
    t, _ = run_in_thread(loop)
    wait_for(lambda: committed_total(kafka, "g-slow", topics.prompts) == 6, timeout=90)
    loop.request_stop()
    t.join(30)
    assert sorted(calls) == [f"p{i}" for i in range(6)]  # each handled exactly once


def test_transactional_outputs_commit_with_offsets(
    kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    ids = _produce_prompts(kafka, topics.prompts, 12)
    fail_once = threading.Event()

    def handle(batch: list[Record[PromptMessage]]) -> BatchResult:
        outs = [
            Output(
                topics.responses,
                ResponseMessage(
                    id=r.value.id, text="ok", latency_s=0, prompt_tokens=1, completion_tokens=1
                ),
                key=r.value.id,
            )
            for r in batch
        ]
        if not fail_once.is_set():
            fail_once.set()
            # An output that cannot be produced: the whole transaction must abort.
            outs.append(Output("bad topic name!", b"x"))
        return BatchResult(outputs=outs)

    loop = _loop(kafka, topics, handle, "g-tx", transactional_id=f"tx-{topics.prompts}")
    t, _ = run_in_thread(loop)
    wait_for(lambda: committed_total(kafka, "g-tx", topics.prompts) == 12, timeout=90)
    loop.request_stop()
    t.join(30)
    assert loop.stats.handler_failures >= 1
    responses = [
        ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.responses)
    ]
    # The aborted attempt's responses are invisible to read_committed readers.
    assert sorted(r.id for r in responses) == sorted(ids)


def _response(pid: str, text: str) -> ResponseMessage:
    return ResponseMessage(id=pid, text=text, latency_s=0, prompt_tokens=1, completion_tokens=1)


def test_an_input_whose_output_is_too_large_is_dead_lettered_and_the_rest_commit(
    kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    """A worker writes under ``kafka.output_limit`` (here the default, twice a small
    ``max_message_bytes``: 2 KiB). An input with one output over it is dead-lettered
    (``output-too-large``) with none of its outputs; the rest of its batch is written and
    committed, in one transaction, and nothing is retried. (The embedded broker would take
    the large output; a stock broker refuses it, and the batch was redone for ever.)"""
    small = kafka.model_copy(update={"max_message_bytes": 1024, "batch_size": 12})
    assert small.output_limit == 2048
    ids = _produce_prompts(kafka, topics.prompts, 12)
    big = {"p3", "p7", "p8"}
    calls: Counter[str] = Counter()

    def handle(batch: list[Record[PromptMessage]]) -> BatchResult:
        calls.update(r.value.id for r in batch)
        outs = []
        for r in batch:
            text = "x" * (5000 if r.value.id in big else 10)
            outs.append(Output(topics.responses, _response(r.value.id, "ok"), r.key, source=r))
            outs.append(Output(topics.candidates, _response(r.value.id, text), r.key, source=r))
        return BatchResult(outputs=outs)

    group = "g-output-too-large"
    loop = _loop(small, topics, handle, group, transactional_id=f"tx-{topics.prompts}")
    t, _ = run_in_thread(loop)
    try:
        wait_for(lambda: committed_total(kafka, group, topics.prompts) == 12, timeout=60)
    finally:
        loop.request_stop()
        t.join(30)
    assert calls == Counter(ids)  # each input handled once: nothing retried
    assert loop.stats.handler_failures == 0

    dead = [
        DeadLetter.from_record(r.headers, r.key, r.value)
        for r in read_topic(kafka, topics.dlq(topics.prompts))
    ]
    assert sorted(d.key.decode() for d in dead) == sorted(big)
    for d in dead:
        assert d.reason == "output-too-large"
        assert f"its output to {topics.candidates} is " in d.detail
        assert "workers write at most 2048 (kafka.max_output_bytes)" in d.detail
        assert PromptMessage.model_validate_json(d.value).id == d.key.decode()  # the input
    # None of a blamed input's outputs is written, not even the small one.
    for topic in (topics.responses, topics.candidates):
        written = Counter(
            ResponseMessage.model_validate_json(r.value).id for r in read_topic(kafka, topic)
        )
        assert written == Counter(set(ids) - big), topic


def test_an_oversize_output_with_no_source_stops_the_loop_uncommitted(
    kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    """No input to blame: the loop stops with OutputTooLarge, writes and commits nothing."""
    small = kafka.model_copy(update={"max_output_bytes": 1024})
    _produce_prompts(kafka, topics.prompts, 3)

    def handle(batch: list[Record[PromptMessage]]) -> BatchResult:
        return BatchResult(outputs=[Output(topics.responses, _response("all", "x" * 2000))])

    loop = _loop(small, topics, handle, "g-no-source")
    with pytest.raises(OutputTooLarge, match=f"an output to {topics.responses} is \\d+ bytes"):
        loop.run(max_idle_s=30, handle_signals=False)
    assert committed_total(kafka, "g-no-source", topics.prompts) == 0
    assert read_topic(kafka, topics.responses) == []


def _max_message_bytes(kafka: KafkaSettings, names: list[str]) -> dict[str, str | None]:
    admin = KafkaAdminClient(**kafka.client_kwargs("test-admin"))
    try:
        got = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in names], config_filter="all"
        )["topic"]
    finally:
        admin.close()
    return {t: (got[t].get("max.message.bytes") or {}).get("value") for t in names}


def test_topics_are_created_to_take_what_the_workers_write(kafka: KafkaSettings) -> None:
    """Read back from the broker: outputs' topics take kafka.output_limit plus framing,
    dead-letter topics the largest dead letter; prompts keeps the cluster's default."""
    settings = kafka.model_copy(update={"max_output_bytes": 3_000_000})
    tag = uuid.uuid4().hex[:8]
    t = TopicsConfig(**{f: f"{f}-{tag}" for f in TOPIC_FIELDS}, partitions=1)
    ensure_topics(settings, t)
    outputs = str(3_000_000 + HEADROOM_BYTES)
    dead = str(1_048_576)  # max(kafka.max_message_bytes, 1 MiB)
    assert _max_message_bytes(settings, [t.responses, t.candidates, t.verdicts]) == dict.fromkeys(
        [t.responses, t.candidates, t.verdicts], outputs
    )
    dlqs = [t.dlq(x) for x in (t.prompts, t.candidates, t.verdicts, t.adapter_events)]
    assert _max_message_bytes(settings, dlqs) == dict.fromkeys(dlqs, dead)
    assert _max_message_bytes(settings, [t.prompts, t.adapter_events]) == dict.fromkeys(
        [t.prompts, t.adapter_events], None
    )
    # The producers may send what was checked, with the framing.
    assert Producer(settings).raw.config["max_request_size"] >= 3_000_000 + HEADROOM_BYTES


def test_a_topic_too_small_for_the_outputs_stops_start_up(
    kafka: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    """An existing topic whose max.message.bytes (as the broker reports it) is below what
    the workers write is named with its limit at start-up; one the broker reports nothing
    about is unknown and passes, logged."""
    tag = uuid.uuid4().hex[:8]
    t = TopicsConfig(**{f: f"{f}-{tag}" for f in TOPIC_FIELDS}, partitions=1, create=False)
    admin = KafkaAdminClient(**kafka.client_kwargs("test-admin"))
    try:
        admin.create_topics(
            [NewTopic(t.verdicts, 1, 1, topic_configs={"max.message.bytes": "1048588"})]
        )
        admin.create_topics([NewTopic(t.candidates, 1, 1)])  # the broker reports no limit
    finally:
        admin.close()
    need = kafka.output_limit + HEADROOM_BYTES
    with pytest.raises(TopicLayoutError) as err:
        prepare_topics(kafka, t)
    assert f"topic {t.verdicts} takes messages up to 1048588 bytes" in str(err.value)
    assert f"max.message.bytes={need}" in str(err.value)
    with caplog.at_level(logging.INFO, logger="streams.topics"):
        prepare_topics(kafka.model_copy(update={"max_output_bytes": 1_000_000}), t)
    assert f"not reported by the broker for ['{t.candidates}']: unchecked" in caplog.text
