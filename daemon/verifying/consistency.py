"""Right for the right reason: what an answer states that contradicts itself or its verdict.

A checker that reads only the final answer accepts ``7 + 6 = 11\\n\\nSo the correct answer is
D) 11.`` when D is the right letter: the pick is right, the arithmetic and the restated value
are wrong, and an adapter trained on it learns 7 + 6 = 11. :func:`contradictions` lists what
an answer states that can be evaluated exactly and is false; the built-in checkers
(:mod:`daemon.verifying.checkers`) accept an answer only when that list is empty.

What is evaluated:

- **number sentences**: ``a op b = c`` with + - * / (also x, ×, ÷, "plus", "minus",
  "times", "divided by"; "is", "makes", "gives", "equals" for =), chains ``a = b = c``, and
  comparisons of numbers: ``15 > 9``, ``15 < 9``, ``≤ ≥ ≠``, "15 is greater/less than 9",
  "15 is not less than 9", "15 equals 9". Both sides must be pure arithmetic of numbers,
  computed exactly by :func:`daemon.verifying.arithmetic.evaluate_arithmetic`; an ``=``
  needs an operator on one side (so "1 km = 1000 m" and "Box 1 = 5" are never equations).
  A decimal written with k places may be rounded (``1/3 = 0.33``).
- **multiple choice**: a value restated next to the chosen letter ("D) 11", "(D) 11",
  "D. 11", "D: 11", "D (11)", "D, which is 11"), a stated answer ("The answer is 11") or a
  last line that is a bare number, that is not the chosen option's value.
- **yes/no** (an ``exact`` check whose answer is yes or no): an answer that also says the
  opposite word as a verdict ("No, 15 is greater than 9. The answer is yes.").

Conservative by design: a statement is skipped, never guessed at, when it is glued to
something it might belong to (a unit, a letter, a time "3:00", a ratio, a percent, a date
"2024-01-05" or "12/25/2024", a range "7-9"), when the words around it may change its
meaning ("half of 10 = 5", "the sum of 7 and 8 is greater than 14", "= 3 dozen", "7 / 2 = 3
remainder 1"), when its sentence is a question or hedges it ("if", "not", "wrong", "wait"),
or when it echoes the question ("Is 15 greater than 9?" states nothing). List numbering
("1. ", "2) ") and bullets are not numbers of the sentence.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.verifying.arithmetic import evaluate_arithmetic
from daemon.verifying.graders import CHOICE_LETTERS, extract_choice
from daemon.verifying.verdicts import final_answer
from streams.schemas import CheckSpec, validation_summary

# --- the arithmetic view: the answer with its number sentences made plain -----------------

_NUM = r"\d{1,3}(?:,\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?"
_TOKEN = re.compile(
    rf"(?P<num>{_NUM})|(?P<rel><=|>=|!=|==|[=<>≤≥≠≡])|(?P<op>[-+*/])|(?P<paren>[()])"
    r"|(?P<ws>[ \t]+)|(?P<other>.)",
    re.DOTALL,
)
_BIGGER = r"(?:greater|more|larger|bigger|higher)"
_SMALLER = r"(?:less|smaller|fewer|lower)"
_ISNT = r"(?:(?:is|was)[ \t]+not|(?:is|was)n[’']t)"
# Relations written in words, longest first; ≡ is "equals" (it may join two bare numbers),
# = is "is" (it needs an operator on one side, as a written = does).
_WORD_RELATIONS: tuple[tuple[str, str], ...] = (
    (rf"{_ISNT}[ \t]+{_BIGGER}[ \t]+than", "≤"),
    (rf"{_ISNT}[ \t]+{_SMALLER}[ \t]+than", "≥"),
    (rf"(?:is|was)[ \t]+{_BIGGER}[ \t]+than", ">"),
    (rf"(?:is|was)[ \t]+{_SMALLER}[ \t]+than", "<"),
    (rf"{_ISNT}[ \t]+equal[ \t]+to|does[ \t]+not[ \t]+equal|doesn[’']t[ \t]+equal", "≠"),
    (r"(?:is[ \t]+)?equal[ \t]+to|equals", "≡"),
    (r"is|makes|gives", "="),
)
_WORD_OPERATORS = {"plus": "+", "minus": "-", "times": "*", "multiplied by": "*", "divided by": "/"}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: A word right before a statement that makes its first number part of something larger.
_BEFORE_BLOCKS = _words(
    "of times plus minus by than over divided multiplied into per half twice double triple "
    "thrice squared cubed root sum product difference quotient least most about around "
    "nearly almost approximately roughly under above below except from to between and or "
    "x average mean total"
)
#: A word right after a statement that makes its last number part of something larger.
_AFTER_BLOCKS = _words(
    "more less fewer greater larger smaller bigger higher lower times than percent "
    "percentage dozen dozens hundred hundreds thousand thousands million millions billion "
    "billions trillion k remainder rem r squared cubed plus minus divided multiplied of over "
    "point x with"
)
#: Words that may stand before a bare number that starts a statement ("So 15 > 9").
_CONNECTIVES = _words(
    "so thus therefore hence since because as yes no clearly obviously indeed here now "
    "but also well"
)
#: Words that may follow a bare number ending a comparison ("15 > 9, so yes").
_CONNECTIVES_AFTER = _words(
    "so and but because since therefore thus hence which yes no as then too also is"
)
_OPENERS = "([{\"'“‘"
_ALLOWED_BEFORE = ",.;:!?([{\"'“‘—→⇒"
_ALLOWED_AFTER = ",.;:!?)]}\"'”’—→⇒"
_HEDGES = re.compile(
    r"\b(?:if|whether|unless|suppose|supposing|assume|assuming|not|never|wrong|false|"
    r"incorrect|mistake|mistaken|error|instead|wait|oops|would|could|might|untrue|cannot)\b"
    r"|n[’']t\b",
    re.IGNORECASE,
)
_MAX_SIDE_CHARS = 120
_MAX_DIGITS = 12


def _pad(symbol: str, length: int) -> str:
    return symbol + " " * (length - len(symbol))


def _arithmetic_view(text: str) -> str:
    """``text`` with number sentences in plain ASCII arithmetic, *character for character*
    (every replacement keeps the length), so a span in the view is the same span in the
    answer: LaTeX and markdown wrappers become spaces, ×/÷/−/x/"times" become * / -, and
    relations in words become one symbol."""
    view = re.sub(
        r"\\(?:times|cdot|div)\b",
        lambda m: _pad("/" if m.group() == "\\div" else "*", len(m.group())),
        text,
    )
    # \( \) \[ \] become quotes (which a statement may stand inside); $ and ` blanks
    view = re.sub(r"\\[(\[]", lambda m: ' "', view)
    view = re.sub(r"\\[)\]]", lambda m: '" ', view)
    view = re.sub(r"\$|`|(?<![\d)])\*\*|\*\*(?![\d(])|__", lambda m: " " * len(m.group()), view)
    # list numbering and bullets at the start of a line: "1. ", "2) ", "a) ", "- ", "* "
    view = re.sub(
        r"(?m)^([ \t]*)(?:[-*+•]|\d{1,3}[.)]|[A-Za-z][.)])(?=[ \t])",
        lambda m: " " * len(m.group()),
        view,
    )
    # ≡ as written is congruence ("13 ≡ 1 (mod 12)"), not ours: "equals" below becomes ≡
    view = view.translate(
        str.maketrans(
            {"×": "*", "✕": "*", "·": "*", "∙": "*", "⋅": "*", "÷": "/", "−": "-", "≡": "~"}
        )
    )
    view = re.sub(r"(?<=\d)([ \t]*)[xX]([ \t]*)(?=\d)", r"\1*\2", view)
    view = re.sub(
        r"(?<=\d)([ \t]+)(plus|minus|times|multiplied[ \t]+by|divided[ \t]+by)([ \t]+)(?=[\d(])",
        lambda m: (
            m.group(1)
            + _pad(_WORD_OPERATORS[" ".join(m.group(2).lower().split())], len(m.group(2)))
            + m.group(3)
        ),
        view,
        flags=re.IGNORECASE,
    )
    for phrase, symbol in _WORD_RELATIONS:
        view = re.sub(
            rf"(?<=[\d)])([ \t]+)({phrase})([ \t]+)(?=[-(]?\d)",
            lambda m, s=symbol: m.group(1) + _pad(s, len(m.group(2))) + m.group(3),
            view,
            flags=re.IGNORECASE,
        )
    return view


# --- number sentences ------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One evaluated number sentence: ``left relation right`` as written in the answer."""

    text: str  # as written, whitespace collapsed
    relation: str  # = ≡ < > ≤ ≥ ≠
    left: Fraction
    right: Fraction
    holds: bool
    truth: str  # what is true instead: "13" for "7 + 6 = 11", "15 > 9" for "15 < 9"

    def reason(self) -> str:
        """Why it contradicts: ``states 7 + 6 = 11, which is false (13)``."""
        return f"states {self.text}, which is false ({self.truth})"


