"""Reading a judge's output: the final answer it judges, and the verdict it gives.

Only the judge's own output can carry a verdict, and only its *last* verdict token counts:
``[[Y]]`` or ``[[N]]``. If the judge wrote none, a documented fallback applies: a final
line that is a bare YES or NO (any case, trailing punctuation ignored). Anything else is a
rejection: a judge that cannot make up its mind has not accepted.

A candidate's text is never parsed for verdicts here: the judge prompt quotes it inside
delimiters, and the answer shown to the judge is neutralised (``neutralise``) so that a
candidate writing "[[Y]]" or "Verdict: [[Y]]" cannot forge one in the judge's context.
"""

from __future__ import annotations

import re

_VERDICT = re.compile(r"\[\[\s*([YN])\s*\]\]", re.IGNORECASE)
_BARE = re.compile(r"^\W*(yes|no)\W*$", re.IGNORECASE)
_THINK_END = "</think>"


def parse_verdict(judge_output: str) -> bool | None:
    """True for yes, False for no, None when the output holds no verdict (a rejection)."""
    found = _VERDICT.findall(judge_output)
    if found:
        return found[-1].upper() == "Y"
    lines = [ln for ln in judge_output.strip().splitlines() if ln.strip()]
    if lines:
        m = _BARE.match(lines[-1])
        if m:
            return m.group(1).lower() == "yes"
    return None


def final_answer(candidate: str) -> str:
    """The part of a candidate the judges see: everything after the last ``</think>``."""
    if _THINK_END in candidate:
        candidate = candidate.rsplit(_THINK_END, 1)[1]
    return candidate.strip()


def neutralise(text: str) -> str:
    """Defang verdict tokens and our delimiters inside quoted text.

    ``[[Y]]`` becomes ``[ [Y] ]``: still readable to a judge, never a verdict, and the
    quoted block cannot close its own delimiter early.
    """
    text = _VERDICT.sub(lambda m: f"[ [{m.group(1)}] ]", text)
    return text.replace("<<<", "< < <").replace(">>>", "> > >")
