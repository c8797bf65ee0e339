"""The synthetic suite: determinism, coverage, and every answer verified by an
independent checker written here (not the generator's code)."""
from __future__ import annotations

import re

import pytest

from icp_influence.synthetic import FAMILIES, generate_family, make_synthetic_pool, split_pool

MONTHS = "January February March April May June July August September October November December".split()
WORD_NUMBERS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90,
}
CAPITALS = {  # an independent copy of the fact table
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
    "Greece": "Athens", "Poland": "Warsaw", "Portugal": "Lisbon", "Austria": "Vienna",
    "Ireland": "Dublin", "Cuba": "Havana", "Chile": "Santiago", "Sweden": "Stockholm",
    "Finland": "Helsinki", "Thailand": "Bangkok",
}
OPPOSITE_PAIRS = {frozenset(p) for p in [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"),
    ("early", "late"), ("open", "closed"), ("high", "low"), ("rich", "poor"), ("strong", "weak"),
    ("young", "old"), ("full", "empty"), ("hard", "soft"), ("wet", "dry"), ("loud", "quiet"),
    ("long", "short"), ("thick", "thin"), ("clean", "dirty"), ("near", "far"), ("up", "down")]}
IRREGULAR = {"child": "children", "mouse": "mice", "tooth": "teeth", "man": "men", "foot": "feet",
             "goose": "geese", "person": "people", "leaf": "leaves", "knife": "knives", "wolf": "wolves"}
UNIT_FACTORS = {("kilometres", "metres"): 1000, ("kilograms", "grams"): 1000, ("hours", "minutes"): 60,
                ("minutes", "seconds"): 60, ("metres", "centimetres"): 100, ("litres", "millilitres"): 1000}


def words_to_number(s: str) -> int:
    return sum(WORD_NUMBERS[w] for w in s.split("-"))


def regular_plural(w: str) -> str:
    if w in IRREGULAR:
        return IRREGULAR[w]
    if re.search(r"[^aeiou]y$", w):
        return w[:-1] + "ies"
    if re.search(r"(s|x|ch|sh|o)$", w):
        return w + "es"
    return w + "s"


def check(task: str, instruction: str, inp: str, out: str) -> bool:
    if task == "addition":
        a, b = map(int, inp.split(" + "))
        return int(out) == a + b
    if task == "subtraction":
        a, b = map(int, inp.split(" - "))
        return int(out) == a - b
    if task == "unit_conversion":
        m = re.fullmatch(r"Convert (\w+) to (\w+)\.", instruction)
        q, unit = inp.split()
        v, unit2 = out.split()
        return unit == m[1] and unit2 == m[2] and int(v) == int(q) * UNIT_FACTORS[(m[1], m[2])]
    if task == "word_reversal":
        return "".join(reversed(inp)) == out
    if task == "capitalisation":
        return out == "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in inp)
    if task == "antonym":
        return frozenset((inp, out)) in OPPOSITE_PAIRS
    if task == "plural":
        return out == regular_plural(inp)
    if task == "sort_numbers":
        xs, ys = [int(v) for v in inp.split(", ")], [int(v) for v in out.split(", ")]
        return sorted(xs) == ys and all(ys[i] < ys[i + 1] for i in range(len(ys) - 1))
    if task == "country_capital":
        return CAPITALS[inp] == out
    if task == "date_format":
        y, m, d = map(int, inp.split("-"))
        return out == f"{d} {MONTHS[m - 1]} {y}"
    if task == "number_words":
        return words_to_number(out) == int(inp)
    if task == "letter_count":
        m = re.fullmatch(r"letter (\w) in (\w+)", inp)
        return int(out) == sum(1 for c in m[2] if c == m[1])
    if task == "sentiment":
        pos = {"wonderful", "delightful", "excellent", "great", "lovely", "fantastic"}
        adj = inp.rstrip(".").split()[-1]
        return out == ("positive" if adj in pos else "negative")
    if task == "field_extraction":
        fields = dict(part.split(": ") for part in inp.split("; "))
        return out == fields["city"]
    raise AssertionError(f"no checker for {task}")


def test_at_least_12_families():
    assert len(FAMILIES) >= 12


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_answer_passes_the_independent_checker(family):
    examples = generate_family(family, 200, seed=3)
    bad = [ex for ex in examples if not check(family, ex.instruction, ex.input, ex.output)]
    assert not bad, f"{len(bad)} wrong answers, e.g. {bad[0]}"
    assert len({(e.input, e.output) for e in examples}) > 5  # not degenerate


@pytest.mark.parametrize("family", list(FAMILIES))
def test_families_are_deterministic(family):
    a = generate_family(family, 50, seed=11)
    b = generate_family(family, 50, seed=11)
    c = generate_family(family, 50, seed=12)
    assert [e.to_dict() for e in a] == [e.to_dict() for e in b]
    assert [e.to_dict() for e in a] != [e.to_dict() for e in c] or family in ("antonym",)


def test_pool_is_balanced_and_interleaved():
    pool = make_synthetic_pool(30, seed=0)
    counts = {f: sum(e.task == f for e in pool) for f in pool.families()}
    assert len(counts) == 14 and set(counts.values()) == {2, 3}
    assert [e.task for e in pool[:14]] == list(FAMILIES)
    assert make_synthetic_pool(30, seed=0).ids == pool.ids


def test_adding_a_family_does_not_shift_others():
    a = make_synthetic_pool(20, families=["addition", "plural"], seed=5)
    b = make_synthetic_pool(30, families=["addition", "plural", "sentiment"], seed=5)
    assert [e.to_dict() for e in a if e.task == "addition"] == [e.to_dict() for e in b if e.task == "addition"]


def test_split_pool_holds_out_per_family():
    pool = make_synthetic_pool(56, seed=0)
    train, held = split_pool(pool, 1, seed=0)
    assert len(held) == 14 and len(train) == 42
    assert not set(train.ids) & set(held.ids)
    assert sorted(e.task for e in held) == sorted(FAMILIES)
