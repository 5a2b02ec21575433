"""Scoring an adapter for the eval gate: the numbers ``adapters.gate.decide`` compares.

Two metrics, both computed on data no adapter was trained on:

* ``labeled_pass@1`` — greedy answers to a labeled held-out set (JSONL of question,
  reference and grader; default: the bundled task's ``heldout.jsonl``), graded by
  ``daemon/verifying/graders.py``. The only number here backed by ground truth.
* ``heldout_cascade_pass`` — the model's greedy answers to the held-out slice of the
  accepted data (``split = 'heldout'``, never trained on), judged by the cascade: the rate at
  which the adapter's own answers pass the same bar its training data passed. The judge is
  always the *base* model, whatever ``verify.judge`` says: a candidate must not grade itself,
  and the candidate and the active adapter must face the same judge for the numbers to be
  comparable.

Judging is expensive, so the held-out slice is capped (``heldout_max``) and judged with
``heldout_votes`` votes per stage. An evaluation's fingerprint (eval data + knobs) keys a
cache in the registry: the active adapter is scored once per fingerprint, not once per run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from adapters.gate import HELDOUT, LABELED
from adapters.registry import BASE
from daemon.engines.base import ChatRequest, Engine, generate_batched
from daemon.engines.priority import BACKGROUND, priority
from daemon.verifying.cascade import Cascade, CascadeConfig, CascadeInput, question_of
from daemon.verifying.graders import LabeledItem, grade, hash_items, load_labeled
from streams.schemas import ChatMessage

if TYPE_CHECKING:
    from adapters.registry import Registry

log = logging.getLogger(__name__)


class EvalConfig(BaseModel):
    """What the gate measures and at what budget."""

    model_config = ConfigDict(extra="forbid")

    labeled_set: Path | None = Field(
        None,
        description="JSONL of {id, question, answer, grader: exact|numeric|regex|choice}; "
        "default: the bundled task's held-out set (daemon/learning/data/task/heldout.jsonl).",
    )
    labeled_max: int | None = Field(
        None, ge=1, description="Score only the first N labeled items (None: all)."
    )
    max_tokens: int = Field(96, ge=1, description="Longest greedy answer when scoring.")
    heldout_max: int = Field(
        16,
        ge=0,
        description="Held-out accepted samples whose prompts are answered and judged by the "
        "cascade (0: skip that metric).",
    )
    heldout_votes: int = Field(
        1, ge=1, le=64, description="Votes per cascade stage when judging held-out answers."
    )
    batch_size: int = Field(16, ge=1, description="Prompts per generate call.")

    def labeled_path(self) -> Path:
        return path_or_bundled(self.labeled_set)


def path_or_bundled(path: Path | None) -> Path:
    """``path``, or (None) the bundled task's held-out set."""
    if path is not None:
        return path
    from daemon.learning.tasks import bundled_heldout

    return bundled_heldout()


def load_items(path: Path, limit: int | None) -> list[LabeledItem]:
    """The labeled set at ``path`` (raises ``LabeledSetError``): its first ``limit`` items."""
    items = load_labeled(path)
    return items if limit is None else items[:limit]


@contextlib.contextmanager
def adapter_loaded(engine: Engine, registry: Registry, version: str) -> Iterator[str | None]:
    """``version`` loaded in ``engine`` (checksum verified) for the duration; yields the
    adapter name to request (None for the base): its served name, the version plus its
    digest, as serve loads it, so an engine shared with serve or with another registry never
    lends this evaluation someone else's weights. Unloads it afterwards only if it was not
    loaded before (a serving engine keeps its active adapter)."""
    if version == BASE:
        yield None
        return
    from adapters.files import served_name, verify_adapter

    rec = registry.require(version)
    name = served_name(version, rec.sha256)
    if name in engine.adapters():
        yield name
        return
    path = verify_adapter(registry.root, rec.path, rec.sha256)
    engine.load_adapter(name, str(path))
    try:
        yield name
    finally:
        try:
            engine.unload_adapter(name)
        except Exception as exc:  # a leftover adapter costs memory, not correctness
            log.warning("unloading %s after the eval: %s", name, exc)


class NewestVersions:
    """Which versions keep metric series, and with which labels: only the newest ``keep``,
    so a gauge labelled by version stays bounded."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._labels: OrderedDict[str, set[str]] = OrderedDict()  # oldest first

    def update(
        self, version: str, labels: Iterable[str]
    ) -> tuple[set[str], list[tuple[str, set[str]]]]:
        """``version`` now has series for ``labels`` and is the newest. Returns the labels it
        no longer has, and the versions (with their labels) pushed out by it."""
        dropped = self._labels.pop(version, set())
        self._labels[version] = set(labels)
        dropped -= self._labels[version]
        evicted: list[tuple[str, set[str]]] = []
        while len(self._labels) > self.keep:
            evicted.append(self._labels.popitem(last=False))
        return dropped, evicted


@dataclass
class EvalReport:
    """One adapter's scores and, per item, what it answered (shown by `adapters show`)."""

    adapter: str  # a version, or "base"
    metrics: dict[str, float | None]
    counts: dict[str, int]
    seconds: float
    fingerprint: str
    labeled: list[dict[str, Any]] = field(default_factory=list)
    heldout: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def item_scores(report: dict[str, Any]) -> dict[str, dict[str, float] | None]:
    """Per metric, each item's score (1.0 passed) in an :class:`EvalReport` dict: what the
    gate pairs between the candidate and the active adapter. None: the metric has no data."""
    out: dict[str, dict[str, float] | None] = {}
    for metric, rows in ((LABELED, report.get("labeled")), (HELDOUT, report.get("heldout"))):
        out[metric] = {str(r["id"]): float(bool(r["passed"])) for r in rows} if rows else None
    return out


