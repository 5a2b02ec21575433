"""``selfdistill demo``: the main job on the embedded defaults, end to end, on one machine.

The embedded broker and topics; the serve worker on the embedded SmolLM2 answering the
bundled prompts, each with extra candidates, in one Kafka transaction per batch; malformed
messages dead-lettered with their reasons while the good ones flow; the verify worker
judging the candidates into the SQLite store — the bundled prompts carry a check, so their
domains are verified by the deterministic checker, and the rest by the model's own cascade;
then one training cycle: the verifier's precision measured on labeled held-out problems
(training pauses below the floor), a LoRA adapter on the accepted samples, scored against
the base by the eval gate, promoted or rejected. At the end the self-cascade's measured
precision is printed beside the checker's, on the same candidates, so the difference shows.
Budgets are small so it fits a CPU in a few minutes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table

from daemon.operating.produce import produce_prompts
from daemon.operating.tail import tail
from streams.broker import EmbeddedBroker, free_port, port_accepts
from streams.producer import Producer
from streams.schemas import CandidatesMessage, ResponseMessage
from streams.topics import ensure_topics

if TYPE_CHECKING:
    from daemon.operating.config import Settings

#: Messages no worker can use, sent straight to the prompts topic to show dead-lettering.
MALFORMED: list[tuple[str, bytes]] = [
    ("not JSON", b"What is 2 + 2?"),
    ("binary", bytes(range(250, 256)) + b"\x00\x01"),
    ("schema v2", b'{"v": 2, "id": "from-the-future", "prompt": "hi"}'),
    ("no prompt", b'{"v": 1, "id": "empty-one"}'),
]


class DemoConfig(BaseModel):
    """Budgets of `selfdistill demo` (small: the embedded model runs on a CPU)."""

    model_config = ConfigDict(extra="forbid")

    extra_candidates: int = Field(3, ge=0, description="Extra samples per prompt in the demo.")
    max_tokens: int = Field(48, ge=1, description="Longest demo answer, in tokens.")
    batch_size: int = Field(4, ge=1, description="Prompts per serve batch in the demo.")
    votes: int = Field(3, ge=1, description="Votes per cascade stage in the demo (paper: 5).")
    fast_judge: bool = Field(
        True, description="Demo judges vote from next-token Y/N probabilities (fast on a CPU)."
    )
    timeout_s: float = Field(
        900.0, gt=0, description="Bound of the whole loop (answers, verdicts, training, gate)."
    )
    train_steps: int = Field(
        12, ge=0, description="LoRA optimizer steps of the demo's training cycle (0: skip it)."
    )
    eval_items: int = Field(
        8, ge=1, description="Labeled held-out problems the demo's eval gate scores."
    )
    checker_domains: list[str] = Field(
        default_factory=lambda: ["arithmetic", "units", "word-problems"],
        description="Domains the demo verifies with the checker instead of the self-judges "
        "(the bundled prompts carry a check); [] judges everything with the self-cascade.",
    )
    verifier_floor: float | None = Field(
        0.5,
        ge=0,
        le=1,
        description="The demo's train.verifier.floor: training pauses if the verifier's "
        "precision on labeled held-out problems is below it (None: not measured).",
    )
    compare_items: int = Field(
        8,
        ge=0,
        description="Labeled problems on which the demo compares the self-cascade's precision "
        "with the checker's, on the same candidates (0: skip).",
    )


@dataclass
class DemoReport:
    bootstrap: str = ""
    topics: dict[str, str] = field(default_factory=dict)
    produced: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)
    responses: list[ResponseMessage] = field(default_factory=list)
    candidates: list[CandidatesMessage] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    verified: int = 0
    store_counts: dict[str, int] = field(default_factory=dict)
    funnel: dict[str, Any] = field(default_factory=dict)
    accepted: list[dict[str, Any]] = field(default_factory=list)
    cycle: Any = None  # daemon.learning.train.CycleReport of the training step
    after_swap: list[ResponseMessage] = field(default_factory=list)
    verifiers: dict[str, Any] = field(default_factory=dict)  # name -> VerifierReport
    seconds: float = 0.0

    @property
    def answered_once(self) -> bool:
        ids = [r.id for r in self.responses]
        return len(ids) == self.produced and len(set(ids)) == len(ids)


def bundled_prompts() -> list[str]:
    text = resources.files("daemon.operating").joinpath("data/demo_prompts.jsonl").read_text()
    return text.splitlines()


def _read_all(kafka: Any, topic: str, schema: type[BaseModel]) -> list[Any]:
    return [schema.model_validate(r["value"]) for r in tail(kafka, topic, idle_timeout_s=1.0)]


def _demo_settings(settings: Settings, bootstrap: str) -> Settings:
    """The configured settings at the demo's budgets, on the embedded broker."""
    demo = settings.demo
    train = settings.train
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(
                update={"bootstrap_servers": bootstrap, "batch_size": demo.batch_size}
            ),
            "serve": settings.serve.model_copy(
                update={
                    "extra_candidates": demo.extra_candidates,
                    "max_tokens": demo.max_tokens,
                    "transactional_id": "selfdistill-demo-serve",
                }
            ),
            "verify": settings.verify.model_copy(
                update={
                    "votes": demo.votes,
                    "fast_judge": demo.fast_judge,
                    "infer_max_tokens": demo.max_tokens,
                    "domains": {
                        **settings.verify.domains,
                        **{d: ["checker"] for d in demo.checker_domains},
                    },
                }
            ),
            "train": train.model_copy(
                update={
                    "interval_s": 5.0,
                    "cron": None,
                    "lora": train.lora.model_copy(
                        update={"max_steps": demo.train_steps, "batch_size": 4, "max_length": 256}
                    ),
                    "eval": train.eval.model_copy(
                        update={
                            "labeled_max": demo.eval_items,
                            "max_tokens": demo.max_tokens,
                            "heldout_max": min(train.eval.heldout_max, 4),
                        }
                    ),
                    "verifier": train.verifier.model_copy(
                        update={
                            "floor": demo.verifier_floor,
                            "max_items": demo.eval_items,
                            "candidates": demo.extra_candidates + 1,
                        }
                    ),
                }
            ),
        }
    )


