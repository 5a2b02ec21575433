"""Malformed, binary, oversize and wrong-version messages on every topic a worker consumes.

``prompts`` (the serve worker), ``candidates`` (the verify worker), ``verdicts`` (the store
writer) and ``adapter-events`` (serve's adapter follower) each get one message per
dead-letter reason, then good ones. Every
bad message must land on ``<topic>.dlq`` whole (original bytes and key, for replay) with its
reason, detail and source coordinates in the headers; the workers must stay up and go on with
the good messages that follow. (``responses`` is read by the production caller, not by a
worker.)
"""

from __future__ import annotations

import json
from pathlib import Path

from kafka import KafkaProducer
from prometheus_client import REGISTRY
from pydantic import BaseModel

from daemon.engines.transformers_engine import TransformersEngine
from daemon.serving.worker import ServeWorker
from daemon.verifying.store_writer import StoreWriter
from daemon.verifying.worker import VerifyWorker
from streams.connection import KafkaSettings
from streams.deadletter import DeadLetter
from streams.schemas import PromptMessage, ResponseMessage, VerdictCandidate, VerdictMessage, encode
from streams.topics import TopicsConfig
from tests.conftest import cli, committed_total, read_topic, wait_for
from tests.test_serve import _event, _start
from tests.test_serve import _settings as serve_settings
from tests.test_verify import _counts as store_counts
from tests.test_verify import _messages as candidates_messages
from tests.test_verify import _settings as verify_settings

MAX_BYTES = 2048


def bad_values(good: BaseModel, max_bytes: int = MAX_BYTES) -> dict[str, bytes]:
    """One message per dead-letter reason, made from a valid message of the topic's schema
    (``max_bytes``: the limit the topic's reader applies)."""
    data = json.loads(encode(good))
    required = next(k for k, f in type(good).model_fields.items() if f.is_required())
    return {
        "empty": b"",
        "not_utf8": b"\xff\xfe\x00binary\x81\x00\x9c",
        "invalid_json": b'{"v": 1, not json',
        "unsupported_version": json.dumps({**data, "v": 2}).encode(),
        "invalid_schema": json.dumps({k: v for k, v in data.items() if k != required}).encode(),
        "oversize": json.dumps({**data, "pad": "x" * max_bytes}).encode(),
    }


