"""What a tool-stage vote costs: the sandboxed execution stage and the checker stage.

An operator who turns on the ``execution`` stage pays, per vote, for the layers of
``daemon.verifying.sandbox.run_tests`` (a launcher, an init in new namespaces, and two harnesses,
the tests' and the solution's, each with dropped privileges, measured isolation, rlimits and an
audit hook: four processes and three interpreter starts). This
benchmark says how much that is against the least anyone would do to run a candidate's tests,
and what the ``checker`` stage costs against the grader it wraps. Three measurements, each
path in the same run as its baseline:

* **execution** — ``run_tests(code, tests, SandboxConfig())`` of a small correct function and
  a few asserts, against the raw baseline ``subprocess.run([sys.executable, "-I", file])`` of
  the same solution followed by the same tests in one file in a fresh temporary directory,
  output captured, with the same timeout. Runs/s over ``--runs`` runs per path per repeat;
  the paths alternate in order between repeats, after one warm-up run each. Every run's
  pass/fail is compared between the paths, and a wrong solution is run once on each to show
  the baseline really runs the tests. Informational (no target): the sandbox's layers cost
  process starts, and the ratio says how much.
* **timeout** — a candidate that never ends (``while True: pass``) under
  ``SandboxConfig(timeout_s=...)``: the wall time of the failed vote against the configured
  limit (what is over it is the kill and the reap), with ``subprocess.run(timeout=...)`` of
  the same candidate in the notes.
* **checker** — ``run_tool_stage("checker", CheckSpec(checker="arithmetic", ...))`` against
  ``daemon.verifying.graders.grade`` of an equivalent numeric ``LabeledItem``, on the same answer.
  Informational: the checker computes the reference from the expression on every call (that
  is its point: the prompt carries no answer to trust), the grader is handed it.

The ratio of each row is the median of the per-repeat ratios (pairs measured side by side
stay together on a busy machine).

    PYTHONPATH=. .venv/bin/python -m bench.sandbox --json bench/results/sandbox.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import log, machine, now, result_row, write_result
from daemon.verifying.checkers import evaluate_arithmetic, run_tool_stage
from daemon.verifying.graders import LabeledItem, grade
from daemon.verifying.sandbox import SandboxConfig, SandboxResult, run_tests
from streams.schemas import CheckSpec

# The tests use the solution's names directly: in the sandbox they run in the solution's
# namespace, in the baseline they follow it in the same file. Byte-identical on both paths.
SOLUTION = '''def median(values):
    """The median of a non-empty list of numbers."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2
