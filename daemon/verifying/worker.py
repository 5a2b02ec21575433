"""The verify worker: judges each prompt's candidates with the cascade and publishes the outcome.

It consumes ``candidates``, runs the cascade over a whole batch of prompts at once (one
engine batch per round), and publishes each prompt's outcome as one ``verdicts`` message,
in a Kafka transaction with the consumed offsets (the serve worker's loop): a crash before
the commit leaves no visible verdict and redelivers the batch, so every candidates record
yields exactly one committed verdict. Verify opens no SQLite file, so any number of verify
workers run in one group on any machines; the store writer (``store_writer.py``) is the
one that writes the store.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

from pydantic import Field

from daemon.engines import EngineSettings
from daemon.engines.base import Engine, EngineRejected, EngineUnavailable
from daemon.engines.health import probe
from daemon.verifying.cascade import (
    Cascade,
    CascadeConfig,
    CascadeInput,
    PromptOutcome,
    question_of,
)
from daemon.verifying.injection import static_reason
from daemon.verifying.metrics import (
    CANDIDATES_JUDGED,
    JUDGE_CALLS,
    JUDGE_TOKENS,
    STAGE_RESULTS,
    STATIC_REJECTIONS,
    VERDICTS_PUBLISHED,
    VERIFY_SECONDS,
    VOTES,
)
from daemon.verifying.quality import VerifierEvalConfig
from daemon.verifying.verdict_message import to_verdict
from streams.consumer import BatchResult, Output, Record
from streams.schemas import CandidatesMessage

if TYPE_CHECKING:
    from daemon.engines.hotswap import AdapterRouter
    from streams.connection import KafkaSettings
    from streams.topics import TopicsConfig

log = logging.getLogger(__name__)


class VerifyConfig(CascadeConfig):
    """The verify worker: the cascade's knobs plus who judges.

    Candidates per prompt (the paper's n) are produced by serve: ``serve.extra_candidates``
    + 1.
    """

    group_id: str = Field("selfdistill-verify", description="Consumer group of the verify workers.")
    transactional_id: str | None = Field(
        None,
        description="Kafka transactional id, unique and stable per verify process; default "
        "selfdistill-verify-<hostname> (give each of several processes on one host its own).",
    )
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

    def transactional_id_or_default(self) -> str:
        return self.transactional_id or f"selfdistill-verify-{socket.gethostname()}"


class VerifySettings(EngineSettings, Protocol):
    """What the verify worker reads of the daemon's settings (``Settings`` is one)."""

    @property
    def kafka(self) -> KafkaSettings: ...
    @property
    def topics(self) -> TopicsConfig: ...
    @property
    def verify(self) -> VerifyConfig: ...


@dataclass
class VerifyHandler:
    """Judges a batch of candidate groups; each prompt's outcome becomes one verdict."""

    engine: Engine
    config: VerifyConfig
    topic: str  # verdicts
    router: AdapterRouter | None = None  # set when the active adapter judges

    def __post_init__(self) -> None:
        self.accepted = 0  # samples the cascade accepted (the store writer dedupes them)

    def __call__(self, batch: list[Record[CandidatesMessage]]) -> BatchResult:
        started = time.monotonic()
        if self.router is not None:
            with self.router.use() as route:
                adapter = route.version  # the verdicts name the registry's version
                outcomes = self.router.call(route.name, lambda: self._judge(batch, route.name))
        else:
            adapter, outcomes = None, self._judge(batch, None)
        now = time.time()
        outputs = []
        for outcome, rec in zip(outcomes, batch, strict=True):
            verdict = to_verdict(
                outcome, rec.value, policy=self.config.policy, judge_adapter=adapter, judged_at=now
            )
            outputs.append(Output(self.topic, verdict, key=rec.value.id, source=rec))
            self.accepted += len(outcome.accepted)
            _observe(outcome)
        VERIFY_SECONDS.observe(time.monotonic() - started)
        VERDICTS_PUBLISHED.inc(len(outputs))
        return BatchResult(outputs=outputs)

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
        if c.rejected_at == "static":
            STATIC_REJECTIONS.labels(static_reason(c.stages)).inc()
        for s in c.stages:
            if s.stage == "static":  # counted just above
                continue
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
    """The verify process's parts: engine, optional adapter follower, transactional loop."""

    def __init__(self, settings: VerifySettings, engine: Engine | None = None) -> None:
        from daemon.engines import make_engine
        from streams.consumer import ConsumerLoop

        cfg = settings.verify
        self.settings = settings
        self.engine = engine or make_engine(settings.model, settings.engine)
        self.router: AdapterRouter | None = None
        if cfg.judge == "active":
            from daemon.engines.hotswap import AdapterRouter

            self.router = AdapterRouter(self.engine, settings.adapters.path(settings.data_dir))
        self.handler = VerifyHandler(self.engine, cfg, settings.topics.verdicts, self.router)
        self.loop = ConsumerLoop(
            settings.kafka,
            topic=settings.topics.candidates,
            group_id=cfg.group_id,
            schema=CandidatesMessage,
            handler=self.handler,
            dlq_topic=settings.topics.dlq(settings.topics.candidates),
            transactional_id=cfg.transactional_id_or_default(),
            name="verify",
            # The engine down is never a record's fault: wait for it. A request the engine
            # refuses (HTTP 400) is the record's.
            unavailable=(EngineUnavailable,),
            record_faults=(EngineRejected,),
            probe=functools.partial(probe, self.engine),
        )

    @property
    def judges_code(self) -> bool:
        """Whether the cascade has the execution stage (and so needs the sandbox)."""
        cfg = self.settings.verify
        return "execution" in cfg.stages or any("execution" in s for s in cfg.domains.values())

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Ready when consuming and, if code is judged, the sandbox may run it. Never waits
        on a probe: ``/readyz`` must answer at once, so it reads the monitor's last state
        (kept current by the probe at start, each real run, and a probe in the background
        once the state is old)."""
        ok, detail = self.loop.readiness()
        if not self.judges_code:
            return ok, detail
        from daemon.verifying.sandbox_health import monitor_for

        health = monitor_for(self.settings.verify.sandbox).cached()
        if health is None or health.available:
            return ok, detail
        return False, {**detail, "unavailable": {"execution": health.as_json()}}

    def check_sandbox(self) -> None:
        """Probe the sandbox once at start so an operator hears at once, not at the first
        code candidate, that the execution stage cannot judge here."""
        if not self.judges_code:
            return
        from daemon.verifying.sandbox_health import monitor_for

        health = monitor_for(self.settings.verify.sandbox).health()
        if not health.available:
            log.error(
                "verify: the execution stage is unavailable (%s); candidates with tests are "
                "not accepted until it is fixed (see verify.sandbox.require)",
                health.detail,
            )

    def run(
        self,
        *,
        max_idle_s: float | None = None,
        handle_signals: bool = True,
        topics_ready: bool = False,
    ) -> None:
        from streams.adapter_events import follow_adapter_events
        from streams.topics import prepare_topics

        self.check_sandbox()

        if not topics_ready:
            prepare_topics(self.settings.kafka, self.settings.topics)
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
        with following:
            self.loop.run(max_idle_s=max_idle_s, handle_signals=handle_signals)

    def stop(self) -> None:
        self.loop.request_stop()
