"""The bundled task and its graders: grading rules, the labeled-set loader, the generator.

The generator's answers are checked against an independent recomputation from the
question text, so a wrong reference (which would make the eval gate reward wrong answers)
fails here rather than in a training run.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from daemon.learning.tasks import (
    HELDOUT_SEED_OFFSET,
    KIND_WEIGHTS,
    KINDS,
    build_task,
    bundled_heldout,
    bundled_prompts,
    generate_items,
    heldout_items,
    seed_prompts,
)
from daemon.operating.produce import parse_lines
from daemon.verifying.graders import (
    GRADERS,
    LabeledItem,
    LabeledSetError,
    extract_choice,
    extract_number,
    grade,
    load_labeled,
)
from streams.schemas import PromptMessage

# --- graders --------------------------------------------------------------------------------


def _item(grader: str, answer: str, **kw: object) -> LabeledItem:
    return LabeledItem(id="t1", question="q?", answer=answer, grader=grader, **kw)  # type: ignore[arg-type]


EXACT = _item("exact", "yes")
NUM = _item("numeric", "1000")
NEG = _item("numeric", "-7")
HALF = _item("numeric", "2.5", tolerance=0.01)
FRACTION = _item("numeric", "0.75")
GRAMS = _item("regex", r"(?<![\d.,])3,?000\s*(?:g|grams?)\b")
ANCHORED = _item("regex", r"^\W*paris\W*$")
CHOICES = ["18", "19", "21", "9"]
CHOICE = _item("choice", "B", choices=CHOICES)

GRADE_TABLE: list[tuple[LabeledItem, str, bool]] = [
    # exact: normalised equality, last line, stated answer; nothing looser.
    (EXACT, "yes", True),
    (EXACT, "  Yes. ", True),
    (EXACT, '"YES!"', True),
    (EXACT, "**Yes**", True),
    (EXACT, "`yes`", True),
    (EXACT, "15 is bigger than 9.\nYes", True),
    (EXACT, "The answer is yes.", True),
    (EXACT, "Answer: Yes", True),
    (EXACT, "<think>no, wait</think>yes", True),
    (EXACT, "yes</think>no", False),
    (EXACT, "no", False),
    (EXACT, "yesterday", False),
    (EXACT, "Well, yes and no, it depends on many things we cannot know.", False),
    (EXACT, "I think yes is right but\nthe other option is better", False),
    (EXACT, "", False),
    # numeric: the last number, thousands separators, negatives, decimals, fractions.
    (NUM, "1000", True),
    (NUM, "3 kg = 1,000 g", True),
    (NUM, "The answer is 1000.", True),
    (NUM, "1000.0", True),
    (NUM, "1, 000", False),  # a list "1, 0": not a thousands separator
    (NUM, "1000 or maybe 10", False),  # the last number counts
    (NUM, "10,000", False),
    (NUM, "no idea", False),
    (NUM, "<think>1000</think>I don't know", False),
    (NUM, "<think>maybe 7</think>1,000", True),
    (NEG, "3 - 10 = -7", True),
    (NEG, "−7", True),
    (NEG, "7", False),
    (NEG, "10-17", False),  # "-17" after a digit is a minus sign, not a negative 17
    (HALF, "2.5", True),
    (HALF, "about 2.505", True),  # within the item's absolute tolerance
    (HALF, "2.6", False),
    (FRACTION, "3/4", True),
    (FRACTION, "It is 3 / 4.", True),
    (FRACTION, "4/3", False),
    # regex: re.search on the final answer, case-insensitive.
    (GRAMS, "3000 grams", True),
    (GRAMS, "3 kilograms is 3,000 GRAMS.", True),
    (GRAMS, "3000g", True),
    (GRAMS, "30000 grams", False),
    (GRAMS, "13000 grams", False),
    (GRAMS, "3000 kilograms", False),
    (GRAMS, "3000", False),
    (GRAMS, "<think>3000 grams</think>300 grams", False),
    (ANCHORED, "Paris.", True),
    (ANCHORED, "PARIS", True),
    (ANCHORED, "Not Paris", False),
    # choice: the last standalone letter, or the text of an option.
    (CHOICE, "B", True),
    (CHOICE, "(B)", True),
    (CHOICE, "B)", True),
    (CHOICE, "B) 19", True),
    (CHOICE, "The answer is B.", True),
    (CHOICE, "the answer is b", True),
    (CHOICE, "Answer: (B)", True),
    (CHOICE, "A is wrong, C is wrong, so B", True),
    (CHOICE, "19", True),  # the text of option B
    (CHOICE, "The answer is 19.", True),
    (CHOICE, "A) 18\nB) 19\nC) 21\nD) 9\nThe answer is B", True),  # echoed options ignored
    (CHOICE, "A) 18\nB) 19\nC) 21\nD) 9", False),  # only an echo: no pick
    (CHOICE, "<think>A</think>B", True),
    (CHOICE, "B</think>A", False),
    (CHOICE, "C", False),
    (CHOICE, "(C)", False),
    (CHOICE, "B, no wait, C.", False),  # the last pick counts
    (CHOICE, "E", False),  # beyond the options
    (CHOICE, "A dozen is 12, so 19 would be my guess", False),  # "A" the article, no pick
    (CHOICE, "0 wrong", False),
]


@pytest.mark.parametrize(("item", "output", "expected"), GRADE_TABLE)
def test_grade_table(item: LabeledItem, output: str, expected: bool) -> None:
    assert grade(item, output) is expected


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12 + 7 = 19", 19.0),
        ("1,000", 1000.0),
        ("1,234,567.5 units", 1234567.5),
        ("1, 2", 2.0),
        ("1,2345", 2345.0),
        ("x is -3", -3.0),
        ("(-3)", -3.0),
        ("12-7", 7.0),
        ("2.5.", 2.5),
        ("3/4", 0.75),
        ("1/0", None),
        ("nineteen", None),
        ("", None),
    ],
)
def test_extract_number(text: str, value: float | None) -> None:
    assert extract_number(text) == value


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("D", "D"),
        ("[c]", "C"),
        ("I pick D.", "D"),
        ("option c", "C"),
        ("A is correct", "A"),
        ("A dozen eggs", None),
        ("the answer is a number", None),
        ("e.g. that one", None),
        ("21", "C"),
        ("nothing", None),
    ],
)
def test_extract_choice(text: str, letter: str | None) -> None:
    assert extract_choice(text, CHOICES) == letter


def test_grader_names() -> None:
    assert set(GRADERS) == {"exact", "numeric", "regex", "choice"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"grader": "regex", "answer": "(unclosed"}, "does not compile"),
        ({"grader": "choice", "answer": "E", "choices": ["1", "2", "3", "4"]}, "A, B, C, D"),
        ({"grader": "choice", "answer": "A"}, "choices"),
        ({"grader": "choice", "answer": "A", "choices": ["1", "1."]}, "distinct"),
        ({"grader": "numeric", "answer": "twelve"}, "must be a number"),
        ({"grader": "exact", "answer": "x", "choices": ["a", "b"]}, "only allowed"),
        ({"grader": "fuzzy", "answer": "x"}, "grader"),
        ({"grader": "exact", "answer": "x", "id": "has space"}, "id"),
        ({"grader": "exact", "answer": "x", "extra": 1}, "extra"),
    ],
)
def test_labeled_item_validation(fields: dict[str, object], message: str) -> None:
    data: dict[str, object] = {"id": "t1", "question": "q?", **fields}
    with pytest.raises(ValueError, match=message):
        LabeledItem.model_validate(data)


# --- load_labeled ---------------------------------------------------------------------------

GOOD = {"id": "a1", "question": "What is 1 + 1?", "answer": "2", "grader": "numeric"}


def _write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_labeled_reads_a_good_file(tmp_path: Path) -> None:
    choice = {
        "id": "c1",
        "question": "Pick\nA) x\nB) y",
        "answer": "B",
        "grader": "choice",
        "choices": ["x", "y"],
        "domain": "misc",
    }
    path = _write(tmp_path / "set.jsonl", json.dumps(GOOD), "", "  ", json.dumps(choice))
    items = load_labeled(path)
    assert [it.id for it in items] == ["a1", "c1"]
    assert items[1].choices == ["x", "y"] and items[1].domain == "misc"
    assert grade(items[0], "1 + 1 = 2") and grade(items[1], "B")


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({**GOOD, "id": "b", "grader": "fuzzy"}), "grader"),
        (json.dumps({**GOOD, "id": "b", "grader": "regex", "answer": "a(b"}), "does not compile"),
        (
            json.dumps(
                {**GOOD, "id": "b", "grader": "choice", "answer": "C", "choices": ["x", "y"]}
            ),
            "A, B",
        ),
        (json.dumps(GOOD), "duplicate id 'a1' (first on line 1)"),
    ],
)
def test_load_labeled_names_the_bad_line(tmp_path: Path, bad: str, reason: str) -> None:
    path = _write(
        tmp_path / "set.jsonl", json.dumps(GOOD), "", bad, json.dumps({**GOOD, "id": "z"})
    )
    with pytest.raises(LabeledSetError) as info:
        load_labeled(path)
    assert info.value.line == 3  # the blank line counts: numbers match an editor's
    assert str(info.value).startswith(f"{path}:3: ")
    assert reason in str(info.value)


def test_load_labeled_rejects_empty_and_missing(tmp_path: Path) -> None:
    with pytest.raises(LabeledSetError, match="no items"):
        load_labeled(_write(tmp_path / "empty.jsonl", "", "   "))
    with pytest.raises(LabeledSetError, match="cannot read"):
        load_labeled(tmp_path / "missing.jsonl")


# --- the generator, checked against an independent recomputation ----------------------------

# Our own table (not the generator's): unit word (either form) → (target unit, factor).
FACTORS = {
    "kilometer": ("meters", 1000),
    "meter": ("centimeters", 100),
    "kilogram": ("grams", 1000),
    "hour": ("minutes", 60),
    "minute": ("seconds", 60),
    "day": ("hours", 24),
    "dozen": ("eggs", 12),
    "liter": ("milliliters", 1000),
}
SYMBOL = {
    "meters": "m",
    "centimeters": "cm",
    "grams": "g",
    "minutes": "min",
    "seconds": "s",
    "hours": "h",
    "milliliters": "mL",
}
WRONG_UNIT = {
    "meters": "kilometers",
    "centimeters": "millimeters",
    "grams": "kilograms",
    "minutes": "hours",
    "seconds": "minutes",
    "hours": "days",
    "milliliters": "liters",
}


def _factor(unit: str, target: str) -> int:
    want, factor = FACTORS[unit.removesuffix("s")]
    assert want == target, (unit, target)
    return factor


def _truth(question: str) -> int | str:
    """The right answer, worked out from the question's words alone."""
    stem = question.split("\n", 1)[0]
    if m := re.fullmatch(r"What is (\d+) ([-+]|times) (\d+)\?.*", stem):
        a, op, b = int(m[1]), m[2], int(m[3])
        return a + b if op == "+" else a - b if op == "-" else a * b
    if m := re.search(r"has (\d+) (\w+) and (?:buys|finds|gets) (\d+) more\. How many \2", stem):
        return int(m[1]) + int(m[3])
    if m := re.search(
        r"had (\d+) (\w+) and (?:gave (\d+) of them away|lost (\d+) of them)\.", stem
    ):
        return int(m[1]) - int(m[3] or m[4])
    if m := re.search(r"There are (\d+) \w+ with (\d+) (\w+) in each\. How many \3", stem):
        return int(m[1]) * int(m[2])
    if m := re.fullmatch(r"How many (\w+) are in (\d+) (\w+)\?.*", stem):
        return int(m[2]) * _factor(m[3], m[1])
    if m := re.fullmatch(r"Convert (\d+) (\w+) to (\w+)\..*", stem):
        return int(m[1]) * _factor(m[2], m[3])
    if m := re.fullmatch(r"Is (\d+) (greater|less) than (\d+)\? Answer yes or no\.", stem):
        a, b = int(m[1]), int(m[3])
        return "yes" if (a > b if m[2] == "greater" else a < b) else "no"
    raise AssertionError(f"unrecognised question: {question!r}")


