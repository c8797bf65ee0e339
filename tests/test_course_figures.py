"""The explanatory diagrams (token layout of ICP, LSA as one GD step) and the token plots:
their text and labels say what the notebooks claim, whitespace tokens are visible."""
from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from icp_course.plots.diagrams import (figure_texts, layout_segments, plot_icp_layout, plot_icp_layout_for,  # noqa: E402
                                       plot_lsa_gd_diagram)
from icp_course.plots.tokens import decode_tokens, visible_token, visible_tokens  # noqa: E402


def test_visible_token_shows_whitespace():
    assert visible_token(" Paris") == "␣Paris"
    assert visible_token("\n\n") == "↵↵" and visible_token("\t") == "⇥" and visible_token("") == "∅"
    assert visible_tokens(["a", " b"]) == ["a", "␣b"]


def test_icp_layout_diagram_labels_segments_scoring_and_baseline():
    with_demo = {"prefix": ["<s>", "These", "␣examples", "␣may", "␣be", "␣helpful", "↵", "Input", ":"],
                 "query": ["Instruction", ":", "␣Add"], "answer": ["␣4", "2"]}
    zero = {"prefix": ["<s>"], "query": with_demo["query"], "answer": with_demo["answer"]}
    fig = plot_icp_layout(with_demo, zero, max_per_segment=6)
    texts = figure_texts(fig)
    joined = "\n".join(texts)
    for needle in ("demonstration z\n(context: not scored)", "query x_p\n(context: not scored)", "answer y_p\n(scored)",
                   "with demonstration\nll(p | z)", "zero-shot baseline\nll(p)", "no demonstration",
                   "ll(p | z) = Σ_t log p(y_t | z, x_p, y_<t)", "ll(p) = Σ_t log p(y_t | x_p, y_<t)",
                   "Δ(z, p) = ll(p | z) − ll(p)", "answer token (scored)", "␣ = space"):
        assert needle in joined, needle
    assert "…+4…" in texts                       # 9 prefix tokens shown as 6 boxes: 4 first, a gap, the last
    assert texts.count("␣4") == 2                 # the answer appears in both rows
    plt.close(fig)


def test_icp_layout_for_real_tokens():
    from icp_influence.encoding import encode_pair
    from icp_influence.models import load_model
    from icp_influence.synthetic import make_synthetic_pool

    _, tok = load_model("tiny-gpt-neox", device="cpu")
    pool = make_synthetic_pool(3, seed=0)
    enc = encode_pair(tok, pool[1], pool[0])
    seg = layout_segments(tok, enc)
    assert [len(seg[k]) for k in ("prefix", "query", "answer")] == [len(enc.prefix_ids), len(enc.query_ids),
                                                                      len(enc.answer_ids)]
    assert seg["answer"] == decode_tokens(tok, enc.answer_ids) and not any(" " in t for t in seg["answer"])
    fig = plot_icp_layout_for(tok, pool[1], pool[0])
    assert "answer y_p\n(scored)" in figure_texts(fig)
    plt.close(fig)


def test_lsa_diagram_shows_the_construction_update_and_prediction():
    fig = plot_lsa_gd_diagram(n_context=3)
    texts = figure_texts(fig)
    joined = "\n".join(texts)
    for needle in ("$W_K = W_Q$", "$W_V$", "$P = I$", "$-\\eta$", "$I_d$", "keep the x-block",
                   "$(W_K e_i)^\\top (W_Q e_q) = x_i^\\top x_q$", "takes y", "$W_V e_i = (0,\\ -\\eta\\, y_i)$",
                   "$\\Delta W = ", "-(W_1 - W_0)", "$W_1 = W_0 - \\eta \\nabla L(W_0)$",
                   "$\\hat{y} = -[e_q]_y", "= W_1 x_q$", "tokens $e_i = (x_i, y_i)$, query $e_q = (x_q, 0)$",
                   "x-block", "y row"):
        assert needle in joined, needle
    assert [t for t in texts if re.fullmatch(r"\$e_(\{\d+\}|q)\$", t)] == ["$e_{1}$", "$e_{2}$", "$e_{3}$", "$e_q$"]
    assert texts.count("$0$") >= 1 and "$x_q$" in texts   # the query token is (x_q, 0)
    plt.close(fig)


