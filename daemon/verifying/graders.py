"""The labeled held-out set, and how one model output is graded against it.

The learning loop promotes a new LoRA adapter only if it does not lose greedy pass@1 on a
labeled held-out set. That number is only worth gating on if grading is strict and
predictable: a lenient grader that finds "19" somewhere in a rambling answer rewards
rambling, and one that demands byte equality punishes "19." for its full stop. So each
item names its grader, and every grader first takes the *final answer* (everything after
the last ``</think>``, as the judges see it) and then applies one documented rule:

- ``exact``: normalised equality with the reference; or the last non-empty line equals it;
  or the output states it ("... answer is X", "Answer: X"). Nothing else: containing the
  reference somewhere in the middle is not a pass.
- ``numeric``: the *last* number in the final answer equals the reference, within the
  item's absolute tolerance (relative 1e-9 is always allowed, for float noise).
- ``regex``: ``search(pattern, final_answer, IGNORECASE | DOTALL)``. A search, not a
  full match, so a pattern states exactly what it requires; patterns that care about
  position anchor themselves (``^``/``$`` or number boundaries such as ``(?<![\\d.,])``).
  Patterns run on the ``regex`` package (its ``re``-compatible VERSION0 syntax) with a time
  bound, :data:`REGEX_TIMEOUT_S`: a pattern prone to catastrophic backtracking cannot wedge
  a worker. A search that runs out of time is not a match.
- ``choice``: the letter the output picks (:func:`extract_choice`) equals the reference.

A held-out file is JSONL, one :class:`LabeledItem` per line; :func:`load_labeled` rejects
the whole file on the first bad line, naming the file and the line, because a gate that
silently skips items is measuring a different set than the operator thinks.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import regex
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from daemon.verifying.verdicts import final_answer
from streams.schemas import CheckSpec, validation_summary

GraderName = Literal["exact", "numeric", "regex", "choice"]
GRADERS: tuple[GraderName, ...] = ("exact", "numeric", "regex", "choice")

#: Multiple choice supports at most five options (A-E): beyond that a standalone capital
#: letter in prose ("I", "a") is too often a word rather than a pick.
CHOICE_LETTERS = "ABCDE"
REGEX_FLAGS = regex.IGNORECASE | regex.DOTALL | regex.VERSION0

#: Seconds one regex grade may search before it gives up. A search of an honest pattern in
#: a model's answer takes microseconds; a pattern prone to catastrophic backtracking (such
#: as ``(a|aa)+$``) can take longer than the universe is old. The bound is per search, so a
#: checker vote or a held-out grade costs at most this much.
REGEX_TIMEOUT_S = 1.0
#: The time bound covers searching, not compiling, and compiling is not free: the ``regex``
#: package expands a counted repeat of a literal into that many characters, so
#: ``a{4294967294}`` or ``(?:a{1000}){1000}{1000}`` exhausts the worker's memory before
#: any search starts, and deep nesting overflows the parser's stack. So a pattern is
#: refused, as a pattern that does not compile is, when it is longer than
#: :data:`REGEX_MAX_CHARS`, nests groups deeper than :data:`REGEX_MAX_DEPTH`, or its
#: counted repeats, multiplied through their nesting and added up, exceed
#: :data:`REGEX_MAX_REPEAT` (``\d{1,3}(?:,\d{3})*`` costs a few; ``.{0,200}`` 200). A
#: compiled unit takes about 300 bytes, so the bound keeps one pattern under about 3 MB, and
#: the cache of compiled patterns (128) under about 400 MB whatever producers send.
REGEX_MAX_CHARS = 4096
REGEX_MAX_DEPTH = 64
REGEX_MAX_REPEAT = 10_000


class PatternRefused(regex.error):
    """A pattern too costly to compile (see :data:`REGEX_MAX_REPEAT`): it is refused before
    ``regex.compile`` runs, like one that does not compile."""


class LabeledSetError(ValueError):
    """A held-out file that cannot be used as it is; the message names file and line."""

    def __init__(self, path: Path, reason: str, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {reason}")


class LabeledItem(BaseModel):
    """One labeled problem: the question sent to the model and how to grade its answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=256, pattern=r"^\S+$")
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    grader: GraderName
    choices: list[str] | None = None
    domain: str | None = Field(None, max_length=64)
    tolerance: float = Field(0.0, ge=0, allow_inf_nan=False)
    check: CheckSpec | None = Field(
        None,
        description="The prompt's checkable form, as a producer would send it: the verifier's "
        "tool stages use it (the grader above is the truth the verifier is measured against).",
    )

    @model_validator(mode="after")
    def _answer_fits_grader(self) -> LabeledItem:
        if self.grader == "choice":
            if self.choices is None or not 2 <= len(self.choices) <= len(CHOICE_LETTERS):
                raise ValueError(
                    f"a choice item needs 2 to {len(CHOICE_LETTERS)} choices "
                    f"(got {0 if self.choices is None else len(self.choices)})"
                )
            texts = [_normalise(c) for c in self.choices]
            if any(not t for t in texts):
                raise ValueError("choices must not be empty")
            if len(set(texts)) != len(texts):
                raise ValueError("choices must be distinct (after normalisation)")
            letters = CHOICE_LETTERS[: len(self.choices)]
            if self.answer not in letters:
                raise ValueError(
                    f"a choice answer must be one of the letters {', '.join(letters)} "
                    f"(got {self.answer!r})"
                )
        elif self.choices is not None:
            raise ValueError(f"choices are only allowed with grader 'choice', not {self.grader!r}")
        if self.grader == "numeric" and _parse_number_text(self.answer) is None:
            raise ValueError(f"a numeric answer must be a number (got {self.answer!r})")
        if self.grader == "regex":
            try:
                _compiled(self.answer)
            except PatternRefused as exc:
                raise ValueError(f"regex answer refused: {exc}") from None
            except regex.error as exc:
                raise ValueError(f"regex answer does not compile: {exc}") from None
        if self.grader == "exact" and not _normalise(self.answer):
            raise ValueError("an exact answer must not be empty after normalisation")
        return self


