"""icp_influence.compare: correlations, intervals, overlap, bins, families, noise detection."""
from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest

from icp_influence import compare as C
from icp_influence.errors import ConfigError
from icp_influence.scores import ScoreMatrix


def _sm(values, ids=None, method="m", **meta):
    values = np.asarray(values, float)
    if values.ndim == 1:
        values = values[:, None]
    ids = ids or [f"c{i}" for i in range(len(values))]
    return ScoreMatrix(values, ids, [f"p{j}" for j in range(values.shape[1])], {"method": method, **meta})


def test_agreement_aligns_by_id_and_uses_each_aggregate():
    a = _sm([[1, -1], [2, 3], [0.5, 0.5], [-2, -2]], ids=["a", "b", "c", "d"])
    # b lists the same candidates in another order, and one extra candidate
    b = _sm([[0.3], [-5], [4], [1], [9]], ids=["c", "d", "b", "a", "zz"])
    ids, x, y = C.align(a, b)
    assert ids == ["a", "b", "c", "d"]
    np.testing.assert_allclose(x, [0, 2.5, 0.5, -2])
    np.testing.assert_allclose(y, [1, 4, 0.3, -5])
    ag = C.agreement(a, b, n_boot=50)
    assert ag.n_candidates == 4 and ag.spearman == pytest.approx(0.8)  # ranks (2,4,3,1) vs (3,4,2,1)
    assert not ag.two_way  # different probes: only candidates can be resampled
    # win-rate aggregate: a's win rates are 0.5, 1, 1, 0
    _, xw, _ = C.align((a, "win_rate"), b)
    np.testing.assert_allclose(xw, [0.5, 1, 1, 0])
    with pytest.raises(ConfigError):
        C.align(_sm([1, 2], ids=["x", "y"]), _sm([1, 2], ids=["u", "v"]))


def test_agreement_is_two_way_when_probes_match():
    from icp_influence import stats as S

    rng = np.random.default_rng(2)
    n, p = 50, 8
    base = rng.normal(size=(n, 1)) + rng.normal(size=(n, p))
    a = _sm(base, method="a")
    b = _sm(base[::-1] * 0 + base + rng.normal(size=(n, p)), method="b")
    shuffled = b.subset(list(reversed(b.candidate_ids)), list(reversed(b.probe_ids)))
    ag = C.agreement(a, shuffled, n_boot=100)
    ref = S.agreement(a.values, b.values, n_boot=100)
    assert ag.two_way and ag.spearman == pytest.approx(ref.spearman) and ag.ci == pytest.approx(ref.ci)
    assert ag.rel_a == pytest.approx(ref.rel_a)


def test_overlap_curve_on_known_rankings():
    ids = [f"c{i}" for i in range(10)]
    x = np.arange(10, 0, -1.0)  # c0 best ... c9 worst
    y = x.copy()
    y[[0, 9]] = y[[9, 0]]  # swap best and worst
    cur = C.overlap_curve((ids, x), (ids, y), ks=[1, 2, 5, 9, 10])
    assert cur["overlap"] == [0, 1, 4, 8, 10]
    assert cur["overlap_frac"] == pytest.approx([0, 0.5, 0.8, 8 / 9, 1.0])
    assert cur["jaccard"] == pytest.approx([0, 1 / 3, 4 / 6, 8 / 10, 1.0])
    assert cur["random"] == pytest.approx([0.1, 0.2, 0.5, 0.9, 1.0])
    assert C.top_fraction_overlap((ids, x), (ids, y), 0.2) == pytest.approx(0.5)
    # identical valuators overlap fully at every k
    assert all(f == 1.0 for f in C.overlap_curve((ids, x), (ids, x))["overlap_frac"])


def test_rank_bins_and_count_matched_overlap():
    n = 20
    ids = [f"c{i}" for i in range(n)]
    x = np.arange(n, dtype=float)  # percentile ranks (i+1)/20
    masks = C.rank_bins(x)
    assert masks["<=0.5"].sum() == 10 and masks[">0.5"].sum() == 10
    assert masks[">0.9"].sum() == 2 and masks[">0.85"].sum() == 3 and masks[">0.8"].sum() == 4
    np.testing.assert_array_equal(np.flatnonzero(masks[">0.9"]), [18, 19])
    # same ranking -> every bin overlaps fully; reversed -> zero overlap in every bin
    rows = C.bin_overlap((ids, x), (ids, x))
    assert [r["overlap_frac"] for r in rows] == [1.0] * 7
    rev = C.bin_overlap((ids, x), (ids, -x))
    assert [r["overlap"] for r in rev] == [0] * 7
    assert rev[-1]["random"] == pytest.approx(2 / 20)
    # raw-score bins (e.g. win rates)
    raw = C.rank_bins([0.1, 0.55, 0.95, 0.5], on="raw")
    assert raw["<=0.5"].tolist() == [True, False, False, True]
    assert raw[">0.9"].tolist() == [False, False, True, False]


def test_per_family_and_domain_split():
    ids = [f"c{i}" for i in range(12)]
    fam = {c: ("A" if i < 6 else "B") for i, c in enumerate(ids)}
    x = np.arange(12, dtype=float)
    y = np.concatenate([np.arange(6.0), -np.arange(6.0)])  # agrees within A, reversed within B
    pf = C.per_family_spearman((ids, x), (ids, y), fam)
    assert pf == pytest.approx({"A": 1.0, "B": -1.0})
    dom = C.domain_spearman((ids, x), (ids, y), fam, probe_families=["A"], n_boot=20)
    assert dom["in_domain"] == pytest.approx(1.0) and dom["out_of_domain"] == pytest.approx(-1.0)
    assert dom["n_in"] == 6 and dom["n_out"] == 6


