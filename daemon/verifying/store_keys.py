"""The store's keys: derived from content, never from arrival order (see ``store.py``).

A redelivered or replayed verdict must hit the rows it wrote the first time, and a store
rebuilt from ``verdicts`` must have the same keys as the live one; both follow from every
key being a hash of what the row is.
"""

from __future__ import annotations

import hashlib
import json


def _hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def candidate_id(prompt_id: str, text: str) -> str:
    """Same prompt, same text: same candidate, however often it is delivered."""
    return _hash(prompt_id, text)


def vote_id(cand_id: str, stage: str, kind: str, ordinal: int) -> str:
    """A judge call's place in its candidate's cascade, so redelivery hits the same row."""
    return _hash(cand_id, stage, kind, str(ordinal))


def question_key(messages: list[dict[str, str]]) -> str:
    """A hash of what was asked: every non-assistant turn, case and whitespace normalised."""
    asked = [
        (m["role"], " ".join(m["content"].split()).casefold())
        for m in messages
        if m["role"] != "assistant"
    ]
    return hashlib.sha256(json.dumps(asked, ensure_ascii=False).encode()).hexdigest()


def split_for(key: str, heldout_fraction: float) -> str:
    """Deterministic split from a hex hash (:func:`question_key`): the same anywhere."""
    return "heldout" if int(key[:8], 16) % 1000 < round(heldout_fraction * 1000) else "train"
