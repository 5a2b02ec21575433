"""A promotion that dies at a chosen step, in a process of its own (for the outbox tests).

Usage: ``python -m tests.workers.promote_crash CONFIG VERSION POINT`` where POINT is

* ``after-intent``: the intent is in the registry's outbox, nothing was published;
* ``after-publish``: the broker has the event, the registry was not updated.

The process ends with ``os._exit(9)`` at that point, the way a SIGKILL or a power cut would
end it: no ``finally``, no flush, no lock released other than by the OS.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from daemon.learning import promote
from daemon.learning.settings import open_registry
from daemon.operating.config import load_settings


def main() -> int:
    config, version, point = sys.argv[1], sys.argv[2], sys.argv[3]
    settings = load_settings(Path(config))
    if point == "after-intent":
        promote.publish = lambda *_a, **_k: os._exit(9)  # type: ignore[assignment]
    elif point == "after-publish":
        real = promote.publish

        def publish_then_die(*a: object, **k: object) -> None:
            real(*a, **k)  # type: ignore[arg-type]
            os._exit(9)

        promote.publish = publish_then_die  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown crash point {point!r}")
    registry = open_registry(settings)
    promote.promote(settings, registry, version, actor="cli", reason="crash test")
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
