"""icp_influence.stats: correlations against scipy, intervals against known answers, reliability
and two-way agreement on simulated matrices of known reliability, the equivalence test."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as st

from icp_influence import stats as S
from icp_influence.errors import ConfigError


def _spearman_of(rho):
    """Spearman's ρ of a bivariate normal with Pearson correlation ``rho``."""
    return 6 / math.pi * math.asin(rho / 2)


def _spearman_reliability(rel):
    """What split-half (Spearman, Spearman–Brown corrected) estimates for normal scores of reliability ``rel``."""
    half = _spearman_of(rel / (2 - rel))
    return 2 * half / (1 + half)


def _matrix(rng, C, P, rel, signal=None):
    """V[c, p] = s_c + ε: the mean over P probes has (Pearson) reliability ``rel``."""
    s = rng.normal(size=C) if signal is None else signal
    sigma = math.sqrt(P * (1 / rel - 1))
    return s, s[:, None] + rng.normal(scale=sigma, size=(C, P))


def test_correlations_equal_scipy_with_ties_and_constants():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=300), rng.normal(size=300)
    y = y + x
    y[:10] = y[0]  # ties
    assert S.pearson(x, y) == pytest.approx(st.pearsonr(x, y).statistic, abs=1e-12)
    assert S.spearman(x, y) == pytest.approx(st.spearmanr(x, y).statistic, abs=1e-12)
    assert S.kendall(x, y) == pytest.approx(st.kendalltau(x, y).statistic, abs=1e-12)
    for f in (S.pearson, S.spearman, S.kendall):
        assert math.isnan(f(np.ones(5), np.arange(5)))
        with pytest.raises(ConfigError, match="NaN or inf"):
            f([1.0, np.nan, 2.0], [1.0, 2.0, 3.0])
        with pytest.raises(ConfigError):
            f([1.0, 2.0], [1.0, 2.0, 3.0])
    # 2-D inputs are flattened (pair-level correlation of two matrices)
    A, B = rng.normal(size=(20, 5)), rng.normal(size=(20, 5))
    assert S.spearman(A, B) == pytest.approx(st.spearmanr(A.ravel(), B.ravel()).statistic, abs=1e-12)
    # columnwise Spearman = scipy on every column
    cols = S.columnwise_spearman(A, B)
    assert cols == pytest.approx([st.spearmanr(A[:, j], B[:, j]).statistic for j in range(5)], abs=1e-12)


def test_bootstrap_ci_covers_a_known_correlation_and_clusters_rows():
    rng = np.random.default_rng(1)
    rho = 0.6
    cover = 0
    for rep in range(40):  # coverage of a 90% interval of Pearson's r for bivariate normals with ρ = 0.6
        z = rng.multivariate_normal([0, 0], [[1, rho], [rho, 1]], size=150)
        lo, hi = S.bootstrap_ci(z[:, 0], z[:, 1], "pearson", n_boot=300, level=0.9, seed=rep)
        cover += lo <= rho <= hi
    assert 30 <= cover <= 40  # ≈ 36 expected; a broken interval (e.g. a width of 0) lands far outside
    x = rng.normal(size=200)
    assert S.bootstrap_ci(x, 2 * x + 1, "pearson", n_boot=50) == pytest.approx((1.0, 1.0))
    # 2-D input: rows (candidates) resampled; a CI for clustered data is wider than the naive one
    base = rng.normal(size=(60, 1))
    A = base + 0.1 * rng.normal(size=(60, 20))
    B = base + 0.1 * rng.normal(size=(60, 20)) + rng.normal(size=(60, 1))
    lo2, hi2 = S.bootstrap_ci(A, B, "pearson", n_boot=300, seed=0)
    lo1, hi1 = S.bootstrap_ci(A.ravel(), B.ravel(), "pearson", n_boot=300, seed=0)
    assert hi2 - lo2 > 2 * (hi1 - lo1)
    assert S.bootstrap_ci(A, B, "pearson", n_boot=30, seed=7) == S.bootstrap_ci(A, B, "pearson", n_boot=30, seed=7)
    with pytest.raises(ConfigError):
        S.bootstrap_ci(x[:2], x[:2])
    with pytest.raises(ConfigError):
        S.bootstrap_ci(x, x, "kendalls")


