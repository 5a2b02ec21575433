"""Is the verifier any good? Measured on the real embedded model (SmolLM2-135M-Instruct).

1. The self-cascade's precision / recall / AUC on the bundled labeled held-out set, and the
   checker's on the very same candidates (the bundled checks must agree with the reference
   answers: precision and recall 1).
2. The checker-verified loop: the bundled prompts answered with candidates, the checker
   alone verifying them into a real store, a LoRA adapter trained on what it accepted, and
   the held-out exact match (labeled_pass@1) of the base model vs that adapter.

Nothing here asserts that a number is good: a 135M model's verdicts and a few training steps
are what they are. The numbers are printed (they show in the test log, not only with -s).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.gate import LABELED
from daemon.engines.transformers_engine import TransformersEngine
from daemon.learning.tasks import bundled_heldout, generate_items, seed_prompts
from daemon.learning.train import run_cycle
from daemon.operating.config import Settings
from daemon.verifying.cascade import Cascade, CascadeConfig, CascadeInput
from daemon.verifying.graders import grade, load_labeled
from daemon.verifying.quality import evaluate_verifier, sample_candidates
from daemon.verifying.store import Store
from streams.schemas import CandidatesMessage, Sample, SamplingParams

N = 2  # candidates per held-out item
ITEMS = 20  # of the bundled 40: the first half keeps this test near a minute and a half
LOOP_PROMPTS = 24
LOOP_N = 4
MAX_TOKENS = 24


def _say(capsys: pytest.CaptureFixture[str], *lines: str) -> None:
    with capsys.disabled():
        print()
        for line in lines:
            print(f"    {line}")


@pytest.mark.slow
@pytest.mark.usefixtures("all_cores")
def test_self_cascade_vs_checker_on_the_bundled_heldout_set(
    embedded_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    items = load_labeled(bundled_heldout())[:ITEMS]
    engine = TransformersEngine(embedded_model_dir)
    try:
        candidates = sample_candidates(
            engine, items, N, temperature=0.7, top_p=0.95, max_tokens=MAX_TOKENS, seed=0
        )
        judges = CascadeConfig(votes=1, fast_judge=True, infer_max_tokens=MAX_TOKENS, seed=0)
        self_report = evaluate_verifier(engine, items, judges, candidates, heldout="bundled")
        checker = evaluate_verifier(
            engine, items, CascadeConfig(stages=["checker"]), candidates, heldout="bundled"
        )
    finally:
        engine.close()

    r = self_report
    assert r.items == len(items) == ITEMS and r.candidates == ITEMS * N
    assert r.correct == checker.correct and r.base_rate == checker.base_rate
    assert r.accepted_correct <= min(r.accepted, r.correct)
    if r.accepted:
        assert r.precision == pytest.approx(r.accepted_correct / r.accepted)
    assert r.auc is None or 0.0 <= r.auc <= 1.0
    assert r.judge_calls > 0 and checker.judge_calls == 0
    # The bundled checks accept only right answers; a right final answer whose stated
    # reasoning is false ("6 + 10 = 16" on the way) is rejected, so recall may fall short.
    if checker.accepted:
        assert checker.precision == 1.0
    assert checker.accepted <= checker.correct

    per_stage = ", ".join(
        f"{s.stage} {_f(s.precision)}/{_f(s.recall)}/{_f(s.auc)} ({s.reached} reached)"
        for s in r.stages
    )
    _say(
        capsys,
        f"SmolLM2 on the bundled held-out set: {r.items} items x {N} candidates, "
        f"{r.correct} correct (base rate {_f(r.base_rate)})",
        f"self-cascade (v=1, fast judge): accepted {r.accepted}, precision {_f(r.precision)}, "
        f"recall {_f(r.recall)}, AUC {_f(r.auc)}, {r.judge_calls} judge calls, "
        f"{r.judge_tokens} tokens",
        f"  per stage precision/recall/AUC: {per_stage}",
        f"checker: accepted {checker.accepted}, precision {_f(checker.precision)}, "
        f"recall {_f(checker.recall)}, 0 judge calls",
    )


@pytest.mark.slow
@pytest.mark.usefixtures("all_cores")
def test_the_checker_verified_loop_base_vs_adapter_exact_match(
    embedded_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        model={"path": str(embedded_model_dir)},
        engine={"torch_threads": 2},
        store={"heldout_fraction": 0.0},
        train={
            "min_new_samples": 1,
            "lora": {"r": 8, "alpha": 16, "max_steps": 8, "batch_size": 8, "max_length": 128},
            "eval": {"max_tokens": MAX_TOKENS, "heldout_max": 0},
            # No broker here: the decision is recorded, nothing is published.
            "gate": {"margin": 0.025, "auto_promote": False},
        },
        metrics={"enabled": False},
    )
    prompts = seed_prompts(LOOP_PROMPTS, 0)
    truth = {it.id: it for it in generate_items(LOOP_PROMPTS, 0)}  # same ids, with answers
    engine = TransformersEngine(embedded_model_dir)
    try:
        texts = sample_candidates(
            engine,
            list(truth.values()),
            LOOP_N,
            temperature=0.7,
            top_p=0.95,
            max_tokens=MAX_TOKENS,
            seed=0,
        )
        checker = CascadeConfig(stages=["checker"], policy="first-valid")
        inputs = [
            CascadeInput(p.id, p.prompt or "", cands, p.domain, p.check)
            for p, cands in zip(prompts, texts, strict=True)
        ]
        outcomes = Cascade(engine, checker).run(inputs)
        with Store.open(settings.store, settings.data_dir) as store:
            for p, cands, outcome in zip(prompts, texts, outcomes, strict=True):
                message = CandidatesMessage(
                    id=p.id,
                    messages=p.chat(),
                    domain=p.domain,
                    check=p.check,
                    samples=[Sample(text=t, completion_tokens=0) for t in cands],
                    sampling=SamplingParams(n=LOOP_N, temperature=0.7, max_tokens=MAX_TOKENS),
                )
                store.record(outcome, message, policy="first-valid")
            accepted = store.accepted_samples("train")
            groups = store.ranking_groups()
        report = run_cycle(settings, engine=engine, force=True)
    finally:
        engine.close()

    correct = sum(
        grade(truth[p.id], c) for p, cands in zip(prompts, texts, strict=True) for c in cands
    )
    # Every sample the checker let in is right by the reference grader (an independent path).
    assert accepted and all(
        grade(truth[row["prompt_id"]], row["messages"][-1]["content"]) for row in accepted
    )
    assert len(accepted) == sum(1 for o in outcomes if o.accepted)
    assert all(g["passed"] and g["failed"] and g["source"] == "tool" for g in groups)
    assert report.version is not None and report.trained_on == len(accepted)
    base, adapter = report.active[LABELED], report.candidate[LABELED]
    assert base is not None and adapter is not None
    _say(
        capsys,
        f"checker-verified loop on SmolLM2: {LOOP_PROMPTS} bundled prompts x {LOOP_N} "
        f"candidates, {correct} of {LOOP_PROMPTS * LOOP_N} correct; {len(accepted)} accepted "
        f"(all correct), {len(groups)} ranking groups",
        f"trained {report.version} on {report.trained_on} samples "
        f"(loss {_f(report.training.get('final_loss'))})",
        f"held-out exact match (labeled_pass@1, 40 bundled items): base {_f(base)} vs adapter "
        f"{_f(adapter)} -> gate: {report.outcome} ({report.reason})",
    )


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"
