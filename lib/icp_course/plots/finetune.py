"""Figures of notebook 06: outcomes of fine-tuning on each arm's selection, and the
equivalence tests between arms (seaborn)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..style import legend_outside, palette

VERDICT_COLORS = {"equivalent": "#2ca02c", "different": "#d62728", "inconclusive": "#7f7f7f"}


def budget_curves(arms: Mapping[str, Mapping[str, Mapping[str, Any]]], *, base: float | None = None,
                  metric_label: str = "held-out answer log-likelihood (nats / token)", title: str = ""):
    """One line per arm: mean over seeds and its 95% t-interval against the budget."""
    import matplotlib.pyplot as plt

    budgets = sorted(arms, key=int)
    names = list(next(iter(arms.values())))
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    cols = dict(zip(names, palette(len(names))))
    offsets = np.linspace(-0.15, 0.15, len(names)) if len(names) > 1 else [0.0]
    xs = np.arange(len(budgets), dtype=float)
    for off, name in zip(offsets, names):
        m = np.array([arms[b][name]["mean"] for b in budgets])
        lo = np.array([arms[b][name]["ci"][0] if arms[b][name]["ci"][0] is not None else np.nan for b in budgets])
        hi = np.array([arms[b][name]["ci"][1] if arms[b][name]["ci"][1] is not None else np.nan for b in budgets])
        ax.errorbar(xs + off, m, yerr=[m - lo, hi - m], marker="o", capsize=3, color=cols[name], label=name)
    if base is not None:
        ax.axhline(base, color="black", ls="--", lw=1, label="base model (no fine-tuning)")
    ax.set_xticks(xs, [str(b) for b in budgets])
    ax.set_xlabel("budget (training examples selected)")
    ax.set_ylabel(metric_label)
    if title:
        ax.set_title(title)
    legend_outside(ax, fontsize=8)
    return fig


def paired_differences(rows: Sequence[Mapping[str, Any]], *, margin: float, title: str = "",
                       xlabel: str = "paired difference a − b (nats / token), 95% CI"):
    """Each pair of arms: the mean paired difference with its CI, the ±margin band, the verdict."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(rows) + 1.3))
    y = np.arange(len(rows))[::-1]
    ax.axvspan(-margin, margin, color="#2ca02c", alpha=0.12, label=f"±margin ({margin:.3g})")
    for yi, r in zip(y, rows):
        c = VERDICT_COLORS.get(r["verdict"], "black")
        ax.plot(r["ci"], [yi, yi], color=c, lw=2)
        ax.plot(r["diff"], yi, "o", color=c)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_yticks(y, [f"{r['a']} − {r['b']} (budget {r['budget']}): {r['verdict']}" for r in rows], fontsize=8)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(title)
    for v, c in VERDICT_COLORS.items():
        ax.plot([], [], color=c, lw=2, label=v)
    legend_outside(ax, fontsize=8)
    return fig