'''
WRONG_SOLUTION = "def median(values):\n    return sorted(values)[len(values) // 2]\n"
TESTS = """assert median([3]) == 3
assert median([3, 1, 2]) == 2
assert median([4, 1, 3, 2]) == 2.5
assert median([-1.5, 0, 10, 7, 7]) == 7
"""
LOOP_SOLUTION = "while True:\n    pass\n"
EXPRESSION = "(17 + 25) * 3 - 6"
REFERENCE = "120"
ANSWER = (
    "<think>17 plus 25 is 42; 42 times 3 is 126; 126 minus 6 is 120.</think>\n"
    "First add: 17 + 25 = 42. Then multiply: 42 * 3 = 126. Finally subtract 6.\n"
    "The answer is 120."
)
PATHS = ("raw", "selfdistill")


def in_order(rep: int) -> tuple[str, ...]:
    """The paths in repeat ``rep``'s order: alternating, so neither path always goes first."""
    return PATHS if rep % 2 == 0 else PATHS[::-1]


def paired(samples: dict[str, list[float]]) -> tuple[float, float, dict[str, Any]]:
    """Median rate of each path, and the ratio fields: the median of the per-repeat ratios
    (pairs measured side by side stay together) and the ratios themselves."""
    ratios = [s / r for s, r in zip(samples["selfdistill"], samples["raw"], strict=True)]
    return (
        statistics.median(samples["raw"]),
        statistics.median(samples["selfdistill"]),
        {
            "ratio": round(statistics.median(ratios), 3),
            "per_repeat_ratios": [round(r, 3) for r in ratios],
        },
    )


# ------------------------------------------------------------------ one run each
def run_raw(code: str, tests: str, timeout_s: float) -> tuple[bool, float]:
    """Pass/fail and seconds of the least one does: solution + tests, one ``python -I``."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-raw-") as tmp:
        script = Path(tmp) / "run.py"
        script.write_text(code + "\n" + tests, encoding="utf-8")
        try:
            done = subprocess.run(
                [sys.executable, "-I", str(script)],
                cwd=tmp,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
            passed = done.returncode == 0
        except subprocess.TimeoutExpired:
            passed = False
    return passed, time.perf_counter() - t0


def run_sandboxed(code: str, tests: str, config: SandboxConfig) -> tuple[SandboxResult, float]:
    """The execution stage's sandbox, timed from the caller's side."""
    t0 = time.perf_counter()
    result = run_tests(code, tests, config)
    return result, time.perf_counter() - t0


# ---------------------------------------------------------------------- execution
def bench_execution(runs: int, repeats: int, config: SandboxConfig) -> dict[str, Any]:
    """Runs/s of both paths over ``runs`` runs per repeat, and whether they always agreed."""
    layers: dict[tuple[str, ...], int] = {}
    reasons: dict[str, int] = {}
    verdicts: dict[str, list[bool]] = {p: [] for p in PATHS}

    def sandboxed() -> float:
        result, secs = run_sandboxed(SOLUTION, TESTS, config)
        layers[result.layers] = layers.get(result.layers, 0) + 1
        reasons[result.reason] = reasons.get(result.reason, 0) + 1
        verdicts["selfdistill"].append(result.passed)
        return secs

    def raw() -> float:
        passed, secs = run_raw(SOLUTION, TESTS, config.timeout_s)
        verdicts["raw"].append(passed)
        return secs

    one: dict[str, Callable[[], float]] = {"raw": raw, "selfdistill": sandboxed}
    # Warm-up (page cache, imports of the worker's side), then forget what it saw.
    for path in PATHS:
        one[path]()
    layers.clear()
    reasons.clear()
    for v in verdicts.values():
        v.clear()

    samples: dict[str, list[float]] = {p: [] for p in PATHS}
    for rep in range(repeats):
        for path in in_order(rep):
            secs = sum(one[path]() for _ in range(runs))
            samples[path].append(runs / secs)
            log(
                f"  rep {rep + 1}/{repeats} execution {path:11s} {runs / secs:7.2f} runs/s "
                f"({1000 * secs / runs:.1f} ms/run)"
            )

    wrong_sandbox = run_tests(WRONG_SOLUTION, TESTS, config)
    wrong_raw, _ = run_raw(WRONG_SOLUTION, TESTS, config.timeout_s)
    raw_rate, layer_rate, ratio_fields = paired(samples)
    return {
        "runs_per_repeat": runs,
        "raw_runs_per_s": round(raw_rate, 2),
        "selfdistill_runs_per_s": round(layer_rate, 2),
        "raw_ms_per_run": round(1000 / raw_rate, 1),
        "selfdistill_ms_per_run": round(1000 / layer_rate, 1),
        **ratio_fields,
        "samples": {p: [round(x, 2) for x in xs] for p, xs in samples.items()},
        "agreed": verdicts["raw"] == verdicts["selfdistill"],
        "passed": {p: sum(v) for p, v in verdicts.items()},
        "runs": len(verdicts["raw"]),
        "reasons": reasons,
        "layers": [{"layers": list(k), "runs": n} for k, n in layers.items()],
        "wrong_solution": {
            "selfdistill_passed": wrong_sandbox.passed,
            "selfdistill_reason": wrong_sandbox.reason,
            "raw_passed": wrong_raw,
        },
    }


# ------------------------------------------------------------------------ timeout
def bench_timeout(runs: int, timeout_s: float) -> dict[str, Any]:
    """Wall seconds of a candidate that never ends, sandboxed and raw, alternating."""
    config = SandboxConfig(timeout_s=timeout_s)
    walls: dict[str, list[float]] = {p: [] for p in PATHS}
    reasons: list[str] = []
    raw_failed = True
    for rep in range(runs):
        for path in in_order(rep):
            if path == "raw":
                passed, secs = run_raw(LOOP_SOLUTION, TESTS, timeout_s)
                raw_failed &= not passed
            else:
                result, secs = run_sandboxed(LOOP_SOLUTION, TESTS, config)
                reasons.append(result.reason)
            walls[path].append(secs)
            log(f"  run {rep + 1}/{runs} timeout {path:11s} {secs:.3f} s (limit {timeout_s} s)")
    return {
        "timeout_s": timeout_s,
        "runs": runs,
        "selfdistill_wall_s": round(statistics.median(walls["selfdistill"]), 3),
        "raw_wall_s": round(statistics.median(walls["raw"]), 3),
        "samples": {p: [round(x, 3) for x in xs] for p, xs in walls.items()},
        "reasons": reasons,
        "all_timeout": all(r == "timeout" for r in reasons),
        "raw_all_failed": raw_failed,
    }


# ------------------------------------------------------------------------ checker
def bench_checker(checks: int, repeats: int) -> dict[str, Any]:
    """Checks/s of the arithmetic checker stage and of the numeric grader, same answer."""
    spec = CheckSpec(checker="arithmetic", expression=EXPRESSION)
    item = LabeledItem(id="bench", question=EXPRESSION, answer=REFERENCE, grader="numeric")
    config = SandboxConfig()
    verdicts: dict[str, set[bool]] = {p: set() for p in PATHS}

    def raw() -> float:
        seen = verdicts["raw"]
        t0 = time.perf_counter()
        for _ in range(checks):
            seen.add(grade(item, ANSWER))
        return time.perf_counter() - t0

    def stage() -> float:
        seen = verdicts["selfdistill"]
        t0 = time.perf_counter()
        for _ in range(checks):
            seen.add(run_tool_stage("checker", spec, ANSWER, config).passed)
        return time.perf_counter() - t0

    def evaluate() -> float:
        t0 = time.perf_counter()
        for _ in range(checks):
            evaluate_arithmetic(EXPRESSION)
        return time.perf_counter() - t0

    one: dict[str, Callable[[], float]] = {"raw": raw, "selfdistill": stage}
    samples: dict[str, list[float]] = {p: [] for p in PATHS}
    eval_us: list[float] = []  # the part of the stage the grader has no counterpart for
    for rep in range(repeats):
        for path in in_order(rep):
            secs = one[path]()
            samples[path].append(checks / secs)
            log(f"  rep {rep + 1}/{repeats} checker   {path:11s} {checks / secs:>10,.0f} checks/s")
        eval_us.append(1e6 * evaluate() / checks)
    raw_rate, stage_rate, ratio_fields = paired(samples)
    return {
        "checks_per_repeat": checks,
        "raw_checks_per_s": round(raw_rate, 1),
        "selfdistill_checks_per_s": round(stage_rate, 1),
        "raw_us_per_check": round(1e6 / raw_rate, 1),
        "selfdistill_us_per_check": round(1e6 / stage_rate, 1),
        "evaluate_arithmetic_us": round(statistics.median(eval_us), 1),
        **ratio_fields,
        "samples": {p: [round(x, 1) for x in xs] for p, xs in samples.items()},
        # Every call on both paths passed (a set of one True each).
        "all_passed": verdicts["raw"] == {True} and verdicts["selfdistill"] == {True},
    }


# ----------------------------------------------------------------------- report
def layers_text(execution: dict[str, Any]) -> str:
    seen = execution["layers"]
    if len(seen) == 1:
        return ", ".join(seen[0]["layers"]) or "none"
    return "; ".join(f"{', '.join(s['layers']) or 'none'} ({s['runs']} runs)" for s in seen)


def report_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The three measurements as bench.report's rows (``bench.common.result_row``)."""
    ex, to, ck = results["execution"], results["timeout"], results["checker"]
    wrong = ex["wrong_solution"]
    wrong_ok = not wrong["selfdistill_passed"] and not wrong["raw_passed"]
    return [
        result_row(
            "execution stage: sandboxed run_tests (all layers)",
            "runs/s",
            "subprocess.run([sys.executable, '-I', file]) of the same solution+tests "
            "in a temp dir, with a timeout",
            ex["raw_runs_per_s"],
            ex["selfdistill_runs_per_s"],
            ratio=ex["ratio"],
            target=None,
            notes=(
                f"ratio: median of per-repeat ratios; {ex['selfdistill_ms_per_run']:.1f} vs "
                f"{ex['raw_ms_per_run']:.1f} ms/run; same pass/fail on every run: "
                f"{'yes' if ex['agreed'] else 'NO'} ({ex['passed']['selfdistill']} of "
                f"{ex['runs']} passed), a wrong solution failed on both: "
                f"{'yes' if wrong_ok else 'NO'}; layers: {layers_text(ex)}"
            ),
        ),
        result_row(
            "execution stage: wall time of a never-ending candidate (sandboxed run_tests)",
            "s",
            "configured SandboxConfig.timeout_s",
            to["timeout_s"],
            to["selfdistill_wall_s"],
            target=None,
            notes=(
                f"lower is better; the ratio over 1.00 is the kill and reap; reason 'timeout' on every "
                f"run: {'yes' if to['all_timeout'] else 'NO'}; raw subprocess.run"
                f"(timeout={to['timeout_s']:g}) of the same candidate: {to['raw_wall_s']:.3f} s"
            ),
        ),
        result_row(
            "checker stage: run_tool_stage('checker', arithmetic)",
            "checks/s",
            "daemon.verifying.graders.grade of the equivalent numeric LabeledItem",
            ck["raw_checks_per_s"],
            ck["selfdistill_checks_per_s"],
            ratio=ck["ratio"],
            target=None,
            notes=(
                f"informational: the checker computes {EXPRESSION} from the prompt's expression "
                f"on every call, the grader is handed {REFERENCE}; "
                f"{ck['selfdistill_us_per_check']:.1f} vs {ck['raw_us_per_check']:.1f} µs/check, "
                f"of which evaluate_arithmetic alone {ck['evaluate_arithmetic_us']:.1f} µs; "
                f"every check passed on both paths: {'yes' if ck['all_passed'] else 'NO'}; "
                "ratio: median of per-repeat ratios"
            ),
        ),
    ]


def report_conditions(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    config = SandboxConfig()
    ex, to = results["execution"], results["timeout"]
    uid = os.geteuid()
    who = f"root, candidate as uid {config.run_as_uid}" if uid == 0 else f"uid {uid}"
    return [
        f"execution: {ex['runs_per_repeat']} runs per path per repeat of a "
        f"{len(SOLUTION.splitlines())}-line function and {len(TESTS.splitlines())} asserts, "
        f"median of {args.repeats} repeat(s), the order of the paths alternating, one "
        "warm-up run per path",
        f"SandboxConfig defaults: timeout {config.timeout_s:g} s, memory {config.memory_mb} MiB, "
        f"output {config.max_output_bytes} B, processes {config.max_processes}, "
        f"disk {config.disk_mb} MiB; worker {who}",
        "raw baseline: solution + tests in one file, python -I (site imported), output "
        "captured, same timeout; the sandbox starts three interpreters with -I -S (launcher, "
        "the tests' harness, the solution's harness) and forks an init between them",
        f"timeout: {to['runs']} run(s) per path of `while True: pass`, timeout_s "
        f"{to['timeout_s']:g}, medians reported",
        f"checker: {args.checks} checks per path per repeat, median of {args.repeats} "
        f"repeat(s), order alternating; expression {EXPRESSION!r}, answer of {len(ANSWER)} "
        "characters with a <think> block",
    ]


def render(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
    lines = [
        f"sandbox: machine {info['processor']}, nproc={info['nproc']}, python {info['python']}",
        "",
        "| path | baseline | selfdistill | unit | ratio |",
        "|---|---:|---:|---|---:|",
    ]
    lines += [
        f"| {r['path']} | {r['baseline']:,.3f} | {r['project']:,.3f} | {r['unit']} "
        f"| {r['ratio']:.2f} |"
        for r in rows
    ]
    lines += [""] + [f"{r['path']}: {r['notes']}" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="execution runs per path per repeat")
    ap.add_argument("--repeats", type=int, default=5, help="alternating runs; median reported")
    ap.add_argument(
        "--timeout-runs", type=int, default=3, help="runs per path of the never-ending candidate"
    )
    ap.add_argument(
        "--timeout-s", type=float, default=1.0, help="timeout_s for the never-ending candidate"
    )
    ap.add_argument("--checks", type=int, default=2000, help="checker calls per path per repeat")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if min(args.runs, args.repeats, args.timeout_runs, args.checks) < 1 or args.timeout_s <= 0:
        ap.error("--runs, --repeats, --timeout-runs, --checks and --timeout-s must be positive")

    started = now()
    info = machine()
    results = {
        "execution": bench_execution(args.runs, args.repeats, SandboxConfig()),
        "timeout": bench_timeout(args.timeout_runs, args.timeout_s),
        "checker": bench_checker(args.checks, args.repeats),
    }
    rows = report_rows(results)
    print(render(rows, info))
    write_result(args, "sandbox", info, started, results, rows, report_conditions(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
