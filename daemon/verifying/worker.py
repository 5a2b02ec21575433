"""The verify worker: judges each prompt's candidates with the cascade and stores what passes.

It consumes ``candidates``, runs the cascade over a whole batch of prompts at once (one
engine batch per round), writes each prompt's outcome to the store in one SQLite
transaction, and only then lets the worker loop commit the offset. A crash before the commit
redelivers the batch; the store's keys make the second write a no-op, so nothing is lost and
no sample is stored twice. A store that cannot be written (full disk, read-only file) fails
the batch: the loop retries it with backoff and never commits past it.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import Field

from daemon.engines import EngineSettings
from daemon.engines.base import Engine, EngineRejected, EngineUnavailable
from daemon.verifying.cascade import (
    Cascade,
    CascadeConfig,
    CascadeInput,
    PromptOutcome,
    question_of,
)
from daemon.verifying.metrics import (
    CANDIDATES_JUDGED,
    JUDGE_CALLS,
    JUDGE_TOKENS,
    SAMPLES_ACCEPTED,
    STAGE_RESULTS,
    STORE_PROMPTS,
    STORE_SAMPLES,
    VERIFY_SECONDS,
    VOTES,
)
from daemon.verifying.quality import VerifierEvalConfig
from streams.consumer import Record
from streams.schemas import CandidatesMessage

if TYPE_CHECKING:
    from daemon.engines.hotswap import AdapterRouter
    from daemon.verifying.store import Store, StoreConfig
    from streams.connection import KafkaSettings
    from streams.topics import TopicsConfig

log = logging.getLogger(__name__)


class VerifyConfig(CascadeConfig):
    """The verify worker: the cascade's knobs plus who judges.

    Candidates per prompt (the paper's n) are produced by serve: ``serve.extra_candidates``
    + 1.
    """

    group_id: str = Field("selfdistill-verify", description="Consumer group of the verify workers.")
    judge: Literal["base", "active"] = Field(
        "base",
        description="Which model judges: the frozen base (default: its verdicts do not drift "
        "as adapters change) or the active adapter (follows adapter-events).",
    )
    eval: VerifierEvalConfig = Field(
        default_factory=VerifierEvalConfig,
        description="`selfdistill eval verifier`: how the verifier is measured against a "
        "labeled set.",
    )


class VerifySettings(EngineSettings, Protocol):
    """What the verify worker reads of the daemon's settings (``Settings`` is one)."""

    @property
    def kafka(self) -> KafkaSettings: ...
    @property
    def topics(self) -> TopicsConfig: ...
    @property
    def store(self) -> StoreConfig: ...
    @property
    def verify(self) -> VerifyConfig: ...


@dataclass
class VerifyHandler:
    """Judges a batch of candidate groups and records each prompt's outcome."""

    engine: Engine
    store: Store
    config: VerifyConfig
    router: AdapterRouter | None = None  # set when the active adapter judges

    def __post_init__(self) -> None:
        self.accepted = 0  # samples newly accepted (written by the handler thread only)
        self._sized_at = 0.0

    def __call__(self, batch: list[Record[CandidatesMessage]]) -> None:
        started = time.monotonic()
        if self.router is not None:
            with self.router.use() as adapter:
                outcomes = self.router.call(adapter, lambda: self._judge(batch, adapter))
        else:
            outcomes = self._judge(batch, None)
        accepted = 0
        for outcome, rec in zip(outcomes, batch, strict=True):
            # One transaction per prompt; raises (and so blocks the commit) if it cannot write.
            result = self.store.record(outcome, rec.value, policy=self.config.policy)
            accepted += len(result.accepted)
            _observe(outcome)
        VERIFY_SECONDS.observe(time.monotonic() - started)
        SAMPLES_ACCEPTED.inc(accepted)
        self.accepted += accepted
        self.report_store_size()

    def report_store_size(self, every_s: float = 10.0) -> None:
        """Store size for the dashboard's growth panel; counted at most every ``every_s``."""
        now = time.monotonic()
        if now - self._sized_at < every_s:
            return
        self._sized_at = now
        counts = self.store.counts()
        STORE_PROMPTS.set(counts["prompts"])
        for split in ("train", "heldout"):
            STORE_SAMPLES.labels(split).set(counts[f"accepted_{split}"])

    def _judge(
        self, batch: list[Record[CandidatesMessage]], adapter: str | None
    ) -> list[PromptOutcome]:
        cascade = Cascade(self.engine, self.config, adapter=adapter)
        inputs = [
            CascadeInput(
                r.value.id,
                question_of(r.value.messages),
                [s.text for s in r.value.samples],
                domain=r.value.domain,
                check=r.value.check,
            )
            for r in batch
        ]
        return cascade.run(inputs)


def _observe(outcome: PromptOutcome) -> None:
    for c in outcome.candidates:
        if c.rejected_at in ("skipped", "superseded"):
            continue
        CANDIDATES_JUDGED.inc()
        STAGE_RESULTS.labels("static", "fail" if c.rejected_at == "static" else "pass").inc()
        for s in c.stages:
            STAGE_RESULTS.labels(s.stage, "pass" if s.passed else "fail").inc()
            for call in s.calls:
                if call.kind == "tool":  # a deterministic check, not a judge generation
                    continue
                JUDGE_CALLS.labels(s.stage).inc()
                JUDGE_TOKENS.labels(s.stage).inc(call.prompt_tokens + call.completion_tokens)
                if call.kind == "vote":
                    verdict = {True: "yes", False: "no", None: "unparsed"}[call.verdict]
                    VOTES.labels(s.stage, verdict).inc()


class VerifyWorker:
    """The verify process's parts: engine, store, optional adapter follower, worker loop."""

    def __init__(self, settings: VerifySettings, engine: Engine | None = None) -> None:
        from daemon.engines import make_engine
        from daemon.verifying.store import Store
        from streams.consumer import ConsumerLoop

        cfg = settings.verify
        self.settings = settings
        self.engine = engine or make_engine(settings.model, settings.engine)
        self.store = Store.open(settings.store, settings.data_dir)
        self.router: AdapterRouter | None = None
        if cfg.judge == "active":
            from daemon.engines.hotswap import AdapterRouter

            self.router = AdapterRouter(self.engine, settings.adapters.path(settings.data_dir))
        self.handler = VerifyHandler(self.engine, self.store, cfg, self.router)
        self.loop = ConsumerLoop(
            settings.kafka,
            topic=settings.topics.candidates,
            group_id=cfg.group_id,
            schema=CandidatesMessage,
            handler=self.handler,
            dlq_topic=settings.topics.dlq(settings.topics.candidates),
            name="verify",
            # The engine down, or the store's disk full or read-only, is never a record's
            # fault: wait for it. A request the engine refuses (HTTP 400) is the record's.
            unavailable=(EngineUnavailable, sqlite3.OperationalError),
            record_faults=(EngineRejected,),
        )

    def run(self, *, max_idle_s: float | None = None, handle_signals: bool = True) -> None:
        from streams.adapter_events import follow_adapter_events
        from streams.topics import ensure_topics

        if self.settings.topics.create:
            ensure_topics(self.settings.kafka, self.settings.topics)
        topics = self.settings.topics
        following = (
            follow_adapter_events(
                self.settings.kafka,
                topics.adapter_events,
                self.router,
                topics.dlq(topics.adapter_events),
            )
            if self.router is not None
            else contextlib.nullcontext()
        )
        try:
            self.handler.report_store_size(every_s=0)  # the gauges start with the worker
            with following:
                self.loop.run(max_idle_s=max_idle_s, handle_signals=handle_signals)
        finally:
            with contextlib.suppress(Exception):
                self.handler.report_store_size(every_s=0)
            self.store.close()

    def stop(self) -> None:
        self.loop.request_stop()
