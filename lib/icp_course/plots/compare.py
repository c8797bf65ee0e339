"""Figures for valuator agreement and fine-tuning outcomes (notebooks 05 and 06)."""
from __future__ import annotations

from icp_course.style import tidy

from typing import Any, Mapping, Sequence

import numpy as np

from icp_influence.compare import Scores, align, percentile_rank


def _fig(figsize=(5.0, 4.0), ax=None):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def rank_scatter(a: Scores, b: Scores, *, name_a: str = "valuator A", name_b: str = "valuator B",
                 how_a: str | None = None, how_b: str | None = None, highlight: Sequence[str] | None = None,
                 highlight_label: str = "noisy", ax=None):
    """Percentile rank under ``a`` (x) vs under ``b`` (y), one dot per candidate.

    ``highlight``: candidate ids drawn in another colour (e.g. the noisy ones).
    """
    from icp_influence.stats import spearman

    ids, x, y = align(a, b, how_a, how_b)
    rx, ry = percentile_rank(x) * 100, percentile_rank(y) * 100
    fig, ax = _fig(ax=ax)
    marked = set(highlight or ())
    hl = np.array([c in marked for c in ids], dtype=bool)
    ax.scatter(rx[~hl], ry[~hl], s=10, alpha=0.6, label="candidates" if hl.any() else None)
    if hl.any():
        ax.scatter(rx[hl], ry[hl], s=14, alpha=0.9, color="tab:red", label=highlight_label)
        ax.legend(loc="lower right", fontsize=8)
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
    M = np.asarray(matrix, float)
    fig, ax = _fig((1.2 + 0.9 * len(names), 0.8 + 0.8 * len(names)), ax=ax)
    ax.grid(False)  # the course style's grid would cross every cell of an image
    im = ax.imshow(M, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{M[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if abs(M[i, j]) > 0.6 else "black")
    ax.set_xlabel("valuator")
    ax.set_ylabel("valuator")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=f"{title} (unitless, −1 … 1)")
    tidy(fig)
    return fig


def overlap_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], *, metric: str = "overlap_frac",
                   n_total: int | None = None, ax=None):
    """Top-k overlap (or Jaccard) vs budget k, one line per valuator pair, plus the random baseline.

    ``curves``: ``label -> overlap_curve(...)`` output.
    """
    fig, ax = _fig((5.5, 4.0), ax=ax)
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
    fig, ax = _fig((5.5, 3.8), ax=ax)
    labels = [r["bin"] for r in rows]
    x = np.arange(len(rows))
    ax.bar(x, [r["overlap_frac"] for r in rows], color="tab:blue", label=f"overlap with {name_b}")
    ax.plot(x, [r["random"] for r in rows], "k_", ms=18, mew=2, label="random subset")
    ax.set_xticks(x, labels)
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
    fig, ax = _fig((6.0, 3.8), ax=ax)
    arms = outcome["arms"]
    names = list(arms)
    base = outcome.get("base")
    if gain and base is None:
        raise ValueError("gain=True needs the outcome's base value ('base').")
    shift = float(base) if gain else 0.0
    x = np.arange(len(names))
    means = np.array([arms[n]["mean"] for n in names], float) - shift
    lo = np.array([arms[n]["ci"][0] for n in names], float) - shift
    hi = np.array([arms[n]["ci"][1] for n in names], float) - shift
    ax.errorbar(x, means, yerr=[means - lo, hi - means], fmt="o", capsize=4, color="tab:blue", label="mean ± 95% CI")
    for i, n in enumerate(names):
        s = np.asarray(arms[n]["seeds"], float) - shift
        ax.scatter(np.full(len(s), i) + 0.12, s, s=10, color="tab:grey", alpha=0.7,
                   label="seeds" if i == 0 else None)
    if base is not None:
        ax.axhline(float(base) - shift, color="tab:red", ls="--", label="base model (gain 0)" if gain else "base model")
    ax.set_xticks(x, names, rotation=20)
    ax.set_xlabel("selection arm")
    label = metric_label or str(outcome.get("metric_label", outcome.get("metric", "metric")))
    ax.set_ylabel(f"gain over the base model\n({label})" if gain else label)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    tidy(fig)
    return fig
