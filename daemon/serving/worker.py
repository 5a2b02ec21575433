"""The serve worker: answers prompts and samples the extra candidates the verifier judges.

One batched engine call per batch of prompts produces, for each prompt, ``1 + k`` samples:
the first is the answer the production caller gets on ``responses``; all of them go to
``candidates`` for the verifier. Both outputs and the consumed offsets commit in one Kafka
transaction, so a crash never yields a second response, and never a response without its
candidates. The adapter a batch runs on is fixed when the batch starts; a swap meanwhile
takes effect from the next batch.
"""

from __future__ import annotations

import functools
import logging
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from daemon.engines import EngineSettings
from daemon.engines.base import ChatRequest, Engine, EngineRejected, EngineUnavailable
from daemon.engines.health import probe
from daemon.engines.hotswap import SWAP_WAIT_S, AdapterRouter, SwapResult
from daemon.serving.limits import ApiLimits
from daemon.serving.metrics import (
    CANDIDATES_GENERATED,
    GENERATED_TOKENS,
    PROMPT_TOKENS,
    PROMPTS_SERVED,
    SERVE_LATENCY,
)
from daemon.verifying.cascade import Cascade, CascadeConfig, CascadeInput, question_of
from streams.adapter_events import AdapterEventFollower, follow_adapter_events
from streams.adapter_status import StatusReporter
from streams.consumer import BatchResult, Output, Record
from streams.schemas import (
    AdapterEvent,
    CandidatesMessage,
    PromptMessage,
    ResponseMessage,
    Sample,
    SamplingParams,
)
from streams.topics import TopicsConfig

if TYPE_CHECKING:
    from streams.connection import KafkaSettings

log = logging.getLogger(__name__)


class HttpConfig(ApiLimits):
    """The embedded OpenAI-compatible endpoint (`selfdistill serve --http`): where it binds,
    its tokens, and its bounds (the :class:`ApiLimits` fields, flat in this block)."""

    host: str = Field(
        "127.0.0.1", description="Bind address; anything but loopback needs admin_token."
    )
    port: int = Field(8000, ge=1, le=65535, description="TCP port of the OpenAI-compatible API.")
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token for /v1/load_lora_adapter and /v1/unload_lora_adapter; also "
        "accepted by chat and /v1/models, which need it when host is not loopback (unless "
        "api_token is set).",
    )
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token for chat and /v1/models only (clients that must not manage "
        "adapters); when set it is required even on loopback. Unset: chat is open on loopback "
        "and needs admin_token elsewhere.",
    )


class ServeConfig(BaseModel):
    """The serve worker: sampling, candidates, answer policy, swaps."""

    model_config = ConfigDict(extra="forbid")

    group_id: str = Field("selfdistill-serve", description="Consumer group of the serve replicas.")
    transactional_id: str | None = Field(
        None,
        description="Kafka transactional id, unique and stable per replica; default "
        "selfdistill-serve-<hostname>.",
    )
    extra_candidates: int = Field(
        7,
        ge=0,
        le=63,
        description="k extra samples per prompt (answer + k = n; the paper's n is 8).",
    )
    temperature: float = Field(
        0.7, ge=0, description="Sampling temperature of answer and candidates."
    )
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling of answer and candidates.")
    max_tokens: int = Field(256, ge=1, description="Longest answer, in tokens.")
    seed: int | None = Field(None, description="Fix the sampling seed (reproducible runs, tests).")
    answer_policy: Literal["first", "verified"] = Field(
        "first",
        description="Which sample is the answer: 'first', or 'verified' (the paper's UQ-TTC "
        "baseline: the first sample that passes the verifier's cascade, configured under "
        "[verify]; the first sample when none does). 'verified' costs judge calls per request.",
    )
    canary_prompt: str = Field(
        "Reply with the single word OK.", description="Generated on a new adapter before it serves."
    )
    canary_max_tokens: int = Field(
        2,
        ge=1,
        description="Length of the canary generation: two tokens already run the adapter end to "
        "end (prefill, decoding, sampling); each one more is time the swap holds the engine.",
    )
    adapters_kept_loaded: int = Field(
        2,
        ge=1,
        description="Adapters kept resident (the active one and the last ones, for fast rollback).",
    )
    swap_wait_s: float = Field(
        SWAP_WAIT_S,
        ge=0,
        le=600,
        description="Longest a batch that starts during a swap waits for it; past it the batch "
        "runs on the adapter already loaded, and the swap goes on (a slow load on a shared "
        "model server must not stall every replica's production at once).",
    )
    swap_retry_s: float = Field(
        1.0,
        gt=0,
        le=600,
        description="First wait before a swap that failed for a passing reason (the model "
        "server unreachable, a 5xx or a timeout) is tried again; it doubles per attempt up to "
        "swap_retry_max_s, until the swap succeeds or a newer adapter event supersedes it.",
    )
    swap_retry_max_s: float = Field(
        60.0, gt=0, le=3600, description="Longest wait between two attempts at one swap."
    )
    http: HttpConfig = Field(
        default_factory=HttpConfig, description="The OpenAI-compatible endpoint."
    )

    replica_id: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="This replica's name on adapter-status (what operators see); stable "
        "across restarts, unique in the fleet. Default: the transactional id.",
    )
    status_heartbeat_s: float = Field(
        15.0,
        ge=1,
        le=3600,
        description="How often a replica repeats its adapter-status record; one silent for "
        "3 beats is not live (rollback --wait does not wait for it).",
    )

    def transactional_id_or_default(self) -> str:
        return self.transactional_id or f"selfdistill-serve-{socket.gethostname()}"

    def replica_id_or_default(self) -> str:
        return self.replica_id or self.transactional_id_or_default()

    @property
    def n(self) -> int:
        return 1 + self.extra_candidates

    def sampling(self) -> SamplingParams:
        return SamplingParams(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            seed=self.seed,
        )


