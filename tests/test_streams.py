"""The streams layer against the real embedded broker: round trips, commits, dead letters.

Malformed messages on every consumed topic: tests/reliability/test_dead_letters.py.
"""

from __future__ import annotations

import threading
import time

from streams.connection import KafkaSettings
from streams.consumer import BatchResult, ConsumerLoop, Output, Record
from streams.deadletter import DeadLetter
from streams.producer import Producer
from streams.schemas import PromptMessage, ResponseMessage
from streams.topics import TopicsConfig
from tests.conftest import committed_total, read_topic, run_in_thread, wait_for


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