@dataclass(frozen=True)
class _Side:
    value: Fraction
    operator: bool  # an expression, not one number
    decimals: int | None  # a bare number's decimal places; None for an expression
    start: int
    end: int
    divides: bool = False  # has a "/": "7 / 2 = 3" may be integer division
    other_reading: Fraction | None = None  # "3.000" may be three thousand


def _show(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.10g}"


def _word_before(view: str, pos: int) -> tuple[str, str]:
    """(the nearest non-blank character before ``pos`` on its line, or "\\n"; the word it ends)."""
    i = pos - 1
    while i >= 0 and view[i] in " \t":
        i -= 1
    if i < 0 or view[i] == "\n":
        return "\n", ""
    j = i
    while j >= 0 and (view[j].isalpha() or view[j] in "'’"):
        j -= 1
    return view[i], view[j + 1 : i + 1].lower()


def _word_after(view: str, pos: int) -> tuple[str, str]:
    """(the nearest non-blank character from ``pos`` on its line, or "\\n"; the word it starts)."""
    i = pos
    while i < len(view) and view[i] in " \t":
        i += 1
    if i >= len(view) or view[i] == "\n":
        return "\n", ""
    j = i
    while j < len(view) and view[j].isalpha():
        j += 1
    return view[i], view[i:j].lower()