def test_noise_detection_perfect_reversed_and_precision():
    ids = [f"c{i}" for i in range(10)]
    noisy = ["c0", "c1"]
    good = np.array([-5, -4, 1, 2, 3, 4, 5, 6, 7, 8], float)  # noisy valued lowest
    r = C.noise_detection((ids, good), noisy, ks=[2, 4])
    assert r["auc"] == pytest.approx(1.0)
    assert r["precision_at_k"] == {"2": 1.0, "4": 0.5}
    assert r["base_rate"] == pytest.approx(0.2)
    assert C.noise_detection((ids, -good), noisy)["auc"] == pytest.approx(0.0)
    # one noisy ranked above 4 of 8 clean: AUC = (8 + 4) / 16
    mid = good.copy()
    mid[1] = 4.5
    assert C.noise_detection((ids, mid), noisy)["auc"] == pytest.approx(12 / 16)
    with pytest.raises(ConfigError):
        C.noise_detection((ids, good), [])


def test_compare_all_pairwise_matrix():
    rng = np.random.default_rng(0)
    n = 60
    ids = [f"c{i}" for i in range(n)]
    base = rng.normal(size=(n, 5))
    icp = _sm(base, ids, "icp")
    ip = _sm(base + 0.01 * rng.normal(size=(n, 5)), ids, "ip")
    rnd = _sm(rng.normal(size=(n, 3)), ids, "rand")
    fam = {c: "A" if i % 2 else "B" for i, c in enumerate(ids)}
    out = C.compare_all({"icp_mean": icp, "icp_win": (icp, "win_rate"), "ip": ip, "rand": rnd}, n_boot=50,
                        families=fam, probe_families=["A"], noisy_ids=ids[:6])
    S = np.asarray(out["spearman"])
    assert S.shape == (4, 4) and np.allclose(np.diag(S), 1) and np.allclose(S, S.T)
    assert S[0, 2] > 0.99 and abs(S[0, 3]) < 0.4
    pair = out["pairs"]["icp_mean|ip"]
    assert pair["spearman"] == pytest.approx(C.spearman(icp.aggregate("mean"), ip.aggregate("mean")))
    assert pair["ci"][0] <= pair["spearman"] <= pair["ci"][1] and pair["two_way"]
    assert set(pair["per_family_spearman"]) == {"A", "B"}
    assert "in_domain" in pair["domain"]
    assert set(out["noise"]) == {"icp_mean", "icp_win", "ip", "rand"}
    assert 0 <= out["noise"]["ip"]["auc"] <= 1


def test_plots_have_labelled_axes():
    from icp_course.plots import compare as P

    ids = [f"c{i}" for i in range(30)]
    x = np.arange(30.0)
    fig = P.rank_scatter((ids, x), (ids, x[::-1]), name_a="ICP", name_b="IP", highlight=ids[:3])
    ax = fig.axes[0]
    assert "ICP" in ax.get_xlabel() and "IP" in ax.get_ylabel() and "%" in ax.get_xlabel()
    fig = P.agreement_heatmap([[1, 0.5], [0.5, 1]], ["a", "b"])
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
    fig = P.overlap_curves({"a|b": C.overlap_curve((ids, x), (ids, x))})
    assert "k" in fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
    fig = P.bin_overlap_bars(C.bin_overlap((ids, x), (ids, x)))
    assert fig.axes[0].get_xlabel() and fig.axes[0].get_ylabel()
    out = {"metric": "m", "base": 0.0, "arms": {"a": {"mean": 1, "ci": [0, 2], "seeds": [0, 1, 2]}}}
    fig = P.arms_plot(out, metric_label="log-lik (nats/token)")
    assert fig.axes[0].get_ylabel() == "log-lik (nats/token)" and fig.axes[0].get_xlabel()
    import matplotlib.pyplot as plt

    plt.close("all")


def test_widgets_recompute_headless():
    from icp_course.widgets.compare import agreement_explorer, arms_explorer

    rng = np.random.default_rng(1)
    n = 40
    base = rng.normal(size=(n, 3))
    vals = {"a": _sm(base), "b": _sm(base + 0.1 * rng.normal(size=(n, 3))), "c": _sm(rng.normal(size=(n, 3)))}
    w = agreement_explorer(vals)
    r = w.update(a="a", b="b", k=10)
    assert r["spearman"] == pytest.approx(C.spearman(vals["a"].aggregate(), vals["b"].aggregate()))
    assert r["overlap"] == C.overlap_curve(vals["a"], vals["b"], [10])["overlap"][0] and r["k"] == 10
    r2 = w.update(b="c")
    assert r2["spearman"] == pytest.approx(C.spearman(vals["a"].aggregate(), vals["c"].aggregate()))
    outcome = {"metric": "m", "base": -1.0, "arms": {
        "x": {"mean": 0.5, "ci": [0.4, 0.6], "seeds": [0.4, 0.5, 0.6]},
        "y": {"mean": 0.1, "ci": [0.0, 0.2], "seeds": [0.0, 0.1, 0.2]}}}
    aw = arms_explorer({8: outcome})
    assert aw.update(arms=["y"], budget=8) == {"y": (0.1, 0.0, 0.2)}
    gain = aw.update(show="gain over base")["y"]  # relative to the base model's -1.0
    assert gain == pytest.approx((1.1, 1.0, 1.2))
    import matplotlib.pyplot as plt

    plt.close("all")