GRADER_OF_KIND = {
    "add": "numeric",
    "sub": "numeric",
    "mul": "numeric",
    "word": "numeric",
    "units": "numeric",
    "compare": "exact",
    "units_text": "regex",
    "choice": "choice",
}
ITEMS = generate_items(200, 3)


def test_generate_items_is_deterministic_per_seed() -> None:
    assert generate_items(50, 3) == ITEMS[:50]  # same seed, same items (and prefix-stable)
    other = generate_items(50, 4)
    assert [it.question for it in other] != [it.question for it in ITEMS[:50]]
    assert len({it.question for it in ITEMS}) == len(ITEMS)
    assert len({it.id for it in ITEMS}) == len(ITEMS)


def test_every_kind_in_its_proportion() -> None:
    kinds = Counter(it.id.split("-")[1] for it in generate_items(40, 9))
    assert kinds == {k: 2 * w for k, w in KIND_WEIGHTS.items()}
    assert set(KINDS) == set(GRADER_OF_KIND)


@pytest.mark.parametrize("item", ITEMS, ids=lambda it: it.id)
def test_generated_item_is_right(item: LabeledItem) -> None:
    prefix, kind, seed, index = item.id.split("-")
    assert (prefix, seed) == ("task", "3") and index.isdigit()
    assert item.grader == GRADER_OF_KIND[kind]
    truth = _truth(item.question)
    assert item.domain == (
        "units" if re.search(r"How many \w+ are in|Convert", item.question) else "arithmetic"
    )
    if item.grader == "numeric":
        assert item.question.endswith("Answer with a number.")
        assert isinstance(truth, int) and truth >= 0 and item.answer == str(truth)
        good, wrong = [str(truth), f"The answer is {truth:,}."], [str(truth + 1)]
    elif item.grader == "exact":
        assert item.answer == truth
        good, wrong = [str(truth).capitalize() + "."], ["no" if truth == "yes" else "yes"]
    elif item.grader == "choice":
        assert item.question.endswith("Answer with the letter.") and item.choices is not None
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        listed = re.findall(r"^([A-D])\) (.+)$", item.question, re.MULTILINE)
        assert listed == list(zip("ABCD", item.choices, strict=True))
        assert item.choices["ABCD".index(item.answer)] == str(truth)
        wrong_letter = next(x for x in "ABCD" if x != item.answer)
        good, wrong = [item.answer, f"The answer is ({item.answer})."], [wrong_letter]
    else:
        assert item.question.endswith("Answer with the number followed by the unit.")
        target = re.fullmatch(r"Convert \d+ \w+ to (\w+)\..*", item.question)[1]  # type: ignore[index]
        good = [f"{truth} {target}", f"It is {truth:,} {target}.", f"{truth}{SYMBOL[target]}"]
        wrong = [f"{truth * 10} {target}", f"{truth} {WRONG_UNIT[target]}", str(truth)]
    for output in good:
        assert grade(item, output), output
    for output in wrong:
        assert not grade(item, output), output
    # A wrong answer fails, unless the right number really is 0 (a choice wants a letter).
    assert grade(item, "0 wrong") is (truth == 0 and item.grader == "numeric")