def _trim(view: str, start: int, end: int) -> tuple[int, int]:
    while start < end and view[start] in " \t":
        start += 1
    while end > start and view[end - 1] in " \t":
        end -= 1
    return start, end


def _side(view: str, start: int, end: int, *, compact: bool) -> _Side | None:
    """The exact value of one side of a relation (``view[start:end]``), or None when it is
    not plainly arithmetic of numbers. ``compact``: the whole relation has no blank."""
    start, end = _trim(view, start, end)
    # an unmatched parenthesis at an edge belongs to the prose around: "(so 7 + 6 = 13)"
    while True:
        text = view[start:end]
        if text.startswith("(") and text.count("(") > text.count(")"):
            start, end = _trim(view, start + 1, end)
        elif text.endswith(")") and text.count(")") > text.count("("):
            start, end = _trim(view, start, end - 1)
        else:
            break
    if not text or len(text) > _MAX_SIDE_CHARS or not re.search(r"\d", text):
        return None
    if text[0] in "+*/" or text[-1] in "+-*/":
        return None
    if text[0] == "-" and not (len(text) > 1 and text[1] in "0123456789("):
        return None
    if re.search(r"\d-\d", text) and not compact:  # a range or a date, unless "12-7=5"
        return None
    if re.search(r"\d/\d+/\d", text):  # a date
        return None
    numbers = re.findall(r"\d[\d,]*(?:\.\d+)?", text)
    if any(len(re.sub(r"\D", "", n)) > _MAX_DIGITS for n in numbers):
        return None
    try:
        value = evaluate_arithmetic(text.replace(",", ""))
    except (ValueError, ArithmeticError, RecursionError, MemoryError):
        return None
    body = text[1:] if text[0] == "-" else text
    decimals = None
    if re.fullmatch(rf"-?(?:{_NUM})", text):
        decimals = len(text.rpartition(".")[2]) if "." in text else 0
    other = None
    if re.fullmatch(r"\d{1,3}(?:\.\d{3})+", text):  # dots as thousands separators
        other = Fraction(text.replace(".", ""))
    operator = any(c in body for c in "+-*/")
    return _Side(value, operator, decimals, start, end, "/" in text, other)


