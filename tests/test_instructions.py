"""The project's instruction set: schema, ids, no near-duplicates, categories, lengths,
deterministic loading, the category split and the three labelled corruptions."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from icp_influence.pools import parse_pool_spec
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


# ---------------------------------------------------------------- the length-variant pool

@pytest.fixture(scope="module")
def variant_tokens():
    import collections

    from icp_influence.encoding import encode_example
    from icp_influence.instructions import load_length_variants
    from icp_influence.models import load_tokenizer

    tok = load_tokenizer()
    pool = load_length_variants()
    n: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for e in pool:
        n[e.meta["base_id"]][e.meta["version"]] = len(encode_example(tok, e).answer_ids)
    return pool, dict(n)


def test_length_variants_keep_the_content_and_order_the_lengths(pool, variant_tokens):
    from icp_influence.instructions import LENGTH_VERSIONS

    variants, n = variant_tokens
    assert len(n) >= 120 and len({e.task for e in variants}) >= 20
    assert len(variants) == 3 * len(n)
    for e in variants:
        base = pool.by_id(e.meta["base_id"])
        assert (e.instruction, e.input, e.task) == (base.instruction, base.input, base.task)
        assert e.id == f"{base.id}@{e.meta['version']}"
        if e.meta["version"] == "middle":
            assert e.output == base.output
    assert [e.meta["version"] for e in variants[:3]] == list(LENGTH_VERSIONS)
    for bid, t in n.items():
        assert t["short"] < t["middle"] < t["long"], bid
        assert t["long"] >= 200, bid


def test_length_variant_datasheet_states_the_measured_lengths(variant_tokens):
    import re

    from icp_influence.instructions import length_variants_dir

    _, n = variant_tokens
    text = (length_variants_dir() / "README.md").read_text(encoding="utf-8")
    for version in ("short", "middle", "long"):
        a = np.array([t[version] for t in n.values()])
        row = re.search(rf"^\| `{version}` \|.*\| (\d+) / (\d+) / (\d+) \|$", text, re.M)
        assert row, version
        assert [int(g) for g in row.groups()] == [a.min(), int(np.median(a)), a.max()], version
    over = {bid: t["short"] for bid, t in n.items() if t["short"] > 25}
    listed = dict((m.group(1), int(m.group(2))) for m in re.finditer(r"`([a-z_]+-\d+)` \((\d+)\)", text))
    assert over == listed, "every short answer over 25 tokens is named with its length in the datasheet"
    sd_mid = np.log([t["middle"] for t in n.values()]).std(ddof=1)
    sd_ext = np.log([t[v] for t in n.values() for v in ("short", "long")]).std(ddof=1)
    assert f"{sd_mid:.2f} over the middle answers" in text
    assert f"{sd_ext:.2f} over the short and long answers" in text
    assert f"for 130 examples" in text and len(n) == 130


def test_length_variant_files_are_checked_on_load(tmp_path):
    from icp_influence.errors import DataFormatError
    from icp_influence.instructions import load_length_variants

    (tmp_path / "explain.jsonl").write_text('{"id": "explain-01", "category": "explain", "short": "x"}\n')
    with pytest.raises(DataFormatError, match="exactly the fields"):
        load_length_variants(tmp_path)
    with pytest.raises(DataFormatError, match="No length-variant files"):
        load_length_variants(tmp_path / "nothing")
