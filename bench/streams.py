"""Throughput of the streams layer against raw kafka-python, on one embedded broker.

Two paths, run alternately against the same Tansu broker, each on its own topics and
consumer groups:

* **raw** — what a minimal hand-written at-least-once worker does with kafka-python:
  a ``KafkaProducer`` sending ``json.dumps`` of plain dicts then ``flush()``; a ``KafkaConsumer``
  (manual commits, ``read_committed``) that ``json.loads`` every value and commits after
  every poll batch.
* **selfdistill** — ``streams.producer.Producer`` sending ``PromptMessage`` models then
  ``flush()`` (which checks every future); ``streams.consumer.ConsumerLoop`` with a no-op
  handler (decode + pydantic validation per record, commit after every batch).

Consume throughput is measured from the first poll that finds partitions assigned (group
join, ~3 s here, is excluded for both) to the commit of the batch holding the N-th record.
Produce throughput is N sends plus the final flush. The median of ``--repeats`` runs is
reported, with the order of the two paths alternating between repetitions.

    PYTHONPATH=. .venv/bin/python -m bench.streams --messages 20000 --json bench-streams.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from bench.common import TARGET_RATIO, machine, now, result_record, result_row, write_json
from streams.broker import BrokerConfig, EmbeddedBroker, free_port
from streams.connection import KafkaSettings
from streams.consumer import ConsumerLoop, Record
from streams.producer import Producer
from streams.schemas import PromptMessage

PARTITIONS = 4
# The layer's Producer uses acks="all", linger_ms=5; the raw baseline is given the same
# delivery settings so the comparison measures the layer, not a weaker durability choice.
PRODUCER_SETTINGS: dict[str, Any] = {"acks": "all", "linger_ms": 5}
PROMPT = (
    "Explain, step by step, why the sum of the interior angles of a convex polygon with "
    "n sides is (n - 2) * 180 degrees, and give a worked example for a hexagon."
)


# ---------------------------------------------------------------------- setup
def make_messages(n: int, run: str) -> list[PromptMessage]:
    return [
        PromptMessage(id=f"{run}-{i:07d}", prompt=f"{PROMPT} (#{i})", domain="math")
        for i in range(n)
    ]


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
    try:
        admin.create_topics([NewTopic(t, partitions, 1) for t in names])
    finally:
        admin.close()


# ------------------------------------------------------------------ produce
def produce_raw(bootstrap: str, topic: str, msgs: list[PromptMessage]) -> float:
    """Seconds for N sends plus flush with a plain KafkaProducer.

    Like any hand-written producer it serialises each message (``json.dumps`` of a plain
    dict, built outside the timer) as it sends; the layer serialises its pydantic models.
    """
    payload = [(m.id, m.model_dump()) for m in msgs]
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, client_id="bench-raw-producer", **PRODUCER_SETTINGS
    )
    try:
        t0 = time.perf_counter()
        for key, value in payload:
            producer.send(topic, value=json.dumps(value).encode(), key=key.encode())
        producer.flush()
        return time.perf_counter() - t0
    finally:
        producer.close()


def produce_layer(settings: KafkaSettings, topic: str, msgs: list[PromptMessage]) -> float:
    """Seconds for N ``Producer.send`` of pydantic models plus ``Producer.flush``."""
    producer = Producer(settings, name="bench-layer-producer")
    try:
        t0 = time.perf_counter()
        for m in msgs:
            producer.send(topic, m, key=m.id)
        sent = producer.flush()
        elapsed = time.perf_counter() - t0
    finally:
        producer.close()
    if sent != len(msgs):
        raise RuntimeError(f"layer producer acknowledged {sent} of {len(msgs)}")
    return elapsed


# ------------------------------------------------------------------ consume
def consume_raw(bootstrap: str, topic: str, group: str, n: int, batch_size: int) -> float:
    """Seconds from assignment to the commit of the batch holding the N-th record."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        client_id="bench-raw-consumer",
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch_size,
        session_timeout_ms=6000,
        heartbeat_interval_ms=1000,
        isolation_level="read_committed",
    )
    seen = 0
    t0: float | None = None
    deadline = time.monotonic() + 120
    try:
        while seen < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"raw consumer saw {seen} of {n} records in 120 s")
            polled = consumer.poll(timeout_ms=500, max_records=batch_size)
            if t0 is None and consumer.assignment():
                t0 = time.perf_counter()
            batch = 0
            for records in polled.values():
                for r in records:
                    json.loads(r.value)
                batch += len(records)
            if batch:
                consumer.commit()
                seen += batch
        assert t0 is not None
        return time.perf_counter() - t0
    finally:
        consumer.close(autocommit=False)