def test_token_plots_show_whitespace_visibly():
    from icp_course.plots.icp import plot_token_view

    comp = {"tokens": [" 4", "\n", "2"], "zero_shot": np.array([-2.0, -1.0, -0.5]),
            "with_demo": np.array([-1.0, -0.8, -0.4])}
    fig = plot_token_view(comp["tokens"], comp["with_demo"], comp["zero_shot"])
    assert "␣" in fig.axes[0].get_xlabel()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["␣4", "↵", "2"]
    plt.close(fig)


def test_reliability_curves_plot():
    from icp_course.plots.icp import plot_reliability_curves

    fig = plot_reliability_curves({"mean Δ": {"k": [1, 2, 3], "reliability": [0.2, 0.4, 0.55]},
                                   "win-rate": {"k": [1, 2, 3], "reliability": [float("nan"), 0.1, 0.3]}}, n_probes=6)
    ax = fig.axes[0]
    assert "probes per score k" in ax.get_xlabel() and "reliability" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["mean Δ", "win-rate", "target 0.8"]
    plt.close(fig)


def _overlaps(texts, renderer):
    boxes = [t.get_window_extent(renderer) for t in texts if t.get_text()]
    return [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]


def test_one_colour_per_valuator_by_name_or_label():
    from icp_course import style

    for name in ("icp_mean_delta", "ip", "answer_length"):
        assert style.color(name) == style.color(style.label(name)) == style.VALUATOR_COLORS[name]
    assert style.color("no such valuator") is None
    assert style.colors(["ICP mean Δ", "inner product"]) == [style.VALUATOR_COLORS["icp_mean_delta"],
                                                             style.VALUATOR_COLORS["ip"]]


def test_heatmap_and_category_labels_do_not_collide():
    import matplotlib.pyplot as plt

    from icp_course import style
    from icp_course.plots import agreement as PA

    style.use()
    names = ["icp_mean_delta", "icp_win_rate", "ip", "ip_per_token", "cosine", "ekfac"]
    gts = ["gt_sgd_small", "gt_sgd_all", "gt_adam_sign"]
    fig = PA.heatmap(np.zeros((6, 3)), names, gts, title="t", cbar_label="ρ")
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    ax = fig.axes[0]
    assert not _overlaps(ax.get_xticklabels(), r) and not _overlaps(ax.get_yticklabels(), r)
    per_probe = [{"category": f"category_{i:02d}", "spearman": 0.1 * (i % 5)} for i in range(26)]
    fig = PA.within_category(per_probe)
    fig.canvas.draw()
    ax = fig.axes[0]
    # rotated labels: neighbours stay apart when the gap between their baselines, measured across the
    # text (tick spacing × sin(angle)), is larger than the height of a line of text
    t = ax.get_xticklabels()[0]
    spacing = ax.get_window_extent().width / len(per_probe)
    line_px = t.get_fontsize() * fig.dpi / 72
    assert t.get_rotation() > 20 and spacing * np.sin(np.radians(t.get_rotation())) > line_px
    plt.close("all")


def test_percentile_rank_axes_stay_within_0_and_100():
    import matplotlib.pyplot as plt

    from icp_course.plots import agreement as PA

    rng = np.random.default_rng(0)
    fig = PA.rank_joint(rng.normal(size=80), rng.normal(size=80), name_a="a", name_b="b",
                        highlight=rng.random(80) < 0.1)
    ax = fig.axes[0]
    assert ax.get_xlim() == (0, 101) and ax.get_ylim() == (0, 101)
    plt.close("all")


def test_forest_groups_never_borrow_a_valuator_colour():
    import matplotlib.colors as mcolors
    import matplotlib.pyplot as plt

    from icp_course import style
    from icp_course.plots import agreement as PA

    rows = [{"name": f"row {i}", "group": g, "spearman": 0.1 * i, "ci": [0.1 * i - 0.1, 0.1 * i + 0.1]}
            for i, g in enumerate(["reference", "aggregation", "baseline", "gradient score", "probes", "domain", "data"])]
    fig = PA.forest(rows)
    used = {mcolors.to_hex(l.get_color()) for l in fig.axes[0].get_lines() if l.get_marker() == "o"}
    valuator = {mcolors.to_hex(c) for c in style.VALUATOR_COLORS.values()}
    assert len(used) == 7 and not used & valuator
    plt.close("all")
