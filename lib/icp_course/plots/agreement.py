"""Figures of the measurement in notebook 05 (seaborn): reliability, agreement with
intervals, the ablation forest, noisy-label AUCs, the ground-truth referee.

Every function takes plain results (the dicts of
:mod:`icp_influence.experiments.llm_agreement` / ``ground_truth``), returns the Figure,
labels its axes with what they measure, and keeps legends off the data.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..style import colors, figure, forest as forest_rows, group_colors, heatmap_size, label
from ..style import heatmap as draw_heatmap


def bars_with_ci(ax, df, *, value: str = "value", lo: str = "lo", hi: str = "hi", name: str = "name"):
    """Horizontal bars (seaborn), one per valuator in its course colour, with their precomputed
    intervals as black whiskers; the valuators' readable names on the y axis, the first on top."""
    import seaborn as sns

    sns.barplot(data=df, x=value, y=name, hue=name, palette=dict(zip(df[name], colors(list(df[name])))), legend=False,
                alpha=0.85, saturation=1, width=0.6, orient="h", ax=ax)
    forest_rows(ax, df, value=value, lo=lo, hi=hi, y=np.arange(len(df)), marker=None, capsize=3, lw=1, ticks=False)
    ax.set_yticks(range(len(df)), [label(n) for n in df[name]])
    ax.set_ylabel("")


def reliability_bars(reliability: Mapping[str, Mapping[str, Any]], *, target: float = 0.8, names: Sequence[str] | None = None):
    """Split-half reliability of each valuator (Spearman–Brown) with its two-way 95% CI."""
    import pandas as pd

    names = list(names or reliability)
    df = pd.DataFrame({"name": names, "value": [reliability[n]["value"] for n in names],
                       "lo": [reliability[n]["ci"][0] for n in names], "hi": [reliability[n]["ci"][1] for n in names]})
    fig, ax = figure(figsize=(7.0, 0.45 * len(names) + 1.2))
    bars_with_ci(ax, df)
    ax.axvline(target, color="grey", ls="--", lw=1, label=f"target {target:g}")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_xlim(min(0.0, float(np.nanmin(df["lo"])) - 0.05), 1.0)
    ax.set_xlabel("split-half reliability across probes (Spearman–Brown)\nbars: 95% two-way CI")
    ax.set_title("Does each valuator agree with itself?")
    return fig


def forest(rows: Sequence[Mapping[str, Any]], *, title: str = "What moves the agreement?",
           xlabel: str = "Spearman ρ with a 95% two-way CI (◇ corrected for attenuation)", reference: bool = True):
    """One row per ablation: Spearman with its CI (line) and the attenuation-corrected value (◆).

    ``reference``: a dotted line at the first row's value, labelled in a short legend beside the
    axes (the reference row, which the ablation rows are read against); ``False`` for rows that
    have no reference (several valuators side by side).
    """
    import pandas as pd

    df = pd.DataFrame({"label": [r["name"] for r in rows], "group": [r.get("group", "") for r in rows],
                       "value": [r["spearman"] for r in rows], "lo": [r["ci"][0] for r in rows],
                       "hi": [r["ci"][1] for r in rows], "corrected": [r.get("disattenuated") for r in rows]})
    fig, ax = figure(figsize=(10.0, 0.5 * len(rows) + 1.4))
    # groups of rows get a palette of their own (Set2), so no group borrows a valuator's colour
    gcol = group_colors(df["group"])
    if "null model" in gcol:    # the null models keep their course colour
        gcol["null model"] = colors(["answer_length"])[0]
    df["color"] = df["group"].map(gcol)
    forest_rows(ax, df, color="color", lw=2, wrap=44)
    forest_rows(ax, df, value="corrected", lo=None, hi=None, color="color", marker="D", mfc="white", ms=5, ticks=False)
    if rows and reference:
        ax.axvline(rows[0]["spearman"], color="grey", ls=":", lw=1, label=f"first row ({rows[0]['spearman']:.2f})")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return fig


def rank_joint(a: np.ndarray, b: np.ndarray, *, name_a: str, name_b: str, highlight: np.ndarray | None = None,
               highlight_label: str = "corrupted"):
    """Percentile ranks of two candidate scores with their marginal distributions (seaborn)."""
    import pandas as pd
    import seaborn as sns
    from scipy.stats import rankdata

    from icp_influence.stats import spearman

    ra, rb = 100 * rankdata(a) / len(a), 100 * rankdata(b) / len(b)
    kind = np.where(highlight, highlight_label, "clean") if highlight is not None else np.array(["candidate"] * len(a))
    df = pd.DataFrame({f"percentile rank under {name_a} (%)": ra, f"percentile rank under {name_b} (%)": rb,
                       "": kind})
    import warnings

    with warnings.catch_warnings():  # seaborn switches style.use()'s constrained layout to tight, and says so
        warnings.filterwarnings("ignore", message="The figure layout has changed to tight")
        g = sns.jointplot(data=df, x=df.columns[0], y=df.columns[1], hue="", height=4.6, s=14, alpha=0.7,
                          xlim=(0, 101), ylim=(0, 101), marginal_kws={"common_norm": False, "cut": 0})
    g.ax_joint.plot([0, 100], [0, 100], color="grey", lw=0.8, ls="--")
    g.ax_joint.set_xticks([0, 25, 50, 75, 100])
    g.ax_joint.set_yticks([0, 25, 50, 75, 100])
    g.figure.suptitle(f"Spearman ρ = {spearman(a, b):.3f} (n = {len(a)})", fontsize=10)
    leg = g.ax_joint.get_legend()
    if leg is not None:    # into the empty corner between the two marginal plots, inside the figure
        handles, texts = leg.legend_handles, [t.get_text() for t in leg.get_texts()]
        leg.remove()
        g.figure.legend(handles, texts, loc="upper right", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False,
                        handletextpad=0.2, borderaxespad=0.2)
    return g.figure