def test_t_interval_is_the_textbook_interval():
    v = [2.0, 4.0, 4.0, 5.0, 7.0]
    m, s, n = np.mean(v), np.std(v, ddof=1), len(v)
    h = st.t.ppf(0.975, n - 1) * s / math.sqrt(n)
    assert S.t_interval(v) == pytest.approx((m - h, m + h), abs=1e-12)
    assert S.t_interval([1.0]) == (None, None)
    assert S.t_interval([3.0, 3.0, 3.0]) == (3.0, 3.0)


@pytest.mark.parametrize("rel", [0.5, 0.8, 0.95])
def test_split_half_recovers_a_known_reliability(rel):
    rng = np.random.default_rng(int(rel * 100))
    hits, values = 0, []
    for rep in range(6):
        _, V = _matrix(rng, 300, 64, rel)
        r = S.split_half(V, "mean", n_boot=150, seed=rep)
        values.append(r.value)
        hits += r.lo <= rel <= r.hi
        assert r.lo < r.value < r.hi and r.n_probes == 64 and r.n_candidates == 300
    assert np.mean(values) == pytest.approx(_spearman_reliability(rel), abs=0.03)
    assert hits >= 4  # 95% intervals: ≈ 5.7 of 6 expected


def test_split_half_of_pure_noise_is_near_zero_and_win_rate_counts_signs():
    rng = np.random.default_rng(3)
    V = rng.normal(size=(200, 32))
    r = S.split_half(V, "mean", n_boot=100)
    assert abs(r.value) < 0.15 and r.lo < 0 < r.hi
    # win-rate sees only signs: a matrix whose signs carry the signal is reliable for it
    s = rng.normal(size=200)
    W = np.sign(s[:, None] + rng.normal(scale=0.5, size=(200, 32))) * rng.uniform(0.1, 100, size=(200, 32))
    assert S.split_half(W, "win_rate", n_boot=50).value > 0.8
    with pytest.raises(ConfigError):
        S.split_half(V[:, :3])
    with pytest.raises(ConfigError):
        S.split_half(V, "median")


def test_reliability_curve_and_spearman_brown_prophecy():
    rng = np.random.default_rng(4)
    _, V = _matrix(rng, 400, 128, 0.9)  # per-probe reliability r1 = 0.9 / (128 - 127·0.9)
    r1 = 0.9 / (128 - 127 * 0.9)
    curve = S.reliability_curve(V, "mean", [1, 4, 16, 64])
    assert curve["k"] == [1, 4, 16, 64]
    expected = [S.spearman_brown(r1, k) for k in curve["k"]]
    assert curve["reliability"] == pytest.approx(expected, abs=0.06)
    assert all(a < b for a, b in zip(curve["reliability"], curve["reliability"][1:]))
    # prophecy: the probes needed for 0.8 from a reliability measured on n probes
    assert S.probes_needed(0.5, 16, 0.8) == pytest.approx(64.0)
    assert S.probes_needed(S.spearman_brown(0.5, 3), 48, 0.8) == pytest.approx(64.0)
    assert math.isinf(S.probes_needed(-0.1, 16))
    with pytest.raises(ConfigError):
        S.reliability_curve(V, "mean", [65])


def test_two_way_agreement_and_attenuation_on_known_matrices():
    rng = np.random.default_rng(5)
    s = rng.normal(size=1000)
    _, Va = _matrix(rng, 1000, 64, 0.8, signal=s)
    _, Vb = _matrix(rng, 1000, 64, 0.6, signal=s)
    ag = S.agreement(Va, Vb, n_boot=200)
    # the two scores measure the same thing: raw ρ ≈ √(0.8·0.6), corrected ≈ 1
    assert ag.spearman == pytest.approx(_spearman_of(math.sqrt(0.8 * 0.6)), abs=0.05)
    assert ag.rel_a == pytest.approx(_spearman_reliability(0.8), abs=0.05)
    assert ag.rel_b == pytest.approx(_spearman_reliability(0.6), abs=0.06)
    assert ag.disattenuated == pytest.approx(1.0, abs=0.08)
    assert ag.ci[0] < ag.spearman < ag.ci[1]
    assert ag.disattenuated_ci[0] < 1.0 < ag.disattenuated_ci[1]
    # probes resampled too: wider than the candidates-only interval
    one = S.agreement(Va, Vb, n_boot=200, resample_probes=False)
    assert (ag.ci[1] - ag.ci[0]) > (one.ci[1] - one.ci[0])
    # unrelated valuators: the interval contains 0
    _, Vc = _matrix(rng, 1000, 64, 0.8)
    assert S.agreement(Va, Vc, n_boot=200).ci[0] < 0 < S.agreement(Va, Vc, n_boot=200).ci[1]
    assert S.disattenuate(0.5, 0.25, 1.0) == pytest.approx(1.0)
    assert math.isnan(S.disattenuate(0.5, 0.0, 1.0))
    with pytest.raises(ConfigError, match="align"):
        S.agreement(Va, Vb[:, :10])