class ServeSettings(EngineSettings, Protocol):
    """What the serve worker reads of the daemon's settings (``Settings`` is one)."""

    @property
    def kafka(self) -> KafkaSettings: ...
    @property
    def topics(self) -> TopicsConfig: ...
    @property
    def serve(self) -> ServeConfig: ...
    @property
    def verify(self) -> CascadeConfig: ...  # the judging knobs, for answer_policy "verified"


@dataclass
class ServeHandler:
    """Turns a batch of prompts into responses and candidates (the worker loop commits them)."""

    engine: Engine
    router: AdapterRouter
    config: ServeConfig
    topics: TopicsConfig
    cascade: CascadeConfig | None = None  # the judging knobs, for answer_policy "verified"

    def __call__(self, batch: list[Record[PromptMessage]]) -> BatchResult:
        cfg = self.config
        sampling = cfg.sampling()
        with self.router.use() as route:
            adapter = route.version  # what the records say: the registry's version
            requests = [
                ChatRequest(
                    messages=[m.model_dump() for m in rec.value.chat()],
                    n=sampling.n,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    max_tokens=sampling.max_tokens,
                    seed=sampling.seed,
                    adapter=route.name,  # what the engine knows those weights by
                )
                for rec in batch
            ]
            started = time.monotonic()
            results = self.router.call(route.name, lambda: self.engine.generate(requests))
            answers = self._choose(batch, results)
            latency = time.monotonic() - started
        SERVE_LATENCY.observe(latency)
        outputs: list[Output] = []
        for rec, res, answer_index in zip(batch, results, answers, strict=True):
            prompt = rec.value
            answer = res.completions[answer_index]
            outputs.append(
                Output(
                    self.topics.responses,
                    ResponseMessage(
                        id=prompt.id,
                        text=answer.text,
                        adapter=adapter,
                        latency_s=latency,
                        prompt_tokens=res.prompt_tokens,
                        completion_tokens=answer.tokens,
                    ),
                    key=prompt.id,
                    source=rec,
                )
            )
            outputs.append(
                Output(
                    self.topics.candidates,
                    CandidatesMessage(
                        id=prompt.id,
                        messages=prompt.chat(),
                        domain=prompt.domain,
                        metadata=prompt.metadata,
                        check=prompt.check,
                        samples=[
                            Sample(
                                text=c.text,
                                completion_tokens=c.tokens,
                                finish_reason=c.finish_reason,
                            )
                            for c in res.completions
                        ],
                        answer_index=answer_index,
                        sampling=sampling,
                        adapter=adapter,
                    ),
                    key=prompt.id,
                    source=rec,
                )
            )
            PROMPT_TOKENS.inc(res.prompt_tokens)
            GENERATED_TOKENS.inc(res.completion_tokens)
            CANDIDATES_GENERATED.inc(len(res.completions))
        PROMPTS_SERVED.inc(len(batch))
        return BatchResult(outputs=outputs)

    def _choose(self, batch: list[Record[PromptMessage]], results: list[Any]) -> list[int]:
        """Index of the answer among each prompt's samples.

        'first': sample 0. 'verified' (UQ-TTC): the verifier's cascade runs over the samples
        in order, at answer time, and the first that passes is the answer; none passing,
        the first sample is. The frozen base judges, as in the verify worker's default.
        """
        if self.config.answer_policy == "first":
            return [0] * len(batch)
        cfg = (self.cascade or CascadeConfig()).model_copy(update={"policy": "first-valid"})
        outcomes = Cascade(self.engine, cfg).run(
            [
                CascadeInput(
                    rec.value.id,
                    question_of(rec.value.chat()),
                    [c.text for c in res.completions],
                    domain=rec.value.domain,
                    check=rec.value.check,
                )
                for rec, res in zip(batch, results, strict=True)
            ]
        )
        return [o.accepted[0].index if o.accepted else 0 for o in outcomes]


