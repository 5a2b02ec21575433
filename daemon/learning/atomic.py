"""Files that appear whole or not at all: datasets, task files, benchmark results.

A reader (a trainer, ``selfdistill produce``, the benchmark report) must never see half a
file, and a crash or a failed write must leave the previous file in place. So the lines are
written beside the final name, fsynced, made readable (``mkstemp`` creates 0600; these are
data files, not secrets), renamed over it, and the rename itself is made durable.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_lines(path: Path, lines: Iterable[str]) -> int:
    """Write each line plus ``\\n`` to ``path`` atomically; returns how many lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename itself, durable where supported
        dirfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    return n
