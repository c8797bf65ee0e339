"""Figures for notebooks 01 (ICL as implicit gradient descent) and 02 (probing meets
influence). Each returns the ``matplotlib`` Figure; every axis is labelled with units."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from icp_course.style import figure, forest, group_colors, heatmap, labels, log_ticks


def _scatter(ax, x, y, **kw) -> None:
    """One dot per pair (seaborn), small and translucent: the clouds have thousands of points."""
    import seaborn as sns

    sns.scatterplot(x=x, y=y, linewidth=0, ax=ax, **{"s": 6, "alpha": 0.5, **kw})


def _point_cloud(x: np.ndarray, y: np.ndarray, ax: Any, max_points: int, seed: int):
    """A scatter of at most ``max_points`` random points of (x, y) with the two zero lines."""
    fig, ax = figure(ax=ax)
    idx = np.random.default_rng(seed).permutation(len(x))[:max_points]
    _scatter(ax, x[idx], y[idx], s=4, alpha=0.4)
    ax.axhline(0, color="grey", lw=0.6)
    ax.axvline(0, color="grey", lw=0.6)
    return fig, ax


def plot_lr_line_search(lrs: Sequence[float], losses: Sequence[float], best_lr: float, best_loss: float, *,
                        zero_loss: float | None = None, ax: Any = None):
    """One-step GD loss as a function of the learning rate, with the line-search optimum."""
    fig, ax = figure(ax=ax)
    ax.plot(lrs, losses, color="tab:blue", label="one GD step")
    ax.scatter([best_lr], [best_loss], color="tab:red", zorder=3, label=f"η* = {best_lr:.3f}")
    if zero_loss is not None:
        ax.axhline(zero_loss, color="grey", ls=":", label="predict 0")
    ax.set_xlabel("learning rate η (dimensionless)")
    ax.set_ylabel("loss ½(ŷ − y)² (squared units of y)")
    ax.set_title("Line search for the best one-step learning rate")
    ax.legend(fontsize=8)
    return fig


def plot_training_curves(steps: Sequence[int], loss: Sequence[float], *, gd_loss: float, zero_loss: float | None = None,
                         label: str = "trained LSA (training batch)", ax: Any = None):
    """Training loss of the LSA against the optimally tuned one-step GD loss."""
    fig, ax = figure(ax=ax)
    ax.plot(steps, loss, color="tab:blue", lw=1, label=label)
    ax.axhline(gd_loss, color="tab:red", ls="--", label=f"one GD step, η* ({gd_loss:.4f})")
    if zero_loss is not None:
        ax.axhline(zero_loss, color="grey", ls=":", label=f"predict 0 ({zero_loss:.3f})")
    ax.set_xlabel("training step (Adam updates)")
    ax.set_ylabel("loss ½(ŷ − y)² (squared units of y)")
    ax.set_yscale("log")
    ax.set_title("Training lands on gradient descent")
    ax.legend(fontsize=8)
    return fig


def plot_prediction_agreement(y_gd: Any, y_model: Any, *, model_name: str = "trained LSA", ax: Any = None,
                              max_points: int | None = None, seed: int = 0):
    """``ŷ_model`` against ``ŷ_GD`` on the same prompts (the diagonal = identical).

    The title's mean ``|Δŷ|`` is over every prompt given; ``max_points`` only thins the dots
    drawn (a random subset, ``seed``), and the title then says how many are drawn.
    """
    a, b = np.asarray(y_gd, float).ravel(), np.asarray(y_model, float).ravel()
    fig, ax = figure(ax=ax)
    idx = np.arange(a.size)
    if max_points is not None and a.size > max_points:
        idx = np.sort(np.random.default_rng(seed).permutation(a.size)[:max_points])
    _scatter(ax, a[idx], b[idx])
    lim = float(np.max(np.abs(np.concatenate([a, b])))) * 1.05 or 1.0
    ax.plot([-lim, lim], [-lim, lim], color="grey", ls="--", lw=0.8)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("ŷ of one GD step (units of y)")
    ax.set_ylabel(f"ŷ of the {model_name} (units of y)")
    drawn = f" ({idx.size:,} drawn)" if idx.size < a.size else ""
    ax.set_title(f"mean |Δŷ| = {np.abs(a - b).mean():.4f}\nover {a.size:,} prompts{drawn}")
    return fig


def plot_matrix_comparison(learned: Mapping[str, np.ndarray], constructed: Mapping[str, np.ndarray]):
    """Heatmaps: learned effective matrices (top) above the constructed ones (bottom).

    Each matrix is divided by its largest-magnitude entry (products of factors are
    identifiable only up to such a scale split) — the titles give that divisor. One shared
    colour bar at the right; rows and columns are ticked at every coordinate, ``x₁ … x_d, y``.
    """
    names = list(learned)
    n = max(np.asarray(m).shape[0] for m in learned.values())
    side = max(2.6, 0.32 * n + 1.2)          # square panels, cells large enough for a tick label each
    fig, axes = figure(2, len(names), figsize=(side * len(names) + 1.6, 2 * side + 0.8), squeeze=False)
    for j, name in enumerate(names):
        for i, (src, mats) in enumerate((("learned", learned), ("constructed", constructed))):
            M = np.asarray(mats[name], float)
            scale = float(np.abs(M).max()) or 1.0
            coords = [f"$x_{{{k + 1}}}$" for k in range(M.shape[1] - 1)] + ["$y$"]
            ax = axes[i, j]
            heatmap(ax, M / scale, vmin=-1, vmax=1, center=0.0, xticklabels=coords, yticklabels=coords[:M.shape[0]],
                    cbar=False, square=True)
            ax.tick_params(labelsize=8, rotation=0)
            ax.set_title(f"{src}: {name.replace('^T ', 'ᵀ')} / {scale:.3g}", fontsize=9)
            ax.set_xlabel("input coordinate")
            ax.set_ylabel("output coordinate")
    fig.colorbar(axes[0, 0].collections[0], ax=axes.ravel().tolist(), shrink=0.6,
                 label="entry / max |entry| (dimensionless)")
    return fig


def plot_icp_scatter(inner_product: Any, icp: Any, *, title: str = "",
                     xlabel: str = "⟨∇_W ℓ(p), ∇_W ℓ(z)⟩ at W₀ = 0 (units of y²·x²)",
                     ax: Any = None, max_points: int = 5000, seed: int = 0):
    """ICP (``ℓ(p) − ℓ(p|z)``) against a gradient score, with Pearson and Spearman in the title."""
    from icp_influence.stats import pearson, spearman

    x, y = np.asarray(inner_product, float).ravel(), np.asarray(icp, float).ravel()
    fig, ax = _point_cloud(x, y, ax, max_points, seed)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("ICP = ℓ(p) − ℓ(p | z) (units of y²)")
    ax.set_title(f"{title}\nPearson {pearson(x, y):.4f}, Spearman {spearman(x, y):.4f}".strip(), fontsize=10)
    return fig


def plot_agreement_vs_distance(curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[Sequence[float]] | None]],
                               *, in_domain: float | None = None, ax: Any = None):
    """Spearman(ICP, inner product) against the domain distance, one line per kind.

    ``curves[kind] = (distances, spearman, ci)`` with ``ci`` a list of ``[low, high]`` or None.
    """
    fig, ax = figure(ax=ax)
    for kind, (dist, rho, ci) in curves.items():
        dist, rho = np.asarray(dist, float), np.asarray(rho, float)
        line, = ax.plot(dist, rho, marker="o", label=kind.replace("_", " "))
        if ci is not None:
            ci = np.asarray(ci, float)
            ax.fill_between(dist, ci[:, 0], ci[:, 1], color=line.get_color(), alpha=0.15)
    if in_domain is not None:
        ax.axhline(in_domain, color="black", ls="--", lw=0.8, label=f"in-domain ({in_domain:.3f})")
    labels(ax, "distance from the probe's domain\n(dimensionless: shift in std units)",
           "Spearman ρ(ICP,\nimplicit-weight inner product)", "Agreement vs distance\nfrom the probe's domain", legend=True)
    return fig


def plot_error_by_position(model_err: Sequence[float], ls_err: Sequence[float], *, ax: Any = None):
    """The transformer's squared error per number of demonstrations vs least squares."""
    fig, ax = figure(ax=ax)
    k = np.arange(len(model_err))
    ax.plot(k, model_err, marker="o", label="softmax transformer")
    ax.plot(k, ls_err, marker="s", ls="--", label="least squares (optimal)")
    ax.axhline(1.0, color="grey", ls=":", label="predict 0, expected error (E[y²]/d = 1)")
    labels(ax, "number of in-context demonstrations", "squared error / d (dimensionless)",
           "In-context regression by the transformer", legend=True)
    return fig


