"""Records written by a client that is not ours: every codec, and a batch nobody can decode.

Producers in the wild are librdkafka (confluent-kafka), Java, Go clients, and they compress
with whatever their operator chose. The real ``selfdistill serve`` process must answer every
prompt whatever the codec, and step over a batch that cannot be decoded at all (here: a
zstd batch whose payload is garbage, which the broker stores as it is) without crashing,
spinning, or losing the prompts behind it on the same partition.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import confluent_kafka
import pytest
from kafka import KafkaProducer

from daemon.operating.config import Settings, render_toml
from streams import undecodable
from streams.connection import KafkaSettings
from streams.consumer import ConsumerLoop, Record
from streams.deadletter import DeadLetter
from streams.schemas import PromptMessage, ResponseMessage
from streams.topics import TopicsConfig
from tests.conftest import committed_total, read_topic, run_in_thread, start_cli, wait_for

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
PER_CODEC = 4
UNDECODABLE = 3  # records in the garbage batch


def _prompt(pid: str) -> bytes:
    return json.dumps({"v": 1, "id": pid, "prompt": f"{pid}: what is 2 + 2?"}).encode()


def _librdkafka(kafka: KafkaSettings, topic: str, codec: str, ids: list[str]) -> None:
    """One batch per codec, produced by librdkafka onto partition 0."""
    p = confluent_kafka.Producer(
        {"bootstrap.servers": kafka.bootstrap_servers, "compression.type": codec, "linger.ms": 20}
    )
    for pid in ids:
        p.produce(topic, value=_prompt(pid), key=pid.encode(), partition=0)
    assert p.flush(30) == 0


def _garbage_zstd_batch(kafka: KafkaSettings, topic: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch flagged zstd whose payload is not zstd: CRC-valid, so the broker takes it.

    The fake "compressed" payload must be shorter than the records, or the client sends the
    batch uncompressed instead.
    """
    import kafka.record.default_records as records

    monkeypatch.setattr(records, "zstd_encode", lambda payload: b"\x28\xb5\x2f\xfdjunk")
    p = KafkaProducer(bootstrap_servers=kafka.servers, compression_type="zstd", linger_ms=50)
    for i in range(UNDECODABLE):
        p.send(topic, value=_prompt(f"garbage-{i}"), key=b"g", partition=0)
    p.flush(30)
    p.close()
    monkeypatch.undo()


