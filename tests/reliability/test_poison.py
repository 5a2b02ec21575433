"""A handler that raises on one record of a batch: bounded retries, then the batch is split.

The worker loop on the real broker, with a handler that fails whenever a batch holds a
poison record and (separately) one that fails once for any batch (a flaky dependency not
declared unavailable). What must hold: the poison record alone goes to the dead-letter
topic with reason ``handler-error`` and the exception's text; every other record of its
batch is processed once and committed; the number of handler calls is bounded; a flaky
failure dead-letters nothing. And the other side of the rule: a record is blamed only when
it is shown at fault; when every record fails the same way, or the probe fails as well, the
worker waits and says so.
"""

from __future__ import annotations

from collections import Counter

from streams.connection import KafkaSettings
from streams.consumer import HANDLER_ERROR, BatchResult, Output, Record
from streams.deadletter import DeadLetter
from streams.producer import Producer
from streams.schemas import PromptMessage
from streams.topics import TopicsConfig
from tests.conftest import committed_total, read_topic, run_in_thread, wait_for
from tests.test_streams import _loop


class Unavailable(RuntimeError):
    pass


def _produce(kafka: KafkaSettings, topic: str, ids: list[str]) -> None:
    # One partition, one record batch (a linger longer than the sends): the poison sits in
    # the middle of one batch, and the first poll cannot hand over the first record alone.
    p = Producer(kafka, linger_ms=500)
    for pid in ids:
        p.send(topic, PromptMessage(id=pid, prompt=f"q {pid}"), key=pid, partition=0)
    p.flush()
    p.close()