def load_labeled(path: Path) -> list[LabeledItem]:
    """Read a labeled JSONL file; any bad line, a duplicate id or no items at all is an error.

    Blank lines are skipped. An unreadable file is reported the same way (as
    :class:`LabeledSetError`), so a caller has one error type to show an operator.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabeledSetError(path, f"cannot read the labeled set ({exc})") from exc
    items: list[LabeledItem] = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LabeledSetError(
                path, f"not JSON ({exc.msg} at column {exc.colno})", number
            ) from None
        if not isinstance(data, dict):
            raise LabeledSetError(
                path, f"expected a JSON object, got {type(data).__name__}", number
            )
        try:
            item = LabeledItem.model_validate(data)
        except ValidationError as exc:
            raise LabeledSetError(path, validation_summary(exc), number) from None
        if item.id in first_line:
            raise LabeledSetError(
                path, f"duplicate id {item.id!r} (first on line {first_line[item.id]})", number
            )
        first_line[item.id] = number
        items.append(item)
    if not items:
        raise LabeledSetError(path, "the labeled set has no items")
    return items


# --- grading -------------------------------------------------------------------------------

_QUOTES = "\"'`*“”‘’"  # surrounding quotes, backticks and markdown emphasis
_TRAILING = ".!"
# "... answer is X" / "Answer: X" / "**Answer:** X" / "The final answer is: X".
_STATED = re.compile(r"\banswer(?:\s+is\b\s*:?|\s*\**\s*:)\s*(?P<x>[^\n]*)", re.IGNORECASE)


def _normalise(text: str) -> str:
    """Casefolded, whitespace collapsed, surrounding quotes and trailing ``.``/``!`` removed."""
    text = " ".join(text.split()).casefold()
    previous = None
    while previous != text:
        previous = text
        text = text.strip().strip(_QUOTES).rstrip(_TRAILING)
    return text


def last_line(text: str) -> str:
    """The last non-blank line: where a model puts its answer after showing its work."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _exact_forms(final: str) -> list[str]:
    """The normalised strings an output may be taken to answer: whole, last line, stated."""
    forms = [_normalise(final), _normalise(last_line(final))]
    stated = list(_STATED.finditer(final))
    if stated:
        forms.append(_normalise(stated[-1].group("x")))
    return [f for f in forms if f]


