"""Course figures and tables: labelled axes, legends off the data, readable numbers."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from icp_course import style  # noqa: E402
from icp_course.plots import agreement as PA  # noqa: E402
from icp_course.plots import finetune as PF  # noqa: E402
from icp_course.tables import fmt, fmt_ci, frame  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    style.use()
    yield
    plt.close("all")


def _legend_outside(ax):
    leg = ax.get_legend()
    if leg is None:
        return True
    fig = ax.figure
    fig.canvas.draw()
    lb = leg.get_window_extent()
    ab = ax.get_window_extent()
    return lb.x0 >= ab.x1 - 1 or lb.y0 >= ab.y1 - 1 or lb.x1 <= ab.x0 + 1


def test_reliability_and_forest_figures():
    rel = {"icp_mean_delta": {"value": 0.93, "ci": [0.9, 0.95]}, "ip": {"value": 0.8, "ci": [0.7, 0.86]}}
    fig = PA.reliability_bars(rel)
    ax = fig.axes[0]
    assert "reliability" in ax.get_xlabel() and [t.get_text() for t in ax.get_yticklabels()] == ["ICP mean Δ", "inner product"]
    from icp_course.plots.icp import plot_reliability_curves

    fig = plot_reliability_curves({"ip": {"k": [1, 2, 4], "reliability": [0.2, 0.35, 0.5]}}, full={"ip": 0.8}, n_probes=8)
    ax = fig.axes[0]
    assert "probes" in ax.get_xlabel() and "reliability" in ax.get_ylabel() and _legend_outside(ax)
    assert len(ax.lines) >= 3  # measured points, the prophecy line, the target
    rows = [{"name": "reference", "group": "reference", "spearman": 0.7, "ci": [0.6, 0.8], "disattenuated": 0.8},
            {"name": "win-rate", "group": "aggregation", "spearman": 0.5, "ci": [0.3, 0.6], "disattenuated": None}]
    fig = PA.forest(rows)
    ax = fig.axes[0]
    assert "Spearman" in ax.get_xlabel() and [t.get_text() for t in ax.get_yticklabels()] == ["reference", "win-rate"]
    # the dotted reference line is the first row's value, and the legend outside the axes says so
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["first row (0.70)"] and _legend_outside(ax)
    assert PA.forest(rows, reference=False).axes[0].get_legend() is None


def test_joint_heatmap_noise_and_first_order():
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    fig = PA.rank_joint(a, a + rng.normal(size=50), name_a="ICP", name_b="IP", highlight=np.arange(50) < 5)
    assert "ICP" in fig.axes[0].get_xlabel() and "IP" in fig.axes[0].get_ylabel()
    fig = PA.noise_auc({"ip": {"any": 0.6, "truncate": 0.9}, "icp_mean_delta": {"any": 0.5, "truncate": 0.4}})
    ax = fig.axes[0]
    assert ax.get_xlabel() == "corruption kind" and "0.90" in [t.get_text() for t in ax.texts]
    fig = PA.first_order_scatter(np.arange(10.0), 0.01 * np.arange(10.0), 0.01)
    assert "Spearman 1.0000" in fig.axes[0].get_title()
    fig = PA.within_category([{"category": c, "spearman": s} for c, s in (("a", 0.2), ("b", -0.1), ("a", 0.5))])
    assert "category" in fig.axes[0].get_xlabel()


def test_finetune_figures():
    arms = {"16": {"x": {"mean": -1.0, "ci": [-1.1, -0.9]}, "y": {"mean": -1.2, "ci": [-1.3, -1.1]}},
            "32": {"x": {"mean": -0.9, "ci": [-1.0, -0.8]}, "y": {"mean": -1.1, "ci": [-1.2, -1.0]}}}
    fig = PF.budget_curves(arms, base=-1.3)
    ax = fig.axes[0]
    assert "budget" in ax.get_xlabel() and "nats" in ax.get_ylabel() and _legend_outside(ax)
    rows = [{"a": "x", "b": "y", "budget": 16, "diff": 0.2, "ci": [0.1, 0.3], "verdict": "different"},
            {"a": "x", "b": "y", "budget": 32, "diff": 0.01, "ci": [-0.02, 0.03], "verdict": "equivalent"}]
    fig = PF.paired_differences(rows, margin=0.05)
    ax = fig.axes[0]
    assert "different" in ax.get_yticklabels()[0].get_text() and _legend_outside(ax)


def test_grid_gains_shows_every_seed_and_interval_as_a_gain_over_base():
    from icp_course.figcheck import problems

    style.use()
    rng = np.random.default_rng(1)
    arms = ["icp-bottom", "icp-top", "random", "corrupted"]
    loglik = {b: {a: {"seeds": list(-2.3 + 0.01 * i + rng.normal(0, 0.002, 5))} for i, a in enumerate(arms)}
              for b in ("32", "64")}
    for b in loglik.values():
        for v in b.values():
            v["mean"], v["ci"] = float(np.mean(v["seeds"])), [float(min(v["seeds"])), float(max(v["seeds"]))]
    fig = PF.grid_gains(loglik, base=-2.43, title="gains")
    ax = fig.axes[0]
    # the grid's order (valuators first, bad selections last), whatever order the result holds
    assert [t.get_text() for t in ax.get_yticklabels()] == ["icp-top", "random", "icp-bottom", "corrupted"]
    dots = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections if len(c.get_offsets()) == 5])
    assert np.allclose(sorted(dots), sorted(v - -2.43 for b in loglik.values() for a in b.values() for v in a["seeds"]))
    assert "gain over the base model" in ax.get_xlabel() and _legend_outside(ax) and problems(fig) == []
    plt.close("all")


def test_grid_gain_vs_length_puts_each_arm_at_its_selected_length_and_gain():
    from icp_course.figcheck import problems

    arms = ["icp-top", "random", "longest"]
    loglik = {b: {a: {"mean": -2.3 + 0.01 * i + 0.001 * int(b), "ci": [-2.31 + 0.01 * i, -2.29 + 0.01 * i + 0.002 * int(b)]}
                  for i, a in enumerate(arms)} for b in ("32", "64")}
    selected = {b: {a: {"answer_tokens": 50.0 * (i + 1) * (1 + int(b) / 64), "noisy_fraction": 0.0}
                    for i, a in enumerate(arms)} for b in ("32", "64")}
    fig = PF.grid_gain_vs_length(loglik, selected, base=-2.43, title="gain vs length")
    ax = fig.axes[0]
    pts = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets()) == 6])
    want = [(selected[b][a]["answer_tokens"], loglik[b][a]["mean"] + 2.43) for b in loglik for a in arms]
    assert np.allclose(sorted(map(tuple, pts)), sorted(want))
    assert ax.get_xscale() == "log" and "answer length" in ax.get_xlabel() and _legend_outside(ax)
    assert problems(fig) == []   # readable, and `random` in its course colour
    plt.close("all")


def test_palette_tokens_and_tables():
    assert len(set(map(tuple, style.palette(14)))) == 14 and len(set(map(tuple, style.palette(26)))) == 26
    assert fmt(0.123456) == "0.123" and fmt(float("nan")) == "–" and fmt(None) == "–"
    assert fmt_ci(0.7123, [0.65, 0.77]) == "0.712 [0.650, 0.770]"
    df = frame({"ip": {"value": 0.81234, "ci": [0.7, 0.9], "n": 3}}, index="valuator")
    assert df.loc["ip", "value"] == "0.812 [0.700, 0.900]" and df.loc["ip", "n"] == 3
    # rows with different columns (a null model has no reliability): missing cells read "–", never "nan"
    df = frame({"pair": {"Spearman": 0.2, "Spearman_ci": [0.1, 0.3], "rel A": 0.9},
                "null model": {"Spearman": 0.5, "Spearman_ci": [0.4, 0.6]}}, index="pair", digits=2)
    assert df.loc["null model", "rel A"] == "–" and df.loc["pair", "rel A"] == "0.90"
    assert "nan" not in df.to_string().lower()


def test_measurement_explorer_recomputes_from_the_matrices():
    from icp_influence import stats as S
    from icp_influence.scores import ScoreMatrix
    from icp_course.widgets.agreement import measure, measurement_explorer

    rng = np.random.default_rng(3)
    C, P = 60, 16
    s = rng.normal(size=C)
    ids, pids = [f"c{i}" for i in range(C)], [f"p{j}" for j in range(P)]
    icp = ScoreMatrix(s[:, None] + rng.normal(size=(C, P)), ids, pids, {"method": "icp", "n_answer_tokens": [10] * P})
    neutral = ScoreMatrix(rng.normal(size=(1, P)), ["neutral"], pids, {"method": "icp"})
    ip = ScoreMatrix(s[:, None] + rng.normal(size=(C, P)), ids, pids, {"method": "inner_product"})
    mats = {"icp": icp, "icp_neutral": neutral, "ip": ip}
    r = measure(mats, n_probes=16, aggregation="mean Δ", n_boot=50)
    ref = S.agreement(icp.values, ip.values, "mean", "mean", n_boot=50, boot_splits=4, n_splits=50)
    assert r["spearman"] == pytest.approx(ref.spearman) and r["rel_icp"] == pytest.approx(ref.rel_a)
    # a per-probe baseline shifts every candidate's mean equally: the mean's ranking cannot change ...
    rn = measure(mats, n_probes=16, aggregation="mean Δ", baseline="neutral demonstration", n_boot=50)
    assert rn["spearman"] == pytest.approx(r["spearman"])
    # ... but the win-rate's can
    w0 = measure(mats, n_probes=16, aggregation="win-rate", n_boot=50)
    w1 = measure(mats, n_probes=16, aggregation="win-rate", baseline="neutral demonstration", n_boot=50)
    assert w0["spearman"] != pytest.approx(w1["spearman"])
    # fewer probes: a less reliable ICP score
    assert measure(mats, n_probes=4, n_boot=50)["rel_icp"] < r["rel_icp"]
    box = measurement_explorer(mats, n_boot=50)
    out = box.update(n_probes=8, aggregation="win-rate")
    assert out["n_probes"] == 8 and "8 probes" in box.children[2].value and "win-rate" in box.children[2].value