# --- seed prompts, build_task, the bundled files ---------------------------------------------


def test_seed_prompts_are_the_items_without_answers() -> None:
    prompts = seed_prompts(60, 3)
    for p, item in zip(prompts, ITEMS[:60], strict=True):
        assert PromptMessage.model_validate_json(p.model_dump_json()) == p
        assert (p.id, p.prompt, p.domain) == (item.id, item.question, item.domain)
        assert set(p.metadata) == {"kind"} and p.metadata["kind"] == item.id.split("-")[1]
        assert item.answer not in json.dumps(p.metadata)


def test_heldout_redraws_avoided_questions_as_the_same_kind() -> None:
    natural = generate_items(10, 3 + HELDOUT_SEED_OFFSET)
    avoid = [it.question for it in natural[::2]]
    kept = heldout_items(10, 3, avoid=avoid)
    assert len(kept) == 10 and len({it.question for it in kept}) == 10
    assert not {it.question for it in kept} & set(avoid)
    assert kept[0] != natural[0]  # the collision was redrawn...
    assert [it.id for it in kept] == [it.id for it in natural]  # ...as the same kind
    assert heldout_items(10, 3) == natural  # nothing to avoid: exactly generate_items


def _questions_of(prompts_path: Path) -> list[str]:
    parsed = [m for _, m in parse_lines(prompts_path.read_text().splitlines())]
    assert all(isinstance(m, PromptMessage) for m in parsed), parsed
    return [m.prompt for m in parsed if isinstance(m, PromptMessage) and m.prompt]