def test_bad_messages_on_every_consumed_topic_are_dead_lettered_and_workers_carry_on(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    registry_dir: Path,
    tiny_adapters: dict[str, Path],
    tiny_engine: TransformersEngine,
    tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    small = kafka.model_copy(update={"max_message_bytes": MAX_BYTES})
    serve = ServeWorker(serve_settings(small, topics, registry_dir, tmp_path), tiny_engine)
    judge = TransformersEngine(tiny_model_dir)
    vs = verify_settings(small, topics, tmp_path, tiny_model_dir)
    verify = VerifyWorker(vs, judge)
    vs = vs.model_copy(
        update={"store": vs.store.model_copy(update={"group_id": f"store-{topics.verdicts}"})}
    )
    writer = StoreWriter(vs)
    threads = [_start(serve), _start(verify), _start(writer)]
    v1 = sorted(tiny_adapters)[0]
    good_prompt = PromptMessage(id="good-p", prompt="What is 2 + 2?")
    good_candidates, judged = candidates_messages(2)
    judged = judged.model_copy(update={"id": "good-v"})
    good = {
        topics.prompts: good_prompt,
        topics.candidates: good_candidates,
        topics.verdicts: VerdictMessage(  # as a verify worker publishes it
            id="good-v",
            question="What is 1 + 7?",
            candidates=judged,
            outcomes=[VerdictCandidate(index=0, text="8", answer="8", rejected_at="cycle")],
        ),
        topics.adapter_events: _event(registry_dir, v1),
    }
    # The store writer reads verdicts up to twice the limit: they carry a whole candidates
    # message and the judges' outputs.
    cases = {
        topic: bad_values(msg, 2 * MAX_BYTES if topic == topics.verdicts else MAX_BYTES)
        for topic, msg in good.items()
    }
    dlq_before = {
        (t, r): REGISTRY.get_sample_value(
            "selfdistill_dlq_messages_total", {"topic": t, "reason": r}
        )
        or 0.0
        for t, bad in cases.items()
        for r in bad
    }
    try:
        wait_for(lambda: all(w.loop.ready.is_set() for w in (serve, verify, writer)), 60)
        raw = KafkaProducer(**kafka.client_kwargs("raw"), max_request_size=4 * MAX_BYTES)
        where: dict[tuple[str, str], tuple[int, int]] = {}
        for topic, bad in cases.items():
            for reason, value in bad.items():
                md = raw.send(topic, value=value, key=reason.encode()).get(10)
                where[(topic, reason)] = (md.partition, md.offset)
            raw.send(topic, value=encode(good[topic]), key=b"good").get(10)  # then a good one
        raw.close()

        dlq = {t: topics.dlq(t) for t in cases}
        for topic in cases:
            wait_for(lambda t=topic: len(read_topic(kafka, dlq[t], idle_s=0.3)) >= 6, 60)
        wait_for(lambda: committed_total(kafka, serve.settings.serve.group_id, topics.prompts) == 7)
        wait_for(lambda: serve.router.active == v1, 60)  # the good event after the bad ones
        # The good candidates, the ones serve made for the good prompt, and the good verdict
        # are stored.
        wait_for(lambda: store_counts(writer.store.path).get("prompts") == 3, 60)
        assert all(t.is_alive() for t in threads)  # nobody crashed on the bad input
    finally:
        serve.stop()
        verify.stop()
        writer.stop()
        for t in threads:
            t.join(30)
        judge.close()

    counts = {}
    for topic, bad in cases.items():
        dead = [
            DeadLetter.from_record(r.headers, r.key, r.value) for r in read_topic(kafka, dlq[topic])
        ]
        by_key = {d.key.decode(): d for d in dead if d.key}
        assert len(dead) == len(bad) and sorted(by_key) == sorted(bad)  # each once
        for reason, value in bad.items():
            d = by_key[reason]
            assert d.reason == reason, (topic, reason, d.detail)
            assert d.detail  # a human-readable why
            assert (d.source_topic, d.partition, d.offset) == (topic, *where[(topic, reason)])
            assert (d.value or b"") == value  # the original bytes, untouched, for replay
            metric = REGISTRY.get_sample_value(
                "selfdistill_dlq_messages_total", {"topic": topic, "reason": reason}
            )
            assert metric == dlq_before[(topic, reason)] + 1
        counts[topic] = len(dead)
    responses = [
        ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.responses)
    ]
    assert [r.id for r in responses] == ["good-p"]
    assert serve.loop.stats.dead_lettered == verify.loop.stats.dead_lettered == 6
    assert writer.loop.stats.dead_lettered == 6

    # What an operator sees: `selfdistill tail <topic>.dlq` shows each reason and its source.
    shown = cli(
        "tail",
        dlq[topics.adapter_events],
        env={"SELFDISTILL_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers},
    )
    assert shown.returncode == 0, shown.stderr
    lines = [json.loads(x) for x in shown.stdout.splitlines()]
    assert sorted(x["reason"] for x in lines) == sorted(cases[topics.adapter_events])
    assert {x["source"]["topic"] for x in lines} == {topics.adapter_events}
    print(
        f"\ndead-lettered per topic (of {len(bad_values(good_prompt))} bad each): {counts}; "
        f"reasons {sorted(bad_values(good_prompt))}; after them: 1 prompt answered, "
        f"{store_counts(writer.store.path)['prompts']} candidate groups stored, adapter {v1} "
        "promoted; workers crashed 0"
    )
