"""One markdown table of every benchmark's paths against their raw baselines: bench/RESULTS.md.

``make bench`` runs each benchmark with ``--json bench/results/<name>.json`` (the shape of
``bench.common.result_record``), then this module. The table is generated, not typed, so the
numbers committed with a change that moves performance are the ones the benchmarks printed,
with the machine they ran on beside them.

A missing or malformed result fails the report with the file's name and what is wrong: a
table quietly short of a benchmark would read as "nothing to report" for that path.

    PYTHONPATH=. .venv/bin/python -m bench.report --results bench/results --out bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.common import BENCHMARKS, ResultError, check_record, write_text_atomic

DEFAULT_RESULTS = Path("bench/results")
DEFAULT_OUT = Path("bench/RESULTS.md")
# Set per run by a benchmark (``torch.set_num_threads``), not a property of the machine:
# results that differ only here were measured on the same machine.
RUN_KEYS = frozenset({"torch_threads"})
# How the machine line names what ``bench.common.machine()`` reports, in this order;
# keys not listed here follow under their own names.
MACHINE_LABELS = {
    "cpu_model": "CPU",
    "processor": "arch",
    "nproc": "nproc",
    "platform": "platform",
    "python": "Python",
    "torch": "torch",
    "transformers": "transformers",
    "peft": "peft",
    "kafka_python": "kafka-python",
}


# ---------------------------------------------------------------------- reading
def load_result(path: Path, benchmark: str) -> dict[str, Any]:
    """One benchmark's record, checked; ``ResultError`` says which file and what is wrong."""
    if not path.is_file():
        raise ResultError(
            f"{path}: missing — `make bench` writes it (python -m bench.{benchmark} --json {path})"
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(f"{path}: not a readable JSON result ({exc})") from exc
    check_record(record, str(path))
    if record["benchmark"] != benchmark:
        raise ResultError(
            f"{path}: holds benchmark {record['benchmark']!r}, expected {benchmark!r}"
        )
    return record


def load_results(results_dir: Path, benchmarks: Sequence[str] = BENCHMARKS) -> list[dict[str, Any]]:
    """Every benchmark's record from ``results_dir/<name>.json``, in ``benchmarks``' order."""
    if not benchmarks:
        raise ResultError("no benchmarks to report")
    return [load_result(results_dir / f"{name}.json", name) for name in benchmarks]


# --------------------------------------------------------------------- machines
def identity(info: Mapping[str, Any]) -> dict[str, Any]:
    """What names the machine, without the per-run settings (``RUN_KEYS``)."""
    return {k: v for k, v in info.items() if k not in RUN_KEYS}


def machine_conflicts(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Keys two records report differently. A key only some report (streams imports no
    torch) is no conflict: it was simply not asked there."""
    seen: dict[str, Any] = {}
    conflicts: list[str] = []
    for r in records:
        for k, v in identity(r["machine"]).items():
            if k in seen and seen[k] != v and k not in conflicts:
                conflicts.append(k)
            seen.setdefault(k, v)
    return conflicts


def merged_machine(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in records:
        for k, v in identity(r["machine"]).items():
            out.setdefault(k, v)
    return out


def machine_line(info: Mapping[str, Any]) -> str:
    keys = [k for k in MACHINE_LABELS if k in info] + [k for k in info if k not in MACHINE_LABELS]
    return ", ".join(
        f"{MACHINE_LABELS.get(k, k)} {info[k]}" for k in keys if info[k] not in (None, "")
    )


# ---------------------------------------------------------------------- writing
def fmt(x: float) -> str:
    """Three or so significant digits: 23,159 msgs/s, 57.5 tokens/s, 2.00 calls."""
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def verdict(row: Mapping[str, Any]) -> str:
    if row["target"] is None:
        return "–"
    return "met" if row["ratio"] >= row["target"] else "**missed**"


def render(records: Sequence[Mapping[str, Any]], results_dir: Path = DEFAULT_RESULTS) -> str:
    """The whole markdown file: how it was made, where it ran, the table, the conditions."""
    conflicts = machine_conflicts(records)
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `make bench`: every benchmark in `bench/` wrote `{results_dir}/<name>.json`, "
        "then `python -m bench.report` wrote this file. Regenerate it rather than edit it.",
        "Each row is a path of the project against its raw baseline, both measured in the same "
        "run; ratio = selfdistill ÷ baseline, met = ratio ≥ target.",
        "",
    ]
    labels: dict[int, str] = {}
    if conflicts:
        distinct: list[dict[str, Any]] = []
        for i, r in enumerate(records):
            ident = identity(r["machine"])
            if ident not in distinct:
                distinct.append(ident)
            labels[i] = chr(ord("A") + distinct.index(ident))
        lines.append(
            f"**The benchmarks ran on different machines** (they differ in "
            f"{', '.join(conflicts)}); each row names its machine:"
        )
        lines.append("")
        lines += [
            f"- machine {chr(ord('A') + j)}: {machine_line(m)}" for j, m in enumerate(distinct)
        ]
    else:
        lines.append(f"Machine: {machine_line(merged_machine(records))}")
    lines.append("")

    head = ["benchmark", "path", "baseline", "selfdistill", "unit", "ratio", "target", "met?"]
    if conflicts:
        head.append("machine")
    head.append("notes")
    align = ["---", "---", "---", "---:", "---", "---:", "---:", "---"]
    align += ["---"] * (len(head) - len(align))
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    targets = met = 0
    for i, r in enumerate(records):
        for row in r["rows"]:
            if row["target"] is not None:
                targets += 1
                met += row["ratio"] >= row["target"]
            cells = [
                r["benchmark"],
                row["path"],
                f"{row['baseline_name']}: {fmt(row['baseline'])}",
                fmt(row["project"]),
                row["unit"],
                f"{row['ratio']:.2f}",
                "–" if row["target"] is None else f"≥ {row['target']}",
                verdict(row),
            ]
            if conflicts:
                cells.append(labels[i])
            cells.append(row["notes"])
            lines.append("| " + " | ".join(cell(str(c)) for c in cells) + " |")
    lines += ["", f"Targets met: {met} of {targets}.", "", "## Conditions", ""]
    for r in records:
        lines.append(
            f"- **{r['benchmark']}** (started {r['started_at']}, ran {r['duration_s']:.0f} s)"
        )
        lines += [f"  - {c}" for c in r["conditions"]]
    return "\n".join(lines) + "\n"


def write_report(
    results_dir: Path = DEFAULT_RESULTS,
    out: Path = DEFAULT_OUT,
    benchmarks: Sequence[str] = BENCHMARKS,
) -> str:
    """Read every result, then replace ``out`` in one step (temp file + ``os.replace``)."""
    text = render(load_results(results_dir, benchmarks), results_dir)
    write_text_atomic(out, text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        help="where the benchmarks wrote <name>.json (default: %(default)s)",
    )
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="the markdown file (default: %(default)s)"
    )
    ap.add_argument(
        "--benchmarks",
        nargs="+",
        default=list(BENCHMARKS),
        metavar="NAME",
        help="the results to expect, in table order (default: %(default)s)",
    )
    args = ap.parse_args(argv)
    try:
        write_report(args.results, args.out, args.benchmarks)
    except ResultError as exc:
        print(f"bench.report: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
