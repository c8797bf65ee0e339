"""icp_influence.selection: top-k, bottom-k, random, rank bins at equal budgets."""
from __future__ import annotations

import numpy as np
import pytest

from icp_influence import selection as S
from icp_influence.errors import ConfigError
from icp_influence.scores import ScoreMatrix
from icp_influence.synthetic import make_synthetic_pool


def _sm(agg_values, n_probes=4, seed=0):
    """A matrix whose mean over probes equals ``agg_values`` exactly."""
    rng = np.random.default_rng(seed)
    v = np.asarray(agg_values, float)
    noise = rng.normal(size=(len(v), n_probes))
    noise -= noise.mean(axis=1, keepdims=True)
    return ScoreMatrix(v[:, None] + noise, [f"c{i}" for i in range(len(v))], [f"p{j}" for j in range(n_probes)],
                       {"method": "m"})


def test_top_and_bottom_k_exact_order_and_ties():
    sm = _sm([0.3, 5.0, -1.0, 2.0, 2.0, -7.0])
    assert S.top_k(sm, 3) == ["c1", "c3", "c4"]  # tie 2.0/2.0 -> earlier candidate first
    assert S.bottom_k(sm, 2) == ["c5", "c2"]
    # win-rate aggregate differs from the mean
    wr = ScoreMatrix(np.array([[1, 1, -1], [1, -1, -1], [1, 1, 1]], float), ["a", "b", "c"], ["x", "y", "z"])
    assert S.top_k(wr, 1, how="win_rate") == ["c"]
    assert S.top_k((wr, "win_rate"), 3) == ["c", "a", "b"]
    with pytest.raises(ConfigError):
        S.top_k(sm, 0)
    with pytest.raises(ConfigError):
        S.top_k(sm, 7)


def test_random_is_seeded_and_uniform():
    ids = [f"c{i}" for i in range(50)]
    a, b, c = S.random_k(ids, 10, seed=1), S.random_k(ids, 10, seed=1), S.random_k(ids, 10, seed=2)
    assert a == b and a != c and len(set(a)) == 10 and set(a) <= set(ids)
    counts = np.zeros(50)
    for s in range(400):
        for x in S.random_k(ids, 10, seed=s):
            counts[int(x[1:])] += 1
    # uniform: each id is picked with probability 1/5 (80 of 400 times); a chi-square test of the
    # 50 counts against that (deterministic seeds) — a sampler biased to the first ids fails it
    from scipy.stats import chisquare

    assert chisquare(counts).pvalue > 0.01
    biased = np.zeros(50)
    for s in range(400):
        for x in sorted(S.random_k(ids, 10, seed=s), key=lambda c: int(c[1:]))[:5] + [f"c{i}" for i in range(5)]:
            biased[int(x[1:])] += 1
    assert chisquare(biased).pvalue < 1e-6


def test_bins_and_equal_budget():
    sm = _sm(np.arange(20.0))  # percentile rank of c_i is (i+1)/20
    assert S.bin_sample(sm, ">0.9") == ["c18", "c19"]
    assert S.bin_sample(sm, "<=0.5") == [f"c{i}" for i in range(10)]
    pick = S.bin_sample(sm, ">0.5", 4, seed=3)
    assert len(pick) == 4 and all(int(x[1:]) >= 10 for x in pick)
    with pytest.raises(ConfigError):
        S.bin_sample(sm, ">0.9", 3)  # only 2 in the bin
    with pytest.raises(ConfigError):
        S.bin_sample(sm, ">0.95")
    other = _sm(-np.arange(20.0), seed=1)
    sels = S.equal_budget({"icp": sm, "ip": other}, 5, strategies=("top", "bottom"))
    assert set(sels) == {"icp-top", "icp-bottom", "ip-top", "ip-bottom", "random"}
    assert all(len(v) == 5 for v in sels.values())
    assert sels["icp-top"] == sels["ip-bottom"][::-1] or set(sels["icp-top"]) == set(sels["ip-bottom"])
    assert S.select(sm, "bin", 2, bin_label=">0.9") == ["c18", "c19"]
    assert S.select(None, "random", 3, candidates=sm.candidate_ids, seed=0) == S.random_k(sm.candidate_ids, 3, seed=0)
    with pytest.raises(ConfigError):
        S.select(sm, "best", 3)


