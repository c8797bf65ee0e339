"""The synthetic instruction suite: deterministic task families with checkable answers.

Each family is a generator ``f(rng) -> (instruction, input, output)`` drawn from a
seeded :class:`numpy.random.Generator`, so the same seed always gives the same examples.
Answers are short and an independent checker can verify them (see ``tests/``). Families
label the examples (``Example.task``) so in- and out-of-domain splits are easy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .data import Example, Pool
from .errors import ConfigError

Generated = tuple[str, str, str]

COUNTRY_CAPITALS: dict[str, str] = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Japan": "Tokyo", "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Peru": "Lima", "Norway": "Oslo", "Greece": "Athens", "Poland": "Warsaw",
    "Portugal": "Lisbon", "Austria": "Vienna", "Ireland": "Dublin", "Cuba": "Havana",
    "Chile": "Santiago", "Sweden": "Stockholm", "Finland": "Helsinki", "Thailand": "Bangkok",
}
ANTONYMS: dict[str, str] = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "light": "dark",
    "early": "late", "open": "closed", "high": "low", "rich": "poor", "strong": "weak",
    "young": "old", "full": "empty", "hard": "soft", "wet": "dry", "loud": "quiet",
    "long": "short", "thick": "thin", "clean": "dirty", "near": "far", "up": "down",
}
PLURALS: dict[str, str] = {
    "cat": "cats", "dog": "dogs", "box": "boxes", "city": "cities", "child": "children",
    "mouse": "mice", "leaf": "leaves", "tooth": "teeth", "bus": "buses", "story": "stories",
    "man": "men", "foot": "feet", "knife": "knives", "baby": "babies", "church": "churches",
    "goose": "geese", "wolf": "wolves", "person": "people", "tomato": "tomatoes", "party": "parties",
}
WORDS = [
    "apple", "river", "garden", "planet", "window", "silver", "yellow", "castle", "forest",
    "pencil", "rocket", "button", "dragon", "summer", "mirror", "candle", "orange", "violin",
    "bridge", "marble", "jungle", "anchor", "ticket", "meadow", "puzzle", "harbor", "lemon",
]
NAMES = ["Alice", "Bruno", "Chen", "Dara", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Julia",
         "Kofi", "Lena", "Mateo", "Nora", "Omar", "Priya"]
CITIES = ["Paris", "Lagos", "Lima", "Oslo", "Seoul", "Quito", "Perth", "Cairo", "Delhi", "Rome"]
POSITIVE = ["wonderful", "delightful", "excellent", "great", "lovely", "fantastic"]
NEGATIVE = ["terrible", "awful", "dreadful", "horrible", "boring", "disappointing"]
THINGS = ["movie", "meal", "concert", "book", "hotel", "game", "trip", "show"]
ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
UNITS = [("kilometres", "metres", 1000), ("kilograms", "grams", 1000), ("hours", "minutes", 60),
         ("minutes", "seconds", 60), ("metres", "centimetres", 100), ("litres", "millilitres", 1000)]


def _pick(rng: np.random.Generator, seq: Sequence):
    return seq[int(rng.integers(len(seq)))]


def number_to_words(n: int) -> str:
    """English words for 0 ≤ n ≤ 99 (``42 -> "forty-two"``)."""
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] + ("" if ones == 0 else "-" + ONES[ones])


def gen_addition(rng) -> Generated:
    a, b = int(rng.integers(10, 100)), int(rng.integers(10, 100))
    return "Add the two numbers.", f"{a} + {b}", str(a + b)


def gen_subtraction(rng) -> Generated:
    a, b = int(rng.integers(50, 100)), int(rng.integers(1, 50))
    return "Subtract the second number from the first.", f"{a} - {b}", str(a - b)


def gen_unit_conversion(rng) -> Generated:
    big, small, factor = _pick(rng, UNITS)
    q = int(rng.integers(2, 10))
    return f"Convert {big} to {small}.", f"{q} {big}", f"{q * factor} {small}"


def gen_word_reversal(rng) -> Generated:
    w = _pick(rng, WORDS)
    return "Reverse the letters of the word.", w, w[::-1]


def gen_capitalisation(rng) -> Generated:
    words = [_pick(rng, WORDS) for _ in range(int(rng.integers(2, 4)))]
    s = " ".join(words)
    return "Rewrite the text in capital letters.", s, s.upper()


def gen_antonym(rng) -> Generated:
    w = _pick(rng, sorted(ANTONYMS))
    return "Give the opposite of the word.", w, ANTONYMS[w]


def gen_plural(rng) -> Generated:
    w = _pick(rng, sorted(PLURALS))
    return "Give the plural of the noun.", w, PLURALS[w]


def gen_sort_numbers(rng) -> Generated:
    xs = [int(v) for v in rng.choice(np.arange(1, 100), size=int(rng.integers(3, 6)), replace=False)]
    return ("Sort the numbers from smallest to largest.", ", ".join(map(str, xs)),
            ", ".join(map(str, sorted(xs))))


def gen_country_capital(rng) -> Generated:
    c = _pick(rng, sorted(COUNTRY_CAPITALS))
    return "Name the capital city of the country.", c, COUNTRY_CAPITALS[c]


def gen_date_format(rng) -> Generated:
    y, m, d = int(rng.integers(1990, 2030)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    return "Rewrite the date as day month year.", f"{y:04d}-{m:02d}-{d:02d}", f"{d} {MONTHS[m - 1]} {y}"


def gen_number_words(rng) -> Generated:
    n = int(rng.integers(0, 100))
    return "Write the number in English words.", str(n), number_to_words(n)


def gen_letter_count(rng) -> Generated:
    w = _pick(rng, WORDS)
    letter = _pick(rng, sorted(set(w)))
    return "Count how many times the letter appears in the word.", f"letter {letter} in {w}", str(w.count(letter))


def gen_sentiment(rng) -> Generated:
    positive = bool(rng.integers(2))
    adj = _pick(rng, POSITIVE if positive else NEGATIVE)
    thing = _pick(rng, THINGS)
    return ("Is the sentiment of the sentence positive or negative?",
            f"The {thing} was {adj}.", "positive" if positive else "negative")


def gen_field_extraction(rng) -> Generated:
    name, city = _pick(rng, NAMES), _pick(rng, CITIES)
    age = int(rng.integers(18, 90))
    return ("Extract the city from the record.", f"name: {name}; age: {age}; city: {city}", city)


@dataclass(frozen=True)
class Family:
    """A synthetic task family: a name, a one-line description and its generator."""

    name: str
    description: str
    generate: Callable[[np.random.Generator], Generated]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("addition", "add two 2-digit numbers", gen_addition),
        Family("subtraction", "subtract a smaller number", gen_subtraction),
        Family("unit_conversion", "convert a quantity to a smaller unit", gen_unit_conversion),
        Family("word_reversal", "reverse a word's letters", gen_word_reversal),
        Family("capitalisation", "upper-case a phrase", gen_capitalisation),
        Family("antonym", "opposite of an adjective", gen_antonym),
        Family("plural", "plural of a noun (incl. irregular)", gen_plural),
        Family("sort_numbers", "sort a list of numbers", gen_sort_numbers),
        Family("country_capital", "capital of a country (fact table)", gen_country_capital),
        Family("date_format", "ISO date to 'day Month year'", gen_date_format),
        Family("number_words", "0-99 in English words", gen_number_words),
        Family("letter_count", "count a letter in a word", gen_letter_count),
        Family("sentiment", "sentiment of a templated sentence", gen_sentiment),
        Family("field_extraction", "pull the city out of a record", gen_field_extraction),
    ]
}


def family_names() -> list[str]:
    return list(FAMILIES)


def generate_family(name: str, n: int, seed: int = 0) -> list[Example]:
    """``n`` examples of one family; ids ``"<family>-<i>"``. Deterministic in ``seed``."""
    if name not in FAMILIES:
        raise ConfigError(f"Unknown task family {name!r}; choose from {', '.join(FAMILIES)}.")
    # One independent stream per (seed, family) so adding a family never shifts another.
    rng = np.random.default_rng([seed, list(FAMILIES).index(name)])
    out = []
    for i in range(n):
        instruction, inp, output = FAMILIES[name].generate(rng)
        out.append(Example(id=f"{name}-{i:04d}", instruction=instruction, input=inp,
                           output=output, task=name))
    return out


def make_synthetic_pool(
    n: int, families: Sequence[str] | None = None, seed: int = 0, *, name: str = "synthetic"
) -> Pool:
    """A pool of ``n`` examples spread evenly (round-robin) over ``families``.

    >>> pool = make_synthetic_pool(28, seed=0)
    >>> len(pool), len(pool.families())
    (28, 14)
    """
    fams = list(families) if families is not None else family_names()
    if n < 1:
        raise ConfigError(f"n must be ≥ 1, got {n}.")
    if not fams:
        raise ConfigError("families is empty; pass at least one family name.")
    counts = [n // len(fams) + (1 if i < n % len(fams) else 0) for i in range(len(fams))]
    per_family = {f: generate_family(f, c, seed) for f, c in zip(fams, counts)}
    # Interleave so any prefix of the pool covers the families evenly.
    examples: list[Example] = []
    for i in range(max(counts)):
        for f in fams:
            if i < len(per_family[f]):
                examples.append(per_family[f][i])
    return Pool(examples, name=name)


def split_pool(pool: Pool, n_heldout_per_family: int, seed: int = 0) -> tuple[Pool, Pool]:
    """Split into (train, held-out) with ``n_heldout_per_family`` held out of each family."""
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for fam in pool.families():
        ids = [ex.id for ex in pool if ex.task == fam]
        k = min(n_heldout_per_family, len(ids))
        held.update(rng.choice(ids, size=k, replace=False).tolist())
    train = [ex for ex in pool if ex.id not in held]
    test = [ex for ex in pool if ex.id in held]
    return Pool(train, name=f"{pool.name}-train"), Pool(test, name=f"{pool.name}-heldout")
