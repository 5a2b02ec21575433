"""The learning-efficacy benchmark: does the loop make the served model better, round after round?

Every other benchmark measures speed; this one measures what the daemon is for. It runs the
real loop on the embedded model — the embedded broker, the serve worker answering fresh
problems of the bundled task with extra candidates, the verify worker judging them, the
store writer, one training cycle per round (LoRA on the accepted samples), the paired eval
gate, promotion on ``adapter-events`` and serve's hot-swap — for ``--rounds`` rounds, in
several *arms* that see the same prompts:

* ``checker:base`` / ``checker:active`` — the deterministic checker verifies (the prompts
  carry their check); ``train.lora.init`` ``base`` (a fresh adapter on the cumulative data)
  or ``active`` (the serving adapter trained further on the new data only);
* ``self:base`` — the model's own cascade verifies, with no floor: on the embedded model its
  precision is near the base rate, and the rows show what training on that data does;
* ``self-floor:base`` — the same cascade with ``train.verifier.floor``: the cycle measures the
  verifier's precision on labeled problems and pauses instead of training on noise.

After each round, per arm: held-out pass@1 (greedy, labeled problems none of the prompts
repeat) of the adapter that *serves* (what the registry says is active after the gate), with
a 95% bootstrap interval; its change against the base and against the previous round's
adapter, each a paired interval on the same items (``adapters.gate.paired_interval``);
accepted samples (new, cumulative), the acceptance rate, judge calls and judge tokens per
accepted sample, training time and tokens/s, and the gate's decision. The baseline of every
row is the base model on the same items, measured in the same run.

    .venv/bin/python -m bench.loop                 # about 60 minutes on 2 cores
    .venv/bin/python -m bench.loop --quick         # about 15 minutes
    .venv/bin/python -m bench.loop --json bench/results/loop.json
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import log, machine, now, quiet, result_row, write_result

ARMS = ("checker:base", "checker:active", "self:base", "self-floor:base")
QUICK = {
    "rounds": 2,
    "prompts": 32,
    "eval_items": 100,
    "verifier_items": 8,
    "arms": "checker:base,self-floor:base",
}
CHECKED_DOMAINS = ("arithmetic", "units")  # the bundled task's domains


@dataclass
class Round:
    """One arm's round: what came in, what was trained, what serves now and how well."""

    arm: str
    round: int
    prompts: int
    accepted_new: int
    accepted_total: int
    prompts_with_accepted: int
    judge_calls: int
    judge_tokens: int
    outcome: str
    reason: str
    version: str | None
    serving: str
    trained_on: int = 0
    train_seconds: float = 0.0
    tokens_per_s: float = 0.0
    items: int = 0
    pass1: float = 0.0
    pass1_interval: tuple[float, float] = (0.0, 0.0)
    vs_base: dict[str, float] = field(default_factory=dict)
    vs_previous: dict[str, float] = field(default_factory=dict)
    verifier_precision: float | None = None
    swap_s: float | None = None
    seconds: float = 0.0


