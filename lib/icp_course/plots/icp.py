"""Figures for notebook 04 (in-context probing an LLM). Each returns the ``matplotlib``
Figure; every axis is labelled with units (log-likelihoods are in nats)."""
from __future__ import annotations

from icp_course.style import color, legend_outside, palette, tidy

from typing import Any, Sequence

import numpy as np

from .tokens import visible_tokens


def _fig(ncols: int = 1, figsize: tuple[float, float] | None = None, ax: Any = None):
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    fig, axes = plt.subplots(1, ncols, figsize=figsize or (5.0 * ncols, 4.0), squeeze=False)
    return fig, (axes[0, 0] if ncols == 1 else list(axes[0]))


def _group_ticks(ax, labels: Sequence[str] | None, axis: str) -> None:
    """Tick once per run of equal labels (e.g. task families of sorted rows)."""
    if labels is None:
        return
    labels = list(labels)
    starts = [i for i in range(len(labels)) if i == 0 or labels[i] != labels[i - 1]]
    ends = starts[1:] + [len(labels)]
    centres = [(s + e - 1) / 2 for s, e in zip(starts, ends)]
    names = [labels[s] for s in starts]
    if axis == "y":
        ax.set_yticks(centres, names, fontsize=7)
        for s in starts[1:]:
            ax.axhline(s - 0.5, color="k", lw=0.4)
    else:
        ax.set_xticks(centres, names, fontsize=7, rotation=60, ha="right")
        for s in starts[1:]:
            ax.axvline(s - 0.5, color="k", lw=0.4)


def plot_loglik_heatmap(values: np.ndarray, *, row_labels: Sequence[str] | None = None,
                        col_labels: Sequence[str] | None = None, kind: str = "delta", ax: Any = None):
    """Heatmap of a ``[candidates × probes]`` matrix of ``Δ = ll(p|z) − ll(p)`` (or raw ``ll(p|z)``).

    ``kind="delta"`` uses a diverging colour map centred on 0 (red = the demonstration
    helps); ``kind="ll"`` shows the raw log-likelihoods. Labels (e.g. task families of
    rows/columns sorted by family) are ticked once per group.
    """
    import matplotlib.colors as mcolors

    values = np.asarray(values, dtype=float)
    fig, ax = _fig(figsize=(7.0, 5.5), ax=ax)
    if kind == "delta":
        lim = float(np.nanpercentile(np.abs(values), 98)) or 1.0
        ax.grid(False)  # the course style's grid would cross every cell of an image
        im = ax.imshow(values, aspect="auto", cmap="RdBu_r", norm=mcolors.TwoSlopeNorm(0.0, -lim, lim),
                       interpolation="nearest")
        label, title = "Δ = ll(p|z) − ll(p) (nats)", "How much each demonstration z changes ll(probe)"
    elif kind == "ll":
        ax.grid(False)  # the course style's grid would cross every cell of an image
        im = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
        label, title = "ll(p|z) (nats)", "Answer log-likelihood of each probe after each demonstration"
    else:
        from icp_influence.errors import ConfigError

        raise ConfigError(f"kind must be 'delta' or 'll', got {kind!r}.")
    fig.colorbar(im, ax=ax, label=label)
    _group_ticks(ax, row_labels, "y")
    _group_ticks(ax, col_labels, "x")
    ax.set_ylabel("candidate z (demonstration; rows)")
    ax.set_xlabel("probe p (columns)")
    ax.set_title(title, fontsize=10)
    return fig