def run_demo(settings: Settings, console: Console) -> DemoReport:
    from daemon.engines import make_engine
    from daemon.operating.status import collect_status
    from daemon.operating.status_view import render_status
    from daemon.operating.up import Up
    from daemon.verifying.store import Store

    started = time.monotonic()
    report = DemoReport()
    demo = settings.demo
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    broker_cfg = settings.broker
    if port_accepts(broker_cfg.host, broker_cfg.port):
        broker_cfg = broker_cfg.model_copy(update={"port": free_port(broker_cfg.host)})
    broker = EmbeddedBroker(broker_cfg, log_path=settings.data_dir / "broker.log")
    console.rule("[bold]selfdistill demo")
    with broker:
        report.bootstrap = broker.bootstrap
        console.print(f"1. embedded broker (Tansu) listening on [bold]{broker.bootstrap}[/]")
        run = _demo_settings(settings, broker.bootstrap)
        kafka, topics = run.kafka, run.topics
        report.topics = ensure_topics(kafka, topics)
        console.print(f"2. topics ready: {', '.join(report.topics)}")

        with console.status("3. loading the model"):
            engine = make_engine(settings.model, settings.engine)
        console.print(
            f"3. model [bold]{engine.model_name}[/] loaded ({settings.engine.kind} engine)"
        )

        up: Up | None = None

        def all_judged() -> bool:  # judged, and in the store: there is something to train on
            return up is not None and up.stored >= report.produced > 0

        # A fresh broker: the store's positions in the last demo's verdicts log mean nothing.
        with Store.open(settings.store, settings.data_dir) as store:
            store.forget_positions(topics.verdicts)

        # One process, one model: serve, verify and the train scheduler share the engine.
        up = Up(run, engine, max_cycles=1, max_minutes=demo.timeout_s / 60, train_when=all_judged)
        with up, up.endpoints():
            console.print(
                "4. workers up in this process: serve, verify, the store writer, train (every "
                f"{run.train.interval_s:g}s; trains once every prompt is judged)"
            )
            producer = Producer(kafka, name="demo-producer")
            prod = produce_prompts(producer, topics.prompts, bundled_prompts())
            report.produced, report.bad_lines = len(prod.produced), prod.failed
            for _label, raw in MALFORMED:
                producer.send(topics.prompts, raw, key="malformed")
            producer.flush()
            console.print(
                f"5. produced {report.produced} bundled prompts to '{topics.prompts}', "
                f"plus {len(MALFORMED)} malformed messages ({', '.join(m for m, _ in MALFORMED)})"
            )

            with console.status("6. starting") as status:

                def tick(u: Up) -> None:
                    status.update(f"6. {u.progress()}")
                    if all_judged() and u.state.training.startswith("waiting"):
                        u.stop("nothing was accepted, so there is nothing to train on")

                state = up.wait(tick)
            # Every prompt is judged and stored: stop verify now, or the answers asked after the swap
            # would queue their candidates for minutes of judging before the demo can exit.
            up.verify.stop()
            report.verified = up.verify.loop.stats.processed
            stats = up.serve.loop.stats
            console.print(
                f"6. serve answered {stats.processed} prompts in {stats.batches} transactional "
                f"batches; {stats.dead_lettered} messages dead-lettered. verify judged "
                f"{report.verified} prompts' candidates ({demo.votes} votes per stage"
                f"{', fast judge' if demo.fast_judge else ''}); stopped: {state.stopped_by}"
            )
            with Store.open(settings.store, settings.data_dir, read_only=True) as store:
                report.store_counts = store.counts()
                report.funnel = store.stage_funnel()
                report.accepted = store.accepted_samples(split=None)
            report.responses = _read_all(kafka, topics.responses, ResponseMessage)
            report.candidates = _read_all(kafka, topics.candidates, CandidatesMessage)
            report.dead_letters = list(tail(kafka, topics.dlq(topics.prompts), dead_letter=True))
            _show(console, report, topics.dlq(topics.prompts))
            c = report.store_counts
            console.print(
                f"7. store {settings.store.path_in(settings.data_dir)}: {c.get('accepted', 0)} "
                f"accepted samples ({c.get('accepted_train', 0)} train, "
                f"{c.get('accepted_heldout', 0)} held out) from {c.get('candidates', 0)} "
                f"candidates; {c.get('votes', 0)} judge calls recorded"
            )
            if state.cycles:
                report.cycle = state.cycles[-1]
                _show_cycle(console, report.cycle)
                if state.swapped:
                    report.after_swap = _after_swap(up, producer, console, report.cycle.version)
            producer.close()
            if demo.compare_items > 0:
                report.verifiers = _compare_verifiers(run, engine, console)
            console.rule("[bold]selfdistill status")
            render_status(collect_status(run), console)
        engine.close()
    report.seconds = time.monotonic() - started
    console.print(
        f"broker stopped. {len({r.id for r in report.responses})}/{report.produced} prompts "
        f"answered exactly once, {len(report.dead_letters)} dead letters kept with reasons; "
        f"{report.seconds:.0f}s in all. The store, the registry and the adapters stay in "
        f"{settings.data_dir}/ (`selfdistill status`, `selfdistill adapters list`)."
    )
    return report


