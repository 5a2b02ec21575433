"""``selfdistill demo``: the main job on the embedded defaults, end to end, on one machine.

It grows with the daemon. Today it shows the Kafka backbone: the embedded broker, the topics,
prompts produced from the bundled file, a worker loop consuming them with commits, and bad
messages dead-lettered with their reasons while the good ones flow.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from rich.console import Console
from rich.table import Table

from daemon.config import Settings
from daemon.produce import produce_prompts
from daemon.tail import tail
from streams.broker import EmbeddedBroker, free_port, port_accepts
from streams.consumer import ConsumerLoop, Record
from streams.producer import Producer
from streams.schemas import PromptMessage
from streams.topics import ensure_topics

#: Messages no worker can use, sent straight to the prompts topic to show dead-lettering.
MALFORMED: list[tuple[str, bytes]] = [
    ("not JSON", b"What is 2 + 2?"),
    ("binary", bytes(range(250, 256)) + b"\x00\x01"),
    ("schema v2", b'{"v": 2, "id": "from-the-future", "prompt": "hi"}'),
    ("no prompt", b'{"v": 1, "id": "empty-one"}'),
]


@dataclass
class DemoReport:
    bootstrap: str = ""
    topics: dict[str, str] = field(default_factory=dict)
    produced: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    consumed: list[str] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    commits: int = 0
    seconds: float = 0.0


def bundled_prompts() -> list[str]:
    text = resources.files("daemon").joinpath("data/demo_prompts.jsonl").read_text()
    return text.splitlines()


def run_demo(settings: Settings, console: Console) -> DemoReport:
    started = time.monotonic()
    report = DemoReport()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    broker_cfg = settings.broker
    if port_accepts(broker_cfg.host, broker_cfg.port):
        broker_cfg = broker_cfg.model_copy(update={"port": free_port(broker_cfg.host)})
    broker = EmbeddedBroker(broker_cfg, log_path=settings.data_dir / "broker.log")
    console.rule("[bold]selfdistill demo")
    with broker:
        report.bootstrap = broker.bootstrap
        console.print(f"1. embedded broker (Tansu) listening on [bold]{broker.bootstrap}[/]")
        kafka = settings.kafka.model_copy(update={"bootstrap_servers": broker.bootstrap})
        topics = settings.topics
        report.topics = ensure_topics(kafka, topics)
        console.print(f"2. topics ready: {', '.join(report.topics)}")

        producer = Producer(kafka, name="demo-producer")
        prod = produce_prompts(producer, topics.prompts, bundled_prompts())
        report.produced, report.bad_lines = len(prod.produced), prod.failed
        for _label, raw in MALFORMED:
            producer.send(topics.prompts, raw, key="malformed")
        producer.flush()
        producer.close()
        console.print(
            f"3. produced {report.produced} bundled prompts to '{topics.prompts}', "
            f"plus {len(MALFORMED)} malformed messages ({', '.join(m for m, _ in MALFORMED)})"
        )

        lock = threading.Lock()

        def handle(batch: list[Record[PromptMessage]]) -> None:
            with lock:
                report.consumed.extend(r.value.id for r in batch)

        loop = ConsumerLoop(
            kafka,
            topic=topics.prompts,
            group_id="selfdistill-demo",
            schema=PromptMessage,
            handler=handle,
            dlq_topic=topics.dlq(topics.prompts),
            name="demo-worker",
        )
        with console.status("4. worker loop consuming (joining the consumer group takes ~3 s)"):
            stats = loop.run(max_idle_s=2.0, handle_signals=False)
        report.commits = stats.commits
        console.print(
            f"4. worker loop read {stats.consumed} messages: {stats.processed} valid prompts "
            f"handled, {stats.dead_lettered} dead-lettered, {stats.commits} offset commits"
        )
        report.dead_letters = list(tail(kafka, topics.dlq(topics.prompts), dead_letter=True))
        table = Table(title=f"dead letters on '{topics.dlq(topics.prompts)}'")
        for col in ("source", "reason", "error"):
            table.add_column(col)
        for dl in report.dead_letters:
            src = dl["source"]
            table.add_row(
                f"{src['topic']}[{src['partition']}]@{src['offset']}", dl["reason"], dl["error"]
            )
        console.print(table)
    report.seconds = time.monotonic() - started
    missing = report.produced - len(set(report.consumed))
    console.print(
        f"5. broker stopped. {len(set(report.consumed))}/{report.produced} prompts consumed "
        f"exactly once{' (MISSING ' + str(missing) + ')' if missing else ''}, "
        f"{len(report.dead_letters)} dead letters kept with reasons, in {report.seconds:.1f}s."
    )
    console.print(
        "[dim]Serving, verification and training join this demo as they land "
        "(see the README's roadmap).[/]"
    )
    return report
