"""A worker process for crash tests: consumes prompts and records each one in SQLite.

The effect is idempotent the way the verifier's is (INSERT OR IGNORE on the prompt id);
a second table counts every time the handler saw an id, so tests can tell a redelivery
(seen twice, stored once) from a loss or a duplicate.

Environment: BOOTSTRAP, TOPIC, GROUP, DB, BATCH (records per batch), DELAY (seconds per
record), CRASH_AFTER (SIGKILL itself right after this many durable writes, before the
offset commit), TRANSACTIONAL_ID + OUT_TOPIC (read-process-write mode: one response each).
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import sys
import time

from streams.connection import KafkaSettings
from streams.consumer import BatchResult, ConsumerLoop, Output, Record
from streams.schemas import PromptMessage, ResponseMessage


def main() -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s worker[%(process)d] %(name)s: %(message)s",
    )
    for noisy in ("kafka",):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    env = os.environ
    # The handler runs on the loop's one handler thread, not the thread that opened this.
    db = sqlite3.connect(env["DB"], isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS effect (id TEXT PRIMARY KEY, pid INTEGER)")
    db.execute("CREATE TABLE IF NOT EXISTS attempt (id TEXT, pid INTEGER)")
    delay = float(env.get("DELAY", "0"))
    crash_after = int(env.get("CRASH_AFTER", "0"))
    out_topic = env.get("OUT_TOPIC")
    writes = 0

    def handle(batch: list[Record[PromptMessage]]) -> BatchResult:
        nonlocal writes
        outputs = []
        for r in batch:
            time.sleep(delay)
            db.execute("INSERT INTO attempt VALUES (?, ?)", (r.value.id, os.getpid()))
            db.execute("INSERT OR IGNORE INTO effect VALUES (?, ?)", (r.value.id, os.getpid()))
            writes += 1
            if out_topic:
                outputs.append(
                    Output(
                        out_topic,
                        ResponseMessage(
                            id=r.value.id,
                            text=f"answer from {os.getpid()}",
                            latency_s=delay,
                            prompt_tokens=1,
                            completion_tokens=1,
                        ),
                        key=r.value.id,
                    )
                )
            if crash_after and writes >= crash_after:
                os.kill(os.getpid(), signal.SIGKILL)  # effect durable, offset not committed
        return BatchResult(outputs=outputs)

    kafka = KafkaSettings(bootstrap_servers=env["BOOTSTRAP"], batch_size=int(env.get("BATCH", "4")))
    loop = ConsumerLoop(
        kafka,
        topic=env["TOPIC"],
        group_id=env["GROUP"],
        schema=PromptMessage,
        handler=handle,
        dlq_topic=env["TOPIC"] + ".dlq",
        transactional_id=env.get("TRANSACTIONAL_ID") or None,
        name="crash-worker",
    )
    stats = loop.run()
    print(f"STOPPED {stats.processed} {stats.commits}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
