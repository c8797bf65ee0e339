"""Figures of notebook 03: influence estimates against leave-one-out retraining."""
from __future__ import annotations

from icp_course.style import tidy

from typing import Mapping, Sequence

import numpy as np


def scatter_vs_loo(loo: np.ndarray, scores: Mapping[str, np.ndarray], *, ncols: int = 3):
    """One panel per method: LOO effect (x) vs the method's score (y), with Pearson r.

    ``loo`` and every score are ``[n_train, n_probes]``; each dot is one (train, probe) pair.
    """
    import matplotlib.pyplot as plt

    from icp_influence.stats import pearson

    names = list(scores)
    nrows = (len(names) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 3.3 * nrows), squeeze=False)
    x = np.ravel(loo)
    for ax, name in zip(axes.flat, names):
        y = np.ravel(scores[name])
        ax.scatter(x, y, s=8, alpha=0.6)
        lim = [min(x.min(), y.min()), max(x.max(), y.max())]
        if name != "inner_product":
            ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{name}: Pearson r = {pearson(x, y):.3f}", fontsize=9)
        ax.set_xlabel("LOO: n·Δ probe loss (nats)")
        ax.set_ylabel("influence score (nats)")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    tidy(fig)
    return fig


def sweep_plot(xs: Sequence[float], ys: Mapping[str, Sequence[float]], *, xlabel: str, ylabel: str,
               logx: bool = True, marker_x: float | None = None, marker_label: str | None = None, ax=None):
    """Correlation (y) as a function of a knob (x: damping, projection dimension), one line per series."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(5.0, 3.6))
    else:
        fig = ax.figure
    for name, y in ys.items():
        ax.plot(xs, y, marker="o", label=name)
    if logx:
        ax.set_xscale("log")
    if marker_x is not None:
        ax.axvline(marker_x, color="grey", ls="--", lw=0.8, label=marker_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    tidy(fig)
    return fig
