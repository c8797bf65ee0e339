"""Figures for notebook 04 (in-context probing an LLM). Each returns the ``matplotlib``
Figure; every axis is labelled with units (log-likelihoods are in nats)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from icp_course.style import color, figure, heatmap, legend_outside, palette

from .tokens import visible_tokens

#: Inches between the centres of two neighbouring group labels of a heatmap (7-point text, and a margin).
_GROUP_LABEL_IN = 0.16


def _runs(labels: Sequence[str] | None) -> list[tuple[int, int, str]]:
    """``(start, end, label)`` of each run of equal labels (e.g. task families of sorted rows)."""
    labels = list(labels or [])
    starts = [i for i in range(len(labels)) if i == 0 or labels[i] != labels[i - 1]]
    return [(s, e, labels[s]) for s, e in zip(starts, starts[1:] + [len(labels)])]


def _cells_per_label(labels: Sequence[str] | None) -> float:
    """The fewest cells between the centres of two neighbouring group labels (inf: at most one label)."""
    c = [(s + e) / 2 for s, e, _ in _runs(labels)]
    return min(np.diff(c), default=np.inf)


def _group_ticks(ax, labels: Sequence[str] | None, axis: str) -> None:
    """Tick once per run of equal labels, between lines that separate the runs (cell edges at integers)."""
    runs = _runs(labels)
    if not runs:
        return
    centres, names = [(s + e) / 2 for s, e, _ in runs], [n for _, _, n in runs]
    if axis == "y":
        ax.set_yticks(centres, names, fontsize=7, rotation=0)
    else:
        ax.set_xticks(centres, names, fontsize=7, rotation=60, ha="right", rotation_mode="anchor")
    for s, _, _ in runs[1:]:
        (ax.axhline if axis == "y" else ax.axvline)(s, color="k", lw=0.4)


def plot_loglik_heatmap(values: np.ndarray, *, row_labels: Sequence[str] | None = None,
                        col_labels: Sequence[str] | None = None, kind: str = "delta", ax: Any = None):
    """Heatmap of a ``[candidates × probes]`` matrix of ``Δ = ll(p|z) − ll(p)`` (or raw ``ll(p|z)``).

    ``kind="delta"`` uses a diverging colour map centred on 0 (red = the demonstration
    helps); ``kind="ll"`` shows the raw log-likelihoods. Labels (e.g. task families of
    rows/columns sorted by family) are ticked once per group.
    """
    from icp_influence.errors import ConfigError

    values = np.asarray(values, dtype=float)
    if kind not in ("delta", "ll"):
        raise ConfigError(f"kind must be 'delta' or 'll', got {kind!r}.")
    # cells large enough that neighbouring group labels keep apart (60° labels: across their lines)
    n_rows, n_cols = values.shape
    h = max(5.5, 1.8 + n_rows * _GROUP_LABEL_IN / min(_cells_per_label(row_labels), n_rows))
    w = max(7.0, 3.2 + n_cols * _GROUP_LABEL_IN / np.sin(np.radians(60)) / min(_cells_per_label(col_labels), n_cols))
    fig, ax = figure(figsize=(w, h), ax=ax)
    if kind == "delta":
        lim = float(np.nanpercentile(np.abs(values), 98)) or 1.0
        heatmap(ax, values, vmin=-lim, vmax=lim, center=0.0, xticklabels=False, yticklabels=False,
                cbar_label="Δ = ll(p|z) − ll(p) (nats)")
        title = "How much each demonstration z changes ll(probe)"
    else:
        heatmap(ax, values, xticklabels=False, yticklabels=False, cbar_label="ll(p|z) (nats)")
        title = "Answer log-likelihood of each probe after each demonstration"
    _group_ticks(ax, row_labels, "y")
    _group_ticks(ax, col_labels, "x")
    ax.set_ylabel("candidate z (demonstration; rows)")
    ax.set_xlabel("probe p (columns)")
    ax.set_title(title, fontsize=10)
    return fig


def plot_score_distributions(win_rate: np.ndarray, mean_delta: np.ndarray, per_token: np.ndarray, *,
                             n_probes: int | None = None):
    """Histograms of the three per-candidate ICP scores."""
    import seaborn as sns

    fig, axes = figure(ncols=3, figsize=(13.0, 3.6))
    wr = np.asarray(win_rate, dtype=float)
    bins = (np.arange(n_probes + 2) - 0.5) / n_probes if n_probes else 20
    bins_d = max(5, min(20, len(wr) // 3))          # a few candidates per bin, whatever the pool size
    for a, v, b, name in ((axes[0], wr, bins, "icp_win_rate"), (axes[1], mean_delta, bins_d, "icp_mean_delta"),
                          (axes[2], per_token, bins_d, "icp_per_token")):
        sns.histplot(x=np.asarray(v, dtype=float), bins=b, color=color(name), edgecolor="white", alpha=1, ax=a)
    axes[0].set_xlabel("win-rate: fraction of probes with Δ > 0")
    axes[1].axvline(0, color="k", lw=0.8)
    axes[1].set_xlabel("mean Δ over probes (nats)")
    axes[2].axvline(0, color="k", lw=0.8)
    axes[2].set_xlabel("per-token Δ (nats / answer token)")
    from matplotlib.ticker import MaxNLocator

    for a in axes:
        a.set_ylabel("candidates (count)")
        a.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title("win-rate (the paper's score)", fontsize=10)
    axes[1].set_title("mean delta", fontsize=10)
    axes[2].set_title("per-token delta", fontsize=10)
    return fig


def plot_token_view(tokens: Sequence[str], with_demo: np.ndarray, without_demo: np.ndarray, *,
                    title: str | None = None, ax: Any = None):
    """Per answer token: log-probability without and with the demonstration, and the change."""
    import pandas as pd
    import seaborn as sns

    fig, ax = figure(figsize=(max(5.0, 0.55 * len(tokens) + 2), 4.0), ax=ax)
    w, b = np.asarray(with_demo, dtype=float), np.asarray(without_demo, dtype=float)
    zero, demo = "zero-shot  log p(y_t | x, y_<t)", "with demo  log p(y_t | z, x, y_<t)"
    df = pd.DataFrame({"t": np.tile(np.arange(len(tokens)), 2), "logp": np.r_[b, w],
                       "": [zero] * len(b) + [demo] * len(w)})
    # by position, not by token string: a token that occurs twice keeps both bars
    sns.barplot(data=df, x="t", y="logp", hue="", palette={zero: "tab:grey", demo: "#4c72b0"}, saturation=1, width=0.8,
                ax=ax)
    for i, d in enumerate(w - b):
        ax.annotate(f"{d:+.2f}", (i, min(w[i], b[i])), textcoords="offset points", xytext=(0, -11),
                    ha="center", fontsize=7, color="tab:red" if d < 0 else "tab:green")
    ax.set_xticks(range(len(tokens)), visible_tokens(tokens), fontsize=8, rotation=45 if len(tokens) > 8 else 0)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("answer token y_t (␣ = space)")
    ax.set_ylabel("log-probability (nats)")
    ax.set_ylim(min(0.0, float(min(w.min(), b.min()))) * 1.25 - 0.3, 0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title or f"Δ total = {float((w - b).sum()):+.3f} nats", fontsize=10)
    return fig


def plot_winrate_vs_delta(win_rate: np.ndarray, mean_delta: np.ndarray, *, groups: Sequence[str] | None = None,
                          ax: Any = None):
    """Scatter of the paper's win-rate against the mean delta, one point per candidate."""
    import seaborn as sns

    fig, ax = figure(figsize=(6.0, 4.5), ax=ax)
    wr, md = np.asarray(win_rate, dtype=float), np.asarray(mean_delta, dtype=float)
    if groups is None:
        sns.scatterplot(x=md, y=wr, s=18, alpha=0.8, color=color("icp_win_rate"), ax=ax)
    else:
        names = sorted(set(groups))        # one distinct colour per family (tab20 beyond 10)
        sns.scatterplot(x=md, y=wr, hue=list(groups), hue_order=names, palette=palette(len(names)), s=18, alpha=0.8,
                        ax=ax)
        legend_outside(ax, fontsize=8)
    ax.axvline(0, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("mean Δ over probes (nats)")
    ax.set_ylabel("win-rate (fraction of probes with Δ > 0)")
    ax.set_title("Win-rate vs mean delta (one point per candidate)", fontsize=10)
    return fig


def plot_cache_timing(seconds: dict[str, float], *, n_pairs: int, ax: Any = None):
    """Bar chart of wall time per scoring strategy (e.g. naive vs KV-cached)."""
    import seaborn as sns

    fig, ax = figure(figsize=(5.5, 3.6), ax=ax)
    names = list(seconds)
    vals = [float(seconds[k]) for k in names]
    sns.barplot(x=names, y=vals, hue=names, palette=["tab:grey", "tab:orange", "tab:blue"][: len(names)], legend=False,
                saturation=1, ax=ax)
    for i, v in enumerate(vals):
        ax.annotate(f"{v:.2f} s\n{1000 * v / n_pairs:.0f} ms/pair", (i, v), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("wall time (s)")
    ax.set_xlabel(f"strategy ({n_pairs} (candidate, probe) pairs)")
    ax.set_ylim(0, max(vals) * 1.3)
    ax.set_title("Scoring cost: naive vs shared-prefix KV cache", fontsize=10)
    return fig


def plot_reliability_curves(curves: dict[str, dict[str, Sequence[float]]], *, n_probes: int | None = None,
                            target: float | None = 0.8, full: dict[str, float] | None = None, ax: Any = None):
    """Reliability of each score against the number of probes it is computed from.

    ``curves``: ``{score name: icp_influence.stats.reliability_curve(...)}`` — for each ``k``,
    the Spearman correlation between the score over ``k`` probes and over ``k`` other probes
    (the reliability of a ``k``-probe score, measured directly). ``full``: ``{score name:
    reliability over all n_probes}``; each adds the Spearman–Brown prophecy
    ``k r₁ / (1 + (k − 1) r₁)`` through it as a line, extended beyond the measured ``k``.
    """
    from icp_influence.stats import spearman_brown

    fig, ax = figure(figsize=(6.4, 4.0), ax=ax)
    lines = {}
    for name, c in curves.items():
        lines[name] = ax.plot(c["k"], c["reliability"], marker="o", ls="" if full else "-", label=name,
                              color=color(name))[0]
    if full and n_probes:
        kmax = max(max(c["k"]) for c in curves.values())
        ks = np.linspace(1, max(2 * kmax, n_probes) * 2, 200)
        for name, r in full.items():
            if name in lines and np.isfinite(r) and r > 0:
                r1 = spearman_brown(r, 1.0 / n_probes)
                ax.plot(ks, spearman_brown(r1, ks), color=lines[name].get_color(), lw=1, alpha=0.7)
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=0.8, label=f"target {target:g}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("probes per score k" + (f" (of {n_probes}; at most half, so two disjoint sets exist)" if n_probes else ""))
    ax.set_ylabel("reliability (Spearman, k vs k other probes)")
    ax.set_ylim(min(-0.1, *(np.nanmin(c["reliability"]) - 0.05 for c in curves.values())), 1.02)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("How many probes does a stable ranking need?", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
