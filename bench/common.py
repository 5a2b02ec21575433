"""What every benchmark shares: machine facts, quiet logs, stderr progress, the JSON record.

The JSON record has one shape for every benchmark (``result_record``, ``result_row``), checked
by one function (``check_record``), so that ``bench.report`` can put every benchmark's paths
into one table without knowing any benchmark's own results. The judge benches (verify,
injection) also share their arithmetic questions here, so their numbers are about the same
items.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import platform
import sys
import warnings
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kafka

from daemon.learning.atomic import write_lines

TARGET_RATIO = 0.9
# Every benchmark `make bench` runs, in its order; bench.report expects one result each.
BENCHMARKS = (
    "streams",
    "serve",
    "verify",
    "verify_paper",
    "verify_scale",
    "train",
    "sandbox",
    "injection",
    "loop",
)
RESULT_KEYS = ("benchmark", "machine", "started_at", "duration_s", "rows", "conditions")
ROW_KEYS = ("path", "unit", "baseline_name", "baseline", "project", "ratio", "target", "notes")


def cpu_model() -> str | None:
    """The CPU's marketing name: ``platform.processor()`` is only ``x86_64`` on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine(*modules: str) -> dict[str, Any]:
    """Where the numbers were measured; ``modules`` adds their versions (torch: its threads)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
    }
    for name in modules:
        mod = importlib.import_module(name)
        info[name] = mod.__version__
        if name == "torch":
            info["torch_threads"] = mod.get_num_threads()
    info["kafka_python"] = kafka.__version__
    return info


def quiet() -> None:
    """Warnings only; no progress bars or transformers chatter."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    # peft asks transformers 5 for a deprecated property when it wraps a model.
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "json"}


def now() -> datetime:
    """A benchmark's start, in UTC: the report shows when each result was measured."""
    return datetime.now(UTC)


# ------------------------------------------------------------------ the result record
class ResultError(ValueError):
    """A result record (or the file holding it) is not what ``result_record`` writes."""


def result_row(
    path: str,
    unit: str,
    baseline_name: str,
    baseline: float,
    project: float,
    *,
    target: float | None = TARGET_RATIO,
    ratio: float | None = None,
    notes: str = "",
) -> dict[str, Any]:
    """One measured path of the project against its raw baseline from the same run.

    ``ratio`` is ``project / baseline`` unless the benchmark compares otherwise (the median
    of per-repeat ratios, which keeps a drifting machine's pairs like with like); pass it
    then, so the report states the benchmark's own verdict. ``target``: the ratio must be at
    least this (None for a path without one, e.g. where lower is better: say so in notes).
    """
    if ratio is None:
        if not baseline:
            raise ResultError(f"{path}: baseline {baseline!r} gives no ratio")
        ratio = project / baseline
    row = {
        "path": path,
        "unit": unit,
        "baseline_name": baseline_name,
        "baseline": baseline,
        "project": project,
        "ratio": ratio,
        "target": target,
        "notes": notes,
    }
    check_row(row, path)
    return row