def _left_context_ok(view: str, seg_start: int, side: _Side) -> bool:
    """The first side of a segment: nothing before it that it might belong to."""
    if seg_start > 0 and view[seg_start] not in " \t":
        before = view[seg_start - 1]
        if before not in " \t\n" and before not in _OPENERS:
            return False  # glued: "3:00", "x2", "50%", "$"-less currency
    char, word = _word_before(view, seg_start)
    if char == "\n":
        return True
    if word:
        if word in _BEFORE_BLOCKS:
            return False
        return side.operator or word in _CONNECTIVES
    return char in _ALLOWED_BEFORE


def _right_context_ok(view: str, seg_end: int, side: _Side, relation: str) -> bool:
    """The last side of a segment: nothing after it that it might belong to."""
    if seg_end < len(view) and view[seg_end - 1] not in " \t":
        after = view[seg_end]
        if after not in " \t\n":
            if after not in _ALLOWED_AFTER:
                return False  # glued: "5:00" is fine only as a sentence's colon, "3000m", "13th"
            if after in ".,:" and seg_end + 1 < len(view) and view[seg_end + 1].isdigit():
                return False  # "1.2.3", "12,5", "5:30"
    char, word = _word_after(view, seg_end)
    if char == "\n":
        return True
    if word:
        if word in _AFTER_BLOCKS:
            return False
        if word == "and" and re.match(
            r"[ \t]*and[ \t]+(?:a[ \t]+)?(?:half|quarter|third|\d+[ \t]*/[ \t]*\d)",
            view[seg_end:],
            re.I,
        ):
            return False  # "7 / 2 = 3 and a half", "3 and 1/2"
        if relation != "=" and not side.operator:
            return word in _CONNECTIVES_AFTER  # "15 > 9 apples" may compare other things
        return True
    return char in _ALLOWED_AFTER


def _holds(relation: str, left: _Side, right: _Side) -> bool:
    a, b = left.value, right.value
    if relation in "=≡":
        if a == b or b == left.other_reading or a == right.other_reading:
            return True
        for stated, exact, computed in ((right, a, left), (left, b, right)):
            if computed.decimals is not None:
                continue  # both bare: "0.5 equals 0.4" is read as written
            if stated.decimals and abs(exact - stated.value) < Fraction(1, 10**stated.decimals):
                return True  # "1/3 = 0.33": k places, rounded or cut
            if stated.decimals == 0 and computed.divides and stated.value == math.floor(exact):
                return True  # "7 / 2 = 3": integer division, the remainder left out
        return False
    return {"<": a < b, ">": a > b, "≤": a <= b, "≥": a >= b, "≠": a != b}[relation]


