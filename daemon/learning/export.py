"""Accepted samples as JSON lines that TRL's SFTTrainer and HF ``datasets`` read as-is.

Each line is ``{"messages": [...chat..., {"role": "assistant", "content": answer}], ...}``,
the conversational format both libraries take without a formatting function, with the
provenance at top level (``prompt_id``, ``candidate_id``, ``adapter``, ``domain``, ``votes``,
``judge_tokens``, ``split``) so that any line can be traced back to its prompt, its votes and
the adapter that generated it. Every line has the same keys, so ``datasets`` infers one schema.

``--ranking`` exports the other kind of data the verifier leaves behind: groups of one
prompt's candidates with both passing and failing members (as in DuST), either as groups
(``{"prompt_id", "messages", "passed": [...], "failed": [...], "source"}``) or expanded into
TRL's conversational preference pairs (``{"prompt": [...], "chosen": [assistant turn],
"rejected": [assistant turn]}``, every passing member against every failing one).

Written to a path, the file appears atomically (temp file, fsync, rename): a trainer reading
it never sees half an export, and a failed export leaves the previous file in place.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TextIO

from daemon.learning.atomic import write_lines
from daemon.verifying.store import Store


def sample_line(row: dict[str, Any]) -> dict[str, Any]:
    """One accepted row (from :class:`Store`) as an SFT record with its provenance."""
    return {
        "messages": row["messages"],
        "prompt_id": row["prompt_id"],
        "candidate_id": row["id"],
        "adapter": row["adapter"],
        "domain": row["domain"],
        "votes": row["votes"],
        "judge_tokens": row["judge_tokens"],
        "split": row["split"],
    }


def _rows(store: Store, split: str | None, snapshot: str | None) -> list[dict[str, Any]]:
    if snapshot is None:
        return store.accepted_samples(split)
    snap = store.snapshot(snapshot)
    if snap is None:
        raise KeyError(f"no snapshot {snapshot!r}")
    if split is not None and split != snap["split"]:
        # A snapshot holds one split; silently exporting nothing would hide the mistake.
        raise ValueError(f"snapshot {snapshot!r} is of split {snap['split']!r}, not {split!r}")
    return store.snapshot_samples(snapshot)


def _write_lines(lines: Iterable[dict[str, Any]], fh: TextIO) -> int:
    n = 0
    for line in lines:
        fh.write(json.dumps(line, ensure_ascii=False) + "\n")
        n += 1
    return n


def ranking_lines(
    groups: Iterable[dict[str, Any]], form: Literal["groups", "pairs"] = "groups"
) -> Iterable[dict[str, Any]]:
    """Ranking groups as written: one line per group, or one per (passed, failed) pair."""
    for g in groups:
        if form == "groups":
            yield g
            continue
        for good in g["passed"]:
            for bad in g["failed"]:
                yield {
                    "prompt": g["messages"],
                    "chosen": [{"role": "assistant", "content": good["text"]}],
                    "rejected": [{"role": "assistant", "content": bad["text"]}],
                    "prompt_id": g["prompt_id"],
                    "chosen_id": good["candidate_id"],
                    "rejected_id": bad["candidate_id"],
                    "source": g["source"],
                }


def export_ranking(
    store: Store, out: Path | TextIO, form: Literal["groups", "pairs"] = "groups"
) -> int:
    """Write the store's ranking groups (or their pairs) as JSON lines; returns how many."""
    if form not in ("groups", "pairs"):
        raise ValueError(f"ranking format must be groups or pairs, got {form!r}")
    return _write(ranking_lines(store.ranking_groups(), form), out)


def export_accepted(
    store: Store, out: Path | TextIO, split: str | None = "train", snapshot: str | None = None
) -> int:
    """Write accepted samples as JSON lines; returns how many.

    ``split``: "train", "heldout", or None for both. ``snapshot``: exactly the rows that
    snapshot froze (what a training run used), instead of everything accepted now.
    ``out``: a path (written atomically) or an open text stream (written as-is).
    """
    return _write((sample_line(r) for r in _rows(store, split, snapshot)), out)


def _write(lines: Iterable[dict[str, Any]], out: Path | TextIO) -> int:
    if not isinstance(out, str | os.PathLike):
        return _write_lines(lines, out)
    return write_lines(Path(out), (json.dumps(line, ensure_ascii=False) for line in lines))
