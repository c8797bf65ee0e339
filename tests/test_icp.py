"""ICP: KV-cached scoring equals the naive per-pair forward pass; scores, CLI, resume, sharding."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from icp_influence.encoding import Encoded, encode_pair
from icp_influence.errors import EmptyPoolError, MethodError
from icp_influence.icp import (
    IcpScorer,
    icp_mean_delta,
    icp_per_token_delta,
    icp_win_rate,
    loglik_matrix,
    naive_loglik_matrix,
    token_logprobs,
)
from icp_influence.icp_engine import prefix_answer_logprobs
from icp_influence.lm import answer_logprobs
from icp_influence.models import TINY_SPECS, load_model
from icp_influence.scores import ScoreMatrix
from icp_influence.synthetic import make_synthetic_pool
from icp_influence.valuators import make

TOL = 1e-4  # nats
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def pool():
    return make_synthetic_pool(28, seed=0)


@pytest.fixture(scope="module")
def tiny():
    cache = {}

    def get(spec):
        if spec not in cache:
            cache[spec] = load_model(spec)
        return cache[spec]

    return get


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# ----------------------------------------------------------------- cached == naive
@pytest.mark.parametrize("spec", TINY_SPECS)
@pytest.mark.parametrize("template", ["paper", "plain", "chat"])
def test_cached_equals_naive_tiny(tiny, pool, spec, template):
    model, tok = tiny(spec)
    cands, probes = pool[:4], pool[14:21]
    cached = loglik_matrix(model, tok, cands, probes, template=template, batch_size=3)
    naive = naive_loglik_matrix(model, tok, cands, probes, template=template, batch_size=1)
    diff = max(np.abs(cached.ll - naive.ll).max(), np.abs(cached.baseline - naive.baseline).max())
    assert diff <= TOL, f"{spec}/{template}: max |cached - naive| = {diff:.3g} nats"
    # the demonstrations do change the answer likelihoods (the comparison is not vacuous)
    assert np.abs(cached.delta).max() > 1e-3
    assert cached.ll.dtype == np.float64 and cached.ll.shape == (4, 7)
    np.testing.assert_array_equal(cached.n_answer_tokens, [len(encode_pair(tok, p, None, template=template).answer_ids)
                                                          for p in probes])


@pytest.mark.slow
@pytest.mark.parametrize("template", ["paper", "chat"])
def test_cached_equals_naive_smollm2(pool, template):
    model, tok = load_model("smollm2-135m-instruct")
    cands, probes = pool[:3], pool[14:19]
    cached = loglik_matrix(model, tok, cands, probes, template=template, batch_size=4)
    naive = naive_loglik_matrix(model, tok, cands, probes, template=template, batch_size=1)
    diff = max(np.abs(cached.ll - naive.ll).max(), np.abs(cached.baseline - naive.baseline).max())
    assert diff <= TOL, f"smollm2/{template}: max |cached - naive| = {diff:.3g} nats"


def test_prefix_scoring_edge_cases(tiny):
    """Empty prefix (no BOS), empty query (answer right after the prefix), ragged lengths."""
    model, tok = tiny("tiny-llama")
    pad = tok.pad_token_id
    rng = np.random.default_rng(0)
    prefix = tuple(int(x) for x in rng.integers(0, 255, 9))
    sufs = [(tuple(int(x) for x in rng.integers(0, 255, q)), tuple(int(x) for x in rng.integers(0, 255, a)))
            for q, a in [(5, 3), (0, 4), (11, 1), (2, 7)]]
    ref = answer_logprobs(model, [Encoded(prefix, q, a) for q, a in sufs], pad_id=pad, batch_size=1)
    got = prefix_answer_logprobs(model, prefix, sufs, pad_id=pad, batch_size=3)
    for r, g in zip(ref, got):
        assert g.shape == r.shape and np.abs(g - r).max() <= TOL
    sufs_nq = [s for s in sufs if s[0]]
    ref = answer_logprobs(model, [Encoded((), q, a) for q, a in sufs_nq], pad_id=pad, batch_size=1)
    got = prefix_answer_logprobs(model, (), sufs_nq, pad_id=pad, batch_size=2)
    for r, g in zip(ref, got):
        assert np.abs(g - r).max() <= TOL


# ----------------------------------------------------------------- baseline once, counting forwards
def test_baseline_computed_once(tiny, pool):
    model, tok = tiny("tiny-gpt-neox")
    probes, cands = pool[14:21], pool[:5]
    calls = []
    sc = IcpScorer(model, tok, probes, template="paper", batch_size=3)
    assert sc.engine == "packed"
    # the packed engine runs the transformer body (base model) and applies the head itself
    h = model.base_model.register_forward_pre_hook(lambda m, a, kw: calls.append(1), with_kwargs=True)
    try:
        sc.values(cands[:2])
        sc.values(cands[2:])          # a second chunk must not recompute the baseline
        _ = sc.baseline
    finally:
        h.remove()
    P, B, C = len(probes), 3, len(cands)
    per_batch = math.ceil(P / B)
    # tiny byte tokenizer: no BOS, so the baseline has an empty prefix (no prefix pass)
    assert sc.baseline_calls == 1
    assert len(calls) == per_batch + C * (1 + per_batch) == sc.counter.total


# ----------------------------------------------------------------- scores
def test_win_rate_is_strict_and_aggregates():
    vals = np.array([[0.0, 0.0, 1e-9, -1.0], [2.0, -0.0, -3.0, 0.5]])
    sm = ScoreMatrix(vals, ["a", "b"], list("wxyz"), {"values": "delta", "n_answer_tokens": [1, 2, 4, 5]})
    np.testing.assert_array_equal(icp_win_rate(sm), [0.25, 0.5])  # ties (0 and -0) lose
    np.testing.assert_allclose(icp_mean_delta(sm), vals.mean(1))
    np.testing.assert_allclose(icp_per_token_delta(sm), (vals / [1, 2, 4, 5]).mean(1))
    np.testing.assert_array_equal(icp_win_rate(sm), sm.aggregate("win_rate"))


def test_icp_valuator_scores_are_the_engine_deltas(tiny, pool):
    """The one scoring path: the valuator's three stored forms are the engine's Δ, exactly."""
    model, tok = tiny("tiny-gpt2")
    cands, probes = pool[:4], pool[14:20]
    sw, sd, st = (make("icp", model, tok, score=s).score(cands, probes) for s in ("win_rate", "delta", "per_token"))
    lm = loglik_matrix(model, tok, cands, probes)
    np.testing.assert_array_equal(sw.values, lm.ll - lm.baseline)
    np.testing.assert_array_equal(sw.values, sd.values)
    n = np.array(st.meta["n_answer_tokens"])
    np.testing.assert_array_equal(n, lm.n_answer_tokens)
    np.testing.assert_allclose(st.values * n, sd.values, rtol=1e-12)
    np.testing.assert_array_equal(sw.aggregate(), (sw.values > 0).mean(1))   # default: win-rate
    np.testing.assert_allclose(sd.aggregate(), sd.values.mean(1))            # default: mean delta
    np.testing.assert_allclose(icp_mean_delta(st), icp_mean_delta(sd), rtol=1e-12)
    np.testing.assert_allclose(icp_per_token_delta(sd), st.values.mean(1), rtol=1e-12)
    np.testing.assert_allclose(sw.meta["baseline"], lm.baseline)
    assert sw.meta["method"] == "icp" and sw.meta["template"] == "paper" and sw.meta["baseline_kind"] == "zero_shot"
    assert len({m.meta["config_hash"] for m in (sw, sd, st)}) == 3          # the score kind is configuration
    with pytest.raises(MethodError):
        make("icp", model, tok, score="mean")
    with pytest.raises(EmptyPoolError):
        make("icp", model, tok).score([], probes)


def test_token_logprobs_match_matrix(tiny, pool):
    model, tok = tiny("tiny-llama")
    cand, probe = pool[3], pool[17]
    tv = token_logprobs(model, tok, probe, cand, template="plain")
    lm = loglik_matrix(model, tok, [cand], [probe], template="plain")
    assert len(tv.tokens) == len(tv.with_demo) == lm.n_answer_tokens[0]
    assert "".join(tv.tokens) == " " + probe.output
    assert abs(tv.with_demo.sum() - lm.ll[0, 0]) <= TOL
    assert abs(tv.without_demo.sum() - lm.baseline[0]) <= TOL
    assert abs(tv.total_delta - lm.delta[0, 0]) <= 2 * TOL


# ----------------------------------------------------------------- notebook 04 helpers
def test_plots_have_labelled_axes(tiny, pool):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from icp_course.plots.icp import (plot_cache_timing, plot_loglik_heatmap, plot_score_distributions,
                                         plot_token_view, plot_winrate_vs_delta)

    model, tok = tiny("tiny-gpt2")
    sm = make("icp", model, tok).score(pool[:5], pool[14:18])
    lm = loglik_matrix(model, tok, pool[:5], pool[14:18])
    tv = token_logprobs(model, tok, pool[14], pool[0])
    figs = [plot_loglik_heatmap(lm.delta, row_labels=[c.task for c in pool[:5]], col_labels=[p.task for p in pool[14:18]]),
            plot_loglik_heatmap(lm.ll, kind="ll"),
            plot_score_distributions(icp_win_rate(sm), icp_mean_delta(sm), icp_per_token_delta(sm), n_probes=4),
            plot_token_view(tv.tokens, tv.with_demo, tv.without_demo),
            plot_winrate_vs_delta(icp_win_rate(sm), icp_mean_delta(sm), groups=[c.task for c in pool[:5]]),
            plot_cache_timing({"naive": 2.0, "cached": 0.5}, n_pairs=20)]
    for fig in figs:
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>":
                continue
            assert ax.get_xlabel() and ax.get_ylabel(), fig
        plt.close(fig)
    # the heatmap (seaborn's mesh of cells) shows exactly the matrix it was given
    fig = plot_loglik_heatmap(lm.delta)
    np.testing.assert_array_equal(fig.axes[0].collections[0].get_array(), lm.delta)
    plt.close(fig)


def test_token_explorer_recomputes(tiny, pool):
    from icp_course.widgets.icp import token_explorer

    model, tok = tiny("tiny-llama")
    cands, probes = pool[:3], pool[14:16]
    box, update = token_explorer(model, tok, cands, probes)
    assert "icp-explorer" in box._dom_classes
    res = update(candidate=cands[2].id, probe=probes[1].id)
    ref = token_logprobs(model, tok, probes[1], cands[2])
    assert res["candidate"] == cands[2].id and res["tokens"] == ref.tokens
    assert abs(res["delta"] - ref.total_delta) < 1e-12
    res2 = update(candidate=cands[0].id)
    assert res2["delta"] != res["delta"]


def test_per_token_is_the_one_definition_of_icp_per_token_delta():
    """Δ / |y_p| by column, with its errors; every stored form of an ICP matrix gives the same
    per-token values and aggregates."""
    import numpy as np

    from icp_influence.errors import ConfigError
    from icp_influence.icp import icp_mean_delta, icp_per_token_delta, per_token, per_token_values
    from icp_influence.scores import ScoreMatrix

    rng = np.random.default_rng(0)
    D = rng.normal(size=(5, 3))
    n = np.array([1, 4, 10])
    np.testing.assert_array_equal(per_token(D, n), np.stack([D[:, j] / n[j] for j in range(3)], axis=1))
    with pytest.raises(ConfigError):
        per_token(D, [1, 2])
    with pytest.raises(ConfigError):
        per_token(D, [1, 0, 2])
    ids, probes = [f"c{i}" for i in range(5)], ["p0", "p1", "p2"]
    as_delta = ScoreMatrix(D, ids, probes, {"values": "delta", "n_answer_tokens": n.tolist()})
    as_per_token = ScoreMatrix(D / n, ids, probes, {"values": "per_token_delta", "n_answer_tokens": n.tolist()})
    for sm in (as_delta, as_per_token):
        np.testing.assert_allclose(per_token_values(sm), D / n, rtol=1e-15)
        np.testing.assert_allclose(icp_per_token_delta(sm), (D / n).mean(axis=1), rtol=1e-15)
        np.testing.assert_allclose(icp_mean_delta(sm), D.mean(axis=1), rtol=1e-14)
    with pytest.raises(ConfigError):
        per_token_values(ScoreMatrix(D, ids, probes, {"values": "delta"}))


def test_answer_logprobs_batches_by_length_and_returns_input_order(tiny):
    """Sequences of very different lengths, batched by length: each result belongs to its own
    input (in input order) and equals the one-sequence computation."""
    model, tok = tiny("tiny-llama")
    rng = np.random.default_rng(1)
    lens = [(30, 4), (2, 1), (17, 9), (5, 2), (41, 3), (8, 6), (1, 5)]
    encs = [Encoded(tuple(int(x) for x in rng.integers(0, 255, 3)), tuple(int(x) for x in rng.integers(0, 255, q)),
                    tuple(int(x) for x in rng.integers(0, 255, a))) for q, a in lens]
    one = answer_logprobs(model, encs, pad_id=tok.pad_token_id, batch_size=1)
    got = answer_logprobs(model, encs, pad_id=tok.pad_token_id, batch_size=3)
    assert [len(g) for g in got] == [a for _, a in lens]
    for r, g in zip(one, got):
        assert np.abs(g - r).max() <= TOL
