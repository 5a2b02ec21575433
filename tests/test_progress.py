"""Long steps say how far they are: log lines off a terminal, one line for a caller's own
display, and never an error because of the rendering."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest
from rich.console import Console
from rich.live import Live

from daemon import progress


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    yield
    progress.configure("auto")


def test_log_mode_reports_done_rate_and_time_left(caplog: pytest.LogCaptureFixture) -> None:
    progress.configure("log", every_s=0)
    with (
        caplog.at_level(logging.INFO, "selfdistill.progress"),
        progress.track("eval v0002", 4) as t,
    ):
        t.advance(1)
        t.advance(1, loss="0.53")
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("eval v0002: 1/4 items,") and "items/s" in lines[0]
    assert "left" in lines[0] and "(loss 0.53)" in lines[1]
    assert lines[-1].startswith("eval v0002: 2/4 items") and "done in" in lines[-1]


def test_quiet_renders_nothing_and_current_shows_the_innermost_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    progress.configure("quiet")
    seen: list[str | None] = []
    inside, release = threading.Event(), threading.Event()

    def worker() -> None:
        with progress.track("training v1", 16, "steps") as outer:
            outer.advance(3)
            with progress.track("eval v1", 200) as inner:
                inner.advance(40)
                inside.set()
                release.wait(10)

    with caplog.at_level(logging.INFO, "selfdistill.progress"):
        thread = threading.Thread(target=worker)
        thread.start()
        assert inside.wait(10)
        seen.append(progress.current())  # read from another thread
        release.set()
        thread.join(10)
    assert seen[0] is not None and seen[0].startswith("eval v1: 40/200 items")
    assert progress.current() is None and caplog.records == []


def test_a_bar_under_another_live_display_never_breaks_the_step() -> None:
    progress.configure("bar", every_s=0)
    with Live(console=Console(stderr=True)), progress.track("gate", 2) as t:
        t.advance(2)
        line = progress.current()
        assert line is not None and line.startswith("gate: 2/2 items")
    assert t.done == 2 and progress.current() is None


def test_the_gate_evaluation_reports_its_items(tiny_engine, caplog) -> None:
    from daemon.learning.evaluate import EvalConfig, evaluate
    from daemon.verifying.cascade import CascadeConfig
    from daemon.verifying.graders import LabeledItem

    progress.configure("log", every_s=0)
    items = [
        LabeledItem(id=f"q{i}", question=f"{i} + 1?", answer=str(i + 1), grader="numeric")
        for i in range(5)
    ]
    config = EvalConfig(max_tokens=2, batch_size=2, heldout_max=0)
    with caplog.at_level(logging.INFO, "selfdistill.progress"):
        report = evaluate(tiny_engine, None, items, [], config, CascadeConfig())
    lines = [r.getMessage() for r in caplog.records if r.name == "selfdistill.progress"]
    assert report.counts["labeled"] == 5
    assert [line.split(",")[0] for line in lines[:3]] == [
        "eval base: labeled problems: 2/5 items",
        "eval base: labeled problems: 4/5 items",
        "eval base: labeled problems: 5/5 items",
    ]