# ------------------------------------------------------------------------- statistics
def rate(values: list[float], level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """A pass rate and its bootstrap interval (``adapters.gate.paired_interval`` of the
    values themselves: the same resampling as the gate's)."""
    from adapters.gate import paired_interval

    return sum(values) / len(values), paired_interval(values, level, 10_000)


def paired(new: dict[str, float], old: dict[str, float]) -> dict[str, float]:
    """``new - old`` on the items both were scored on, with its paired 95% interval."""
    from adapters.gate import paired_interval

    ids = sorted(set(new) & set(old))
    deltas = [new[i] - old[i] for i in ids]
    low, high = paired_interval(deltas, 0.95, 10_000)
    return {
        "delta": sum(deltas) / len(deltas),
        "low": low,
        "high": high,
        "wins": sum(d > 0 for d in deltas),
        "losses": sum(d < 0 for d in deltas),
    }


# --------------------------------------------------------------------------- set-up
def arm_settings(
    arm: str, root: Path, bootstrap: str, args: argparse.Namespace, heldout: Path
) -> Any:
    """The daemon's settings for one arm: its own store, registry and topics; the verifier
    and init mode the arm names; every budget from the command line."""
    from daemon.operating.config import Settings
    from streams.broker import free_port

    verifier, init = arm.split(":")
    tag = arm.replace(":", "-")
    self_judged = verifier.startswith("self")
    return Settings(
        data_dir=root / tag,
        kafka={"bootstrap_servers": bootstrap, "batch_size": args.batch_size},
        topics={
            "prompts": f"{tag}-prompts",
            "responses": f"{tag}-responses",
            "candidates": f"{tag}-candidates",
            "verdicts": f"{tag}-verdicts",
            "adapter_events": f"{tag}-adapter-events",
            "adapter_status": f"{tag}-adapter-status",
            "partitions": 1,
        },
        # version names carry the arm: the arms share one engine, which names adapters by them
        model={"path": args.model, "name": tag},
        engine={"torch_threads": args.threads} if args.threads else {},
        metrics={f"{w}_port": free_port() for w in ("serve", "verify", "train", "store")},
        serve={
            "extra_candidates": args.n - 1,
            "max_tokens": args.max_tokens,
            "transactional_id": f"bench-loop-{tag}-serve",
            "group_id": f"bench-loop-{tag}-serve",
        },
        verify={
            "votes": args.votes,
            "fast_judge": True,
            "infer_max_tokens": args.max_tokens,
            "transactional_id": f"bench-loop-{tag}-verify",
            "group_id": f"bench-loop-{tag}-verify",
            "domains": {} if self_judged else {d: ["checker"] for d in CHECKED_DOMAINS},
            "reject_injection": not args.no_injection_filter,
        },
        store={"group_id": f"bench-loop-{tag}-store"},
        train={
            "min_new_samples": 1,
            "lora": {"init": init, "max_length": 256},
            "eval": {
                "labeled_set": str(heldout),
                "max_tokens": args.max_tokens,
                "batch_size": 32,
                "heldout_max": 0,  # the labeled set decides; the cascade metric is the verifier's
            },
            "verifier": {
                "measure": self_judged,
                "floor": args.floor if verifier == "self-floor" else None,
                "max_items": args.verifier_items,
                "candidates": args.n,
            },
        },
    )


def prime_base(settings: Any, engine: Any, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The base model's eval, measured once per fingerprint and stored in the arm's registry,
    so no arm spends its first gate scoring the base again."""
    from adapters.registry import BASE
    from daemon.learning.evaluate import eval_cascade_config, evaluate, fingerprint, load_eval_data
    from daemon.learning.settings import open_registry

    cfg = settings.train.eval
    items, heldout = load_eval_data(cfg, [])
    cascade = eval_cascade_config(settings.verify, cfg)
    fp = fingerprint(items, heldout, cfg, cascade, settings.model.path)
    if fp not in cache:
        log(f"  scoring the base model on {len(items)} held-out problems")
        cache[fp] = evaluate(engine, None, items, heldout, cfg, cascade, fingerprint_=fp).as_dict()
    with open_registry(settings) as registry:
        registry.store_eval(BASE, fp, cache[fp])
    return cache[fp]


def labeled(report: dict[str, Any]) -> dict[str, float]:
    return {str(r["id"]): float(bool(r["passed"])) for r in report["labeled"]}


# ------------------------------------------------------------------------- one arm
def _store_totals(settings: Any) -> dict[str, int]:
    from daemon.verifying.store import Store

    with (
        Store.open(settings.store, settings.data_dir, read_only=True) as store,
        store._read() as db,
    ):
        row = db.execute(
            "SELECT (SELECT count(*) FROM prompts), (SELECT count(*) FROM accepted), "
            "(SELECT count(*) FROM votes WHERE stage NOT IN ('static', 'checker', 'execution')), "
            "(SELECT coalesce(sum(judge_tokens), 0) FROM candidates), "
            "(SELECT count(DISTINCT prompt_id) FROM accepted)"
        ).fetchone()
    return dict(zip(("prompts", "accepted", "calls", "tokens", "with_accepted"), row, strict=True))


def run_arm(
    arm: str,
    settings: Any,
    engine: Any,
    rounds: list[list[Any]],
    base: dict[str, float],
    args: argparse.Namespace,
) -> list[Round]:
    """Every round of one arm, in one ``Up`` (serve, verify, the store writer; the rounds'
    cycles run here)."""
    from adapters.registry import BASE
    from daemon.learning.settings import open_registry
    from daemon.learning.train import run_cycle
    from daemon.operating.up import Up
    from streams.producer import Producer
    from streams.topics import ensure_topics

    ensure_topics(settings.kafka, settings.topics)
    results: list[Round] = []
    previous = base
    before = {"prompts": 0, "accepted": 0, "calls": 0, "tokens": 0, "with_accepted": 0}
    produced = 0
    with Up(settings, engine, train=False) as up:
        producer = Producer(settings.kafka, name=f"bench-loop-{arm}")
        for r, prompts in enumerate(rounds, 1):
            started = time.monotonic()
            for p in prompts:
                producer.send(settings.topics.prompts, p, key=p.id)
            producer.flush()
            produced += len(prompts)
            deadline = started + args.round_timeout
            while _store_totals(settings)["prompts"] < produced:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{arm} round {r}: not every prompt judged in time")
                time.sleep(1.0)
            totals = _store_totals(settings)
            log(f"  {arm} round {r}: judged {len(prompts)} prompts, training")
            cycle = run_cycle(settings, engine=engine, force=True)
            swap_s = None
            if cycle.outcome == "promoted":
                t0 = time.monotonic()
                while up.serve.router.active != cycle.version:
                    if time.monotonic() - t0 > args.swap_timeout:
                        raise TimeoutError(
                            f"{arm} round {r}: serve did not swap to {cycle.version}"
                        )
                    time.sleep(0.2)
                swap_s = time.monotonic() - t0
            with open_registry(settings, read_only=True) as registry:
                serving = registry.active_version()
                scores = (
                    base
                    if serving == BASE
                    else labeled(registry.require(serving).eval["candidate"])
                )
            pass1, interval = rate(list(scores.values()))
            new = totals["accepted"] - before["accepted"]
            results.append(
                Round(
                    arm=arm,
                    round=r,
                    prompts=len(prompts),
                    accepted_new=new,
                    accepted_total=totals["accepted"],
                    prompts_with_accepted=totals["with_accepted"] - before["with_accepted"],
                    judge_calls=totals["calls"] - before["calls"],
                    judge_tokens=totals["tokens"] - before["tokens"],
                    outcome=cycle.outcome,
                    reason=cycle.reason,
                    version=cycle.version,
                    serving=serving,
                    trained_on=cycle.trained_on,
                    train_seconds=float(cycle.training.get("seconds") or 0.0),
                    tokens_per_s=float(cycle.training.get("tokens_per_s") or 0.0),
                    items=len(scores),
                    pass1=pass1,
                    pass1_interval=interval,
                    vs_base=paired(scores, base),
                    vs_previous=paired(scores, previous),
                    verifier_precision=(cycle.verifier or {}).get("precision"),
                    swap_s=swap_s,
                    seconds=time.monotonic() - started,
                )
            )
            log("  " + describe(results[-1]))
            before, previous = totals, scores
        producer.close()
    return results


# --------------------------------------------------------------------------- report
def _iv(d: dict[str, float]) -> str:
    return f"{d['delta']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def describe(x: Round) -> str:
    per = (lambda v: f"{v / x.accepted_new:.1f}") if x.accepted_new else (lambda v: "n/a")
    trained = (
        f"trained {x.version} on {x.trained_on} samples in {x.train_seconds:.0f}s "
        f"({x.tokens_per_s:.0f} tokens/s); "
        if x.trained_on
        else ""
    )
    precision = (
        f"verifier precision {x.verifier_precision:.3f}; "
        if x.verifier_precision is not None
        else ""
    )
    return (
        f"{x.arm} round {x.round}: serving {x.serving}, pass@1 {x.pass1:.3f} "
        f"[{x.pass1_interval[0]:.3f}, {x.pass1_interval[1]:.3f}] on {x.items} items; "
        f"vs base {_iv(x.vs_base)}; vs previous round {_iv(x.vs_previous)}; "
        f"accepted {x.accepted_new} new ({x.accepted_total} in all) from {x.prompts} prompts, "
        f"{x.prompts_with_accepted / x.prompts:.0%} of prompts with one; judge calls "
        f"{per(x.judge_calls)} and judge tokens {per(x.judge_tokens)} per accepted sample; "
        f"{precision}{trained}gate: {x.outcome}"
        + (f" (swap {x.swap_s:.1f}s)" if x.swap_s is not None else "")
    )


def rows(results: list[Round], base_rate: float) -> list[dict[str, Any]]:
    out = []
    for x in results:
        out.append(
            result_row(
                f"loop {x.arm}, round {x.round}: held-out pass@1 of the serving adapter",
                "pass@1",
                f"base model, the same {x.items} problems",
                base_rate,
                x.pass1,
                target=None,
                # a base that solves nothing (a test's tiny model) gives no ratio: say 1 item
                ratio=x.pass1 / (base_rate or 1 / x.items),
                notes=describe(x).split(": ", 1)[1] + f"; the gate: {x.reason}",
            )
        )
    return out


# ----------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"smaller run (about 15 min): {QUICK}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=48, help="fresh task prompts per round")
    ap.add_argument("--n", type=int, default=4, help="candidates per prompt (paper: 8)")
    ap.add_argument("--votes", type=int, default=3, help="votes per judge stage (paper: 5)")
    ap.add_argument(
        "--no-injection-filter",
        action="store_true",
        help="let answers that talk to the judge reach it (verify.reject_injection = false): "
        "for a model whose every answer is a verdict marker, such as the tests' yes-model",
    )
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per serve batch")
    ap.add_argument("--eval-items", type=int, default=200, help="labeled held-out problems")
    ap.add_argument("--verifier-items", type=int, default=16)
    ap.add_argument("--floor", type=float, default=0.5, help="the self-floor arm's floor")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--seed", type=int, default=1, help="seed of the prompts (not the bundled 0)")
    ap.add_argument("--round-timeout", type=float, default=1800.0)
    ap.add_argument("--swap-timeout", type=float, default=300.0)
    ap.add_argument("--model", default="embedded", help="model.path (tests: a tiny model)")
    ap.add_argument("--threads", type=int, default=0, help="engine.torch_threads (0: default)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        defaults = {a.dest: a.default for a in ap._actions}
        for key, value in QUICK.items():
            if getattr(args, key) == defaults[key]:
                setattr(args, key, value)
    bad = [a for a in args.arms.split(",") if a not in ARMS]
    if bad or args.rounds < 1 or args.prompts < 1 or args.n < 1 or args.eval_items < 10:
        ap.error(f"bad arguments (unknown arms: {bad}; rounds, prompts, n >= 1, eval-items >= 10)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    quiet()
    from daemon import progress
    from daemon.engines import make_engine
    from daemon.learning.tasks import heldout_items, seed_prompts
    from daemon.operating.config import Settings
    from streams.broker import BrokerConfig, EmbeddedBroker, free_port

    progress.configure("log", every_s=60.0)
    started_at = now()
    t0 = time.monotonic()
    arms = args.arms.split(",")
    prompts = seed_prompts(args.prompts * args.rounds, args.seed)
    rounds = [prompts[i * args.prompts : (i + 1) * args.prompts] for i in range(args.rounds)]
    items = heldout_items(args.eval_items, args.seed, avoid=[p.prompt or "" for p in prompts])
    defaults = Settings(
        model={"path": args.model},
        engine={"torch_threads": args.threads} if args.threads else {},
    )
    results: list[Round] = []
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-loop-")))
        heldout = root / "heldout.jsonl"
        heldout.write_text(
            "".join(it.model_dump_json(exclude_defaults=True) + "\n" for it in items)
        )
        broker = stack.enter_context(EmbeddedBroker(BrokerConfig(port=free_port())))
        engine = make_engine(defaults.model, defaults.engine)
        stack.callback(engine.close)
        cache: dict[str, dict[str, Any]] = {}
        base: dict[str, float] = {}
        for arm in arms:
            log(f"arm {arm}: {args.rounds} rounds of {args.prompts} prompts")
            settings = arm_settings(arm, root, broker.bootstrap, args, heldout)
            base = labeled(prime_base(settings, engine, cache))
            results += run_arm(arm, settings, engine, rounds, base, args)
    base_rate, base_iv = rate(list(base.values()))
    info = machine("torch", "transformers", "peft")
    conditions = [
        f"{'SmolLM2-135M-Instruct (embedded)' if args.model == 'embedded' else args.model}: "
        f"{defaults.model.dtype}, {defaults.model.device}, "
        f"torch threads {info.get('torch_threads')}; one engine shared by every arm",
        f"{args.rounds} rounds × {args.prompts} fresh bundled-task prompts (seed {args.seed}), "
        f"the same in every arm; n = {args.n} candidates, max_tokens {args.max_tokens}, serve "
        f"batch {args.batch_size}; self-cascade: fast judge, {args.votes} votes per stage "
        "(the paper's n = 8, v = 5 stay the production defaults)",
        f"held-out: {len(items)} labeled problems of the same generator, none among the "
        f"prompts; base pass@1 {base_rate:.3f} [{base_iv[0]:.3f}, {base_iv[1]:.3f}]; greedy, "
        f"max_tokens {args.max_tokens}; intervals: 95% bootstrap (10,000 resamples), paired "
        "for every change",
        "training per round: train.lora defaults (r 16, 2 epochs, batch 8, lr 2e-4); "
        "init base = a fresh adapter on every accepted sample so far, init active = the "
        "serving adapter trained on the new samples only; gate: train.gate defaults "
        "(paired lower bound ≥ margin 0.02 at 95%)",
        f"arms: {', '.join(arms)}; self-floor pauses below precision {args.floor} on "
        f"{args.verifier_items} labeled problems × {args.n} candidates",
    ]
    print(f"\nbase model: pass@1 {base_rate:.3f} on {len(items)} held-out problems")
    for x in results:
        print(describe(x))
    print(f"\n{time.monotonic() - t0:.0f}s in all")
    write_result(
        args,
        "loop",
        info,
        started_at,
        {"base": {"pass1": base_rate, "interval": base_iv}, "rounds": [asdict(x) for x in results]},
        rows(results, base_rate),
        conditions,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