def heatmap(matrix: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str], *, title: str,
            cbar_label: str, vmin: float = -1.0, vmax: float = 1.0, center: float | None = 0.0, fmt: str = ".2f"):
    """An annotated heatmap (seaborn) with readable row and column names."""
    import textwrap

    # column names wrapped onto short horizontal lines; set at an angle when there are too many for that
    xl = [textwrap.fill(label(c), 13) for c in cols]
    yl = [label(r) for r in rows]
    angle = 0 if len(cols) <= 7 else 40
    xl = xl if not angle else [label(c) for c in cols]
    # tall enough for the colour bar's label along it (about 0.09 inch per character), whatever the row count
    size = heatmap_size(yl, xl, cell=(1.15 if not angle else 0.62, 0.45), rotation=angle, fontsize=8.5,
                        minimum=(4.5, max(3.0, 0.09 * len(cbar_label) + 1.4)))
    fig, ax = figure(figsize=size)
    draw_heatmap(ax, matrix, annot=True, fmt=fmt, vmin=vmin, vmax=vmax, center=center, xticklabels=xl, yticklabels=yl,
                 cbar_label=cbar_label)
    # the title sits over the heatmap's axes, narrower than the figure: about 6 bold characters per figure inch
    ax.set_title(textwrap.fill(title, max(30, int(6 * fig.get_figwidth()))))
    ax.set_xticks(ax.get_xticks(), xl, rotation=angle, ha="right" if angle else "center", rotation_mode="anchor",
                  fontsize=8.5)
    return fig


def noise_auc(auc: Mapping[str, Mapping[str, float]], *, names: Sequence[str] | None = None):
    """ROC AUC of −score as a detector of each corruption kind (0.5 = chance, 1 = perfect)."""
    names = list(names or auc)
    kinds = sorted({k for n in names for k in auc[n]}, key=lambda k: (k != "any", k))
    M = [[auc[n].get(k, np.nan) for k in kinds] for n in names]
    fig = heatmap(M, names, [k.replace("_", " ") for k in kinds], title="Which valuator puts corrupted examples last?",
                  cbar_label="ROC AUC of −score (0.5 = chance)", vmin=0.0, vmax=1.0, center=0.5)
    fig.axes[0].set_xlabel("corruption kind")
    fig.axes[0].set_ylabel("valuator")
    return fig


def within_category(per_probe: Sequence[Mapping[str, Any]]):
    """Per probe: Spearman of Δ and IP over the candidates of the probe's own category."""
    import pandas as pd
    import seaborn as sns

    df = pd.DataFrame(per_probe)
    fig, ax = figure(figsize=(7.5, 3.8))
    if df.empty:  # no category has enough candidates for a within-category correlation
        ax.text(0.5, 0.5, "no probe's category has enough candidates", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("probe category")
        ax.set_ylabel("Spearman(Δ, IP) over same-category candidates")
        return fig
    order = sorted(df["category"].unique())
    ax.figure.set_size_inches(max(7.5, 0.34 * len(order) + 1.5), 4.2)
    sns.stripplot(data=df, x="category", y="spearman", order=order, color=colors(["icp_mean_delta"])[0],
                  ax=ax, size=5, jitter=0.15, alpha=0.8)
    sns.pointplot(data=df, x="category", y="spearman", order=order, estimator="median", errorbar=None, color="black",
                  linestyle="none", marker="_", markersize=17, markeredgewidth=2, label="median of the category", ax=ax)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xlabel("probe category (one dot per probe)")
    ax.set_ylabel("Spearman(Δ, IP) over\nsame-category candidates")
    ax.set_xticks(range(len(order)), [o.replace("_", " ") for o in order], rotation=50, ha="right",
                  rotation_mode="anchor")
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title("Pair level, within a category: does a probe's Δ follow its IP?")
    return fig


def first_order_scatter(ip: np.ndarray, delta: np.ndarray, eta: float):
    """Δ(z, p)/η after one small SGD step against ⟨∇ℓ(p), ∇ℓ(z)⟩, every pair one dot."""
    from icp_influence.stats import spearman

    import seaborn as sns

    fig, ax = figure(figsize=(4.8, 4.2))
    x, y = np.ravel(ip), np.ravel(delta) / eta
    sns.scatterplot(x=x, y=y, s=6, alpha=0.5, linewidth=0, color=colors(["gt_sgd_small"])[0], ax=ax)
    lim = [float(min(x.min(), y.min())), float(max(x.max(), y.max()))]
    ax.plot(lim, lim, color="grey", ls="--", lw=1)
    ax.set_xlabel("inner product ⟨∇ℓ(p), ∇ℓ(z)⟩ (q/v of every block)")
    ax.set_ylabel("Δ(z, p) / η after one SGD step")
    ax.set_title(f"First order: pair-level Spearman {spearman(x, y):.4f}")
    return fig