def plot_score_distributions(win_rate: np.ndarray, mean_delta: np.ndarray, per_token: np.ndarray, *,
                             n_probes: int | None = None):
    """Histograms of the three per-candidate ICP scores."""
    fig, axes = _fig(3, figsize=(13.0, 3.6))
    wr = np.asarray(win_rate, dtype=float)
    bins = (np.arange(n_probes + 2) - 0.5) / n_probes if n_probes else 20
    bins_d = max(5, min(20, len(wr) // 3))          # a few candidates per bin, whatever the pool size
    axes[0].hist(wr, bins=bins, color=color("icp_win_rate"), edgecolor="white")
    axes[0].set_xlabel("win-rate: fraction of probes with Δ > 0")
    axes[1].hist(np.asarray(mean_delta, dtype=float), bins=bins_d, color=color("icp_mean_delta"), edgecolor="white")
    axes[1].axvline(0, color="k", lw=0.8)
    axes[1].set_xlabel("mean Δ over probes (nats)")
    axes[2].hist(np.asarray(per_token, dtype=float), bins=bins_d, color=color("icp_per_token"), edgecolor="white")
    axes[2].axvline(0, color="k", lw=0.8)
    axes[2].set_xlabel("per-token Δ (nats / answer token)")
    from matplotlib.ticker import MaxNLocator

    for a in axes:
        a.set_ylabel("candidates (count)")
        a.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title("win-rate (the paper's score)", fontsize=10)
    axes[1].set_title("mean delta", fontsize=10)
    axes[2].set_title("per-token delta", fontsize=10)
    tidy(fig)
    return fig


def plot_token_view(tokens: Sequence[str], with_demo: np.ndarray, without_demo: np.ndarray, *,
                    title: str | None = None, ax: Any = None):
    """Per answer token: log-probability without and with the demonstration, and the change."""
    fig, ax = _fig(figsize=(max(5.0, 0.55 * len(tokens) + 2), 4.0), ax=ax)
    x = np.arange(len(tokens))
    w, b = np.asarray(with_demo, dtype=float), np.asarray(without_demo, dtype=float)
    ax.bar(x - 0.2, b, width=0.4, color="tab:grey", label="zero-shot  log p(y_t | x, y_<t)")
    ax.bar(x + 0.2, w, width=0.4, color="tab:blue", label="with demo  log p(y_t | z, x, y_<t)")
    for i, d in enumerate(w - b):
        ax.annotate(f"{d:+.2f}", (i, min(w[i], b[i])), textcoords="offset points", xytext=(0, -11),
                    ha="center", fontsize=7, color="tab:red" if d < 0 else "tab:green")
    ax.set_xticks(x, visible_tokens(tokens), fontsize=8, rotation=45 if len(tokens) > 8 else 0)
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
    fig, ax = _fig(figsize=(6.0, 4.5), ax=ax)
    wr, md = np.asarray(win_rate, dtype=float), np.asarray(mean_delta, dtype=float)
    if groups is None:
        ax.scatter(md, wr, s=18, alpha=0.8)
    else:
        groups = list(groups)
        names = sorted(set(groups))
        for g, c in zip(names, palette(len(names))):    # one distinct colour per family (tab20 beyond 10)
            m = np.array([x == g for x in groups])
            ax.scatter(md[m], wr[m], s=18, alpha=0.8, label=g, color=c)
        legend_outside(ax, fontsize=8)
    ax.axvline(0, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("mean Δ over probes (nats)")
    ax.set_ylabel("win-rate (fraction of probes with Δ > 0)")
    ax.set_title("Win-rate vs mean delta (one point per candidate)", fontsize=10)
    return fig


def plot_cache_timing(seconds: dict[str, float], *, n_pairs: int, ax: Any = None):
    """Bar chart of wall time per scoring strategy (e.g. naive vs KV-cached)."""
    fig, ax = _fig(figsize=(5.5, 3.6), ax=ax)
    names = list(seconds)
    vals = [float(seconds[k]) for k in names]
    bars = ax.bar(names, vals, color=["tab:grey", "tab:orange", "tab:blue"][: len(names)])
    for b_, v in zip(bars, vals):
        ax.annotate(f"{v:.2f} s\n{1000 * v / n_pairs:.0f} ms/pair", (b_.get_x() + b_.get_width() / 2, v),
                    ha="center", va="bottom", fontsize=8)
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

    fig, ax = _fig(figsize=(6.4, 4.0), ax=ax)
    lines = {}
    from ..style import color

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