# A number: optional sign (only where it cannot be a binary minus, as in "12-7"), thousands
# groups only when a comma is followed by exactly three digits ("1,000" but not "1, 2" or
# "1,2345"), optional decimals, optional "/denominator" for a simple fraction.
_NUMBER = re.compile(
    r"""
    (?<![\d.])
    (?P<sign>(?<![\w)\]])[-−])?
    (?P<int>\d{1,3}(?:,\d{3}(?!\d))+|\d+)
    (?P<frac>\.\d+)?
    (?:\s*/\s*(?P<den>\d+)(?![\d]|[.,]\d))?
    """,
    re.VERBOSE,
)


def _number_value(m: re.Match[str]) -> float | None:
    value = float(m.group("int").replace(",", "") + (m.group("frac") or ""))
    if m.group("den") is not None:
        den = int(m.group("den"))
        if den == 0:
            return None
        value /= den
    return -value if m.group("sign") else value


def _parse_number_text(text: str) -> float | None:
    """The value of a string that is exactly one number (as :data:`_NUMBER` reads it)."""
    m = _NUMBER.fullmatch(text.strip())
    if m is None:
        return None
    value = _number_value(m)
    return value if value is not None and math.isfinite(value) else None


def extract_number(text: str) -> float | None:
    """The last number in ``text`` (negatives, ``1,000``, ``2.5``, ``3/4``), or None.

    The last, because models state the result at the end ("12 + 7 = 19"). Numbers written
    as words are not read. A fraction with a zero denominator is skipped.
    """
    for m in reversed(list(_NUMBER.finditer(text))):
        value = _number_value(m)
        if value is not None and math.isfinite(value):
            return value
    return None


# A standalone letter; the marker group records "answer is"/"Answer:"/"option"/"choice".
_LETTER = re.compile(
    r"""
    (?P<marker>\b(?:answer(?:\s+is)?|option|choice)\s*[:*]*\s*)?
    (?P<open>[(\[])?
    (?<![\w'’])(?P<letter>[A-Ea-e])(?![\w'’])
    (?P<close>[)\].:])?
    """,
    re.IGNORECASE | re.VERBOSE,
)
# After a bare "A", these words make it a pick ("A is correct"); any other lowercase word
# makes it the article ("A dozen eggs").
_A_VERBS = re.compile(r"\s+(?:is|was|would|should|must|seems|looks)\b")


def extract_choice(text: str, choices: list[str] | None = None) -> str | None:
    """The option letter an output picks (uppercase), or None.

    A pick is a standalone letter: "B", "(B)", "B)", "[B]", "Answer: B", "The answer is B.",
    "option B"; the *last* one counts. To keep prose from voting, a lowercase letter counts
    only after a marker ("answer is", "Answer:", "option", "choice") or inside brackets,
    and an unmarked "A" followed by a lowercase word ("A dozen eggs") is the article, not
    a pick ("A is correct" still is). When the output lists two or more options with their
    text ("A) 18 B) 19 ..."), it is echoing the question: those listings are ignored.
    Letters beyond the number of ``choices`` are ignored. Failing all that, an output
    (whole, last line, or stated answer) that equals one option's text, normalised, picks
    that option.
    """
    letters = CHOICE_LETTERS[: len(choices)] if choices else CHOICE_LETTERS
    picks: list[tuple[str, bool]] = []  # (letter, is a listing "X) <option text>")
    for m in _LETTER.finditer(text):
        letter = m.group("letter")
        marked = m.group("marker") is not None
        opened = m.group("open") is not None
        closed = m.group("close") is not None
        rest = text[m.end() :]
        if letter.islower():
            if not (marked or (opened and closed)):
                continue
            if not closed and re.match(r"\s+[a-z]", rest):
                continue  # "the answer is a number"
        elif (
            letter == "A"
            and not (marked or opened or closed)
            and re.match(r"\s+[a-z]", rest)
            and not _A_VERBS.match(rest)
        ):
            continue
        letter = letter.upper()
        if letter not in letters:
            continue
        listing = False
        if choices and closed and not marked:
            option = _normalise(choices[letters.index(letter)])
            head = _normalise(rest.split("\n", 1)[0])
            listing = re.match(re.escape(option) + r"(?!\w)", head) is not None
        picks.append((letter, listing))
    if len({letter for letter, listing in picks if listing}) >= 2:
        picks = [p for p in picks if not p[1]]
    if picks:
        return picks[-1][0]
    if choices:
        options = {_normalise(c): letters[i] for i, c in enumerate(choices)}
        for form in reversed(_exact_forms(text)):
            if form in options:
                return options[form]
    return None


_COUNTED = re.compile(r"\{(\d+)?(?:,(\d*))?\}")