def test_build_task_writes_disjoint_loadable_files(tmp_path: Path) -> None:
    out = tmp_path / "task"
    prompts_path, heldout_path = build_task(out, n_prompts=60, n_heldout=20, seed=3)
    assert sorted(p.name for p in out.iterdir()) == ["heldout.jsonl", "prompts.jsonl"]  # no temps
    questions = _questions_of(prompts_path)
    assert questions == [p.prompt for p in seed_prompts(60, 3)]
    for line in prompts_path.read_text().splitlines():
        # no metadata, and no answer outside the verifier's check
        assert set(json.loads(line)) == {"id", "prompt", "domain", "check"}
    heldout = load_labeled(heldout_path)
    assert len(heldout) == 20
    assert not {it.question for it in heldout} & set(questions)
    assert not {it.id for it in heldout} & {p.id for p in seed_prompts(60, 3)}
    before = heldout_path.read_bytes()
    build_task(out, n_prompts=60, n_heldout=20, seed=3)
    assert heldout_path.read_bytes() == before


def test_build_task_rejects_an_empty_heldout(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_heldout"):
        build_task(tmp_path, n_heldout=0)


def test_bundled_files_load_and_match_build_task(tmp_path: Path) -> None:
    heldout = load_labeled(bundled_heldout())
    assert Counter(it.id.split("-")[1] for it in heldout) == {
        k: 2 * w for k, w in KIND_WEIGHTS.items()
    }
    assert len(_questions_of(bundled_prompts())) == 200
    for item in heldout:
        truth = _truth(item.question)
        if item.grader in ("numeric", "exact"):
            assert item.answer == str(truth)
    prompts_path, heldout_path = build_task(tmp_path)
    assert prompts_path.read_bytes() == bundled_prompts().read_bytes()
    assert heldout_path.read_bytes() == bundled_heldout().read_bytes()