def fingerprint(
    items: Sequence[LabeledItem],
    heldout: Sequence[dict[str, Any]],
    config: EvalConfig,
    cascade: CascadeConfig,
    model: str,
) -> str:
    """Same data, knobs and base model → same fingerprint → a cached score is still valid."""
    h = hashlib.sha256()
    h.update(model.encode() + b"\0")
    h.update(config.model_dump_json(exclude={"labeled_set"}).encode() + b"\0")
    h.update(cascade.model_dump_json().encode() + b"\0")
    hash_items(h, items)
    for row in heldout:
        h.update(str(row["id"]).encode() + b"\0")
    return h.hexdigest()[:24]


def eval_cascade_config(verify: CascadeConfig, config: EvalConfig) -> CascadeConfig:
    """The verifier's cascade at the eval budget: every candidate judged on its own."""
    return verify.model_copy(update={"votes": config.heldout_votes, "policy": "all-valid"})


def load_eval_data(
    config: EvalConfig, heldout_rows: Sequence[dict[str, Any]]
) -> tuple[list[LabeledItem], list[dict[str, Any]]]:
    items = load_items(config.labeled_path(), config.labeled_max)
    return items, list(heldout_rows)[: config.heldout_max]


def _answers(
    engine: Engine,
    chats: Sequence[Sequence[dict[str, str]]],
    adapter: str | None,
    config: EvalConfig,
    label: str,
) -> list[str]:
    """Greedy answers, a batch at a time, reported as a step (``daemon.progress``)."""
    from daemon import progress

    requests = [
        ChatRequest(list(chat), n=1, temperature=0.0, max_tokens=config.max_tokens, adapter=adapter)
        for chat in chats
    ]
    out: list[str] = []
    with progress.track(label, len(requests)) as step:
        for i in range(0, len(requests), config.batch_size):
            batch = requests[i : i + config.batch_size]
            with priority(BACKGROUND):  # serve, on a shared engine, goes first
                results = generate_batched(engine, batch, config.batch_size)
            out += [r.completions[0].text if r.completions else "" for r in results]
            step.advance(len(batch))
    return out


def evaluate(
    engine: Engine,
    adapter: str | None,
    items: Sequence[LabeledItem],
    heldout: Sequence[dict[str, Any]],
    config: EvalConfig,
    cascade: CascadeConfig,
    *,
    fingerprint_: str = "",
    version: str | None = None,
) -> EvalReport:
    """Score ``adapter`` (None: the base model) on both metrics. The adapter must be loaded;
    ``version`` names it in the report (default: ``adapter``, which an engine knows by its
    served name, see ``adapter_loaded``)."""
    started = time.monotonic()
    name = version or adapter or BASE
    metrics: dict[str, float | None] = {LABELED: None, HELDOUT: None}
    labeled: list[dict[str, Any]] = []
    if items:
        outputs = _answers(
            engine,
            [[{"role": "user", "content": it.question}] for it in items],
            adapter,
            config,
            f"eval {name}: labeled problems",
        )
        for it, text in zip(items, outputs, strict=True):
            labeled.append({"id": it.id, "output": text, "passed": grade(it, text)})
        metrics[LABELED] = sum(r["passed"] for r in labeled) / len(labeled)

    judged: list[dict[str, Any]] = []
    if heldout:
        prompts = [row["messages"][:-1] for row in heldout]
        answers = _answers(engine, prompts, adapter, config, f"eval {name}: held-out prompts")
        inputs = [
            CascadeInput(
                prompt_id=str(row["id"]),
                question=question_of([ChatMessage(**m) for m in chat]),
                candidates=[text],
            )
            for row, chat, text in zip(heldout, prompts, answers, strict=True)
        ]
        outcomes = Cascade(engine, eval_cascade_config(cascade, config), adapter=None).run(inputs)
        for row, text, outcome in zip(heldout, answers, outcomes, strict=True):
            cand = outcome.candidates[0]
            judged.append(
                {
                    "id": row["id"],
                    "output": text,
                    "passed": cand.accepted,
                    "rejected_at": cand.rejected_at,
                }
            )
        metrics[HELDOUT] = sum(r["passed"] for r in judged) / len(judged)

    report = EvalReport(
        adapter=name,
        metrics=metrics,
        counts={"labeled": len(labeled), "heldout": len(judged)},
        seconds=round(time.monotonic() - started, 2),
        fingerprint=fingerprint_,
        labeled=labeled,
        heldout=judged,
    )
    log.info(
        "eval %s: %s (%d labeled, %d held-out, %.1fs)",
        name,
        json.dumps({k: None if v is None else round(v, 3) for k, v in metrics.items()}),
        len(labeled),
        len(judged),
        report.seconds,
    )
    return report