class ServeWorker:
    """The serve process's parts: engine, router, adapter-event follower, worker loop."""

    def __init__(self, settings: ServeSettings, engine: Engine | None = None) -> None:
        from daemon.engines import make_engine
        from streams.consumer import ConsumerLoop

        cfg = settings.serve
        self.settings = settings
        self.registry = settings.adapters.path(settings.data_dir)
        self.registry.mkdir(parents=True, exist_ok=True)
        self.engine = engine or make_engine(settings.model, settings.engine)
        self.router = AdapterRouter(
            self.engine,
            self.registry,
            canary=ChatRequest(
                [{"role": "user", "content": cfg.canary_prompt}], max_tokens=cfg.canary_max_tokens
            ),
            keep_loaded=cfg.adapters_kept_loaded,
            swap_wait_s=cfg.swap_wait_s,
        )
        self.handler = ServeHandler(
            self.engine, self.router, cfg, settings.topics, cascade=settings.verify
        )
        self.loop = ConsumerLoop(
            settings.kafka,
            topic=settings.topics.prompts,
            group_id=cfg.group_id,
            schema=PromptMessage,
            handler=self.handler,
            dlq_topic=settings.topics.dlq(settings.topics.prompts),
            transactional_id=cfg.transactional_id_or_default(),
            name="serve",
            # The engine down or misconfigured is never a record's fault; a request it
            # refuses (HTTP 400) is; anything else only once the probe shows the engine well.
            unavailable=(EngineUnavailable,),
            record_faults=(EngineRejected,),
            probe=functools.partial(probe, self.engine),
        )

        self.status = StatusReporter(
            settings.kafka,
            settings.topics.adapter_status,
            cfg.replica_id_or_default(),
            heartbeat_s=cfg.status_heartbeat_s,
        )
        self.follower: AdapterEventFollower | None = None

    def is_ready(self) -> bool:
        """Ready: the loop consumes and the adapter-event follower still follows."""
        follower = self.follower
        return self.loop.is_ready() and follower is not None and follower.healthy()

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """``is_ready`` and, when the loop waits, on what (shown by ``/readyz`` and ``status``)."""
        _, detail = self.loop.readiness()
        return self.is_ready(), detail

    def _report(self, _event: AdapterEvent, result: SwapResult) -> None:
        self.status.report(
            result.version,
            result.requested,
            result.ok,
            result.error,
            retrying=result.passing,
            attempts=result.attempt,
        )

    def run(
        self,
        *,
        max_idle_s: float | None = None,
        handle_signals: bool = True,
        topics_ready: bool = False,
    ) -> None:
        """Restore the active adapter from history, follow promotions, serve until stopped.

        ``topics_ready``: the caller already created and checked the topics (``selfdistill
        serve`` does, before it loads the model), so they are not asked for again."""
        from streams.topics import prepare_topics

        if not topics_ready:
            prepare_topics(self.settings.kafka, self.settings.topics)
        topics = self.settings.topics
        try:
            with follow_adapter_events(
                self.settings.kafka,
                topics.adapter_events,
                self.router,
                topics.dlq(topics.adapter_events),
                on_apply=self._report,
                retry_s=self.settings.serve.swap_retry_s,
                retry_max_s=self.settings.serve.swap_retry_max_s,
            ) as follower:
                self.follower = follower
                if follower.restored is None:  # an empty history: say "base" all the same
                    self.status.report(None, None, True)
                self.status.start()
                self.loop.run(max_idle_s=max_idle_s, handle_signals=handle_signals)
        finally:
            self.follower = None
            self.status.close()

    def stop(self) -> None:
        self.loop.request_stop()