def plot_correlation_vs_step(steps: Sequence[float], pearsons: Sequence[float], *, fit: Any = None,
                             relative_gap: Sequence[float] | None = None, ax: Any = None):
    """``1 − Pearson(ICP, inner product)`` against the implicit step size ``s = η/N`` (log–log).

    ``fit``: the fitted exponent (an :class:`~icp_influence.stats.Interval` from
    :func:`~icp_influence.stats.loglog_slope`), drawn as the OLS line and named in the legend.
    ``relative_gap``: ``mean|ICP − s·IP| / mean|s·IP|`` per step, drawn as a second line.
    """
    fig, ax = figure(ax=ax)
    s, gap = np.asarray(steps, float), 1 - np.asarray(pearsons, float)
    ax.plot(s, gap, marker="o", ls="none" if fit is not None else "-", color="tab:blue",
            label="1 − Pearson(ICP, s·IP)")
    if fit is not None:
        ls, lg = np.log(s), np.log(gap)
        line = np.exp(lg.mean() + fit.value * (ls - ls.mean()))
        ax.plot(s, line, color="tab:blue", lw=1,
                label=f"OLS fit: ∝ s^{fit.value:.2f} (95% CI {fit.lo:.2f}–{fit.hi:.2f})")
    if relative_gap is not None:
        ax.plot(s, np.asarray(relative_gap, float), marker="s", color="tab:orange",
                label="relative gap mean|Δ − s·IP| / mean|s·IP|")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("implicit step size s = η/N (dimensionless)")
    ax.set_ylabel("gap (dimensionless, log scale)")
    log_ticks(ax, "x")
    log_ticks(ax, "y")
    ax.set_title("The gap is the second-order term:\nit vanishes as s → 0")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2))  # below the axes: never on the points
    return fig