class _TimedLoop(ConsumerLoop[PromptMessage]):
    """A ConsumerLoop that notes when the batch holding the N-th record has committed."""

    def __init__(self, *args: Any, target: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target = target
        self.done_at: float | None = None
        self.done = threading.Event()

    def _process(self, raws: list[Any]) -> None:
        super()._process(raws)  # decode, handler, flush, commit
        if self.done_at is None and self.stats.processed >= self.target:
            self.done_at = time.perf_counter()
            self.done.set()


def consume_layer(settings: KafkaSettings, topic: str, group: str, n: int) -> float:
    """Seconds from ``loop.ready`` to the commit of the batch holding the N-th record."""
    seen = 0

    def handler(batch: list[Record[PromptMessage]]) -> None:
        nonlocal seen
        seen += len(batch)
        if seen >= n:
            loop.request_stop()

    loop = _TimedLoop(
        settings,
        topic=topic,
        group_id=group,
        schema=PromptMessage,
        handler=handler,
        dlq_topic=f"{topic}.dlq",
        name="bench-layer",
        target=n,
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run(max_idle_s=None, handle_signals=False)
        except BaseException as exc:
            errors.append(exc)
            loop.ready.set()
            loop.done.set()

    thread = threading.Thread(target=run, name="bench-layer-loop", daemon=True)
    thread.start()
    if not loop.ready.wait(60):
        loop.request_stop()
        raise TimeoutError("ConsumerLoop was not assigned partitions within 60 s")
    t0 = time.perf_counter()
    finished = loop.done.wait(120)
    loop.request_stop()
    thread.join(30)
    if errors:
        raise errors[0]
    if not finished or loop.done_at is None:
        raise TimeoutError(f"ConsumerLoop processed {loop.stats.processed} of {n} in 120 s")
    if loop.stats.dead_lettered:
        raise RuntimeError(f"{loop.stats.dead_lettered} bench messages were dead-lettered")
    return loop.done_at - t0


# -------------------------------------------------------------------- main
def run_bench(n: int, batch_size: int, repeats: int) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {
        "produce": {"raw": [], "selfdistill": []},
        "consume": {"raw": [], "selfdistill": []},
    }
    with EmbeddedBroker(BrokerConfig(port=free_port())) as broker:
        bootstrap = broker.bootstrap
        settings = KafkaSettings(bootstrap_servers=bootstrap, batch_size=batch_size)
        for rep in range(repeats):
            raw_topic, layer_topic = f"bench-raw-{rep}", f"bench-layer-{rep}"
            create_topics(bootstrap, [raw_topic, layer_topic], PARTITIONS)
            create_topics(bootstrap, [f"{layer_topic}.dlq"], 1)
            msgs = make_messages(n, f"r{rep}")
            produce: dict[str, Callable[[], float]] = {
                "raw": partial(produce_raw, bootstrap, raw_topic, msgs),
                "selfdistill": partial(produce_layer, settings, layer_topic, msgs),
            }
            consume: dict[str, Callable[[], float]] = {
                "raw": partial(
                    consume_raw, bootstrap, raw_topic, f"bench-raw-g{rep}", n, batch_size
                ),
                "selfdistill": partial(
                    consume_layer, settings, layer_topic, f"bench-layer-g{rep}", n
                ),
            }
            order = ["raw", "selfdistill"] if rep % 2 == 0 else ["selfdistill", "raw"]
            for phase, fns in (("produce", produce), ("consume", consume)):
                for path in order:
                    secs = fns[path]()
                    samples[phase][path].append(n / secs)
                    print(
                        f"  rep {rep + 1}/{repeats} {phase:7s} {path:11s} "
                        f"{n / secs:>10,.0f} msgs/s ({secs:.2f} s)",
                        file=sys.stderr,
                    )
    results: dict[str, Any] = {}
    for phase, by_path in samples.items():
        raw, layer = statistics.median(by_path["raw"]), statistics.median(by_path["selfdistill"])
        results[phase] = {
            "raw_msgs_per_s": round(raw, 1),
            "selfdistill_msgs_per_s": round(layer, 1),
            "ratio": round(layer / raw, 3),
            "meets_target": layer / raw >= TARGET_RATIO,
            "samples": {p: [round(x, 1) for x in xs] for p, xs in by_path.items()},
        }
    return results


def render(results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> str:
    lines = [
        f"streams throughput: {args.messages} messages, batch size {args.batch_size}, "
        f"{PARTITIONS} partitions, median of {args.repeats}",
        f"machine: {info['processor']}, nproc={info['nproc']}, python {info['python']}, "
        f"kafka-python {info['kafka_python']} ({info['platform']})",
        "",
        f"raw producer: {PRODUCER_SETTINGS} (as the layer's Producer); raw consumer: "
        "group, manual commit per poll, read_committed, kafka-python defaults otherwise",
        "",
        "| path | raw msgs/s | selfdistill msgs/s | ratio (layer/raw) |",
        "|---|---:|---:|---:|",
    ]
    for phase, r in results.items():
        mark = "" if r["meets_target"] else " ✗"
        lines.append(
            f"| {phase} | {r['raw_msgs_per_s']:,.0f} | {r['selfdistill_msgs_per_s']:,.0f} "
            f"| {r['ratio']:.2f}{mark} |"
        )
    ok = all(r["meets_target"] for r in results.values())
    lines += ["", f"target: ratio ≥ {TARGET_RATIO} — {'met' if ok else 'NOT met'}"]
    return "\n".join(lines)


def report_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The two paths as bench.report's rows (``bench.common.result_row``)."""
    what = {
        "produce": (
            "produce: Producer.send (pydantic) + flush",
            "raw KafkaProducer (json.dumps) + flush",
        ),
        "consume": (
            "consume: ConsumerLoop (validate, commit per batch)",
            "raw KafkaConsumer (json.loads, commit per poll)",
        ),
    }
    notes = {
        "produce": "the layer also validates every message and checks every send",
        "consume": "group join excluded on both paths",
    }
    return [
        result_row(
            what[phase][0],
            "msgs/s",
            what[phase][1],
            r["raw_msgs_per_s"],
            r["selfdistill_msgs_per_s"],
            ratio=r["ratio"],
            notes=notes[phase],
        )
        for phase, r in results.items()
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20000, help="messages per path per run")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="max_poll_records for both paths (KafkaSettings.batch_size)",
    )
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs; median reported")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.messages < 1 or args.batch_size < 1 or args.repeats < 1:
        ap.error("--messages, --batch-size and --repeats must be positive")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)

    started = now()
    info = machine()
    results = run_bench(args.messages, args.batch_size, args.repeats)
    print(render(results, args, info))
    write_json(
        args.json,
        result_record(
            "streams",
            info,
            started,
            rows=report_rows(results),
            conditions=[
                f"{args.messages} messages per path per repeat, batch size {args.batch_size}, "
                f"{PARTITIONS} partitions, one embedded Tansu broker",
                f"median of {args.repeats} repeat(s), the order of the paths alternating",
                f"raw producer {PRODUCER_SETTINGS} (as the layer's Producer); raw consumer: "
                "manual commit per poll, read_committed",
            ],
            details={
                "messages": args.messages,
                "batch_size": args.batch_size,
                "partitions": PARTITIONS,
                "repeats": args.repeats,
                "target_ratio": TARGET_RATIO,
                "producer_settings": PRODUCER_SETTINGS,
                "results": results,
            },
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
