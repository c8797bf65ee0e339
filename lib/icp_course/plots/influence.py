"""Figures of notebook 03: influence estimates against leave-one-out retraining."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from icp_course.style import figure, tidy


#: what each score is, for the y-axis: (label with its unit, whether y = x is its calibration line)
SCORE_AXES: dict[str, tuple[str, bool]] = {
    **{m: ("influence = predicted\nn·Δ probe loss (nats)", True) for m in ("exact", "lissa", "cg", "ekfac")},
    "inner_product": ("⟨∇ℓ(p), ∇ℓ(z)⟩\n(nats² per unit of θ²)", False),
    "projected_inner_product": ("⟨P∇ℓ(p), P∇ℓ(z)⟩\n(nats² per unit of θ²)", False),
    "tracin": ("TracIn Σₖ ηₖ⟨∇ℓₖ(p), ∇ℓₖ(z)⟩\n(nats, not n·Δ probe loss)", False),
}


def scatter_vs_loo(loo: np.ndarray, scores: Mapping[str, np.ndarray], *, ncols: int = 3,
                   kinds: Mapping[str, str] | None = None):
    """One panel per method: LOO effect (x) vs the method's score (y), with Pearson r.

    ``loo`` and every score are ``[n_train, n_probes]``; each dot is one (train, probe) pair.
    Each panel's y-axis says what its score is and in which unit (``SCORE_AXES``; ``kinds``
    maps a panel name to its kind there, default the name itself). The dashed ``y = x`` is
    drawn only for influence functions, which estimate the LOO effect ``n·Δ loss`` itself;
    inner products and TracIn live on other scales, so only their correlation compares.
    """
    import seaborn as sns

    from icp_influence.errors import ConfigError
    from icp_influence.stats import pearson

    names = list(scores)
    kinds = dict(kinds or {})
    for name in names:
        if kinds.get(name, name) not in SCORE_AXES:
            raise ConfigError(f"No axis for score {name!r} (kind {kinds.get(name, name)!r}); pass kinds={{name: kind}} "
                              f"with a kind among {sorted(SCORE_AXES)}.")
    nrows = (len(names) + ncols - 1) // ncols
    fig, axes = figure(nrows, ncols, figsize=(3.9 * ncols, 3.5 * nrows), squeeze=False)
    x = np.ravel(loo)
    for ax, name in zip(axes.flat, names):
        ylabel, diagonal = SCORE_AXES[kinds.get(name, name)]
        y = np.ravel(scores[name])
        sns.scatterplot(x=x, y=y, s=8, alpha=0.6, linewidth=0, ax=ax)
        if diagonal:
            lim = [min(x.min(), y.min()), max(x.max(), y.max())]
            ax.plot(lim, lim, color="grey", lw=0.8, ls="--", label="y = x")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_title(f"{name}: Pearson r = {pearson(x, y):.3f}", fontsize=9)
        ax.set_xlabel("LOO: n·Δ probe loss (nats)")
        ax.set_ylabel(ylabel, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    return fig


def sweep_plot(xs: Sequence[float], ys: Mapping[str, Sequence[float]], *, xlabel: str, ylabel: str,
               logx: bool = True, marker_x: float | None = None, marker_label: str | None = None,
               y_line: float | None = None, y_line_label: str | None = None, ax=None):
    """Correlation (y) as a function of a knob (x: damping, projection dimension), one line per series.

    ``marker_x`` draws a vertical line (none when ``None``), ``y_line`` a horizontal one (a target).
    """
    fig, ax = figure(figsize=(5.0, 3.6), ax=ax)
    for name, y in ys.items():
        ax.plot(xs, y, marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    if marker_x is not None:
        ax.axvline(marker_x, color="grey", ls="--", lw=0.8, label=marker_label)
    if y_line is not None:
        ax.axhline(y_line, color="tab:red", ls=":", lw=0.8, label=y_line_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    tidy(fig)     # axes of a figure made elsewhere (without a layout engine) get the tight layout
    return fig
