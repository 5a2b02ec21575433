"""Bounded checks: a producer's regex can cost a failed check, never a wedged worker.

A prompt's check spec comes from whoever produced the prompt. Its pattern runs with a time
bound on every search (``REGEX_TIMEOUT_S``), and, since the bound covers searching but not
compiling, a pattern whose compiled form would be huge (the ``regex`` package expands a
counted repeat of a literal: ``((?:a{1000}){1000}){1000}`` is a billion characters) or
nested past the parser's stack is refused before it is compiled. Both are a failed check
whose detail says why; the partition goes on. Checked at every place a producer's pattern
is compiled or run: the checker stage, the held-out set's items and graders, and a real
verify worker on the embedded broker.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from daemon.engines.transformers_engine import TransformersEngine
from daemon.operating.config import Settings
from daemon.verifying import graders
from daemon.verifying.checkers import run_tool_stage
from daemon.verifying.graders import LabeledItem, LabeledSetError, grade, load_labeled
from daemon.verifying.sandbox import SandboxConfig
from daemon.verifying.worker import VerifyWorker
from streams.connection import KafkaSettings
from streams.producer import Producer
from streams.schemas import CandidatesMessage, CheckSpec, VerdictMessage
from tests.conftest import ROOT, candidates_message, committed_total, read_topic, wait_for

#: Compiles, on a ``regex`` that expands it, to half a million units (~150 MB): refused.
EXPANDS = r"(?:a{500}){1000}"
#: Would compile to a billion: more memory than the worker has.
BOMB = r"((?:a{1000}){1000}){1000}"
NESTED = "(?:" * 300 + "a" + ")" * 300
#: Backtracks for longer than the universe is old on a run of a's and a bang.
CATASTROPHIC = r"(a|aa)+$"
SANDBOX = SandboxConfig()


def _checker(pattern: str, answer: str) -> tuple[bool, str]:
    v = run_tool_stage("checker", CheckSpec(checker="regex", answer=pattern), answer, SANDBOX)
    return v.passed, v.detail


# In this process only patterns that an unbounded compile survives (EXPANDS takes ~150 MB
# there); the bombs run in a child with bounded memory below.
@pytest.mark.parametrize("pattern", [EXPANDS, NESTED])
def test_a_pattern_too_costly_to_compile_is_refused_before_compiling(
    pattern: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    compiled: list[str] = []
    real = graders.regex.compile
    monkeypatch.setattr(
        graders.regex, "compile", lambda p, *a, **k: compiled.append(p) or real(p, *a, **k)
    )
    passed, detail = _checker(pattern, "aaaa")
    assert not passed and "refused" in detail, detail
    with pytest.raises(ValidationError, match="regex answer refused"):
        LabeledItem(id="x", question="q", answer=pattern, grader="regex")
    assert pattern not in compiled  # refused before compiling, not after


def test_honest_patterns_still_compile_and_match() -> None:
    for pattern, text in [
        (r"^\s*x\s*=\s*4\s*$", "x = 4"),
        (r"(?<![\d.,])1,?234(?![\d.,])", "It is 1,234"),
        (r"\d{1,3}(?:,\d{3})*\s*(?:km|kilomet(?:er|re)s?)\b", "12,000 km"),
        (r".{0,200}done", "all done"),
        (r"[{}]{2}", "{}"),
    ]:
        assert graders.pattern_cost(pattern) is None, pattern
        assert _checker(pattern, text)[0], pattern


def test_a_compile_bomb_cannot_exhaust_the_worker_memory() -> None:
    """In a child with 2 GiB of address space (so a regression fails here instead of
    taking the machine's memory): the bomb is a failed check that says why, quickly."""
    code = textwrap.dedent(
        f"""
        import json, resource
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        import regex
        from daemon.verifying.checkers import run_tool_stage
        from daemon.verifying.sandbox import SandboxConfig
        from streams.schemas import CheckSpec
        compiled = []
        real = regex.compile
        regex.compile = lambda p, *a, **k: compiled.append(p) or real(p, *a, **k)
        out = []
        for pattern in ({BOMB!r}, "a{{4294967294}}"):
            v = run_tool_stage("checker", CheckSpec(checker="regex", answer=pattern), "aaa",
                               SandboxConfig())
            out.append([v.passed, v.detail, pattern in compiled])
        print(json.dumps(out))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for passed, detail, was_compiled in json.loads(out.stdout.strip().splitlines()[-1]):
        assert not passed and "refused" in detail and "MemoryError" not in detail, detail
        assert not was_compiled  # refused before compiling, not after


def test_a_catastrophic_search_is_a_failed_grade_within_its_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The held-out grader and the checker: the search gives up at the bound, no match."""
    monkeypatch.setattr(graders, "REGEX_TIMEOUT_S", 0.2)
    real = graders.regex_search
    ended_by_the_bound: list[str] = []

    def bounded(p: str, t: str, timeout_s: float = 0.2) -> bool:
        try:
            return real(p, t, 0.2)
        except TimeoutError:
            ended_by_the_bound.append(p)
            raise

    monkeypatch.setattr(graders, "regex_search", bounded)
    item = LabeledItem(id="x", question="q", answer=CATASTROPHIC, grader="regex")
    assert grade(item, "a" * 60 + "!") is False
    assert ended_by_the_bound == [CATASTROPHIC]  # the time bound ended it, not a match
    assert grade(item, "aaaa") is True


def test_a_heldout_file_with_a_bomb_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "heldout.jsonl"
    good = {"id": "a", "question": "q", "answer": "x", "grader": "exact"}
    bad = {"id": "b", "question": "q", "answer": EXPANDS, "grader": "regex"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(LabeledSetError, match="refused") as info:
        load_labeled(path)
    assert info.value.line == 2


# ------------------------------------------------------------- end to end: the worker
def _produce(kafka: KafkaSettings, topic: str, msgs: list[CandidatesMessage]) -> None:
    p = Producer(kafka)
    for m in msgs:  # one partition: the bad checks come first, the others after them
        p.send(topic, m, key=m.id, partition=0)
    p.flush()
    p.close()


def test_a_pathological_check_fails_and_its_partition_goes_on(
    kafka: KafkaSettings, topics, yes_model_dir: Path, tmp_path: Path
) -> None:
    """A real verify worker on the embedded broker: a prompt whose regex check would
    compile to half a million units, one whose search backtracks forever, then ordinary
    prompts on the same partition. The two fail at the checker and say why; every later
    prompt is checked and judged; nothing is dead-lettered."""
    q = "What is 12 + 7?"
    msgs = [
        candidates_message("bomb", q, ["aaaa"], check=CheckSpec(checker="regex", answer=EXPANDS)),
        candidates_message(
            "slow", q, ["a" * 60 + "!"], check=CheckSpec(checker="regex", answer=CATASTROPHIC)
        ),
        *[
            candidates_message(
                f"after{i}", q, ["19"], check=CheckSpec(checker="regex", answer=r"^\s*19\s*$")
            )
            for i in range(3)
        ],
    ]
    _produce(kafka, topics.candidates, msgs)
    settings = Settings(
        data_dir=tmp_path,
        kafka={**kafka.model_dump(), "batch_size": 2},
        topics=topics.model_dump(),
        model={"path": str(yes_model_dir)},
        verify={
            "stages": ["checker", "cycle", "factuality", "correctness"],
            "votes": 1,
            "judge_max_tokens": 8,
            "infer_max_tokens": 8,
            "seed": 0,
            "group_id": f"verify-{topics.candidates}",
        },
    )
    worker = VerifyWorker(settings, TransformersEngine(yes_model_dir))
    t = threading.Thread(target=worker.run, kwargs={"handle_signals": False}, daemon=True)
    t.start()
    try:
        wait_for(
            lambda: committed_total(kafka, settings.verify.group_id, topics.candidates) == 5,
            180,
            what="all five prompts committed",
        )
    finally:
        worker.stop()
        t.join(30)
    verdicts = {
        v.id: v
        for v in (
            VerdictMessage.model_validate_json(r.value) for r in read_topic(kafka, topics.verdicts)
        )
    }
    assert sorted(verdicts) == sorted(m.id for m in msgs)
    bomb = verdicts["bomb"].outcomes[0]
    assert bomb.rejected_at == "checker" and "refused" in bomb.stages[0].calls[0].output
    slow = verdicts["slow"].outcomes[0]
    assert slow.rejected_at == "checker" and "ran past" in slow.stages[0].calls[0].output
    for i in range(3):
        [c] = verdicts[f"after{i}"].outcomes
        assert c.accepted, c
        assert [s.stage for s in c.stages] == ["checker", "cycle", "factuality", "correctness"]
        assert any(call.kind == "vote" for call in c.calls)  # judged, not only checked
    assert read_topic(kafka, topics.dlq(topics.candidates)) == []
