"""Dead letters that cannot fail on size, and a `tail` that prints any bytes.

A prompt bigger than ``kafka.max_message_bytes`` that the broker still accepted (2 MB here,
against the default 1 MB) is dead-lettered as ``oversize``. Kept whole, its dead letter would
exceed what the producer may send, the send would fail and the worker would retry the batch
forever, stalling the partition. The dead letter carries a bounded prefix plus the size and
sha256 of the original instead, and the prompt after it is answered.

`selfdistill tail` prints every record as one JSON line, whatever the bytes: a JSON value
with a lone surrogate escape (valid JSON text, but its Python string cannot be encoded as
UTF-8), invalid UTF-8, binary keys and header values, on a UTF-8 or an ASCII-only stdout.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from daemon.engines.transformers_engine import TransformersEngine
from daemon.serving.worker import ServeWorker
from streams.connection import KafkaSettings
from streams.deadletter import (
    HEADER_PREFIX,
    MAX_DETAIL_BYTES,
    TRUNCATED_KEY_BYTES,
    TRUNCATED_VALUE_BYTES,
    DeadLetter,
    whole_limit,
)
from streams.producer import Producer
from streams.schemas import PromptMessage, ResponseMessage, encode
from streams.topics import TopicsConfig
from tests.conftest import cli, committed_total, read_topic, wait_for
from tests.test_serve import _settings as serve_settings
from tests.test_serve import _start

SURROGATE = b'{"v":1,"id":"x","prompt":"\\ud800"}'  # JSON text; json.loads gives "\ud800"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_oversize_prompt_is_dead_lettered_bounded_and_the_partition_goes_on(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    registry_dir: Path,
    tiny_engine: TransformersEngine,
    tmp_path: Path,
) -> None:
    huge = encode(PromptMessage(id="huge", prompt="x" * 2_000_000))
    assert len(huge) > 2 * kafka.max_message_bytes > 0  # oversize for the worker
    # The test's producer raises its own limit: the broker accepts 2 MB from such a client.
    raw = Producer(kafka, name="big", max_request_size=8 * 1024 * 1024)
    raw.send(topics.prompts, huge, key="huge", partition=0)
    raw.send(topics.prompts, PromptMessage(id="after", prompt="What is 2 + 2?"), partition=0)
    assert raw.flush() == 2
    raw.close()

    worker = ServeWorker(serve_settings(kafka, topics, registry_dir, tmp_path), tiny_engine)
    t = _start(worker)
    try:
        # Both committed: the prompt after the oversize one was not held back by it.
        group = worker.settings.serve.group_id
        wait_for(lambda: committed_total(kafka, group, topics.prompts) == 2)
        assert t.is_alive()
    finally:
        worker.stop()
        t.join(30)

    responses = [
        ResponseMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.responses)
    ]
    assert [r.id for r in responses] == ["after"]
    (rec,) = read_topic(kafka, topics.dlq(topics.prompts))
    dl = DeadLetter.from_record(rec.headers, rec.key, rec.value)
    assert (dl.reason, dl.source_topic, dl.offset) == ("oversize", topics.prompts, 0)
    assert dl.truncated and dl.key == b"huge"  # a short key is kept whole
    assert dl.value == huge[:TRUNCATED_VALUE_BYTES]  # a bounded prefix of the original bytes
    assert dl.original_size == len(huge) and dl.original_sha256 == _sha(huge)
    assert dl.original_key_size is None and dl.original_key_sha256 is None
    headers = dict(rec.headers)
    assert headers[HEADER_PREFIX + "truncated"] == b"true"
    assert headers[HEADER_PREFIX + "original.size"] == str(len(huge)).encode()
    assert headers[HEADER_PREFIX + "original.sha256"] == _sha(huge).encode()
    assert worker.loop.stats.dead_lettered == 1


def test_dead_letters_are_bounded_only_when_they_must_be(
    kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    limit = whole_limit(kafka.max_message_bytes, 1048576)
    assert kafka.max_message_bytes <= limit < 1048576  # every accepted record fits whole
    fits = DeadLetter("t", 1, 2, "invalid_schema", "why", b"k", b"v" * 900_000, "serve")
    assert fits.bounded(limit) is fits and not fits.truncated

    big_key, big_value = b"\x00\xff" * 600_000, b"\x81" * 3_000_000
    long_error = "boom \ud800 " + "é" * 50_000  # exception text: long, not even valid UTF-8
    dl = DeadLetter("t", 1, 2, "oversize", long_error, big_key, big_value, "serve")
    cut = dl.bounded(limit)
    assert cut.key == big_key[:TRUNCATED_KEY_BYTES]
    assert cut.value == big_value[:TRUNCATED_VALUE_BYTES]
    assert (cut.original_size, cut.original_sha256) == (len(big_value), _sha(big_value))
    assert (cut.original_key_size, cut.original_key_sha256) == (len(big_key), _sha(big_key))
    headers = cut.headers()
    assert len(dict(headers)[HEADER_PREFIX + "error"]) <= MAX_DETAIL_BYTES
    assert sum(len(k) + len(v) for k, v in headers) < 16 * 1024

    # Sent through the real producer (default limits) to the real broker, and read back.
    p = Producer(kafka)
    p.send_dead_letter(topics.dlq(topics.prompts), dl)  # unbounded in: bounded by the producer
    p.send_dead_letter(topics.dlq(topics.prompts), fits)
    assert p.flush() == 2
    p.close()
    back = {
        r.value == fits.value: DeadLetter.from_record(r.headers, r.key, r.value)
        for r in read_topic(kafka, topics.dlq(topics.prompts), idle_s=0.5)
    }
    assert back[True].value == fits.value and not back[True].truncated  # whole, for replay
    got = back[False]
    assert (got.key, got.value, got.truncated) == (cut.key, cut.value, True)
    assert (got.original_size, got.original_sha256) == (cut.original_size, cut.original_sha256)
    assert got.original_key_sha256 == _sha(big_key)
    assert got.detail.startswith("boom \\ud800 é")
    shown = got.as_json()
    assert shown["truncated"] is True and shown["original_sha256"] == _sha(big_value)
    assert shown["original_key_size"] == len(big_key)


def test_tail_prints_any_bytes_as_json_lines(kafka: KafkaSettings, topics: TopicsConfig) -> None:
    p = Producer(kafka)
    binary = [("bin", b"\xff\x00\x80"), ("text", "é".encode())]
    p.send(topics.prompts, SURROGATE, key=b"\x00\xff\xfe", headers=binary)
    p.send(topics.prompts, b"\xff\xfe\x00not utf-8\x81", key=b"\x80", headers=binary)
    p.send(topics.prompts, b"NaN", key="é")  # json.loads takes it; JSON does not
    p.send(topics.prompts, '{"prompt": "日本"}'.encode(), key=None)
    dlq = topics.dlq(topics.prompts)
    p.send_dead_letter(dlq, DeadLetter(topics.prompts, 0, 1, "x", "\ud800", b"\xff", SURROGATE))
    p.send(dlq, b"\xfe", key=b"\x00", headers=[("selfdistill.source.offset", b"\xff")])
    assert p.flush() == 6
    p.close()

    env = {"SELFDISTILL_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers}
    for encoding in ("utf-8", "ascii"):
        for topic, n in ((topics.prompts, 4), (dlq, 2)):
            # -n: stop once all are shown (the idle timeout only bounds a failure)
            shown = cli("tail", topic, "-n", str(n), env={**env, "PYTHONIOENCODING": encoding})
            assert shown.returncode == 0, shown.stderr
            lines = shown.stdout.splitlines()
            assert len(lines) == n, shown.stdout
            recs = [json.loads(x, parse_constant=_no_constants) for x in lines]
            for x in lines:
                x.encode(encoding)  # each line is valid in the terminal's encoding
            if topic == topics.prompts:
                values = {json.dumps(r.get("value", r.get("value_b64"))) for r in recs}
                assert json.dumps({"v": 1, "id": "x", "prompt": "\ud800"}) in values
                assert json.dumps({"prompt": "日本"}) in values
                by_key = {r.get("key", r.get("key_b64")): r for r in recs}
                assert by_key["AP/+"]["headers_b64"] == {"bin": "/wCA"}  # binary, exact
                assert by_key["AP/+"]["headers"] == {"text": "é"}
                assert by_key["é"]["value"] == "NaN"  # shown as the text it is
            else:
                dead = next(r for r in recs if r.get("reason") == "x")
                assert dead["key_b64"] == "/w==" and dead["value"] == SURROGATE.decode()


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
