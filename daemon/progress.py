"""How far a long step is: training, the gate's evaluation, measuring the verifier.

A training cycle or a 200-item evaluation takes minutes on a CPU; an operator (or a demo's
viewer) must see that it moves and when it will end. A step wraps its loop in
:func:`track` and calls ``advance``; how that shows depends on where it runs
(:func:`configure`):

* ``bar`` — a rich progress bar on stderr (``auto`` picks it when stderr is a terminal);
  when another live display already owns the terminal (the demo's status line) rich would
  refuse a second one, so the step falls back to log lines instead of failing;
* ``log`` — an INFO line on ``selfdistill.progress`` at most every ``every_s`` seconds and
  one at the end: items done of the total, the rate, the time left (``auto`` off a
  terminal: ``up`` under systemd, a pod's log);
* ``quiet`` — nothing rendered; the caller shows :func:`current` in its own display.

:func:`current` is one line for the innermost running step, whatever the mode: ``up``'s
periodic progress line and the demo's status line read it. Steps run in worker threads and
nest (an evaluation inside a training cycle), so the running steps are a thread-safe stack.
Rendering never raises into the step it reports on.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["auto", "bar", "log", "quiet"]

log = logging.getLogger("selfdistill.progress")
_lock = threading.Lock()
_running: list[Tracker] = []
_config: dict[str, Any] = {"mode": "auto", "every_s": 10.0}


def configure(mode: Mode = "auto", every_s: float = 10.0) -> None:
    """How steps report from now on, in this process."""
    _config.update(mode=mode, every_s=every_s)


@dataclass
class Tracker:
    """One running step: its count, rate and time left."""

    label: str
    total: int | None
    unit: str = "items"
    done: int = 0
    fields: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _last_log: float = 0.0
    _bar: Any = None
    _task: Any = None

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        self.fields.update({k: str(v) for k, v in fields.items()})
        try:
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done, info=self._extra())
            elif _config["mode"] != "quiet":
                now = time.monotonic()
                if now - self._last_log >= _config["every_s"]:
                    self._last_log = now
                    log.info("%s", self.line())
        except Exception:  # rendering must never break the step
            pass

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """``eval v0002: 40/200 items, 2.1 items/s, ~76s left (loss 0.53)``"""
        r = self.rate()
        of = f"/{self.total}" if self.total else ""
        text = f"{self.label}: {self.done}{of} {self.unit}, {r:.2f} {self.unit}/s"
        if self.total and r > 0 and self.done < self.total:
            text += f", ~{(self.total - self.done) / r:.0f}s left"
        extra = self._extra()
        return text + (f" ({extra})" if extra else "")

    def _extra(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.fields.items())


def _mode() -> str:
    mode = _config["mode"]
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "log"
    return mode


def _start_bar(t: Tracker) -> None:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=Console(stderr=True),
    )
    bar.start()  # raises LiveError when another live display owns the console
    t._task = bar.add_task(t.label, total=t.total, info="")
    t._bar = bar


@contextlib.contextmanager
def track(label: str, total: int | None, unit: str = "items") -> Iterator[Tracker]:
    """A step of ``total`` ``unit``; ``advance`` it as it goes."""
    t = Tracker(label, total, unit)
    mode = _mode()
    if mode == "bar":
        try:
            _start_bar(t)
        except Exception:  # another live display (the demo's): log lines instead
            t._bar = None
    with _lock:
        _running.append(t)
    try:
        yield t
    finally:
        with _lock:
            if t in _running:
                _running.remove(t)
        try:
            if t._bar is not None:
                t._bar.stop()
            elif mode != "quiet":
                log.info("%s: done in %.0fs", t.line(), time.monotonic() - t.started)
        except Exception:
            pass


def current() -> str | None:
    """The innermost running step's line, or None when none runs."""
    with _lock:
        return _running[-1].line() if _running else None
