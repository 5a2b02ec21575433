"""The real `selfdistill` console script: produce, tail, broker, help, demo."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from rich.console import Console

from daemon.operating.config import Settings
from daemon.operating.demo import MALFORMED, bundled_prompts, run_demo
from streams.broker import free_port, port_accepts
from streams.connection import KafkaSettings
from streams.schemas import content_id
from streams.topics import TopicsConfig
from tests.conftest import cli, start_cli, wait_for

COMMANDS = [
    [],
    ["broker"],
    ["produce"],
    ["tail"],
    ["demo"],
    ["config"],
    ["config", "show"],
    ["config", "init"],
    ["config", "check"],
    ["topics"],
    ["topics", "create"],
    ["topics", "list"],
    ["eval"],
    ["eval", "verifier"],
    ["export"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "selfdistill")
def test_every_command_explains_itself(command: list[str]) -> None:
    res = cli(*command, "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage:" in res.stdout
    # Its own description, not only the option list.
    body = res.stdout.split("Usage:", 1)[1]
    assert len([ln for ln in body.splitlines() if ln.strip(" │╭╰─")]) > 3


def _env(kafka: KafkaSettings, topics: TopicsConfig) -> dict[str, str]:
    return {
        "SELFDISTILL_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "SELFDISTILL_TOPICS__PROMPTS": topics.prompts,
    }


def test_produce_reports_bad_lines_by_number_and_sends_the_rest(
    kafka: KafkaSettings, topics: TopicsConfig, tmp_path: Path
) -> None:
    lines = [
        json.dumps({"id": "a1", "prompt": "What is 1 + 1?", "domain": "arithmetic"}),
        json.dumps({"messages": [{"role": "user", "content": "Hi there"}], "metadata": {"k": 1}}),
        "{this is not json",
        "",
        json.dumps({"id": "both", "prompt": "x", "messages": [{"role": "user", "content": "y"}]}),
        json.dumps({"id": "a5", "prompt": "Convert 3 km to m.", "colour": "blue"}),
        json.dumps({"id": "a6", "prompt": "Last one."}),
    ]
    f = tmp_path / "prompts.jsonl"
    f.write_text("\n".join(lines) + "\n")
    res = cli("produce", str(f), env=_env(kafka, topics))
    assert res.returncode == 1  # some lines failed
    assert "line 3: not JSON" in res.stderr
    assert "line 5:" in res.stderr and "exactly one of 'prompt' or 'messages'" in res.stderr
    assert "line 6: colour: Extra inputs are not permitted" in res.stderr
    assert "line 4" not in res.stderr  # blank lines are skipped, not errors
    assert "produced 3 prompt(s)" in res.stderr

    out = cli("tail", topics.prompts, "--idle-timeout", "1.5", env=_env(kafka, topics))
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    hashed = content_id_of("Hi there")
    assert sorted(r["value"]["id"] for r in got) == sorted(["a1", hashed, "a6"])
    assert all(r["key"] == r["value"]["id"] and r["value"]["v"] == 1 for r in got)

    ok = cli(
        "produce", "-", input=json.dumps({"prompt": "from stdin"}) + "\n", env=_env(kafka, topics)
    )
    assert ok.returncode == 0 and "produced 1 prompt(s)" in ok.stderr


def content_id_of(text: str) -> str:
    from streams.schemas import ChatMessage

    return content_id([ChatMessage(role="user", content=text)])


def test_tail_of_a_dead_letter_topic_shows_reason_and_source(
    kafka: KafkaSettings, topics: TopicsConfig
) -> None:
    from streams.deadletter import DeadLetter
    from streams.producer import Producer

    p = Producer(kafka)
    p.send_dead_letter(
        topics.dlq(topics.prompts),
        DeadLetter(
            topics.prompts, 2, 41, "not_utf8", "value is not UTF-8", b"k", b"\xff\x00", "serve"
        ),
    )
    p.flush()
    res = cli("tail", topics.dlq(topics.prompts), "-n", "1", env=_env(kafka, topics))
    rec = json.loads(res.stdout)
    assert rec["reason"] == "not_utf8" and rec["worker"] == "serve"
    assert rec["source"] == {"topic": topics.prompts, "partition": 2, "offset": 41}
    assert rec["value_b64"] == "/wA="  # binary kept exactly, shown as base64
    missing = cli("tail", "no-such-topic", env=_env(kafka, topics))
    assert missing.returncode == 1 and "does not exist" in missing.stderr


def test_broker_command_listens_and_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    proc = start_cli("broker", "--port", str(port))
    try:
        wait_for(lambda: port_accepts("127.0.0.1", port), timeout=30)
        topics = cli(
            "topics", "list", env={"SELFDISTILL_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
        )
        # Wait until topic creation is done (the broker accepts before it finishes).
        wait_for(
            lambda: (
                "MISSING"
                not in cli(
                    "topics",
                    "list",
                    env={"SELFDISTILL_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"},
                ).stdout
            ),
            timeout=30,
        )
        assert "adapter-events\t1 partitions" in topics.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _, errs = proc.communicate(timeout=30)
    assert proc.returncode == 0, errs
    assert f"listening on 127.0.0.1:{port}" in errs
    assert "SIGTERM received" in errs
    time.sleep(0.2)
    assert not port_accepts("127.0.0.1", port)


def test_demo_serves_every_prompt_once_and_dead_letters_the_rest(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    settings = Settings(
        data_dir=tmp_path / "var",
        broker={"port": free_port()},
        model={"path": str(tiny_model_dir)},
        demo={"extra_candidates": 2, "max_tokens": 4, "task_prompts": 6, "eval_items": 12},
    )
    report = run_demo(settings, Console(file=open(os.devnull, "w")))  # noqa: SIM115
    assert report.produced == len(bundled_prompts()) + 6
    assert report.answered_once  # none lost, none twice
    assert sorted(c.id for c in report.candidates) == sorted(r.id for r in report.responses)
    assert all(len(c.samples) == 3 for c in report.candidates)
    assert sorted(d["reason"] for d in report.dead_letters) == sorted(
        ["invalid_json", "not_utf8", "unsupported_version", "invalid_schema"]
    )
    assert len(report.dead_letters) == len(MALFORMED)
    assert (tmp_path / "var" / "broker.log").exists()
    # The verifier judged every prompt's candidates and recorded them in the store.
    assert report.verified == report.produced
    assert report.store_counts["prompts"] == report.produced
    assert report.store_counts["candidates"] >= report.produced
    assert report.funnel["candidates"] == report.store_counts["candidates"]