def test_serve_reads_every_codec_and_steps_over_an_undecodable_batch(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = f"serve-{topics.prompts}"
    ids: list[str] = []
    for codec in CODECS[:3]:
        batch = [f"{codec}-{i}" for i in range(PER_CODEC)]
        _librdkafka(kafka, topics.prompts, codec, batch)
        ids += batch
    _garbage_zstd_batch(kafka, topics.prompts, monkeypatch)
    for codec in CODECS[3:]:  # after the bad batch on the same partition: must not be lost
        batch = [f"{codec}-{i}" for i in range(PER_CODEC)]
        _librdkafka(kafka, topics.prompts, codec, batch)
        ids += batch
    total = len(ids) + UNDECODABLE

    settings = Settings(
        data_dir=tmp_path,
        kafka={**kafka.model_dump(), "batch_size": 4},
        topics=topics.model_dump(),
        model={"path": str(tiny_model_dir)},
        serve={"extra_candidates": 0, "max_tokens": 4, "group_id": group},
        metrics={"enabled": False},
    )
    config = tmp_path / "selfdistill.toml"
    config.write_text(render_toml(settings, comments=False))
    log = tmp_path / "serve.log"
    proc = start_cli("-c", str(config), "serve", stderr=log)
    try:
        wait_for(lambda: committed_total(kafka, group, topics.prompts) >= total, 180)
        time.sleep(1.0)  # anything answered twice would have had time to show
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    err = log.read_text()
    assert proc.returncode == 0, err[-3000:]
    assert committed_total(kafka, group, topics.prompts) == total

    answered = Counter(
        ResponseMessage.model_validate_json(r.value).id for r in read_topic(kafka, topics.responses)
    )
    assert answered == Counter(ids)  # every codec read, each prompt once, none of the garbage

    dead = [
        DeadLetter.from_record(r.headers, r.key, r.value)
        for r in read_topic(kafka, topics.dlq(topics.prompts))
    ]
    assert [(d.reason, d.partition, d.offset) for d in dead] == [("undecodable", 0, 3 * PER_CODEC)]
    first, last = 3 * PER_CODEC, 3 * PER_CODEC + UNDECODABLE - 1
    assert f"offsets {first}..{last}" in dead[0].detail
    assert "cannot be decoded" in err and f"offsets {first}..{last}" in err
    print(
        f"\ncodecs {', '.join(CODECS)} via librdkafka {confluent_kafka.version()[0]}: "
        f"{len(ids)} prompts answered once each; undecodable run {first}..{last} skipped"
    )


#: One partition, batch by batch: good batches (gzip, one client) between corrupt ones (a
#: zstd client whose payload is garbage). The sizes make a search that assumes "bad between
#: two failing probes" jump over the good batches inside the second and third bad runs.
INTERLEAVED = (("good", 4), ("bad", 2), ("good", 1), ("bad", 5), ("good", 3), ("good", 3))
INTERLEAVED += (("bad", 3), ("good", 4))


@pytest.mark.parametrize("batch_known", [True, False], ids=["batch-known", "offset-by-offset"])
def test_good_batches_between_undecodable_ones_are_all_read(
    kafka: KafkaSettings, topics: TopicsConfig, monkeypatch: pytest.MonkeyPatch, batch_known: bool
) -> None:
    """Only the undecodable batches' offsets are skipped: every good record between them is
    handled exactly once, and each bad batch's run is dead-lettered with its exact offsets.

    Both ways of stepping over a bad batch: the failed batch read off the client's error, and
    the fallback for a client where it cannot be (one offset at a time)."""
    import kafka.record.default_records as records

    monkeypatch.setattr(records, "zstd_encode", lambda payload: b"\x28\xb5\x2f\xfdjunk")
    producers = {
        "good": KafkaProducer(
            bootstrap_servers=kafka.servers, compression_type="gzip", linger_ms=50
        ),
        "bad": KafkaProducer(
            bootstrap_servers=kafka.servers, compression_type="zstd", linger_ms=50
        ),
    }
    good: dict[int, str] = {}  # offset -> prompt id
    bad_batches: list[tuple[int, int]] = []  # [first, last] of each bad batch
    for n, (kind, size) in enumerate(INTERLEAVED):
        p = producers[kind]
        futs = [
            (f"{kind}-{n}-{i}", p.send(topics.prompts, _prompt(f"{kind}-{n}-{i}"), partition=0))
            for i in range(size)
        ]
        p.flush(30)  # one record batch per entry
        offsets = {pid: fut.get(30).offset for pid, fut in futs}
        if kind == "good":
            good.update((o, pid) for pid, o in offsets.items())
        else:
            bad_batches.append((min(offsets.values()), max(offsets.values())))
    for p in producers.values():
        p.close()
    monkeypatch.undo()
    if not batch_known:
        monkeypatch.setattr(undecodable, "failed_batch_end", lambda exc: None)
    total = sum(size for _, size in INTERLEAVED)
    assert sorted([*good, *(o for a, b in bad_batches for o in range(a, b + 1))]) == list(
        range(total)
    )

    handled: Counter[str] = Counter()

    def handle(batch: list[Record[PromptMessage]]) -> None:
        handled.update(r.value.id for r in batch)

    group = f"g-interleaved-{topics.prompts}"
    loop = ConsumerLoop(
        kafka.model_copy(update={"batch_size": 4}),
        topic=topics.prompts,
        group_id=group,
        schema=PromptMessage,
        handler=handle,
        dlq_topic=topics.dlq(topics.prompts),
    )
    t, _ = run_in_thread(loop)
    try:
        wait_for(lambda: committed_total(kafka, group, topics.prompts) >= total, 120)
    finally:
        loop.request_stop()
        t.join(30)
    skipped = sorted(set(good) - {o for o, pid in good.items() if handled[pid]})
    assert skipped == [], f"good offsets skipped: {skipped}"
    assert handled == Counter(good.values())  # each good record exactly once, no bad one

    dead = [
        DeadLetter.from_record(r.headers, r.key, r.value)
        for r in read_topic(kafka, topics.dlq(topics.prompts))
    ]
    assert [(d.reason, d.partition, d.offset) for d in dead] == [
        ("undecodable", 0, first) for first, _ in bad_batches
    ]
    for d, (first, last) in zip(dead, bad_batches, strict=True):
        assert f"offsets {first}..{last} could not be decoded" in d.detail
    assert loop.stats.records_skipped == total - len(good)
    assert committed_total(kafka, group, topics.prompts) == total