def test_tost_verdicts():
    rng = np.random.default_rng(6)
    base = rng.normal(size=8)
    same = S.tost_paired(base + rng.normal(scale=0.01, size=8), base, margin=0.1)
    assert same.verdict == "equivalent" and same.p_tost < 0.05 and abs(same.diff) < 0.02
    apart = S.tost_paired(base + 1.0 + rng.normal(scale=0.01, size=8), base, margin=0.1)
    assert apart.verdict == "different" and apart.ci[0] > 0.9
    noisy = S.tost_paired(base + rng.normal(scale=1.0, size=8), base, margin=0.1)
    assert noisy.verdict == "inconclusive"
    # TOST p-value = the larger of the two one-sided t-test p-values
    d = np.array([0.03, -0.01, 0.02, 0.00, 0.04])
    m, se = d.mean(), d.std(ddof=1) / math.sqrt(5)
    expected = max(st.t.sf((m + 0.05) / se, 4), st.t.cdf((m - 0.05) / se, 4))
    assert S.tost_paired(d, np.zeros(5), 0.05).p_tost == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ConfigError):
        S.tost_paired([1.0, 2.0], [1.0, 2.0], margin=0)
    with pytest.raises(ConfigError):
        S.tost_paired([1.0], [1.0], margin=0.1)


def test_pair_agreement_two_way():
    rng = np.random.default_rng(7)
    A = rng.normal(size=(40, 20))
    B = A + 0.5 * rng.normal(size=(40, 20))
    iv = S.pair_agreement(A, B, n_boot=200)
    assert iv.value == pytest.approx(st.spearmanr(A.ravel(), B.ravel()).statistic, abs=1e-12)
    assert iv.lo < iv.value < iv.hi
    same = S.pair_agreement(A, 3 * A + 1, n_boot=50)
    assert same.value == pytest.approx(1.0) and same.lo == pytest.approx(1.0, abs=1e-6)
    indep = S.pair_agreement(A, rng.normal(size=(40, 20)), n_boot=200)
    assert indep.lo < 0 < indep.hi
    with pytest.raises(ConfigError):
        S.pair_agreement(A, B[:, :5])


def test_spearman_hand_computed():
    # ranks x = 1..5, y ranks = 2,1,4,3,5 -> d^2 = 1+1+1+1+0 = 4; rho = 1 - 6*4/(5*24) = 0.8
    assert S.spearman([10, 20, 30, 40, 50], [2.0, 1.0, 4.0, 3.0, 9.0]) == pytest.approx(0.8, abs=1e-12)
    assert S.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(S.spearman([1, 1, 1], [1, 2, 3]))


def _kendall_brute(x, y):
    """tau-b by explicit pair counting."""
    conc = disc = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            tx += 1
        elif dy == 0:
            ty += 1
        elif dx == dy:
            conc += 1
        else:
            disc += 1
    return (conc - disc) / np.sqrt((conc + disc + tx) * (conc + disc + ty))


def test_kendall_matches_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(3)
    x = rng.integers(0, 5, 40).astype(float)  # many ties
    y = x + rng.integers(0, 4, 40)
    assert S.kendall(x, y) == pytest.approx(_kendall_brute(x, y), abs=1e-12)
    # no ties: 4 concordant... hand case: x=1,2,3 y=1,3,2 -> C=2, D=1 -> 1/3
    assert S.kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)