def plot_candidate_aggregation(icp: Any, ip: Any, grad_norm: Any, *, n_bins: int = 10):
    """From pairs to candidates (a 2 × 2 grid), for ``[C, P]`` matrices ``icp`` (Δ) and ``ip``.

    (1) mean Δ against mean IP; (2) win-rate (fraction of probes with Δ > 0) against mean IP,
    coloured by the candidate's gradient norm ``‖∇_W ℓ(z)‖`` (which the mean sees and the
    sign count does not); (3) the fraction of pairs whose sign flips (``(Δ > 0) ≠ (IP > 0)``)
    in each ``|IP|`` bin; (4) the ties: how many candidates share each win-rate value.
    Spearman of panels 1–2 in their titles.
    """
    import seaborn as sns

    from icp_influence.stats import aggregate, spearman
    from icp_influence.theory import sign_flips_by_magnitude

    V, G = np.asarray(icp, float), np.asarray(ip, float)
    m_ip, m_icp, w_icp = aggregate(G, "mean"), aggregate(V, "mean"), aggregate(V, "win_rate")
    fig, axes = figure(2, 2, figsize=(11.0, 8.6))
    ax = axes[0, 0]
    _scatter(ax, m_ip, m_icp, s=8)
    ax.set_xlabel("mean IP over probes (units of y²·x²)")
    ax.set_ylabel("mean Δ over probes (units of y²)")
    ax.set_title(f"1 · mean Δ: Spearman {spearman(m_icp, m_ip):.3f}")
    ax = axes[0, 1]
    # a continuous colour (the gradient norm) wants a colour bar, not a legend: matplotlib's scatter
    sc = ax.scatter(m_ip, w_icp, s=8, alpha=0.6, c=np.asarray(grad_norm, float), cmap="viridis")
    fig.colorbar(sc, ax=ax, label="‖∇_W ℓ(z)‖ at W₀ = 0 (units of y·x)")
    ax.set_xlabel("mean IP over probes (units of y²·x²)")
    ax.set_ylabel("win-rate: fraction of probes with Δ > 0")
    ax.set_title(f"2 · win-rate: Spearman {spearman(w_icp, m_ip):.3f}")
    ax = axes[1, 0]
    fl = sign_flips_by_magnitude(V, G, n_bins)
    sns.barplot(x=np.arange(1, n_bins + 1), y=100 * np.asarray(fl["rate"], float), color="tab:red", alpha=0.7,
                saturation=1, ax=ax)
    ax.set_xlabel(f"bin of |IP| ({n_bins} equal-count bins; 1 = closest to 0)")
    ax.set_ylabel("pairs with sign(Δ) ≠ sign(IP) (%)")
    ax.set_title(f"3 · sign flips: {100 * float(fl['overall']):.1f}% of all pairs")
    ax = axes[1, 1]
    vals, counts = np.unique(w_icp, return_counts=True)
    ax.bar(vals, counts, width=0.8 / max(1, V.shape[1]), color="tab:purple", alpha=0.7)
    ax.set_xlabel("win-rate value")
    ax.set_ylabel("candidates sharing that value")
    ax.set_title(f"4 · ties: {vals.size} distinct win-rates, {w_icp.size} candidates")
    return fig