def test_a_poison_record_is_isolated_and_its_batch_mates_are_processed(
    kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    ids = [f"p{i}" for i in range(8)]
    ids[5] = "poison"
    _produce(kafka, topics.prompts, ids)
    calls: list[int] = []
    done: Counter[str] = Counter()

    def handle(batch: list[Record[PromptMessage]]) -> BatchResult:
        calls.append(len(batch))
        if any(r.value.id == "poison" for r in batch):
            raise ValueError("cannot handle 'poison'")
        done.update(r.value.id for r in batch)
        return BatchResult(outputs=[Output(topics.responses, b"ok", key=r.key) for r in batch])

    settings = kafka.model_copy(update={"max_handler_attempts": 2})
    loop = _loop(settings, topics, handle, f"g-poison-{topics.prompts}", retry_backoff_max_s=0.2)
    t, _ = run_in_thread(loop)
    wait_for(lambda: committed_total(kafka, f"g-poison-{topics.prompts}", topics.prompts) == 8)
    loop.request_stop()
    t.join(30)

    assert done == Counter(i for i in ids if i != "poison")  # the others once each
    dead = [
        DeadLetter.from_record(r.headers, r.key, r.value)
        for r in read_topic(kafka, topics.dlq(topics.prompts))
    ]
    assert [(d.reason, d.offset) for d in dead] == [(HANDLER_ERROR, 5)]
    assert "ValueError: cannot handle 'poison'" in dead[0].detail
    assert PromptMessage.model_validate_json(dead[0].value).id == "poison"
    assert len(read_topic(kafka, topics.responses)) == 7
    # 2 tries of the batch, then halves and quarters down to the poison, which gets 2 tries
    # alone: bounded by about 2·log2(8) calls beyond the retries, not one per record.
    assert len(calls) <= 2 + 2 * 3 + 2, calls
    assert loop.stats.isolated == 1


def test_a_flaky_failure_or_an_unavailable_dependency_dead_letters_nothing(
    kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    ids = [f"f{i}" for i in range(8)]
    _produce(kafka, topics.prompts, ids)
    failures = ["flaky", "down", "down", "down", "down"]  # more than max_handler_attempts
    done: Counter[str] = Counter()

    def handle(batch: list[Record[PromptMessage]]) -> None:
        if failures:
            kind = failures.pop(0)
            raise (RuntimeError if kind == "flaky" else Unavailable)(kind)
        done.update(r.value.id for r in batch)

    group = f"g-flaky-{topics.prompts}"
    loop = _loop(kafka, topics, handle, group, retry_backoff_max_s=0.2, unavailable=(Unavailable,))
    t, _ = run_in_thread(loop)
    wait_for(lambda: committed_total(kafka, group, topics.prompts) == 8)
    loop.request_stop()
    t.join(30)
    assert done == Counter(ids)
    assert read_topic(kafka, topics.dlq(topics.prompts)) == []
    assert loop.stats.unavailable_waits == 4 and loop.stats.handler_failures == 5
    assert loop.waiting_on is None  # recovered


def test_every_record_failing_the_same_way_is_the_workers_fault_not_the_records(
    kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    """An error the loop does not know (out of memory while training shares the device, a
    bug) on every record: nothing is dead-lettered; the loop waits, says on what, and the
    batch is done once the fault is gone. (Before: tries, split, all 8 dead-lettered.)"""
    ids = [f"m{i}" for i in range(8)]
    _produce(kafka, topics.prompts, ids)
    oom = [True]
    done: Counter[str] = Counter()

    def handle(batch: list[Record[PromptMessage]]) -> None:
        if oom[0]:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        done.update(r.value.id for r in batch)

    group = f"g-oom-{topics.prompts}"
    settings = kafka.model_copy(update={"max_handler_attempts": 2})
    loop = _loop(settings, topics, handle, group, retry_backoff_max_s=0.5)
    t, _ = run_in_thread(loop)
    try:
        wait_for(lambda: loop.waiting_on is not None, 60, what="the loop to wait")
        assert "fail the same way" in loop.waiting_on and "out of memory" in loop.waiting_on
        assert not loop.is_ready()
        wait_for(lambda: loop.stats.unavailable_waits >= 3, 60, what="several waits")
        assert committed_total(kafka, group, topics.prompts) == 0
        assert read_topic(kafka, topics.dlq(topics.prompts)) == []
        oom[0] = False
        wait_for(lambda: committed_total(kafka, group, topics.prompts) == 8, 60)
    finally:
        loop.request_stop()
        t.join(30)
    assert done == Counter(ids)
    assert loop.stats.isolated == 0 and loop.waiting_on is None


def test_a_lone_failing_record_is_blamed_only_once_the_probe_shows_the_dependency_well(
    kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    """A batch of one record that fails: while the probe fails too, the worker waits; once
    the probe succeeds between its failures, the record is shown at fault and isolated."""
    _produce(kafka, topics.prompts, ["only"])
    probe_down = [True]
    probes: list[bool] = []

    def probe() -> None:
        probes.append(probe_down[0])
        if probe_down[0]:
            raise Unavailable("the engine does not answer a one-token request")

    def handle(batch: list[Record[PromptMessage]]) -> None:
        raise ValueError("cannot handle 'only'")

    group = f"g-lone-{topics.prompts}"
    settings = kafka.model_copy(update={"max_handler_attempts": 2})
    loop = _loop(settings, topics, handle, group, retry_backoff_max_s=0.5, probe=probe)
    t, _ = run_in_thread(loop)
    try:
        wait_for(lambda: loop.stats.unavailable_waits >= 2, 60, what="the loop to wait")
        assert "the probe fails as well" in (loop.waiting_on or "")
        assert read_topic(kafka, topics.dlq(topics.prompts)) == []
        assert committed_total(kafka, group, topics.prompts) == 0
        probe_down[0] = False
        wait_for(lambda: committed_total(kafka, group, topics.prompts) == 1, 60)
    finally:
        loop.request_stop()
        t.join(30)
    dead = [
        DeadLetter.from_record(r.headers, r.key, r.value)
        for r in read_topic(kafka, topics.dlq(topics.prompts))
    ]
    assert [(d.reason, d.offset) for d in dead] == [(HANDLER_ERROR, 0)]
    assert "cannot handle 'only'" in dead[0].detail
    assert probes[0] is True and probes[-1] is False  # blamed after a probe that succeeded
