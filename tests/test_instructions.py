"""The project's instruction set: schema, ids, no near-duplicates, categories, lengths,
deterministic loading, the category split and the three labelled corruptions."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from icp_influence.data import parse_pool_spec
from icp_influence.errors import ConfigError, DataFormatError
from icp_influence.instructions import (CORRUPTIONS, FIELDS, categories, corrupt, instructions_dir,
                                        load_instructions, split_by_category, truncate_answer)


@pytest.fixture(scope="module")
def pool():
    return load_instructions()


def test_schema_ids_and_categories():
    folder = instructions_dir()
    cats = categories()
    assert len(cats) >= 24
    seen = set()
    for c in cats:
        lines = (folder / f"{c}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(lines) >= 15, c
        for line in lines:
            rec = json.loads(line)
            assert list(rec) == list(FIELDS), rec.get("id")
            assert rec["category"] == c and rec["id"].startswith(c + "-")
            assert rec["instruction"].strip() and rec["output"].strip()
            assert all(isinstance(rec[k], str) for k in FIELDS)
            assert rec["id"] not in seen
            seen.add(rec["id"])
    assert len(seen) >= 480


def test_loading_is_deterministic_and_labels_categories(pool):
    again = load_instructions()
    assert [e.to_dict() for e in pool] == [e.to_dict() for e in again]
    assert pool.families() == categories()
    assert all(e.task == e.meta["category"] for e in pool)
    sub = load_instructions(["science", "history"])
    assert sub.families() == ["history", "science"] and len(sub) == sum(e.task in ("science", "history") for e in pool)
    with pytest.raises(ConfigError, match="Unknown categor"):
        load_instructions(["astrology"])
    assert parse_pool_spec("instructions").ids == pool.ids
    s1, s2 = parse_pool_spec("instructions:40:3"), parse_pool_spec("instructions:40:3")
    assert s1.ids == s2.ids and len(s1) == 40 and s1.ids != parse_pool_spec("instructions:40:4").ids
    with pytest.raises(DataFormatError):
        parse_pool_spec("instructions:0")


def _shingles(ex, n=5):
    text = " ".join([ex.instruction, ex.input, ex.output]).lower()
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def test_no_near_duplicates(pool):
    """Character 5-gram Jaccard similarity < 0.7 for every pair of examples."""
    sh = [_shingles(e) for e in pool]
    worst, pair = 0.0, None
    for i, j in itertools.combinations(range(len(sh)), 2):
        a, b = sh[i], sh[j]
        inter = len(a & b)
        if inter == 0:
            continue
        jac = inter / (len(a) + len(b) - inter)
        if jac > worst:
            worst, pair = jac, (pool[i].id, pool[j].id)
    print(f"\nmost similar pair: {pair} with 5-gram Jaccard {worst:.3f}")
    assert worst < 0.7, pair


def test_answer_lengths_are_realistic(pool):
    """Median answer 40–100 tokens (SmolLM2's tokenizer), some above 150."""
    from icp_influence.models import load_tokenizer

    tok = load_tokenizer()
    n = np.array([len(tok(" " + e.output, add_special_tokens=False).input_ids) for e in pool])
    print(f"\nanswer tokens: median {np.median(n):.1f}, p90 {np.percentile(n, 90):.0f}, >150: {(n > 150).sum()}")
    assert 40 <= np.median(n) <= 100
    assert (n > 150).sum() >= 20
    assert n.min() >= 5


def test_split_by_category(pool):
    parts = split_by_category(pool, {"pool": 12, "probes": 3, "eval": 5}, seed=0)
    ids = [set(p.ids) for p in parts.values()]
    assert all(not (a & b) for a, b in itertools.combinations(ids, 2))
    for name, n in (("pool", 12), ("probes", 3), ("eval", 5)):
        counts = {}
        for e in parts[name]:
            counts[e.task] = counts.get(e.task, 0) + 1
        assert set(counts.values()) == {n} and len(counts) == len(categories())
    assert parts["pool"].ids == split_by_category(pool, {"pool": 12, "probes": 3, "eval": 5}, seed=0)["pool"].ids
    with pytest.raises(ConfigError):
        split_by_category(pool, {"a": 30})


def test_corruptions_are_labelled_and_do_what_they_say(pool):
    base = split_by_category(pool, {"pool": 12}, seed=0)["pool"]
    noisy = corrupt(base, 0.1, seed=0)
    assert [e.id for e in noisy] == base.ids
    bad = [e for e in noisy if e.meta.get("noisy")]
    assert len(bad) == round(0.1 * len(base))
    kinds = [e.meta["corruption"] for e in bad]
    assert {k: kinds.count(k) for k in CORRUPTIONS} == {k: len(bad) // 3 + (i < len(bad) % 3)
                                                         for i, k in enumerate(CORRUPTIONS)}
    by_output = {}
    for e in pool:
        by_output.setdefault(e.output, set()).add(e.task)
    for e in bad:
        clean = base.by_id(e.id)
        assert e.meta["clean_output"] == clean.output and e.output != clean.output
        assert e.instruction == clean.instruction and e.input == clean.input
        if e.meta["corruption"] == "truncate":
            assert clean.output.startswith(e.output.split()[0]) and len(e.output.split()) < len(clean.output.split())
            assert e.output == truncate_answer(clean.output)
        elif e.meta["corruption"] == "swap_same_category":
            assert e.task in by_output[e.output]
        else:
            assert e.task not in by_output[e.output]
    assert [e.output for e in corrupt(base, 0.1, seed=0)] == [e.output for e in noisy]
    assert [e.output for e in corrupt(base, 0.1, seed=1)] != [e.output for e in noisy]
    assert all(e.meta["corruption"] == "truncate" for e in corrupt(base, 0.05, kinds=["truncate"]) if e.meta.get("noisy"))
    with pytest.raises(ConfigError):
        corrupt(base, 0.1, kinds=["shuffle"])
    with pytest.raises(ConfigError):
        corrupt(base, 1.5)


def test_datasheet_numbers_are_current():
    """The generated block of data/instructions/README.md equals what the files give now."""
    from icp_influence.instructions import DATASHEET_BEGIN, DATASHEET_END, datasheet_stats

    text = (instructions_dir() / "README.md").read_text(encoding="utf-8")
    block = text[text.index(DATASHEET_BEGIN):text.index(DATASHEET_END) + len(DATASHEET_END)]
    assert block == datasheet_stats(), "run `python -m icp_influence.instructions --datasheet`"
    assert "CC BY 4.0" in text and "0 errors found" in text