class _Sentences:
    """Where the sentences of a text end and where it hedges, found once for all its
    statements (an answer may hold thousands of them)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.ends = [i for i in range(len(text)) if _boundary(text, i)]
        self.hedges = [m.start() for m in _HEDGES.finditer(text)]

    def hedged(self, start: int, end: int) -> bool:
        """Whether the sentence around ``text[start:end]`` is a question or hedges outside
        that span ("If 7 + 6 = 12, ...", "7 + 6 = 11 is wrong")."""
        k = bisect.bisect_left(self.ends, start)
        first = self.ends[k - 1] + 1 if k > 0 else 0
        k = bisect.bisect_left(self.ends, end)
        last = self.ends[k] if k < len(self.ends) else len(self.text)
        if last < len(self.text) and self.text[last] == "?":
            return True
        k = bisect.bisect_left(self.hedges, first)
        if k < len(self.hedges) and self.hedges[k] < start:
            return True
        k = bisect.bisect_left(self.hedges, end)
        return k < len(self.hedges) and self.hedges[k] < last


def _boundary(text: str, i: int) -> bool:
    c = text[i]
    if c in "\n!?;":
        return True
    return c == "." and (i + 1 == len(text) or text[i + 1].isspace())


def _segments(view: str) -> Iterator[tuple[int, int, list[tuple[str, int, int]]]]:
    """Runs of arithmetic tokens that contain a relation: (start, end, relations)."""
    start = None
    relations: list[tuple[str, int, int]] = []
    for m in _TOKEN.finditer(view):
        if m.lastgroup == "other":
            if start is not None and relations:
                yield start, m.start(), relations
            start, relations = None, []
            continue
        if start is None:
            start = m.start()
        if m.lastgroup == "rel":
            symbol = {"<=": "≤", ">=": "≥", "!=": "≠", "==": "="}.get(m.group(), m.group())
            relations.append((symbol, m.start(), m.end()))
    if start is not None and relations:
        yield start, len(view), relations


def statements(answer: str) -> list[Statement]:
    """Every number sentence in ``answer`` that can be evaluated exactly, true or false, in
    order. Hedged ones (a question, "if", "not", "wrong", ...) are left out."""
    view = _arithmetic_view(answer)
    sentences = _Sentences(answer)
    found: list[Statement] = []
    for seg_start, seg_end, relations in _segments(view):
        bounds = [seg_start] + [p for _, s, e in relations for p in (s, e)] + [seg_end]
        parts = [(bounds[2 * k], bounds[2 * k + 1]) for k in range(len(relations) + 1)]
        for k, (relation, _, _) in enumerate(relations):
            (ls, le), (rs, re_) = parts[k], parts[k + 1]
            compact = not re.search(r"\s", view[ls:re_].strip())
            left = _side(view, ls, le, compact=compact)
            right = _side(view, rs, re_, compact=compact)
            if left is None or right is None:
                continue
            if k == 0 and not _left_context_ok(view, seg_start, left):
                continue
            if k == len(relations) - 1 and not _right_context_ok(view, seg_end, right, relation):
                continue
            if relation == "=" and not (left.operator or right.operator):
                continue  # "1 km = 1000 m" with the units left out is not arithmetic
            if sentences.hedged(left.start, right.end):
                continue
            found.append(
                Statement(
                    " ".join(answer[left.start : right.end].split()),
                    relation,
                    left.value,
                    right.value,
                    _holds(relation, left, right),
                    _truth(relation, left, right),
                )
            )
    return found


def _truth(relation: str, left: _Side, right: _Side) -> str:
    a, b = left.value, right.value
    if relation in "=≡" and left.operator != right.operator:
        return _show(a if left.operator else b)
    sign = "<" if a < b else "=" if a == b else ">"
    return f"{_show(a)} {sign} {_show(b)}"


# --- multiple choice and yes/no ----------------------------------------------------------------

_LEADING_NUMBER = re.compile(rf"[ \t]*[(*\"'`“]*[ \t]*(?P<num>-?(?:{_NUM}))")
_STATED_NUMBER = re.compile(
    rf"\b(?:answer|option|choice)(?:[ \t]+is\b[ \t]*:?|[ \t]*\**[ \t]*:)\**[ \t]*[*\"'`“(]*"
    rf"[ \t]*(?P<num>-?(?:{_NUM}))",
    re.IGNORECASE,
)
_LAST_LINE_NUMBER = re.compile(rf"[ \t*\"'`“(]*(?P<num>-?(?:{_NUM}))[ \t*\"'`”).!]*", re.IGNORECASE)


def _number_after(text: str, start: int) -> tuple[Fraction, int] | None:
    """The number at ``text[start:]`` (after blanks, an opening bracket or quotes) if it
    stands alone, with where it ends: not the start of "7 + 6", "13:00", "13th", "4 of"."""
    m = _LEADING_NUMBER.match(text, start)
    if m is None:
        return None
    return _lone(text, m.start("num"), m.end("num"))


def _lone(text: str, start: int, end: int) -> tuple[Fraction, int] | None:
    if start > 0 and (text[start - 1].isalnum() or text[start - 1] in ".,"):
        return None
    rest = text[end:]
    if re.match(r"[\w%°]|[.,:/]\d|[ \t]*(?:[-+*/×x÷=<>^]|\\times)[ \t]*[\d(]", rest):
        return None
    word = re.match(r"[ \t]*([A-Za-z]+)", rest)
    if word and word.group(1).lower() in _AFTER_BLOCKS:
        return None
    raw = text[start:end].replace(",", "")
    return Fraction(raw), end


def _option_number(option: str) -> Fraction | None:
    m = re.fullmatch(rf"[ \t]*(-?(?:{_NUM}))[ \t]*", option)
    return None if m is None else Fraction(m.group(1).replace(",", ""))


def _normal(text: str) -> str:
    return " ".join(text.split()).casefold().strip(" \t\"'`*“”‘’").rstrip(".!")


def _choice_contradictions(final: str, check: CheckSpec) -> list[str]:
    """The chosen option restated as another value, or a stated answer that is not it."""
    choices = check.choices
    if not choices or len(choices) > len(CHOICE_LETTERS):
        return []
    letter = extract_choice(final, choices)
    if letter is None:
        return []
    index = CHOICE_LETTERS.index(letter)
    option = choices[index]
    want = _option_number(option)
    others = {_normal(c) for i, c in enumerate(choices) if i != index}
    reasons: list[str] = []
    marker = re.compile(
        rf"(?<![\w'’])(?:\([ \t]*{letter}[ \t]*\)|\[[ \t]*{letter}[ \t]*\]"
        rf"|{letter}(?:[ \t]*[).:\]]|[ \t]*[-–—=]|[ \t]*,?[ \t]*(?:which|that)[ \t]+(?:is|equals)"
        rf"|[ \t]*,?[ \t]*i\.e\.,?|(?=[ \t]*\()))(?![\w])"
    )
    for m in marker.finditer(final):
        rest = final[m.end() : m.end() + 200].split("\n", 1)[0]  # the value: on its line
        said = " ".join(final[m.start() : m.end() + len(rest)].split())
        if want is not None:
            got = _number_after(final, m.end())
            if got is not None and got[0] != want:
                end = got[1]
                close = re.match(r"[ \t]*\)", final[end:])
                if close and final[m.start() : end].count("(") > final[m.start() : end].count(")"):
                    end += close.end()
                said = " ".join(final[m.start() : end].split())
                reasons.append(f"states {said}, while option {letter} is {option}")
        else:
            text = _normal(re.split(r"[.;!?]", rest, maxsplit=1)[0])
            if text in others:
                reasons.append(f"states {said}, while option {letter} is {option}")
    if want is None:
        return reasons
    stated = []
    for m in _STATED_NUMBER.finditer(final):
        got = _lone(final, m.start("num"), m.end("num"))
        if got is not None:
            stated.append((got[0], " ".join(m.group().split())))
    lines = [ln for ln in final.splitlines() if ln.strip()]
    if lines:
        m = _LAST_LINE_NUMBER.fullmatch(lines[-1])
        if m is not None:
            stated.append((Fraction(m.group("num").replace(",", "")), lines[-1].strip()))
    for value, said in stated:
        if value != want and value != index + 1:  # "4" may be the fourth option, D
            reasons.append(f"states {said!r}, while its pick {letter} is {option}")
    return reasons


_VERDICT = re.compile(
    r"(?:^|[.!?\n]|\banswer(?:[ \t]+is|[ \t]*\**[ \t]*:))[ \t*_\"'“(]*(?P<word>yes|no)\b"
    r"(?=[ \t*_\"'”)]*(?:[,.!;:\n]|$))",
    re.IGNORECASE,
)


def _yes_no_contradictions(final: str, check: CheckSpec) -> list[str]:
    """A yes/no answer that also gives the other verdict ("No, 15 is greater than 9. The
    answer is yes."): one of the two is wrong, whichever the grader took."""
    reference = _normal(check.answer or "")
    if reference not in ("yes", "no"):
        return []
    opposite = "no" if reference == "yes" else "yes"
    for m in _VERDICT.finditer(final):
        if final[: m.start("word")].rstrip(" \t*_\"'“(").endswith("?"):
            continue  # "Is 15 less than 9? No." answers a question of its own
        if m.group("word").lower() == opposite:
            line = final[m.start("word") :].split("\n", 1)[0]
            shown = line if len(line) <= 40 else line[:37] + "..."
            return [f"also says {m.group('word')!r} ({shown!r})"]
    return []


def contradictions(answer: str, check: CheckSpec) -> list[str]:
    """Why ``answer`` contradicts itself, one reason per statement, in order; empty when
    everything it states that can be checked agrees (see the module doc for what is).

    ``answer`` is a whole candidate or its final answer (what follows the last ``</think>``
    is read). ``check`` says what kind of answer it is: a ``choice`` check adds the chosen
    option's value, an ``exact`` yes/no check the other verdict word. Never raises for
    anything an answer can contain.
    """
    final = final_answer(answer)
    if not final:
        return []
    reasons = [s.reason() for s in statements(final) if not s.holds]
    if check.checker == "choice":
        reasons += _choice_contradictions(final, check)
    elif check.checker == "exact":
        reasons += _yes_no_contradictions(final, check)
    return list(dict.fromkeys(reasons))


# --- the bundled corpus: right answers for wrong reasons, and their controls --------------------

#: Shipped with the package: the bundled task's kinds (daemon/learning/tasks.py), each case
#: a check spec and an answer whose final answer is right; ``consistent`` says whether its
#: reasoning is too (a control) or contradicts it (a case the checker must reject).
CORPUS = Path(__file__).parent / "data" / "contradictions.jsonl"
_Z95 = 1.959963984540054


class CorpusCase(BaseModel):
    """One answer for the consistency corpus."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128, pattern=r"^\S+$")
    kind: str = Field(min_length=1, max_length=32)  # the bundled task's kind: add, choice, ...
    question: str = Field(min_length=1)
    check: CheckSpec
    answer: str = Field(min_length=1)
    consistent: bool  # True: a control (right reasoning); False: right answer, wrong reason
    why: str | None = None  # what is wrong with it, for a reader


def load_corpus(path: Path | None = None) -> list[CorpusCase]:
    """The cases of a consistency corpus (JSONL); raises ValueError naming the line of the
    first bad one, OSError when the file cannot be read."""
    path = CORPUS if path is None else Path(path)
    cases: list[CorpusCase] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            case = CorpusCase.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        except ValidationError as exc:
            raise ValueError(f"{path}:{number}: {validation_summary(exc)}") from None
        if case.id in seen:
            raise ValueError(f"{path}:{number}: duplicate id {case.id!r}")
        seen.add(case.id)
        cases.append(case)
    return cases


def wilson_interval(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k/n`` (95% by default); (0, 1) for n = 0.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at k = 0, which
    is the point: "0 of 40 accepted" still leaves up to about 9% possible.
    """
    if n <= 0:
        return (0.0, 1.0)
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class ConsistencyReport:
    """The checker stage on the corpus: how many wrong-reason answers it accepted (false
    accepts) and how many consistent ones it rejected (false rejects)."""

    cases: int  # answers whose reasoning contradicts their (right) final answer
    false_accepts: list[str] = field(default_factory=list)  # their ids, accepted
    controls: int = 0  # answers right for the right reason
    false_rejects: list[str] = field(default_factory=list)  # their ids, rejected

    @property
    def false_accept_rate(self) -> float | None:
        return len(self.false_accepts) / self.cases if self.cases else None

    @property
    def false_reject_rate(self) -> float | None:
        return len(self.false_rejects) / self.controls if self.controls else None

    def as_dict(self) -> dict[str, Any]:
        fa, fr = len(self.false_accepts), len(self.false_rejects)
        return {
            "false_accept_rate": self.false_accept_rate,
            "false_accepts": fa,
            "n": self.cases,
            "false_accept_ci95": list(wilson_interval(fa, self.cases)),
            "false_reject_rate": self.false_reject_rate,
            "false_rejects": fr,
            "controls": self.controls,
            "false_reject_ci95": list(wilson_interval(fr, self.controls)),
            "false_accept_ids": list(self.false_accepts),
            "false_reject_ids": list(self.false_rejects),
        }

    def line(self) -> str:
        """One line for ``eval verifier``."""
        fa, fr = len(self.false_accepts), len(self.false_rejects)
        return (
            f"checker consistency: false-accept {_pct(self.false_accept_rate)} "
            f"({fa}/{self.cases} right answers for a wrong reason, 95% CI "
            f"{_ci(fa, self.cases)}); false-reject {_pct(self.false_reject_rate)} "
            f"({fr}/{self.controls} consistent answers, 95% CI {_ci(fr, self.controls)})"
        )


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def _ci(k: int, n: int) -> str:
    lo, hi = wilson_interval(k, n)
    return f"{lo:.1%}-{hi:.1%}"