def _counted_at(pattern: str, i: int) -> tuple[int, int] | None:
    """``(largest count, end)`` of a counted repeat ``{m}``, ``{m,}``, ``{m,n}``, ``{,n}`` at
    ``i``, or None when the braces there are a literal (``{``, ``{x}``)."""
    m = _COUNTED.match(pattern, i)
    if m is None or (m.group(1) is None and not m.group(2)):
        return None
    return max(int(m.group(1) or 0), int(m.group(2) or 0)), m.end()


def pattern_cost(pattern: str) -> str | None:
    """Why compiling ``pattern`` could exhaust the worker (see :data:`REGEX_MAX_REPEAT`), or
    None. A lexical over-estimate that never compiles anything: each character costs 1, a
    counted repeat its largest count times what it repeats, a group the sum of its inside."""
    if len(pattern) > REGEX_MAX_CHARS:
        return f"the pattern is longer than {REGEX_MAX_CHARS} characters"
    frames = [0]  # the cost so far of each open group, outermost first
    last = 0  # the cost of the atom just read, which a counted repeat multiplies
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        counted = _counted_at(pattern, i) if ch == "{" else None
        if counted is not None:
            count, i = counted
            frames[-1] += last * (count - 1)  # the atom was already added once
            last *= count  # a repeat of the repeat multiplies again
        elif ch == "(":
            frames.append(0)
            if len(frames) > REGEX_MAX_DEPTH:
                return f"its groups nest deeper than {REGEX_MAX_DEPTH}"
            i += 1
        elif ch == ")" and len(frames) > 1:
            last = max(frames.pop(), 1)
            frames[-1] += last
            i += 1
        else:
            if ch == "\\":
                i += 2
            elif ch == "[":  # a set is one atom: skip to its end
                j = i + 1 + (pattern[i + 1 : i + 2] == "^")
                j += pattern[j : j + 1] == "]"
                while j < len(pattern) and pattern[j] != "]":
                    j += 2 if pattern[j] == "\\" else 1
                i = j + 1
            else:
                i += 1
            last = 1
            frames[-1] += 1
        if sum(frames) > REGEX_MAX_REPEAT:
            return f"its counted repeats expand past {REGEX_MAX_REPEAT:,} (as {_clip(pattern)})"
    return None


def _clip(pattern: str, limit: int = 40) -> str:
    return pattern if len(pattern) <= limit else pattern[: limit - 3] + "..."


@functools.lru_cache(maxsize=128)
def _compiled(pattern: str) -> regex.Pattern[str]:
    """The compiled pattern; raises :class:`PatternRefused` for one too costly to compile
    (before compiling it), ``regex.error`` for one that does not compile."""
    why = pattern_cost(pattern)
    if why is not None:
        raise PatternRefused(why)
    try:
        return regex.compile(pattern, REGEX_FLAGS)
    except (RecursionError, MemoryError, OverflowError) as exc:  # never the worker's end
        raise PatternRefused(f"compiling it failed ({type(exc).__name__})") from None


def regex_search(pattern: str, text: str, timeout_s: float = REGEX_TIMEOUT_S) -> bool:
    """Whether ``pattern`` is found in ``text`` (the ``regex`` grader's rule), within a time
    bound. Raises ``regex.error`` for a pattern that does not compile and ``TimeoutError``
    when the search takes longer than ``timeout_s`` seconds."""
    return _compiled(pattern).search(text, timeout=timeout_s) is not None


def grade(item: LabeledItem, output: str) -> bool:
    """Whether ``output`` answers ``item`` correctly, by the item's grader (see module doc)."""
    final = final_answer(output)
    if not final:
        return False
    if item.grader == "exact":
        return _normalise(item.answer) in _exact_forms(final)
    if item.grader == "numeric":
        got = extract_number(final)
        want = _parse_number_text(item.answer)
        if got is None or want is None:
            return False
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=item.tolerance)
    if item.grader == "regex":
        try:
            return regex_search(item.answer, final)
        except TimeoutError:  # a search that cannot finish in time found no match
            return False
    return extract_choice(final, item.choices) == item.answer


def hash_items(h: Any, items: Sequence[LabeledItem]) -> None:
    """Feed ``items`` to the hash ``h``: any change to an item changes the digest."""
    for item in items:
        h.update(item.model_dump_json().encode() + b"\0")