def test_to_pool_keeps_selection_order():
    pool = make_synthetic_pool(12, families=["antonym", "plural"], seed=0)
    ids = [pool.ids[5], pool.ids[0]]
    sub = S.to_pool(pool, ids)
    assert sub.ids == ids and sub[0].output == pool.by_id(ids[0]).output


def test_longest_k_orders_by_answer_length_with_stable_ties():
    lengths = {"a": 5, "b": 300, "c": 40, "d": 300, "e": 1}
    assert S.longest_k(lengths, 3) == ["b", "d", "c"]
    with pytest.raises(ConfigError):
        S.longest_k(lengths, 6)
    with pytest.raises(ConfigError):
        S.longest_k({"a": 0}, 1)


def test_length_matched_k_matches_the_reference_length_distribution():
    """Against a reference of long answers, the matched control has (nearly) the same log-length
    distribution while a uniform random sample does not; distinct ids, seeded, none from the reference."""
    rng = np.random.default_rng(0)
    lengths = {f"c{i}": int(x) for i, x in enumerate(np.exp(rng.normal(4.2, 0.6, size=300)).round() + 1)}
    longer_half = S.longest_k(lengths, 150)
    ref = [longer_half[i] for i in sorted(rng.choice(150, size=30, replace=False))]   # a selection that favours length
    logs = lambda ids: np.sort(np.log([lengths[i] for i in ids]))
    matched = S.length_matched_k(lengths, ref, seed=1)
    assert len(matched) == len(set(matched)) == len(ref)
    assert matched == S.length_matched_k(lengths, ref, seed=1) and matched != S.length_matched_k(lengths, ref, seed=2)
    gap_matched = np.mean(np.abs(logs(matched) - logs(ref)))            # quantile by quantile, in log tokens
    gap_random = np.mean(np.abs(logs(S.random_k(list(lengths), 30, seed=1)) - logs(ref)))
    assert gap_matched < 0.05 and gap_random > 0.3
    assert not set(matched) & set(ref)                                  # its lengths, other examples
    with pytest.raises(ConfigError):
        S.length_matched_k(lengths, ["nope"])
    with pytest.raises(ConfigError):
        S.length_matched_k(lengths, list(lengths)[:151])               # more than half: nothing left to match


def test_length_matched_k_breaks_ties_at_random():
    """Token counts are whole numbers, so equal lengths are common: ties must not favour pool order."""
    lengths = {f"c{i:03d}": 50 for i in range(200)}
    ref = [f"c{i:03d}" for i in range(180, 200)]
    picked = set()
    for seed in range(20):
        picked |= set(S.length_matched_k(lengths, ref, seed=seed))
    idx = sorted(int(c[1:]) for c in picked)
    assert not set(picked) & set(ref)
    assert len(picked) > 150 and idx[-1] > 150          # drawn from the whole pool, not its first rows


def test_corrupted_k_takes_the_labelled_corruptions_first():
    from icp_influence.instructions import corrupt, load_instructions

    pool = corrupt(load_instructions(["arithmetic", "define", "email"]), 0.2, seed=0)
    bad = [e.id for e in pool if e.meta.get("corruption")]
    assert 0 < len(bad) < 20
    sel = S.corrupted_k(pool, 20, seed=0)
    assert len(sel) == len(set(sel)) == 20 and set(bad) <= set(sel)
    assert sel == [e.id for e in pool if e.id in set(sel)]             # pool order
    assert all(not pool.by_id(i).meta.get("noisy") for i in set(sel) - set(bad))   # padding is clean
    few = S.corrupted_k(pool, 3, seed=0)
    assert len(few) == 3 and set(few) <= set(bad)
    clean = pool.subset([e.id for e in pool if not e.meta.get("corruption")], name="clean")
    with pytest.raises(ConfigError):
        S.corrupted_k(clean, 3)
    # the synthetic pool's label noise (data.add_label_noise) is found the same way
    from icp_influence.data import add_label_noise

    noisy = add_label_noise(make_synthetic_pool(56, seed=0), 0.1, seed=0)
    assert set(noisy.noisy_ids()) <= set(S.corrupted_k(noisy, len(noisy.noisy_ids()) + 2, seed=0))