def plot_bridge_agreement(rows: Sequence[Mapping[str, Any]]):
    """Spearman with intervals for each comparison, pair level (left) and candidate level (right).

    ``rows``: dicts with ``label``, ``level`` (``"pair"`` / ``"candidate"``), ``domain``
    (``"in-domain"`` / ``"out-of-domain"``), ``value``, ``lo``, ``hi``.
    """
    import pandas as pd

    levels = ["pair", "candidate"]
    n_labels = max(len({r["label"] for r in rows if r["level"] == lv}) for lv in levels)
    fig, axes = figure(2, 1, figsize=(9.0, 2.0 * (1.4 + 0.55 * max(3, n_labels))), sharex=True)
    df = pd.DataFrame(rows)
    colors = group_colors(["in-domain", "out-of-domain"])
    for ax, level in zip(axes, levels):
        sub = df[df["level"] == level]
        labels = list(dict.fromkeys(sub["label"]))
        for dm, d in sub.groupby("domain", sort=False):      # in-domain above, other domains below
            forest(ax, d, y=[len(labels) - 1 - labels.index(lab) for lab in d["label"]], capsize=3, legend=dm,
                   offset=0.15 if dm == "in-domain" else -0.15, color=colors.get(dm, "grey"), ticks=False)
        ax.set_yticks(range(len(labels))[::-1], labels)
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_xlabel("Spearman ρ (dimensionless; 95% two-way bootstrap interval)")
        ax.set_ylabel("comparison")
        ax.set_title(f"{level} level" + (" (mean over probes)" if level == "candidate" else " (every (z, p) pair)"))
        ax.legend(loc="lower right")
    return fig


def plot_kernel_vs_linear(xdot: Any, kernel: Any, *, ax: Any = None, max_points: int = 4000, seed: int = 0):
    """The network's tangent kernel ``⟨∇_θ f(x_z), ∇_θ f(x_p)⟩`` against the implicit-weight
    kernel ``x_zᵀx_p`` (the inner products without their label factors)."""
    from icp_influence.stats import pearson

    x, y = np.asarray(xdot, float).ravel(), np.asarray(kernel, float).ravel()
    fig, ax = _point_cloud(x, y, ax, max_points, seed)
    ax.set_xlabel("x_zᵀx_p: implicit-weight kernel (units of x²)")
    ax.set_ylabel("⟨∇_θ f(x_z), ∇_θ f(x_p)⟩\nnetwork kernel (units of y²)")
    ax.set_title(f"Pearson {pearson(x, y):.3f}; kernel > 0 on {100 * float((y > 0).mean()):.1f}% of pairs")
    return fig


def plot_referee_vs_step(lrs: Sequence[float], curves: Mapping[str, Sequence[float]], *, lr_used: float | None = None,
                         ax: Any = None):
    """Pair-level Spearman of the one-step referee with each score, against the SGD step size (log x)."""
    fig, ax = figure(figsize=(6.4, 4.4), ax=ax)
    for label, rho in curves.items():
        ax.plot(lrs, rho, marker="o", label=label)
    if lr_used is not None:
        ax.axvline(lr_used, color="grey", ls=":", label=f"η_θ used ({lr_used:.3g})")
    ax.set_xscale("log")
    lo, hi = float(np.min(lrs)), float(np.max(lrs))
    ax.set_xlim(lo / 2, hi * 2)  # room around the first and last point
    log_ticks(ax, "x")
    ax.set_xlabel("SGD step size η_θ on θ (parameter² per unit of loss; log scale)")
    ax.set_ylabel("Spearman ρ with the referee Δ_θ\n(in-domain pairs)")
    ax.set_title("What one training step on z agrees with")
    # below the axes: a legend inside would cover the points at the ends of the curves
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
    return fig
