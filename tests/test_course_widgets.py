"""Notebook 04's new explorers, driven without a browser: the numbers they show are the
numbers icp_influence computes (stats.split_half / aggregate, icp.token_logprobs)."""
from __future__ import annotations

import numpy as np
import pytest

from icp_influence.data import Example
from icp_influence.errors import ConfigError
from icp_influence.valuators import make
from icp_influence.icp import icp_mean_delta, icp_per_token_delta, icp_win_rate, loglik_matrix, token_logprobs
from icp_influence.models import load_model
from icp_influence.stats import aggregate, spearman, split_half
from icp_influence.synthetic import make_synthetic_pool


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-gpt-neox", device="cpu")


@pytest.fixture(scope="module")
def cache():
    """A synthetic per-pair cache: 12 candidates × 8 probes with a real signal."""
    from icp_course.widgets.icp import PairCache

    rng = np.random.default_rng(3)
    C, P = 12, 8
    quality = rng.normal(size=C)
    base = rng.normal(-8, 2, size=P)
    ll = base[None, :] + 0.6 * quality[:, None] + rng.normal(0, 0.5, size=(C, P))
    neutral = base + rng.normal(0.4, 0.3, size=P)
    return PairCache(ll, base, rng.integers(1, 6, size=P).astype(float), [f"c{i}" for i in range(C)],
                     [f"p{j}" for j in range(P)], neutral=neutral, groups=["g"] * C)


def test_pair_cache_values_match_the_icp_aggregates(tiny):
    from icp_course.widgets.icp import PairCache

    model, tok = tiny
    pool = make_synthetic_pool(20, seed=0)
    icp = make("icp", model, tok)
    sm = icp.score(pool[:3], pool[14:19])
    lm = loglik_matrix(model, tok, pool[:3], pool[14:19])                  # the engine's raw matrix: the reference
    neutral = loglik_matrix(model, tok, [pool[5]], pool[14:19]).ll[0]
    pc = PairCache.from_scores(sm, icp.score([pool[5]], pool[14:19]))
    np.testing.assert_allclose(pc.ll, lm.ll, rtol=0, atol=1e-9)             # Δ + recorded baseline = ll(p | z)
    V, how = pc.values("win-rate", "zero-shot")
    np.testing.assert_allclose(aggregate(V, how), icp_win_rate(sm))
    V, how = pc.values("mean Δ", "zero-shot")
    np.testing.assert_allclose(aggregate(V, how), icp_mean_delta(sm))
    V, how = pc.values("per-token Δ", "zero-shot")
    np.testing.assert_allclose(aggregate(V, how), icp_per_token_delta(sm))
    V, how = pc.values("mean Δ", "neutral demonstration")
    np.testing.assert_allclose(V, lm.ll - neutral[None, :], rtol=0, atol=1e-9)
    with pytest.raises(ConfigError, match="Unknown aggregation"):
        pc.values("median", "zero-shot")
    with pytest.raises(ConfigError, match="neutral"):
        PairCache.from_scores(sm).values("mean Δ", "neutral demonstration")
    with pytest.raises(ConfigError, match="same probes"):
        PairCache.from_scores(sm, icp.score([pool[5]], pool[14:18]))
    with pytest.raises(ConfigError, match="zero-shot"):
        PairCache.from_scores(make("icp", model, tok, baseline_demo=pool[5]).score(pool[:3], pool[14:19]))


def test_icp_view_reports_stats_split_half_on_the_chosen_probes(cache):
    from icp_course.widgets.icp import icp_view, probe_order

    v = icp_view(cache, 6, "mean Δ", "neutral demonstration", seed=1, n_boot=50)
    cols = probe_order(8, 1)[:6]
    V = cache.ll[:, cols] - cache.neutral[cols][None, :]
    ref = split_half(V, "mean", n_boot=50, seed=1)
    assert (v["reliability"], v["lo"], v["hi"]) == pytest.approx((ref.value, ref.lo, ref.hi))
    np.testing.assert_allclose(v["scores"], V.mean(axis=1))
    assert v["ranking"] == [cache.candidate_ids[i] for i in np.argsort(-V.mean(axis=1), kind="stable")]
    assert v["probe_ids"] == [cache.probe_ids[j] for j in cols]
    all_scores = (cache.ll - cache.neutral[None, :]).mean(axis=1)
    assert v["rank_vs_all"] == pytest.approx(spearman(V.mean(axis=1), all_scores))
    # nested probe subsets: more probes add to the same order
    assert icp_view(cache, 4, seed=1, n_boot=20)["probe_ids"] == v["probe_ids"][:4]
    with pytest.raises(ConfigError, match="between 4 and 8"):
        icp_view(cache, 3)


def test_reliability_explorer_updates_its_summary_and_numbers(cache):
    from icp_course.widgets.icp import icp_view, reliability_explorer

    box, update = reliability_explorer(cache, n_boot=30)
    assert "icp-explorer" in box._dom_classes and "icp-explorer-each-control" in box._dom_classes
    status = box.children[3]
    first = status.value
    r = update(n_probes=5, aggregation="per-token Δ", baseline="neutral demonstration")
    ref = icp_view(cache, 5, "per-token Δ", "neutral demonstration", n_boot=30)
    assert r["reliability"] == pytest.approx(ref["reliability"]) and r["ranking"] == ref["ranking"]
    assert set(r["others"]) == {"win-rate", "mean Δ", "per-token Δ"}
    assert r["others"]["win-rate"]["reliability"] == pytest.approx(
        icp_view(cache, 5, "win-rate", "neutral demonstration", n_boot=30)["reliability"])
    # the summary shown above the figure follows the controls (no stale state)
    assert status.value != first and "5 probes" in status.value and "per-token Δ" in status.value
    assert f"{ref['reliability']:.2f}" in status.value
    # moving one control by hand (as the browser does) recomputes too
    box.children[0].value = 7
    assert "7 probes" in status.value


def test_own_demo_explorer_scores_the_typed_demonstration(tiny):
    from icp_course.widgets.icp import own_demo_explorer

    model, tok = tiny
    probes = make_synthetic_pool(20, seed=1)[:3]
    box, update = own_demo_explorer(model, tok, probes, instruction="Add the numbers.", input="2 3", output="5")
    assert "icp-explorer" in box._dom_classes
    res = update(output="6")
    demo = Example("my-demo", "Add the numbers.", "2 3", "6")
    for j, p in enumerate(probes):
        tv = token_logprobs(model, tok, p, demo)
        assert res["delta_per_probe"][j] == pytest.approx(tv.total_delta, abs=1e-12)
        np.testing.assert_allclose(res["token_deltas"][j], tv.delta)
        assert len(res["tokens"][j]) == len(tv.tokens) and not any(" " in t for t in res["tokens"][j])
    assert res["wins"] == int((res["delta_per_probe"] > 0).sum())
    assert "+" in box.children[3].value or "-" in box.children[3].value
    assert "6" in box.children[3].value  # the summary names the demonstration just typed
    box.children[1].value = "4 4"        # typing in a box recomputes
    assert "4 4" in box.children[3].value
