"""The project's open instruction set (CC BY 4.0): realistic, free-form instruction following.

520 examples in 26 everyday categories (explain, define, list, summarise, rewrite,
classify, extract, compare, brainstorm, plan, code, unit conversion, arithmetic word
problems, grammar, plain English, email, pros and cons, recommendations, science, history,
geography, how-to, cooking, money, health habits, words), written for this project; the
datasheet is ``data/instructions/README.md``. Each category is one JSON Lines file
``data/instructions/<category>.jsonl`` with Alpaca fields plus ``category``.

* :func:`load_instructions` — the set (or some categories) as a :class:`~icp_influence.data.Pool`,
  in a fixed order (categories alphabetically, ids in file order); ``Example.task`` is the
  category.
* :func:`split_by_category` — a seeded split that takes the same number of examples from
  every category for each part (pool, probe candidates, held-out evaluation, ...).
* :func:`corrupt` — controlled label noise of three labelled kinds: the answer swapped
  with one from **another category**, swapped **within the same category**, and
  **truncated** (cut to its first third, mid-sentence).

``python -m icp_influence.instructions`` prints a summary of the set (``--jsonl``: every example).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .data import Example, Pool
from .errors import ConfigError, DataFormatError

LICENSE = "CC BY 4.0"
FIELDS = ("id", "category", "instruction", "input", "output")
CORRUPTIONS = ("swap_other_category", "swap_same_category", "truncate")


def instructions_dir() -> Path:
    """The folder holding the category files (``<data_dir>/instructions``)."""
    from .paths import data_dir

    return data_dir() / "instructions"


def categories(folder: str | Path | None = None) -> list[str]:
    """Every category (one per ``.jsonl`` file), sorted."""
    folder = Path(folder) if folder is not None else instructions_dir()
    cats = sorted(p.stem for p in folder.glob("*.jsonl"))
    if not cats:
        raise DataFormatError(f"No instruction files (*.jsonl) in {folder}: run from a checkout of the project, "
                              "or set ICP_DATA_DIR to the folder that holds instructions/.")
    return cats


def _read_category(path: Path) -> list[Example]:
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(f"{path}: line {lineno} is not valid JSON ({e.msg}); fix that line.") from None
        missing = [f for f in FIELDS if f not in rec]
        if missing or rec.get("category") != path.stem:
            raise DataFormatError(f"{path}: line {lineno} needs the fields {', '.join(FIELDS)} with category "
                                  f"{path.stem!r} (missing {missing}, category {rec.get('category')!r}).")
        out.append(Example(id=rec["id"], instruction=rec["instruction"], input=rec["input"], output=rec["output"],
                           task=rec["category"], meta={"category": rec["category"], "source": "instructions"}))
    return out


def load_instructions(cats: Iterable[str] | None = None, *, folder: str | Path | None = None) -> Pool:
    """The instruction set (or the named categories) as a Pool, in a fixed order."""
    folder = Path(folder) if folder is not None else instructions_dir()
    known = categories(folder)
    wanted = known if cats is None else list(cats)
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise ConfigError(f"Unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; known: {', '.join(known)}.")
    return Pool([ex for c in sorted(wanted) for ex in _read_category(folder / f"{c}.jsonl")], name="instructions")


#: The three answers of one instruction in the length-variant pool, shortest first.
LENGTH_VERSIONS = ("short", "middle", "long")


def length_variants_dir() -> Path:
    """The folder of the length-variant pool (``<data_dir>/length_variants``)."""
    from .paths import data_dir

    return data_dir() / "length_variants"


def load_length_variants(folder: str | Path | None = None, *, base: Pool | None = None) -> Pool:
    """The length-variant pool: for each chosen instruction, the same instruction and input
    with three correct answers — ``short`` (as short as the task allows), ``middle`` (the
    instruction set's own answer) and ``long`` (an expanded one, 200 tokens or more).

    Ids are ``<id>@short``, ``<id>@middle`` and ``<id>@long``; ``meta`` records
    ``base_id`` and ``version``; ``task`` is the category. Order: categories
    alphabetically, then file order, then the three versions. The files
    (``<category>.jsonl`` with ``id``, ``category``, ``short``, ``long``) are described
    in the instruction set's datasheet.
    """
    folder = Path(folder) if folder is not None else length_variants_dir()
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise DataFormatError(f"No length-variant files (*.jsonl) in {folder}.")
    base = base if base is not None else load_instructions()
    out: list[Example] = []
    for path in files:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataFormatError(f"{path}: line {lineno} is not valid JSON ({e.msg}).") from None
            if set(rec) != {"id", "category", "short", "long"} or rec["category"] != path.stem:
                raise DataFormatError(f"{path}: line {lineno} needs exactly the fields id, category, short, long "
                                      f"with category {path.stem!r}.")
            ex = base.by_id(rec["id"])
            answers = {"short": rec["short"], "middle": ex.output, "long": rec["long"]}
            for version in LENGTH_VERSIONS:
                out.append(Example(id=f"{ex.id}@{version}", instruction=ex.instruction, input=ex.input,
                                   output=answers[version], task=ex.task,
                                   meta={"category": ex.task, "source": "length_variants", "base_id": ex.id,
                                         "version": version}))
    return Pool(out, name="length_variants")


def split_by_category(pool: Pool, sizes: dict[str, int], *, seed: int = 0) -> dict[str, Pool]:
    """Split every category the same way: ``sizes = {"pool": 12, "probes": 3, "eval": 5}``
    takes that many examples of each category for each part (seeded; the rest is dropped).
    Parts keep the pool's order."""
    by_cat: dict[str | None, list[int]] = {}
    for i, ex in enumerate(pool):
        by_cat.setdefault(ex.task, []).append(i)
    need = sum(sizes.values())
    small = {c: len(ix) for c, ix in by_cat.items() if len(ix) < need}
    if small:
        raise ConfigError(f"split_by_category needs {need} examples per category; these have fewer: {small}.")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {name: [] for name in sizes}
    for c in sorted(by_cat, key=str):
        order = rng.permutation(by_cat[c]).tolist()
        start = 0
        for name, n in sizes.items():
            parts[name].extend(order[start:start + n])
            start += n
    return {name: pool.take(sorted(ix), name=name) for name, ix in parts.items()}


def truncate_answer(text: str, fraction: float = 1 / 3) -> str:
    """The first ``fraction`` of the answer's words (at least one word), cut mid-sentence."""
    words = text.split()
    keep = max(1, int(len(words) * fraction))
    return " ".join(words[:keep])


def corrupt(pool: Pool, fraction: float, *, kinds: Sequence[str] = CORRUPTIONS, seed: int = 0) -> Pool:
    """Corrupt ``fraction`` of the outputs, in equal shares of ``kinds`` (labelled in ``meta``).

    * ``swap_other_category``: the output of a random example of another category;
    * ``swap_same_category``: the output of another example of the same category;
    * ``truncate``: the first third of the output's words.

    A corrupted example keeps its id and prompt and gets ``meta["noisy"] = True``,
    ``meta["corruption"] = kind`` and ``meta["clean_output"]``. Deterministic given ``seed``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"corruption fraction must be in [0, 1], got {fraction}.")
    bad = [k for k in kinds if k not in CORRUPTIONS]
    if bad or not kinds:
        raise ConfigError(f"Unknown corruption kind(s) {bad}; choose from {', '.join(CORRUPTIONS)}.")
    rng = np.random.default_rng(seed)
    n = int(round(fraction * len(pool)))
    chosen = rng.choice(len(pool), size=n, replace=False).tolist() if n else []
    kind_of = {i: kinds[j % len(kinds)] for j, i in enumerate(chosen)}
    examples = list(pool)
    out = []
    for i, ex in enumerate(examples):
        kind = kind_of.get(i)
        if kind is None:
            out.append(ex)
            continue
        if kind == "truncate":
            wrong = truncate_answer(ex.output)
        else:
            same = kind == "swap_same_category"
            options = [e.output for e in examples
                       if (e.task == ex.task) == same and e.id != ex.id and e.output != ex.output]
            if not options:
                raise ConfigError(f"No example to swap with for {ex.id!r} ({kind}); the pool is too small.")
            wrong = options[int(rng.integers(len(options)))]
        out.append(ex.with_output(wrong, noisy=True, corruption=kind, clean_output=ex.output))
    return Pool(out, name=pool.name)


def summary(pool: Pool | None = None, tokenizer=None) -> dict:
    """Counts per category and output lengths (words; tokens when a tokenizer is given)."""
    pool = pool if pool is not None else load_instructions()
    cats: dict[str, int] = {}
    for ex in pool:
        cats[str(ex.task)] = cats.get(str(ex.task), 0) + 1
    words = np.array([len(ex.output.split()) for ex in pool])
    out = {"n": len(pool), "n_categories": len(cats), "per_category": cats, "license": LICENSE,
           "with_input": int(sum(1 for ex in pool if ex.input)),
           "output_words": {"median": float(np.median(words)), "min": int(words.min()), "max": int(words.max())}}
    if tokenizer is not None:
        toks = np.array([len(tokenizer(" " + ex.output, add_special_tokens=False).input_ids) for ex in pool])
        out["output_tokens"] = {"median": float(np.median(toks)), "p10": float(np.percentile(toks, 10)),
                                "p90": float(np.percentile(toks, 90)), "max": int(toks.max()),
                                "over_150": int((toks > 150).sum())}
    return out


# ---------------------------------------------------------------- the datasheet's numbers

DATASHEET_BEGIN = "<!-- datasheet-stats:begin (generated by `python -m icp_influence.instructions --datasheet`) -->"
DATASHEET_END = "<!-- datasheet-stats:end -->"


def _histogram(values: np.ndarray, edges: Sequence[int], width: int = 40) -> list[str]:
    counts = [int(((values >= lo) & (values < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])]
    top = max(counts) or 1
    return [f"{lo:>4}–{hi - 1:<4} {'█' * max(1 if c else 0, round(width * c / top)):<{width}} {c}"
            for (lo, hi), c in zip(zip(edges[:-1], edges[1:]), counts)]


def datasheet_stats(pool: Pool | None = None, tokenizer=None) -> str:
    """The Markdown block of counts and length histograms in ``data/instructions/README.md``."""
    pool = pool if pool is not None else load_instructions()
    if tokenizer is None:
        from .models import load_tokenizer

        tokenizer = load_tokenizer()
    info = summary(pool, tokenizer)
    out_tok = np.array([len(tokenizer(" " + e.output, add_special_tokens=False).input_ids) for e in pool])
    prompt_tok = np.array([len(tokenizer(e.prompt, add_special_tokens=False).input_ids) for e in pool])
    t = info["output_tokens"]
    lines = [DATASHEET_BEGIN, "",
             f"**{info['n']} examples** in **{info['n_categories']} categories**; {info['with_input']} have an input.",
             f"Answer length (SmolLM2 tokens): median {t['median']:.1f}, 10th percentile {t['p10']:.0f}, "
             f"90th percentile {t['p90']:.0f}, longest {t['max']}; {t['over_150']} answers are longer than 150 tokens.",
             f"Prompt length (instruction + input, SmolLM2 tokens): median {np.median(prompt_tok):.0f}, "
             f"longest {prompt_tok.max()}.", "",
             "| category | examples | median answer tokens |", "|---|---:|---:|"]
    for cat in sorted(info["per_category"]):
        m = np.median([n for n, e in zip(out_tok, pool) if e.task == cat])
        lines.append(f"| {cat} | {info['per_category'][cat]} | {m:.0f} |")
    lines += ["", "Answer length, SmolLM2 tokens (one bar per bin; the count at the end):", "", "```"]
    lines += _histogram(out_tok, [0, 25, 50, 75, 100, 125, 150, 200, 250, 350])
    lines += ["```", "", "Prompt length, SmolLM2 tokens:", "", "```"]
    lines += _histogram(prompt_tok, [0, 10, 20, 40, 80, 160, 240])
    lines += ["```", "", DATASHEET_END]
    return "\n".join(lines)


def write_datasheet_stats(readme: str | Path | None = None) -> Path:
    """Replace the generated block of the datasheet with :func:`datasheet_stats`."""
    from .utils import atomic_write_text

    path = Path(readme) if readme is not None else instructions_dir() / "README.md"
    text = path.read_text(encoding="utf-8")
    a, b = text.index(DATASHEET_BEGIN), text.index(DATASHEET_END) + len(DATASHEET_END)
    atomic_write_text(path, text[:a] + datasheet_stats() + text[b:])
    return path


def _main() -> None:  # python -m icp_influence.instructions
    import argparse

    ap = argparse.ArgumentParser(prog="python -m icp_influence.instructions",
                                 description="The project's instruction set: a summary, or JSONL on stdout.")
    ap.add_argument("--jsonl", action="store_true", help="print every example as one JSON line")
    ap.add_argument("--category", action="append", default=None, help="only these categories (repeatable)")
    ap.add_argument("--datasheet", action="store_true", help="refresh the generated numbers in the datasheet")
    args = ap.parse_args()
    if args.datasheet:
        print(f"updated {write_datasheet_stats()}")
        return
    pool = load_instructions(args.category)
    if args.jsonl:
        for ex in pool:
            print(json.dumps(ex.to_dict(), ensure_ascii=False))
        return
    info = summary(pool)
    print(f"instruction set ({info['license']}) in {instructions_dir()}: {info['n']} examples, "
          f"{info['n_categories']} categories, {info['with_input']} with an input")
    print(f"output words: median {info['output_words']['median']:.0f}, range {info['output_words']['min']}"
          f"–{info['output_words']['max']}")
    for cat, n in info["per_category"].items():
        print(f"  {cat:<22} {n}")


if __name__ == "__main__":
    _main()
