"""``selfdistill demo``: the main job on the embedded defaults, end to end, on one machine.

The embedded broker and topics; the serve worker on the embedded SmolLM2 answering the
bundled prompts (a few of every kind, plus a round of the bundled task's problems), each
with extra candidates, in one Kafka transaction per batch; malformed messages dead-lettered
with their reasons while the good ones flow; the verify worker judging the candidates, and
the store writer applying its verdicts to SQLite — prompts that carry a check are verified
by the deterministic checker, the rest by the model's own cascade; then one training cycle:
the verifier's precision measured on labeled held-out problems (training pauses below the
floor), a LoRA adapter on the accepted samples, scored against the base on the same
held-out problems by the paired gate, promoted (or not, with the reason); serve's own
confirmation that it swapped, and held-out problems answered again on the new adapter,
beside what the base answered. At the end the self-cascade's measured precision is printed
beside the checker's, on the same candidates, so the difference shows.

Budgets (``DemoConfig``) are chosen from measurements on 2 CPU cores (README, "The demo"):
the round is large enough for the gate to tell a real gain from noise, and every number
printed was measured in this run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
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
    """Budgets of `selfdistill demo` (the embedded model runs on a CPU). The paper's settings
    (n = 8, v = 5) stay the production defaults; the demo samples n = 4."""

    model_config = ConfigDict(extra="forbid")

    extra_candidates: int = Field(3, ge=0, description="Extra samples per prompt in the demo.")
    max_tokens: int = Field(48, ge=1, description="Longest demo answer, in tokens.")
    batch_size: int = Field(8, ge=1, description="Prompts per serve batch in the demo.")
    votes: int = Field(3, ge=1, description="Votes per cascade stage in the demo (paper: 5).")
    fast_judge: bool = Field(
        True, description="Demo judges vote from next-token Y/N probabilities (fast on a CPU)."
    )
    timeout_s: float = Field(
        900.0, gt=0, description="Bound of the whole loop (answers, verdicts, training, gate)."
    )
    task_prompts: int = Field(
        160,
        ge=0,
        le=200,
        description="Problems of the bundled task (daemon/learning/data/task/prompts.jsonl) "
        "produced besides the demo's own prompts: the round the adapter learns from, each "
        "verified by the checker.",
    )
    train_steps: int | None = Field(
        None,
        ge=0,
        description="LoRA optimizer steps of the demo's training cycle (None: train.lora's "
        "epochs decide; 0: skip training).",
    )
    eval_items: int = Field(
        200,
        ge=1,
        description="Labeled held-out problems the demo's gate scores, candidate and base on "
        "the same items: the bundled held-out set and more of the same generator, none of "
        "them among the prompts.",
    )
    verifier_items: int = Field(
        8,
        ge=1,
        description="Labeled problems on which the demo measures the verifier's precision "
        "before training (train.verifier.max_items).",
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
    swap_timeout_s: float = Field(
        180.0,
        gt=0,
        description="How long the demo waits for serve to confirm it serves a promoted adapter.",
    )
    show_pairs: int = Field(
        4,
        ge=0,
        description="Held-out problems answered again after the swap, shown beside the base's "
        "answers (those where base and adapter differ first).",
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
    swap: dict[str, Any] = field(default_factory=dict)  # confirmed, seconds, why not
    after_swap: list[ResponseMessage] = field(default_factory=list)
    pairs: list[dict[str, Any]] = field(default_factory=list)  # before/after, per problem
    verifiers: dict[str, Any] = field(default_factory=dict)  # name -> VerifierReport
    seconds: float = 0.0

    @property
    def answered_once(self) -> bool:
        ids = [r.id for r in self.responses]
        return len(ids) == self.produced and len(set(ids)) == len(ids)


def bundled_prompts() -> list[str]:
    text = resources.files("daemon.operating").joinpath("data/demo_prompts.jsonl").read_text()
    return text.splitlines()


def task_prompts(n: int) -> list[str]:
    """The first ``n`` problems of the bundled task: each carries its check."""
    from daemon.learning.tasks import bundled_prompts as task_file

    return task_file().read_text().splitlines()[:n]


def write_heldout(path: Path, n: int) -> Path:
    """``n`` labeled held-out problems, none of them among the bundled task's prompts: the
    bundled held-out set (its first 40) and more from the same stream."""
    from daemon.learning.tasks import heldout_items

    avoid = [json.loads(line)["prompt"] for line in task_prompts(200)]
    items = heldout_items(n, 0, avoid=avoid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(it.model_dump_json(exclude_defaults=True) + "\n" for it in items))
    return path


def _read_all(kafka: Any, topic: str, schema: type[BaseModel]) -> list[Any]:
    return [schema.model_validate(r["value"]) for r in tail(kafka, topic, idle_timeout_s=1.0)]


def _demo_settings(settings: Settings, bootstrap: str, heldout: Path) -> Settings:
    """The configured settings at the demo's budgets, on the embedded broker."""
    demo = settings.demo
    train = settings.train
    lora = {"max_steps": demo.train_steps} if demo.train_steps else {}
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
                    "min_new_samples": 1,
                    "lora": train.lora.model_copy(update={**lora, "max_length": 256}),
                    "eval": train.eval.model_copy(
                        update={
                            "labeled_set": heldout,
                            "labeled_max": demo.eval_items,
                            "max_tokens": demo.max_tokens,
                            "batch_size": 32,
                            "heldout_max": min(train.eval.heldout_max, 4),
                        }
                    ),
                    "verifier": train.verifier.model_copy(
                        update={
                            "floor": demo.verifier_floor,
                            "measure": demo.verifier_floor is not None,
                            "max_items": demo.verifier_items,
                            "candidates": demo.extra_candidates + 1,
                        }
                    ),
                }
            ),
        }
    )