def _show_cycle(console: Console, cycle: Any) -> None:
    """The training cycle's numbers: what was trained, the gate's checks, the decision."""
    v = cycle.verifier
    if v:
        console.print(
            f"8. verifier check: precision {_fmt(v.get('precision'))} (recall "
            f"{_fmt(v.get('recall'))}) on {v.get('candidates')} candidates of labeled held-out "
            f"problems, {v.get('accepted')} accepted; floor {_fmt(v.get('floor'))}"
        )
    if cycle.outcome == "paused" or cycle.version is None:
        console.print(f"8. no adapter trained: [bold]{cycle.outcome}[/] — {cycle.reason}")
        return
    console.print(
        f"{'  ' if v else '8.'} trained [bold]{cycle.version}[/] on {cycle.trained_on} accepted "
        "samples "
        f"(loss {_fmt(cycle.training.get('final_loss'))}, "
        f"{cycle.training.get('seconds', 0):.0f}s)"
    )
    gate = Table(title=f"the eval gate: {cycle.version} vs {cycle.against}")
    for col in ("metric", "candidate", cycle.against or "active", "rule", "ok"):
        gate.add_column(col)
    for check in cycle.decision.get("checks", []):
        gate.add_row(
            check["metric"],
            _fmt(check["candidate"]),
            _fmt(check["active"]),
            check["rule"],
            "-" if check["passed"] is None else "yes" if check["passed"] else "no",
        )
    console.print(gate)
    console.print(f"9. gate: [bold]{cycle.outcome}[/] — {cycle.reason}")