def test_bootstrap_ci_contains_point_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (40, 400):
        x = rng.normal(size=n)
        y = x + rng.normal(size=n)
        rho = S.spearman(x, y)
        lo, hi = S.bootstrap_ci(x, y, S.spearman, n_boot=400, seed=1)
        assert lo <= rho <= hi
        widths.append(hi - lo)
    assert widths[1] < 0.6 * widths[0]  # ~ 1/sqrt(10) ratio in theory
    # seeded: the same seed gives the same interval
    assert S.bootstrap_ci(x, y, n_boot=50, seed=7) == S.bootstrap_ci(x, y, n_boot=50, seed=7)


def test_min_detectable_difference_has_the_power_it_claims():
    # the known design value: 5 pairs, two-sided α = 0.05, power 0.8 → d = 1.68 standard deviations
    assert S.min_detectable_difference(1.0, 5) == pytest.approx(1.682, abs=1e-3)
    assert S.paired_t_power(S.min_detectable_difference(0.3, 5), 0.3, 5) == pytest.approx(0.8, abs=1e-9)
    assert S.paired_t_power(0.0, 1.0, 7) == pytest.approx(0.05, abs=1e-9)        # no effect: the test's size
    # many pairs: the normal limit (z₀.₉₇₅ + z₀.₈)·sd/√n
    n = 10_000
    z = st.norm.ppf(0.975) + st.norm.ppf(0.8)
    assert S.min_detectable_difference(2.0, n) == pytest.approx(z * 2.0 / math.sqrt(n), rel=2e-3)
    # by simulation: paired t-tests on normal differences of that mean reject 80% of the time
    rng = np.random.default_rng(0)
    sd, k = 0.05, 6
    delta = S.min_detectable_difference(sd, k)
    d = rng.normal(delta, sd, size=(20_000, k))
    p = st.ttest_1samp(d, 0.0, axis=1).pvalue
    assert float(np.mean(p < 0.05)) == pytest.approx(0.8, abs=0.012)
    assert S.min_detectable_difference(sd, 10) < delta                              # more seeds, smaller MDD
    with pytest.raises(ConfigError):
        S.min_detectable_difference(1.0, 1)


def test_two_way_difference_resamples_questions_as_well_as_seeds():
    from icp_influence.stats import two_way_difference

    rng = np.random.default_rng(0)
    a = (rng.random((5, 12)) < 0.3).astype(float)
    assert two_way_difference(a, a) == (0.0, 0.0, 0.0)
    # one question right in every seed for one arm only: the seeds agree perfectly, but a redraw of
    # the 12 questions leaves it out about (11/12)^12 = 35% of the time, so the interval reaches 0
    b = np.zeros((5, 12))
    one = b.copy()
    one[:, 3] = 1.0
    diff, lo, hi = two_way_difference(one, b)
    assert diff == pytest.approx(1 / 12) and lo == 0.0 and hi > diff
    # eight of twelve questions: clearly different
    many = b.copy()
    many[:, :8] = 1.0
    diff, lo, hi = two_way_difference(many, b)
    assert diff == pytest.approx(8 / 12) and lo > 0.3
    # the point estimate is the mean of the paired differences; the interval follows the sign
    diff, lo, hi = two_way_difference(b, many)
    assert diff == pytest.approx(-8 / 12) and hi < -0.3
    with pytest.raises(ValueError, match="rows × columns"):
        two_way_difference(np.zeros(5), np.zeros(5))


def test_roc_auc_equals_sklearn_with_ties_and_is_the_mann_whitney_chance():
    """The rank formula against scikit-learn's ROC AUC (an independent implementation: the area
    under the ROC curve it draws) and against the definition counted pair by pair."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    for n, ties in ((12, False), (40, True), (200, True)):
        s = rng.normal(size=n)
        if ties:
            s = np.round(s, 1)  # many tied scores
        y = rng.random(n) < 0.3
        y[0], y[1] = True, False
        want = roc_auc_score(y, s)
        assert S.roc_auc(y, s) == pytest.approx(want, abs=1e-12)
        pos, neg = s[y], s[~y]
        pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
        assert S.roc_auc(y, s) == pytest.approx(pairwise, abs=1e-12)
    assert S.roc_auc([1, 1, 0, 0], [4, 3, 2, 1]) == 1.0 and S.roc_auc([0, 0, 1, 1], [4, 3, 2, 1]) == 0.0
    assert np.isnan(S.roc_auc([1, 1, 1], [1.0, 2.0, 3.0]))
    with pytest.raises(ConfigError, match="labels but"):
        S.roc_auc([1, 0], [1.0, 2.0, 3.0])
