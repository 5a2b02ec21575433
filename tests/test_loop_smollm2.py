"""The whole learning loop on the real embedded model (SmolLM2-135M-Instruct), small budget.

prompts (the bundled task) → serve (answer + candidates, one Kafka transaction per batch) →
verify (the model's own cascade, fast judge) → SQLite store → LoRA training → eval gate
(labeled held-out pass@1 + held-out cascade pass rate, candidate vs base) → decision. Every
part is the real one; the numbers are printed (`pytest -s`) so a run shows what it measured.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from adapters.files import adapter_digest
from adapters.gate import LABELED
from adapters.registry import Registry
from daemon.engines.transformers_engine import TransformersEngine
from daemon.learning.tasks import bundled_prompts
from daemon.learning.train import run_cycle
from daemon.operating.config import Settings
from daemon.operating.produce import produce_prompts
from daemon.serving.worker import ServeWorker
from daemon.verifying.store import Store
from daemon.verifying.worker import VerifyWorker
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.topics import TopicsConfig
from tests.conftest import store_verdicts, wait_for

PROMPTS = 6


@pytest.mark.slow
@pytest.mark.usefixtures("all_cores")
def test_prompts_to_verified_samples_to_a_gated_adapter_on_smollm2(
    kafka: KafkaSettings,
    topics: TopicsConfig,
    embedded_model_dir: Path,
    tmp_path: Path,
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        kafka=kafka.model_dump(),
        topics=topics.model_dump(),
        model={"path": str(embedded_model_dir)},
        serve={
            "extra_candidates": 3,
            "max_tokens": 24,
            "transactional_id": f"serve-{topics.prompts}",
            "group_id": f"serve-{topics.prompts}",
        },
        verify={
            "votes": 1,
            "fast_judge": True,
            "policy": "all-valid",
            "infer_max_tokens": 24,
            "seed": 0,
            "group_id": f"verify-{topics.prompts}",
        },
        store={"heldout_fraction": 0.2},
        train={
            "min_new_samples": 1,
            "lora": {"max_steps": 6, "batch_size": 4, "max_length": 192, "learning_rate": 5e-4},
            "eval": {"labeled_max": 6, "max_tokens": 24, "heldout_max": 2},
        },
    )
    started = time.monotonic()
    engine = TransformersEngine(embedded_model_dir)
    serve, verify = ServeWorker(settings, engine), VerifyWorker(settings, engine)
    threads = [
        threading.Thread(target=w.run, kwargs={"handle_signals": False}, daemon=True)
        for w in (serve, verify)
    ]
    for t in threads:
        t.start()
    try:
        lines = bundled_prompts().read_text().splitlines()[:PROMPTS]
        producer = Producer(kafka)
        assert len(produce_prompts(producer, topics.prompts, lines).produced) == PROMPTS
        producer.close()
        wait_for(lambda: verify.loop.stats.processed >= PROMPTS, 900, every=1.0)
    finally:
        for w in (serve, verify):
            w.stop()
        for t in threads:
            t.join(60)
    store_verdicts(settings)  # verify published its verdicts; the store writer stores them
    served_s = time.monotonic() - started

    with Store.open(settings.store, settings.data_dir) as store:
        counts = store.counts()
        funnel = store.stage_funnel()
    print(
        f"\nserve+verify: {PROMPTS} prompts, {counts['candidates']} candidates, "
        f"{counts['accepted']} accepted ({counts['accepted_train']} train, "
        f"{counts['accepted_heldout']} held out) in {served_s:.0f}s; funnel "
        f"{ {k: v['passed'] for k, v in funnel['stages'].items()} }"
    )
    # 4 samples per prompt; identical texts of one prompt are one candidate
    assert counts["prompts"] == PROMPTS and PROMPTS < counts["candidates"] <= 4 * PROMPTS
    assert counts["accepted_train"] > 0, "the cascade accepted nothing to train on"

    report = run_cycle(settings, engine=engine, force=True)
    engine.close()
    print(
        f"train+gate: {report.version} on {report.trained_on} samples, loss "
        f"{report.training['final_loss']:.3f}, {report.training['tokens_per_s']:.0f} tokens/s; "
        f"candidate {report.candidate} vs {report.against} {report.active} → "
        f"{report.outcome}: {report.reason} ({report.seconds:.0f}s)"
    )
    assert report.outcome in ("promoted", "rejected")
    assert report.against == "base" and report.trained_on == counts["accepted_train"]
    for metrics in (report.candidate, report.active):
        assert 0.0 <= metrics[LABELED] <= 1.0
    registry = Registry(settings.adapters.path(settings.data_dir))
    rec = registry.require(report.version or "")
    assert rec.status == ("promoted" if report.outcome == "promoted" else "rejected")
    assert rec.sha256 == adapter_digest(registry.root / rec.path)
    assert len(rec.eval["candidate"]["labeled"]) == 6
    assert rec.decision["checks"][0]["metric"] == LABELED
    registry.close()
