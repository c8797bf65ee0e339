"""Agreement controlled for a confound (answer length): partial and stratified Spearman,
the two-way bootstrap around them, the within-probe distribution, and the null-model
valuators. Checked against population values of simulated data and against textbook
formulas computed independently."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from icp_influence import stats as S
from icp_influence.errors import ConfigError


def _spearman_from_pearson(r: float) -> float:
    """Population Spearman of a bivariate normal with Pearson r (Pearson 1907)."""
    return 6 / math.pi * math.asin(r / 2)


def _partial(rxy: float, rxz: float, ryz: float) -> float:
    return (rxy - rxz * ryz) / math.sqrt((1 - rxz ** 2) * (1 - ryz ** 2))


def test_partial_spearman_recovers_the_population_value_of_a_trivariate_normal():
    # Pearson correlations chosen so that x and y share z strongly and a little beyond it.
    R = np.array([[1.0, 0.62, 0.7], [0.62, 1.0, 0.6], [0.7, 0.6, 1.0]])   # order x, y, z
    rng = np.random.default_rng(0)
    X = rng.multivariate_normal(np.zeros(3), R, size=200_000)
    rs = {k: _spearman_from_pearson(R[i, j]) for k, (i, j) in {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}.items()}
    want = _partial(rs["xy"], rs["xz"], rs["yz"])
    got = S.partial_spearman(X[:, 0], X[:, 1], X[:, 2])
    assert abs(got - want) < 0.006, (got, want)
    # the raw Spearman is far higher: z carries most of the agreement
    assert S.spearman(X[:, 0], X[:, 1]) > got + 0.2


def test_partial_spearman_equals_the_textbook_formula_and_ignores_monotone_transforms():
    rng = np.random.default_rng(1)
    z = rng.normal(size=300)
    x, y = z + rng.normal(size=300), 0.5 * z + rng.normal(size=300)
    want = _partial(st.spearmanr(x, y)[0], st.spearmanr(x, z)[0], st.spearmanr(y, z)[0])
    got = S.partial_spearman(x, y, z)
    assert got == pytest.approx(want, abs=1e-12)
    assert S.partial_spearman(np.exp(x), y ** 3, np.log1p(np.exp(z))) == pytest.approx(got, abs=1e-12)


def test_partial_spearman_is_zero_for_conditionally_independent_variables_with_a_discrete_control():
    rng = np.random.default_rng(2)
    z = rng.integers(0, 6, size=60_000)           # answer-length-like: a few levels, many ties
    x, y = z + rng.normal(size=z.size), 2 * z + rng.normal(size=z.size)
    assert S.spearman(x, y) > 0.6
    assert abs(S.partial_spearman(x, y, z)) < 0.015


def test_partial_spearman_with_two_controls_removes_both():
    rng = np.random.default_rng(3)
    z1, z2 = rng.normal(size=(2, 50_000))
    x, y = z1 + z2 + rng.normal(size=z1.size), z1 - z2 + rng.normal(size=z1.size)
    # z1 pushes both up, z2 pushes them apart: controlling for one leaves the other's effect
    assert S.partial_spearman(x, y, z1) < -0.2
    assert S.partial_spearman(x, y, z2) > 0.2
    assert abs(S.partial_spearman(x, y, np.column_stack([z1, z2]))) < 0.03


def test_strata_are_equal_count_quintiles_and_ties_share_one():
    s = S.strata(np.arange(100), 5)
    assert np.bincount(s).tolist() == [20] * 5
    assert s[0] == 0 and s[-1] == 4 and np.all(np.diff(s) >= 0)
    t = S.strata([3, 3, 3, 3, 1, 2, 5, 6, 7, 8], 5)
    assert len(set(t[:4])) == 1


def test_stratified_spearman_pools_known_within_stratum_correlations_by_size():
    rng = np.random.default_rng(4)
    sizes, rhos = [30_000, 10_000, 20_000], [0.8, 0.0, 0.4]
    xs, ys, zs = [], [], []
    for k, (n, r) in enumerate(zip(sizes, rhos)):
        xy = rng.multivariate_normal([k * 5.0, k * 5.0], [[1, r], [r, 1]], size=n)  # strata far apart
        xs.append(xy[:, 0]); ys.append(xy[:, 1]); zs.append(np.full(n, k))
    x, y, z = map(np.concatenate, (xs, ys, zs))
    want = sum(n * _spearman_from_pearson(r) for n, r in zip(sizes, rhos)) / sum(sizes)
    assert S.stratified_spearman(x, y, z, n_strata=3) == pytest.approx(want, abs=0.01)
    assert S.spearman(x, y) > 0.9      # the raw value is dominated by the strata


def test_controlled_agreement_point_values_match_the_plain_functions_and_intervals_cover_them():
    rng = np.random.default_rng(5)
    C, P = 150, 24
    length = rng.lognormal(4, 0.6, size=C)
    quality = rng.normal(size=C)
    Va = np.log(length)[:, None] + quality[:, None] + rng.normal(scale=3, size=(C, P))
    Vb = 2 * np.log(length)[:, None] + rng.normal(scale=2, size=(C, P))
    a, b = Va.mean(axis=1), Vb.mean(axis=1)
    raw = S.controlled_agreement(Va, Vb, length, method="raw", n_boot=200)
    part = S.controlled_agreement(Va, Vb, length, method="partial", n_boot=200)
    strat = S.controlled_agreement(Va, Vb, length, method="stratified", n_boot=200)
    assert raw.value == pytest.approx(S.spearman(a, b))
    assert raw.value == pytest.approx(S.agreement(Va, Vb, n_boot=10).spearman)
    assert part.value == pytest.approx(S.partial_spearman(a, b, length))
    assert strat.value == pytest.approx(S.stratified_spearman(a, b, length))
    for iv in (raw, part, strat):
        assert iv.lo < iv.value < iv.hi
    # Vb knows nothing beyond length: controlled for it, the agreement's interval covers 0
    assert raw.lo > 0.2 and part.lo < 0 < part.hi
    with pytest.raises(ConfigError, match="method"):
        S.controlled_agreement(Va, Vb, length, method="nope")
    with pytest.raises(ConfigError, match="control"):
        S.controlled_agreement(Va, Vb, length[:-1])


def test_controlled_agreement_with_a_probe_constant_null_model():
    rng = np.random.default_rng(6)
    C, P = 80, 16
    length = rng.integers(5, 400, size=C).astype(float)
    V = np.log(length)[:, None] + rng.normal(scale=2, size=(C, P))
    N = np.repeat(length[:, None], P, axis=1)     # the answer-length null model: no probe side
    iv = S.controlled_agreement(V, N, length, method="raw", n_boot=200)
    assert iv.value == pytest.approx(S.spearman(V.mean(axis=1), length))
    assert iv.lo < iv.value < iv.hi


def test_within_probe_spearman_is_the_columnwise_correlation():
    rng = np.random.default_rng(7)
    A = rng.normal(size=(30, 5))
    B = A * np.array([1, -1, 0.5, 2, 1])[None, :] + rng.normal(scale=0.5, size=(30, 5))
    got = S.within_probe_spearman(A, B)
    want = [st.spearmanr(A[:, p], B[:, p])[0] for p in range(5)]
    assert np.allclose(got, want)
    assert got[1] < -0.5 < 0.5 < got[0]


# ---------------------------------------------------------------- null-model valuators

QV = r"regex:\.(q_proj|v_proj)\.weight$"


@pytest.fixture(scope="module")
def llama():
    from icp_influence.models import load_model
    from icp_influence.synthetic import make_synthetic_pool

    model, tok = load_model("tiny-llama", device="cpu")
    pool = list(make_synthetic_pool(10, seed=3))
    return model.double(), tok, pool[:6], pool[6:]


def _direct_loss(model, tok, ex):
    import torch

    from icp_influence.encoding import encode_example
    from icp_influence.lm import answer_nll, pad_batch

    enc = encode_example(tok, ex)
    ids, mask, labels = pad_batch([enc], tok.pad_token_id)
    return answer_nll(model(input_ids=ids, attention_mask=mask).logits, labels).sum(), len(enc.answer_ids)


def test_null_models_are_registered_and_constant_across_probes(llama):
    from icp_influence.valuators import NULL_MODELS, make, names

    model, tok, cands, probes = llama
    assert set(NULL_MODELS) <= set(names())
    for name in NULL_MODELS:
        sm = make(name, model, tok, params=QV) if name == "gradient_norm" else make(name, model, tok)
        m = sm.score(cands, probes)
        assert m.values.shape == (len(cands), len(probes))
        assert np.all(m.values == m.values[:, :1]), f"{name} has no probe side"
        assert m.candidate_ids == [c.id for c in cands] and m.meta["method"] == name


def test_answer_length_and_candidate_nll_equal_a_direct_forward_pass(llama):
    from icp_influence.valuators import make

    model, tok, cands, probes = llama
    length = make("answer_length", model, tok).score(cands, probes).values[:, 0]
    total = make("candidate_nll", model, tok).score(cands, probes).values[:, 0]
    per_tok = make("candidate_nll", model, tok, reduction="mean").score(cands, probes).values[:, 0]
    for i, c in enumerate(cands):
        loss, n = _direct_loss(model, tok, c)
        assert length[i] == n
        assert total[i] == pytest.approx(float(loss), rel=1e-9)
        assert per_tok[i] == pytest.approx(float(loss) / n, rel=1e-9)


def test_gradient_norm_equals_autograd_and_the_inner_product_diagonal(llama):
    import torch

    from icp_influence.gradients import select_parameters
    from icp_influence.valuators import InnerProduct, make

    model, tok, cands, probes = llama
    norms = make("gradient_norm", model, tok, params=QV).score(cands, probes).values[:, 0]
    names = select_parameters(model, QV)
    params = dict(model.named_parameters())
    for i, c in enumerate(cands[:3]):
        model.zero_grad()
        loss, _ = _direct_loss(model, tok, c)
        grads = torch.autograd.grad(loss, [params[n] for n in names])
        want = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        assert norms[i] == pytest.approx(want, rel=1e-8)
    # ‖g‖² is the inner product of a candidate with itself
    self_ip = InnerProduct(model, tok, params=QV).score(cands, cands).values.diagonal()
    assert np.allclose(norms ** 2, self_ip, rtol=1e-8)


def test_random_null_model_is_seeded_per_id_and_uniform():
    from icp_influence.data import Example
    from icp_influence.valuators import make

    exs = [Example(id=f"c{i}", instruction="q", input="", output="a") for i in range(4000)]
    probes = exs[:2]
    a = make("random", seed=1).score(exs, probes).values[:, 0]
    b = make("random", seed=1).score(exs[::-1], probes).values[::-1, 0]
    c = make("random", seed=2).score(exs, probes).values[:, 0]
    assert np.array_equal(a, b), "a candidate's value does not depend on the pool's order"
    assert not np.array_equal(a, c)
    assert 0 <= a.min() and a.max() < 1 and st.kstest(a, "uniform").pvalue > 0.001
    assert abs(S.spearman(a, c)) < 0.06


def test_null_models_refuse_what_they_cannot_compute():
    from icp_influence.valuators import make

    with pytest.raises(ConfigError, match="tokenizer"):
        make("answer_length")
    with pytest.raises(ConfigError, match="model"):
        make("candidate_nll")


def test_within_and_between_group_agreement_separate_a_planted_structure():
    """Scores that share only the group (a category effect) agree between groups and not within;
    scores that share only the within-group order agree within and not between."""
    from icp_influence import stats as S

    rng = np.random.default_rng(0)
    groups = np.repeat([f"cat{i:02d}" for i in range(12)], 25)
    effect = rng.normal(size=12)[S.group_codes(groups)] * 3.0
    a, b = effect + rng.normal(size=300), effect + rng.normal(size=300)       # share the group only
    assert S.between_group_spearman(a, b, groups) > 0.8
    assert abs(S.within_group_spearman(a, b, groups)) < 0.15
    shared = rng.normal(size=300)
    c = shared + rng.normal(scale=0.3, size=300) + rng.normal(size=12)[S.group_codes(groups)] * 5
    d = shared + rng.normal(scale=0.3, size=300) + rng.normal(size=12)[S.group_codes(groups)] * 5
    assert S.within_group_spearman(c, d, groups) > 0.8
    # the pooled value is the size-weighted mean of per-group Spearman values, by hand
    g2 = np.array(["x"] * 5 + ["y"] * 10)
    x, y = rng.normal(size=15), rng.normal(size=15)
    want = (5 * S.spearman(x[:5], y[:5]) + 10 * S.spearman(x[5:], y[5:])) / 15
    assert S.within_group_spearman(x, y, g2) == pytest.approx(want, abs=1e-12)
    assert np.isnan(S.between_group_spearman(x, y, g2))                 # two groups: no rank correlation
    # the two-way bootstrap accepts labels as the control
    Va = np.repeat(a[:, None], 4, axis=1) + rng.normal(scale=0.1, size=(300, 4))
    Vb = np.repeat(b[:, None], 4, axis=1) + rng.normal(scale=0.1, size=(300, 4))
    iv = S.controlled_agreement(Va, Vb, groups, method="between_groups", n_boot=200)
    assert iv.value > 0.8 and iv.lo > 0.5
    iv = S.controlled_agreement(Va, Vb, groups, method="within_groups", n_boot=200)
    assert iv.lo < 0.15


def test_agreement_difference_is_paired_and_signed():
    from icp_influence import stats as S

    rng = np.random.default_rng(1)
    truth = rng.normal(size=120)
    A = truth[:, None] + rng.normal(scale=1.0, size=(120, 16))
    B = 0.3 * truth[:, None] + rng.normal(scale=1.0, size=(120, 16))       # weaker with A
    Cm = truth[:, None] + rng.normal(scale=1.0, size=(120, 16))            # stronger with A
    d = S.agreement_difference(A, B, Cm, n_boot=300)
    want = S.spearman(A.mean(1), Cm.mean(1)) - S.spearman(A.mean(1), B.mean(1))
    assert d.value == pytest.approx(want, abs=1e-12) and d.lo > 0
    back = S.agreement_difference(A, Cm, B, n_boot=300)
    assert back.value == pytest.approx(-d.value, abs=1e-12) and back.hi < 0
    same = S.agreement_difference(A, B, B, n_boot=50)
    assert same.value == 0 and same.lo == same.hi == 0
    with pytest.raises(Exception, match="aligned"):
        S.agreement_difference(A, B[:5], Cm)


def test_null_controlled_agreement_removes_a_planted_shared_null():
    """Two scores that share only a null model (plus noise) agree raw but not given that null."""
    from icp_influence.experiments import confounds as C

    rng = np.random.default_rng(2)
    z = rng.normal(size=200)
    A_ = (z + 0.6 * rng.normal(size=200))[:, None] + 0.2 * rng.normal(size=(200, 8))
    B_ = (z + 0.6 * rng.normal(size=200))[:, None] + 0.2 * rng.normal(size=(200, 8))
    v = {"icp_mean_delta": (A_, "mean"), "icp_win_rate": (A_, "win_rate"), "ip": (B_, "mean"),
         "candidate_nll": (np.repeat(z[:, None], 8, axis=1), "mean")}
    out = C.null_controlled(v, n_boot=200, seed=0)
    g = out["icp_mean_delta vs ip"]["candidate_nll"]
    assert g["ci"][0] < 0 < g["ci"][1] and abs(g["spearman"]) < 0.15
    from icp_influence import stats as S
    assert S.spearman(A_.mean(1), B_.mean(1)) > 0.5