def run_demo(settings: Settings, console: Console) -> DemoReport:
    from daemon import progress
    from daemon.engines import make_engine
    from daemon.operating.status import collect_status
    from daemon.operating.status_view import render_status
    from daemon.operating.up import Up
    from daemon.verifying.store import Store

    started = time.monotonic()
    report = DemoReport()
    demo = settings.demo
    deadline = started + demo.timeout_s
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    progress.configure("quiet")  # the demo's own status line shows the long steps
    broker_cfg = settings.broker
    if port_accepts(broker_cfg.host, broker_cfg.port):
        broker_cfg = broker_cfg.model_copy(update={"port": free_port(broker_cfg.host)})
    broker = EmbeddedBroker(broker_cfg, log_path=settings.data_dir / "broker.log")
    console.rule("[bold]selfdistill demo")
    with broker:
        report.bootstrap = broker.bootstrap
        console.print(f"1. embedded broker (Tansu) listening on [bold]{broker.bootstrap}[/]")
        heldout = write_heldout(settings.data_dir / "demo" / "heldout.jsonl", demo.eval_items)
        run = _demo_settings(settings, broker.bootstrap, heldout)
        kafka, topics = run.kafka, run.topics
        report.topics = ensure_topics(kafka, topics)
        console.print(f"2. topics ready: {', '.join(report.topics)}")

        with console.status("3. loading the model"):
            engine = make_engine(settings.model, settings.engine)
        console.print(
            f"3. model [bold]{engine.model_name}[/] loaded ({settings.engine.kind} engine)"
        )

        # A fresh broker: the store's positions in the last demo's verdicts log mean nothing.
        with Store.open(settings.store, settings.data_dir) as store:
            store.forget_positions(topics.verdicts)

        # One process, one model: serve, verify and the store writer share the engine; the
        # demo runs its one training cycle itself, once every prompt is judged and stored.
        up = Up(run, engine, train=False)
        with up, up.endpoints():
            console.print(
                "4. workers up in this process: serve, verify and the store writer; one "
                "training cycle follows once every prompt is judged"
            )
            producer = Producer(kafka, name="demo-producer")
            lines = bundled_prompts() + task_prompts(demo.task_prompts)
            prod = produce_prompts(producer, topics.prompts, lines)
            report.produced, report.bad_lines = len(prod.produced), prod.failed
            for _label, raw in MALFORMED:
                producer.send(topics.prompts, raw, key="malformed")
            producer.flush()
            console.print(
                f"5. produced {report.produced} prompts to '{topics.prompts}' "
                f"({len(bundled_prompts())} demo prompts, {demo.task_prompts} problems of the "
                f"bundled task), plus {len(MALFORMED)} malformed messages "
                f"({', '.join(m for m, _ in MALFORMED)})"
            )
            stopped = _wait(
                console,
                lambda: f"6. {up.progress()}",
                lambda: up.stored >= report.produced,
                deadline,
            )
            # Every prompt is judged and stored: stop verify now, or the answers asked after
            # the swap would queue their candidates for minutes of judging.
            up.verify.stop()
            report.verified = up.verify.loop.stats.processed
            stats = up.serve.loop.stats
            console.print(
                f"6. serve answered {stats.processed} prompts in {stats.batches} transactional "
                f"batches; {stats.dead_lettered} messages dead-lettered. verify judged "
                f"{report.verified} prompts' candidates ({demo.votes} votes per stage"
                f"{', fast judge' if demo.fast_judge else ''}); the store writer applied "
                f"{up.stored} verdicts{'' if stopped else ' (stopped: the demo timeout)'}"
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
            if not stopped:
                console.print("8. no training: the demo's timeout came first")
            elif demo.train_steps == 0:
                console.print("8. no training: demo.train_steps is 0")
            elif c.get("accepted_train", 0) == 0:
                console.print(
                    "8. no training: nothing was accepted, so there is nothing to train on"
                )
            else:
                report.cycle = _train_once(console, run, engine, deadline)
                _show_cycle(console, report.cycle)
                if report.cycle.outcome == "promoted":
                    report.swap = _confirm_swap(console, run, report.cycle)
                    if report.swap.get("confirmed"):
                        report.after_swap, report.pairs = _after_swap(
                            up, producer, console, report.cycle.version, heldout
                        )
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


def _wait(
    console: Console, line: Callable[[], str], done: Callable[[], bool], deadline: float
) -> bool:
    """Show ``line()`` on a status line until ``done()`` (True) or the deadline (False)."""
    with console.status(line()) as status:
        while not done():
            if time.monotonic() > deadline:
                return False
            status.update(line())
            time.sleep(0.5)
    return True


def _train_once(console: Console, run: Settings, engine: Any, deadline: float) -> Any:
    """The demo's one training cycle, on the shared engine while serve keeps answering; the
    status line shows its progress (steps, then the gate's items)."""
    from daemon import progress
    from daemon.learning.train import run_cycle

    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["report"] = run_cycle(
                run, engine=engine, force=True, should_stop=lambda: time.monotonic() > deadline
            )
        except BaseException as exc:  # shown, then raised in the demo's thread
            result["error"] = exc

    worker = threading.Thread(target=target, name="demo-train", daemon=True)
    worker.start()
    t0 = time.monotonic()
    _wait(
        console,
        lambda: f"8. {progress.current() or 'training cycle'} ({time.monotonic() - t0:.0f}s)",
        lambda: not worker.is_alive(),
        float("inf"),
    )
    if "error" in result:
        raise result["error"]
    return result["report"]


def _confirm_swap(console: Console, run: Settings, cycle: Any) -> dict[str, Any]:
    """Wait (bounded) until serve itself says, on adapter-status, that it serves the promoted
    version; if it refused or did not answer in time, say so and why."""
    from streams.adapter_status import wait_for_fleet

    version = cycle.version
    since = time.time() - cycle.seconds - 1  # a refusal after the cycle began is final
    t0 = time.monotonic()
    wait_s = run.demo.swap_timeout_s
    with console.status(f"10. waiting for serve to swap to {version}"):
        ok, pending = wait_for_fleet(
            run.kafka, run.topics.adapter_status, version, wait_s, since=since
        )
    seconds = time.monotonic() - t0
    if ok and not pending:
        console.print(
            f"10. serve confirmed on '{run.topics.adapter_status}' that it serves "
            f"[bold]{version}[/] ({seconds:.1f}s after the gate's decision)"
        )
        return {"confirmed": True, "seconds": seconds}
    if pending and pending[0].refused == version:
        why = f"serve refused it: {pending[0].status.error}"
    elif pending:
        why = f"serve still serves {pending[0].status.serving} after {wait_s:g}s"
    else:
        why = f"no live serve replica reported on '{run.topics.adapter_status}' in {wait_s:g}s"
    console.print(f"10. [red]no swap[/]: {why}; the answers below are not shown")
    return {"confirmed": False, "seconds": seconds, "reason": why}


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
    gate = Table(title=f"the eval gate: {cycle.version} vs {cycle.against}, item by item")
    for col in ("metric", "items", "candidate", cycle.against or "active", "won/lost"):
        gate.add_column(col, justify="right")
    for col in ("delta [interval]", "rule", "ok"):
        gate.add_column(col)
    for check in cycle.decision.get("checks", []):
        interval = (
            f"{check['delta']:+.3f} [{check['low']:+.3f}, {check['high']:+.3f}]"
            if check.get("low") is not None
            else "-"
        )
        gate.add_row(
            check["metric"],
            str(check.get("items") or "-"),
            _fmt(check["candidate"]),
            _fmt(check["active"]),
            f"{check.get('wins', 0)}/{check.get('losses', 0)}" if check.get("items") else "-",
            interval,
            check["rule"],
            "-" if check["passed"] is None else "yes" if check["passed"] else "no",
        )
    console.print(gate)
    console.print(f"9. gate: [bold]{cycle.outcome}[/] — {cycle.reason}")
    checks = cycle.decision.get("checks") or [{}]
    first = checks[0]
    if first.get("low") is not None:
        shown = first["low"] > 0
        console.print(
            f"   held-out {first['metric']} (greedy, the same {first['items']} problems): "
            f"{cycle.against} {first['active']:.3f} → {cycle.version} {first['candidate']:.3f}, "
            f"{first['delta']:+.3f} with a {first['level']:.0%} paired interval of "
            f"[{first['low']:+.3f}, {first['high']:+.3f}]: "
            + (
                "[bold green]better than the base beyond the run's noise[/]"
                if shown and cycle.against == "base"
                else "[bold green]better beyond the run's noise[/]"
                if shown
                else "[yellow]no gain shown beyond the run's noise[/]"
            )
        )


def _compare_verifiers(run: Settings, engine: Any, console: Console) -> dict[str, Any]:
    """The self-cascade and the checker judge the SAME sampled candidates of labeled
    problems; their precision against the graded truth is what the loop's data is worth."""
    from daemon.learning.tasks import bundled_heldout
    from daemon.verifying.graders import load_labeled
    from daemon.verifying.quality import evaluate_verifier, sample_candidates

    items = load_labeled(bundled_heldout())[: run.demo.compare_items]
    n = run.serve.extra_candidates + 1
    with console.status(f"12. measuring the verifiers on {len(items)} labeled problems"):
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
        title=f"12. the verifiers against the truth: {first.items} labeled problems x {n} "
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


def _after_swap(
    up: Any, producer: Producer, console: Console, version: str, heldout: Path
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Held-out problems asked again through serve, now on the new adapter, beside what the
    gate saw the base and the adapter answer (greedy) on the same problems. Problems where
    the two differed come first, wins and losses both, so the table is not a highlight reel."""
    from adapters.registry import BASE
    from daemon.learning.settings import open_registry
    from daemon.verifying.graders import grade, load_labeled

    run = up.settings
    n = run.demo.show_pairs
    if n == 0:
        return [], []
    with open_registry(run, read_only=True) as registry:
        ev = registry.require(version).eval or {}
    cand = {r["id"]: r for r in ev.get("candidate", {}).get("labeled", [])}
    base = {r["id"]: r for r in ev.get("active", {}).get("labeled", [])}
    items = {it.id: it for it in load_labeled(heldout) if it.id in cand and it.id in base}
    wins = [i for i in items if cand[i]["passed"] and not base[i]["passed"]]
    losses = [i for i in items if base[i]["passed"] and not cand[i]["passed"]]
    rest = [i for i in items if i not in wins and i not in losses]
    chosen = (wins[: max(1, n - 1)] + losses[:1] + wins[max(1, n - 1) :] + rest)[:n]
    ids = {f"after-swap-{i}": i for i in chosen}
    before = up.serve.loop.stats.processed
    for pid, item_id in ids.items():
        producer.send(run.topics.prompts, {"id": pid, "prompt": items[item_id].question})
    producer.flush()
    deadline = time.monotonic() + run.demo.swap_timeout_s
    with console.status("11. asking again, now on the promoted adapter"):
        while up.serve.loop.stats.processed < before + len(ids):
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    after = [r for r in _read_all(run.kafka, run.topics.responses, ResponseMessage) if r.id in ids]
    answered = {r.id: r for r in after}
    table = Table(
        title=f"11. held-out problems before and after: the gate's greedy answers of the base and "
        f"the adapter {version}, and what serve answers on it now (sampled); the adapter won "
        f"{len(wins)} and lost {len(losses)} of {len(items)}"
    )
    for col in ("problem", "right", BASE, "adapter", "served now"):
        table.add_column(col, overflow="fold")
    pairs: list[dict[str, Any]] = []

    def cell(text: str, ok: bool) -> str:  # the end of an answer is where its result is
        text = " ".join(text.split())
        return f"{'✓' if ok else '✗'} {text if len(text) <= 36 else '…' + text[-35:]}"

    for pid, item_id in ids.items():
        it, r = items[item_id], answered.get(pid)
        served_ok = r is not None and grade(it, r.text)
        pairs.append(
            {
                "id": item_id,
                "question": it.question,
                "answer": it.answer,
                "base": base[item_id]["output"],
                "base_passed": base[item_id]["passed"],
                "adapter": cand[item_id]["output"],
                "adapter_passed": cand[item_id]["passed"],
                "served": r.text if r else None,
                "served_passed": served_ok,
                "served_by": r.adapter if r else None,
            }
        )
        table.add_row(
            _clip(it.question.splitlines()[0], 40),
            it.answer,
            cell(base[item_id]["output"], base[item_id]["passed"]),
            cell(cand[item_id]["output"], cand[item_id]["passed"]),
            (
                cell(r.text, served_ok)
                + ("" if r.adapter == version else f" (by {r.adapter or BASE})")
            )
            if r
            else "(no answer in time)",
        )
    console.print(table)
    return after, pairs


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _show(console: Console, report: DemoReport, dlq: str) -> None:
    prompts = {c.id: c.messages[-1].content for c in report.candidates}
    samples = {c.id: len(c.samples) for c in report.candidates}
    task = [r for r in report.responses if r.id.startswith("task-")]
    shown = [r for r in report.responses if not r.id.startswith("task-")]
    answers = Table(
        title="responses (the answer each caller got)"
        + (f"; {len(task)} task problems answered too, not shown" if task else ""),
        show_lines=False,
    )
    for col in ("prompt", "answer", "samples", "tokens"):
        answers.add_column(col, overflow="fold")
    for r in sorted(shown, key=lambda r: r.id):
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