def result_record(
    benchmark: str,
    info: Mapping[str, Any],
    started_at: datetime,
    rows: Iterable[dict[str, Any]],
    conditions: Iterable[str],
    details: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The one shape every benchmark writes with ``--json``.

    ``conditions``: short human phrases (sizes, repeats, threads) the report lists under
    the table; ``details``: the benchmark's full own record (samples, per-repeat numbers),
    kept for whoever digs deeper and ignored by the report.
    """
    record = {
        "benchmark": benchmark,
        "machine": dict(info),
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((now() - started_at).total_seconds(), 1),
        "rows": list(rows),
        "conditions": list(conditions),
        "details": dict(details or {}),
    }
    check_record(record, benchmark)
    return record


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def check_row(row: Any, where: str) -> None:
    """Raise ``ResultError`` naming ``where`` and the field unless ``row`` is well formed."""
    if not isinstance(row, dict):
        raise ResultError(f"{where}: a row is {type(row).__name__}, not an object")
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise ResultError(f"{where}: row {row.get('path')!r} lacks {', '.join(missing)}")
    for key in ("path", "unit", "baseline_name"):
        if not isinstance(row[key], str) or not row[key]:
            raise ResultError(f"{where}: row {row['path']!r}: {key} must be a non-empty string")
    if not isinstance(row["notes"], str):
        raise ResultError(f"{where}: row {row['path']!r}: notes must be a string")
    for key in ("baseline", "project", "ratio"):
        if not _is_number(row[key]):
            raise ResultError(
                f"{where}: row {row['path']!r}: {key} must be a finite number, got {row[key]!r}"
            )
    if row["target"] is not None and not _is_number(row["target"]):
        raise ResultError(f"{where}: row {row['path']!r}: target must be a number or null")


def check_record(record: Any, where: str) -> None:
    """Raise ``ResultError`` naming ``where`` and the field unless ``record`` is well formed."""
    if not isinstance(record, dict):
        raise ResultError(f"{where}: the result is {type(record).__name__}, not an object")
    missing = [k for k in RESULT_KEYS if k not in record]
    if missing:
        raise ResultError(f"{where}: the result lacks {', '.join(missing)}")
    if not isinstance(record["benchmark"], str) or not record["benchmark"]:
        raise ResultError(f"{where}: benchmark must be a non-empty string")
    if not isinstance(record["machine"], dict) or not record["machine"]:
        raise ResultError(f"{where}: machine must be a non-empty object (bench.common.machine())")
    try:
        datetime.fromisoformat(record["started_at"])
    except (TypeError, ValueError):
        raise ResultError(
            f"{where}: started_at must be an ISO 8601 time, got {record['started_at']!r}"
        ) from None
    if not _is_number(record["duration_s"]):
        raise ResultError(f"{where}: duration_s must be a finite number")
    if not isinstance(record["rows"], list) or not record["rows"]:
        raise ResultError(f"{where}: rows must be a non-empty list")
    for row in record["rows"]:
        check_row(row, where)
    paths = [r["path"] for r in record["rows"]]
    if len(set(paths)) != len(paths):
        raise ResultError(f"{where}: a path appears twice in rows: {paths}")
    conditions = record["conditions"]
    if not isinstance(conditions, list) or not all(isinstance(c, str) for c in conditions):
        raise ResultError(f"{where}: conditions must be a list of strings")


def write_text_atomic(path: Path, text: str) -> None:
    """Write beside ``path`` then rename (``daemon.learning.atomic``): a reader never sees half a
    file, a crash leaves the old one (or none). ``text`` ends with a newline."""
    write_lines(path, [text.removesuffix("\n")])  # which writes a newline after each line


def write_result(
    args: Any,
    benchmark: str,
    info: Mapping[str, Any],
    started_at: datetime,
    results: Any,
    rows: Iterable[dict[str, Any]],
    conditions: Iterable[str],
) -> None:
    """``--json``: the common record, with the run's settings and raw results as details."""
    details = {"settings": settings_of(args), "target_ratio": TARGET_RATIO, "results": results}
    write_json(args.json, result_record(benchmark, info, started_at, rows, conditions, details))


def write_json(path: Path | None, record: dict[str, Any]) -> None:
    """The run's record (``result_record``) beside the printed table, for `make bench` to
    collect; NaN or infinity fail here rather than in the report."""
    if path is not None:
        write_text_atomic(path, json.dumps(record, indent=2, allow_nan=False) + "\n")


# ----------------------------------------------- arithmetic questions the judge benches share
#: (a, op, b): small questions a 135M judge can be asked about, with a right answer to state
#: or to miss (bench.verify, bench.injection).
PROBLEMS = [
    (17, "+", 25),
    (9, "*", 7),
    (84, "-", 39),
    (144, "/", 12),
    (36, "+", 48),
    (13, "*", 6),
    (100, "-", 57),
    (96, "/", 8),
    (58, "+", 67),
    (12, "*", 15),
    (73, "-", 28),
    (81, "/", 9),
]
WORDS = {"+": "plus", "-": "minus", "*": "times", "/": "divided by"}


def solve(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]


def question(a: int, op: str, b: int) -> str:
    return f"What is {a} {WORDS[op]} {b}?"