def _compare_verifiers(run: Settings, engine: Any, console: Console) -> dict[str, Any]:
    """The self-cascade and the checker judge the SAME sampled candidates of labeled
    problems; their precision against the graded truth is what the loop's data is worth."""
    from daemon.learning.tasks import bundled_heldout
    from daemon.verifying.graders import load_labeled
    from daemon.verifying.quality import evaluate_verifier, sample_candidates

    items = load_labeled(bundled_heldout())[: run.demo.compare_items]
    n = run.serve.extra_candidates + 1
    with console.status(f"11. measuring the verifiers on {len(items)} labeled problems"):
        candidates = sample_candidates(
            engine,
            items,
            n,
            temperature=run.serve.temperature,
            top_p=run.serve.top_p,
            max_tokens=run.serve.max_tokens,
            seed=0,
        )
        configs = {
            f"self-cascade (v={run.verify.votes})": run.verify.model_copy(update={"domains": {}}),
            "checker": run.verify.model_copy(update={"stages": ["checker"], "domains": {}}),
        }
        reports = {
            name: evaluate_verifier(engine, items, cfg, candidates, heldout="bundled")
            for name, cfg in configs.items()
        }
    first = next(iter(reports.values()))
    table = Table(
        title=f"11. the verifiers against the truth: {first.items} labeled problems x {n} "
        f"candidates, {first.correct} correct (base rate {_fmt(first.base_rate)})"
    )
    for col in ("verifier", "accepted", "precision", "recall", "AUC", "judge calls"):
        table.add_column(col, justify="left" if col == "verifier" else "right")
    for name, rep in reports.items():
        table.add_row(
            name,
            str(rep.accepted),
            _fmt(rep.precision),
            _fmt(rep.recall),
            _fmt(rep.auc),
            str(rep.judge_calls),
        )
    console.print(table)
    console.print(
        "    precision: of what the verifier accepts, the share that is right. A verifier no "
        "better than the base rate teaches noise; `selfdistill eval verifier --sweep` finds the "
        "budget for a model, and train.verifier.floor pauses training below a precision."
    )
    return reports


def _after_swap(up: Any, producer: Producer, console: Console, version: str) -> list[Any]:
    """Three prompts answered after the promotion: served by the new adapter."""
    kafka, topics = up.settings.kafka, up.settings.topics
    lines = [json.loads(x) for x in bundled_prompts()[:3]]
    ids = [f"after-swap-{i}" for i in range(len(lines))]
    for pid, line in zip(ids, lines, strict=True):
        producer.send(topics.prompts, {**line, "id": pid}, key=pid)
    producer.flush()
    deadline = time.monotonic() + up.settings.demo.timeout_s
    with console.status("10. asking again, now on the promoted adapter"):
        while up.serve.loop.stats.processed < len(bundled_prompts()) + len(ids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    after = [r for r in _read_all(kafka, topics.responses, ResponseMessage) if r.id in ids]
    table = Table(title=f"10. answers after the hot-swap (served by {version})")
    for col in ("prompt", "answer", "adapter"):
        table.add_column(col, overflow="fold")
    prompts = {pid: line["prompt"] for pid, line in zip(ids, lines, strict=True)}
    for r in sorted(after, key=lambda r: r.id):
        table.add_row(_clip(prompts[r.id], 48), _clip(r.text, 60), r.adapter or "base")
    console.print(table)
    return after


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _show(console: Console, report: DemoReport, dlq: str) -> None:
    prompts = {c.id: c.messages[-1].content for c in report.candidates}
    samples = {c.id: len(c.samples) for c in report.candidates}
    answers = Table(title="responses (the answer each caller got)", show_lines=False)
    for col in ("prompt", "answer", "samples", "tokens"):
        answers.add_column(col, overflow="fold")
    for r in sorted(report.responses, key=lambda r: r.id):
        answers.add_row(
            _clip(prompts.get(r.id, r.id), 48),
            _clip(r.text, 60),
            str(samples.get(r.id, 0)),
            str(r.completion_tokens),
        )
    console.print(answers)
    f = report.funnel
    if f:
        judged = f["candidates"] - f["skipped"] - f["superseded"]
        funnel = Table(title="the cascade funnel (candidates judged → accepted)")
        for col in ("judged", "static ok", *[f"{s} passed" for s in f["stages"]], "accepted"):
            funnel.add_column(col, justify="right")
        funnel.add_row(
            str(judged),
            str(judged - f["static"]),
            *[str(v["passed"]) for v in f["stages"].values()],
            str(f["accepted"]),
        )
        console.print(funnel)
    if report.accepted:
        acc = Table(
            title="accepted samples (by the checker where the prompt carried a check, else by "
            "the model's own verdicts: often wrong on this model)"
        )
        acc.add_column("prompt", overflow="fold")
        acc.add_column("accepted answer", overflow="fold")
        for row in report.accepted[:8]:
            acc.add_row(
                _clip(row["messages"][-2]["content"], 48), _clip(row["messages"][-1]["content"], 60)
            )
        console.print(acc)
    dead = Table(title=f"dead letters on '{dlq}'")
    for col in ("source", "reason", "error"):
        dead.add_column(col)
    for dl in report.dead_letters:
        src = dl["source"]
        dead.add_row(
            f"{src['topic']}[{src['partition']}]@{src['offset']}", dl["reason"], dl["error"]
        )
    console.print(dead)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
