"""Figures for valuator agreement and fine-tuning outcomes (notebooks 05 and 06)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from icp_course.style import color, colors, figure, forest, heatmap, heatmap_size, tidy
from icp_course.style import label as readable
from icp_influence.compare import Scores, align, percentile_rank


def rank_scatter(a: Scores, b: Scores, *, name_a: str = "valuator A", name_b: str = "valuator B",
                 how_a: str | None = None, how_b: str | None = None, highlight: Sequence[str] | None = None,
                 highlight_label: str = "noisy", ax=None):
    """Percentile rank under ``a`` (x) vs under ``b`` (y), one dot per candidate.

    ``highlight``: candidate ids drawn in another colour (e.g. the noisy ones).
    """
    from icp_influence.stats import spearman

    import pandas as pd
    import seaborn as sns

    ids, x, y = align(a, b, how_a, how_b)
    fig, ax = figure(figsize=(5.0, 4.0), ax=ax)
    marked = set(highlight or ())
    df = pd.DataFrame({"x": percentile_rank(x) * 100, "y": percentile_rank(y) * 100,
                       "": [highlight_label if c in marked else "candidates" for c in ids]})
    hl = bool(marked & set(ids))
    sns.scatterplot(data=df, x="x", y="y", hue="" if hl else None, hue_order=["candidates", highlight_label], s=12,
                    alpha=0.7, linewidth=0, legend=hl, ax=ax)
    if hl:
        sns.move_legend(ax, "lower right", fontsize=8, title=None)
    ax.plot([0, 100], [0, 100], color="grey", lw=0.8, ls="--")
    ax.set_xlabel(f"percentile rank under {name_a} (%)")
    ax.set_ylabel(f"percentile rank under {name_b} (%)")
    ax.set_title(f"Spearman ρ = {spearman(x, y):.3f}  (n = {len(ids)})")
    ax.set_xlim(0, 101)
    ax.set_ylim(0, 101)
    return fig


def agreement_heatmap(matrix: Sequence[Sequence[float]], names: Sequence[str], *, title: str = "Spearman ρ",
                      ax=None):
    """Pairwise correlation heatmap (values annotated, colour range [-1, 1])."""
    names = [readable(n) for n in names]
    fig, ax = figure(figsize=heatmap_size(names, names, cell=(0.75, 0.6), rotation=35, fontsize=8.5), ax=ax)
    heatmap(ax, matrix, annot=True, annot_size=8, vmin=-1, vmax=1, center=0, xticklabels=names, yticklabels=names,
            cbar_label=f"{title} (unitless, −1 … 1)")
    ax.set_xticks(ax.get_xticks(), names, rotation=35, ha="right", rotation_mode="anchor")
    ax.set_xlabel("valuator")
    ax.set_ylabel("valuator")
    ax.set_title(title)
    tidy(fig)
    return fig


def overlap_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], *, metric: str = "overlap_frac",
                   n_total: int | None = None, ax=None):
    """Top-k overlap (or Jaccard) vs budget k, one line per valuator pair, plus the random baseline.

    ``curves``: ``label -> overlap_curve(...)`` output.
    """
    fig, ax = figure(figsize=(5.5, 4.0), ax=ax)
    base = None
    for label, c in curves.items():
        ax.plot(c["k"], c[metric], marker=".", label=label)
        base = c
    if base is not None and metric == "overlap_frac":
        ax.plot(base["k"], base["random"], color="grey", ls="--", label="random (k / n)")
    ax.set_xlabel("budget k (number of top-ranked candidates)")
    ax.set_ylabel({"overlap_frac": "top-k overlap |A∩B| / k (fraction)", "jaccard": "Jaccard |A∩B| / |A∪B|",
                   "overlap": "top-k overlap (examples)"}.get(metric, metric))
    ax.set_ylim(0, 1.02 if metric != "overlap" else None)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    tidy(fig)
    return fig


def bin_overlap_bars(rows: Sequence[Mapping[str, Any]], *, name_a: str = "A", name_b: str = "B", ax=None):
    """Count-matched overlap per rank bin of ``name_a`` (bars) against the random expectation."""
    import seaborn as sns

    fig, ax = figure(figsize=(5.5, 3.8), ax=ax)
    labels = [r["bin"] for r in rows]
    sns.barplot(x=labels, y=[r["overlap_frac"] for r in rows], order=labels, color=color(name_b) or "0.55",
                saturation=1, label=f"overlap with {name_b}", ax=ax)
    ax.plot(range(len(rows)), [r["random"] for r in rows], "k_", ms=18, mew=2, label="random subset")
    ax.set_xlabel(f"percentile-rank bin of {name_a}")
    ax.set_ylabel("count-matched overlap (fraction)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    tidy(fig)
    return fig


def arms_plot(outcome: Mapping[str, Any], *, ax=None, metric_label: str | None = None, gain: bool = False):
    """Fine-tuning outcome per arm: mean over seeds with its 95% CI, seeds as dots, base as a line.

    ``gain=True``: every mark (means, intervals, seed dots) is shown relative to the base
    model (``outcome["base"]``, which is then the line at 0) and the y label says so.
    """
    import pandas as pd
    import seaborn as sns
    from matplotlib.lines import Line2D

    fig, ax = figure(figsize=(6.0, 3.8), ax=ax)
    arms = outcome["arms"]
    names = list(arms)
    base = outcome.get("base")
    if gain and base is None:
        raise ValueError("gain=True needs the outcome's base value ('base').")
    shift = float(base) if gain else 0.0
    ci = np.array([arms[n]["ci"] for n in names], dtype=float).reshape(-1, 2) - shift     # a missing bound: NaN
    df = pd.DataFrame({"arm": names, "value": np.array([arms[n]["mean"] for n in names], dtype=float) - shift,
                       "lo": ci[:, 0], "hi": ci[:, 1], "color": colors(names)})
    seeds = pd.DataFrame([(n, float(s) - shift) for n in names for s in arms[n]["seeds"]], columns=["arm", "seed"])
    pal = dict(zip(names, df["color"]))
    sns.stripplot(data=seeds, x="arm", y="seed", order=names, hue="arm", palette=pal, legend=False, size=4, alpha=0.6,
                  jitter=0.05, ax=ax)
    forest(ax, df, label="arm", color="color", orient="v", offset=-0.22, capsize=4, ticks=False)
    if base is not None:
        ax.axhline(float(base) - shift, color="black", ls="--", lw=1)
    handles = [Line2D([], [], marker="o", color="black", label="mean ± 95% CI"),
               Line2D([], [], marker="o", color="grey", alpha=0.6, ls="none", label="seeds")]
    if base is not None:
        handles.append(Line2D([], [], color="black", ls="--", lw=1,
                              label="base model (gain 0)" if gain else "base model"))
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_xlabel("selection arm")
    label = metric_label or str(outcome.get("metric_label", outcome.get("metric", "metric")))
    ax.set_ylabel(f"gain over the base model\n({label})" if gain else label)
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="y")
    tidy(fig)
    return fig
