"""bench.report: the table `make bench` commits, built from records the benchmarks' own
helper (bench.common.result_record) writes; no benchmark runs here."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.common import ResultError, machine, now, result_record, result_row, write_json
from bench.report import load_results, main, write_report

STARTED = now() - timedelta(seconds=90)
NAMES = ("streams", "train")


def records(info: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Two benchmarks as the bench modules write them: one met, one missed, one untargeted."""
    info = info or machine()
    return {
        "streams": result_record(
            "streams",
            info,
            STARTED,
            rows=[
                result_row("produce", "msgs/s", "raw KafkaProducer", 20000.0, 22000.0),
                result_row("consume", "msgs/s", "raw KafkaConsumer", 40000.0, 34000.0),
            ],
            conditions=["2000 messages per path", "median of 3 repeats"],
        ),
        "train": result_record(
            "train",
            {**info, "torch_threads": 1},
            STARTED,
            rows=[
                result_row(
                    "peak RSS",
                    "MiB",
                    "plain PEFT loop",
                    4000.0,
                    3000.0,
                    target=None,
                    notes="lower is better",
                )
            ],
            conditions=["64 conversations"],
        ),
    }


def write_all(tmp_path: Path, recs: dict[str, dict[str, Any]]) -> Path:
    results = tmp_path / "results"
    for name, rec in recs.items():
        write_json(results / f"{name}.json", rec)
    return results


def table_rows(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in rows[1:]]


def test_one_row_per_path_with_ratio_verdict_and_machine(tmp_path: Path) -> None:
    results = write_all(tmp_path, records())
    out = tmp_path / "RESULTS.md"
    assert main(["--results", str(results), "--out", str(out), "--benchmarks", *NAMES]) == 0
    text = out.read_text()
    assert "`make bench`" in text
    info = machine()
    machine_line = next(line for line in text.splitlines() if line.startswith("Machine: "))
    for value in (info["nproc"], info["python"], info["kafka_python"]):
        assert str(value) in machine_line
    assert "different machines" not in text

    rows = table_rows(text)
    assert [(r[0], r[1]) for r in rows] == [
        ("streams", "produce"),
        ("streams", "consume"),
        ("train", "peak RSS"),
    ]
    produce, consume, rss = rows
    assert produce[2:8] == ["raw KafkaProducer: 20,000", "22,000", "msgs/s", "1.10", "≥ 0.9", "met"]
    assert consume[5:8] == ["0.85", "≥ 0.9", "**missed**"]
    assert rss[5:9] == ["0.75", "–", "–", "lower is better"]
    assert "Targets met: 1 of 2." in text
    assert "  - median of 3 repeats" in text
    assert f"- **streams** (started {STARTED.isoformat(timespec='seconds')}, ran " in text
    assert not list(tmp_path.glob(".RESULTS.md.*"))  # the temp file was renamed, not left


def test_torch_threads_is_no_machine_difference_but_a_cpu_is(tmp_path: Path) -> None:
    recs = records()
    assert "different machines" not in write_report(
        write_all(tmp_path, recs), tmp_path / "a.md", NAMES
    )
    recs["train"]["machine"]["nproc"] = 64
    text = write_report(write_all(tmp_path, recs), tmp_path / "b.md", NAMES)
    assert "**The benchmarks ran on different machines** (they differ in nproc)" in text
    assert [r[8] for r in table_rows(text)] == ["A", "A", "B"]
    assert "- machine B: " in text and "nproc 64" in text


def test_a_missing_result_fails_and_names_the_file(tmp_path: Path) -> None:
    recs = records()
    del recs["train"]
    results = write_all(tmp_path, recs)
    out = tmp_path / "RESULTS.md"
    out.write_text("old\n")
    with pytest.raises(ResultError, match=r"train\.json: missing .*bench\.train --json"):
        write_report(results, out, NAMES)
    assert out.read_text() == "old\n"  # the last good table stays


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda p: p.write_text("{not json"), "not a readable JSON result"),
        (lambda p: p.write_text("[]"), "not an object"),
        (lambda p: _edit(p, lambda r: r.pop("rows")), "lacks rows"),
        (lambda p: _edit(p, lambda r: r["rows"][0].pop("ratio")), "'produce' lacks ratio"),
        (
            lambda p: _edit(p, lambda r: r["rows"][0].update(baseline="fast")),
            "baseline must be a finite number",
        ),
        (lambda p: _edit(p, lambda r: r.update(benchmark="serve")), "expected 'streams'"),
    ],
)
def test_a_malformed_result_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], corrupt: Any, message: str
) -> None:
    results = write_all(tmp_path, records())
    corrupt(results / "streams.json")
    with pytest.raises(ResultError, match=message) as err:
        load_results(results, NAMES)
    assert "streams.json" in str(err.value)
    assert (
        main(["--results", str(results), "--out", str(tmp_path / "x.md"), "--benchmarks", *NAMES])
        == 1
    )
    assert "bench.report: " in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()


def _edit(path: Path, change: Any) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def test_the_helper_refuses_what_the_report_would_refuse() -> None:
    with pytest.raises(ResultError, match="gives no ratio"):
        result_row("produce", "msgs/s", "raw", 0.0, 1.0)
    with pytest.raises(ResultError, match="rows must be a non-empty list"):
        result_record("streams", machine(), STARTED, rows=[], conditions=[])
