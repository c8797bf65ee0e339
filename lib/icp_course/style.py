"""One look for every figure of the course, set in one place.

Every notebook's setup cell calls :func:`use` once. It sets seaborn's theme (white grid,
a readable font size) and the figure defaults (resolution, legends outside the data),
and :func:`palette` gives as many distinct colours as there are categories.

The plotting modules (:mod:`icp_course.plots`) draw through the helpers here: :func:`figure`
(every new figure, or the caller's axes), :func:`heatmap` and :func:`heatmap_size` (``sns.heatmap``
sized to its cells), :func:`forest` (points with precomputed intervals, which seaborn cannot draw),
and one colour per valuator (:func:`color`, :func:`colors`) or per group (:func:`group_colors`).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: The colour of each valuator, the same in every figure of the course.
VALUATOR_COLORS = {
    "icp_win_rate": "#1f77b4", "icp_mean_delta": "#2ca02c", "icp_per_token": "#17becf",
    "icp_win_rate_neutral": "#9edae5", "ip": "#d62728", "ip_per_token": "#ff9896", "cosine": "#ff7f0e",
    "psl": "#8c564b", "ip_last2": "#e377c2", "ip_linear": "#bcbd22", "ekfac": "#9467bd",
    "gt_sgd_small": "#7f7f7f", "gt_sgd_all": "#393b79", "gt_adam_sign": "#637939",
    # the null models (notebook 05): what a valuator agrees with if it tracks one simple quantity
    "answer_length": "#252525", "candidate_nll": "#e7ba52", "candidate_nll_per_token": "#ad494a",
    "gradient_norm": "#a55194", "random": "#b0b0b0",
    # per-token forms of the inner product
    "ip_per_candidate_token": "#ff9896", "ip_per_token_loss": "#c49c94",
}
#: Readable names of the valuators and ground truths.
VALUATOR_LABELS = {
    "icp_win_rate": "ICP win-rate", "icp_mean_delta": "ICP mean Δ", "icp_per_token": "ICP per-token Δ",
    "icp_win_rate_neutral": "ICP win-rate (neutral baseline)", "ip": "inner product",
    "ip_per_token": "inner product ÷ candidate tokens", "cosine": "cosine", "psl": "the authors' signed-log inner product",
    "ip_last2": "inner product, q/v of the last two blocks",
    "ip_linear": "inner product, every linear layer (projected)", "icp_chat": "ICP with the chat template",
    "ekfac": "EK-FAC", "gt_sgd_small": "one small SGD step on the q/v weights", "gt_sgd_all": "one SGD step on all weights",
    "gt_adam_sign": "one Adam step (β₁ = β₂ = 0)",
    "answer_length": "answer length", "candidate_nll": "the model's loss on the candidate",
    "candidate_nll_per_token": "the model's loss per answer token", "gradient_norm": "gradient norm",
    "random": "a random number", "ip_per_candidate_token": "inner product ÷ candidate tokens",
    "ip_per_token_loss": "inner product of the per-token losses",
}
#: The null models, in the order figures show them.
NULL_MODELS = ("answer_length", "candidate_nll", "candidate_nll_per_token", "gradient_norm", "random")


def use(dpi: int = 100) -> None:
    """Apply the course's figure style (seaborn theme, resolution, legend placement)."""
    import matplotlib as mpl
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", font_scale=0.95)
    mpl.rcParams.update({
        "figure.dpi": dpi, "savefig.dpi": dpi, "figure.autolayout": False, "figure.constrained_layout.use": True,
        "axes.spines.top": False, "axes.spines.right": False, "legend.frameon": False,
        "axes.titlesize": "medium", "axes.titleweight": "bold",
    })


def palette(n: int) -> list:
    """``n`` distinct colours (tab10 up to 10, tab20 up to 20, then a husl wheel)."""
    import seaborn as sns

    if n <= 10:
        return sns.color_palette("tab10", n)
    if n <= 20:
        return sns.color_palette("tab20", n)
    return sns.color_palette("husl", n)


def label(name: str) -> str:
    """The readable name of a valuator (the name itself when unknown)."""
    return VALUATOR_LABELS.get(name, name)


def color(name: str) -> str | None:
    """The course colour of a valuator, looked up by its name or its readable label (None if unknown)."""
    if name in VALUATOR_COLORS:
        return VALUATOR_COLORS[name]
    by_label = {lab: n for n, lab in VALUATOR_LABELS.items() if n in VALUATOR_COLORS}
    return VALUATOR_COLORS.get(by_label.get(name, ""))


def colors(names: Sequence[str]) -> list:
    """The course colour of each valuator, by name or label (distinct fallbacks for unknown names)."""
    extra = iter(palette(max(1, len(names))))
    return [color(n) or next(extra) for n in names]


def group_colors(names: Sequence[str]) -> dict:
    """A colour for each group of rows that is not a valuator (seaborn's ``Set2``: none of them is a
    valuator's colour), in order of first appearance."""
    import seaborn as sns

    names = list(dict.fromkeys(names))
    return dict(zip(names, sns.color_palette("Set2", max(1, len(names)))))


def figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None, ax: Any = None, **kw):
    """``(fig, axes)`` of a new figure (``plt.subplots`` with the constrained layout; default size
    5 × 4 inches per panel), or ``(ax.figure, ax)`` when the caller passes the axes to draw on."""
    import matplotlib.pyplot as plt

    if ax is not None:
        return ax.figure, ax
    kw.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, figsize=figsize or (5.0 * ncols, 4.0 * nrows), **kw)


def heatmap_size(row_labels: Sequence[str], col_labels: Sequence[str], *, cell: tuple[float, float] = (0.6, 0.42),
                 rotation: float = 0.0, fontsize: float = 9.0, title_lines: int = 1,
                 minimum: tuple[float, float] = (4.5, 3.0)) -> tuple[float, float]:
    """Figure size (inches) of a heatmap with a colour bar: ``cell`` inches per cell, plus room for the
    longest row label, the column labels (wrapped lines, or set at ``rotation`` degrees) and the title."""
    char, line = 0.6 * fontsize / 72, 1.3 * fontsize / 72     # inches per character and per line of text
    lines = [str(c).split("\n") for c in col_labels] or [[""]]
    longest = max(len(t) for ls in lines for t in ls) * char
    bottom = (longest * np.sin(np.radians(rotation)) + line if rotation else max(map(len, lines)) * line)
    left = max([len(t) for r in row_labels for t in str(r).split("\n")] or [0]) * char
    width = left + cell[0] * len(col_labels) + 1.6              # + axis label, colour bar and its label
    height = bottom + cell[1] * len(row_labels) + 0.6 + 0.3 * title_lines
    return max(width, minimum[0]), max(height, minimum[1])


def heatmap(ax, data, *, cbar_label: str | None = None, center: float | None = None, cmap: str | None = None,
            annot: bool = False, fmt: str = ".2f", annot_size: float = 9, **kw):
    """``sns.heatmap`` of ``data`` on ``ax`` in the course's look: a diverging ``RdBu_r`` centred at
    ``center`` when one is given (``viridis`` otherwise), no grid across the cells, horizontal row
    labels, the colour bar labelled ``cbar_label``. Other keywords go to ``sns.heatmap``
    (``vmin``, ``vmax``, ``xticklabels``, ``cbar``, ``cbar_ax`` ...). Returns ``ax``."""
    import seaborn as sns

    ax.grid(False)
    sns.heatmap(np.asarray(data, dtype=float), ax=ax, center=center, annot=annot, fmt=fmt,
                cmap=cmap or ("RdBu_r" if center is not None else "viridis"), annot_kws={"fontsize": annot_size},
                cbar_kws={"label": cbar_label} if cbar_label else None, **kw)
    ax.tick_params(axis="y", rotation=0)
    return ax


def _per_row(df, spec, n: int, default: Any = None, *, colour: bool = False) -> list:
    """A column of ``df`` (``spec`` names one), one value for every row, or a sequence of values."""
    import matplotlib.colors as mcolors

    if isinstance(spec, str) and spec in df.columns:
        return list(df[spec])
    if spec is None or isinstance(spec, str) or (colour and mcolors.is_color_like(spec)):
        return [default if spec is None else spec] * n
    return list(spec)


def _num(v: Any) -> float:
    return np.nan if v is None else float(v)


def forest(ax, df, *, value: str = "value", lo: str | None = "lo", hi: str | None = "hi", label: str = "label",
           color: Any = "black", y: Any = None, offset: float = 0.0, marker: str | None = "o", mfc: str | None = None,
           ms: float = 6.0, lw: float = 1.5, capsize: float = 0.0, legend: str | None = None, orient: str = "h",
           ticks: bool = True, wrap: int | None = None, join: bool = False, zorder: float = 3, **point_kw):
    """Points with precomputed intervals, one row of ``df`` (a pandas DataFrame) per mark: the one
    place the course draws intervals computed elsewhere (seaborn draws only those it computes).

    ``value``, ``lo``, ``hi``: columns of each row's point and interval (``lo=hi=None``: points only;
    ``marker=None``: the interval only, e.g. whiskers on bars); missing values draw nothing.
    ``orient="h"``: the value on x, the first row on top (positions n−1 … 0); ``"v"``: the value on
    y, the first row on the left (0 … n−1). ``y``: the rows' positions instead (a column or a
    sequence, e.g. a seaborn categorical axis's ``range(n)``); ``offset`` shifts the marks, not the
    ticks, to set several series side by side. ``label``: the column of row names, set as tick
    labels (``ticks=False``: left alone; ``wrap``: wrapped at that many characters).
    ``color``: one colour, a column of colours (one per row: a verdict's, a group's, a valuator's)
    or a sequence. ``legend``: a legend label for this series, or a column whose values label the
    first row of each value. ``join``: a line through the points (a series over ordered rows).
    ``mfc="white"``: hollow markers; ``point_kw`` go to the points' ``ax.plot``. Returns the rows'
    positions (without ``offset``).
    """
    import textwrap

    n = len(df)
    base = np.asarray(_per_row(df, y, n) if y is not None else (np.arange(n)[::-1] if orient == "h" else np.arange(n)),
                      dtype=float)
    vals, los, his = ([_num(v) for v in _per_row(df, c, n, np.nan)] for c in (value, lo, hi))
    cols = _per_row(df, color, n, colour=True)
    keys = list(df[legend]) if legend is not None and legend in df.columns else [legend] * n
    xy = (lambda u, w: (u, w)) if orient == "h" else (lambda u, w: (w, u))
    seen = set()
    for p, v, a, b, c, key in zip(base + offset, vals, los, his, cols, keys):
        lab, drawn = (key if key not in seen else None), False
        if np.isfinite(a) and np.isfinite(b):
            ax.plot(*xy([a, b], [p, p]), color=c, lw=lw, solid_capstyle="butt", zorder=zorder - 0.5,
                    marker=("|" if orient == "h" else "_") if capsize else None, ms=2 * capsize, mew=lw,
                    label=None if marker else lab)
            drawn = not marker
        if marker and np.isfinite(v):
            ax.plot(*xy([v], [p]), ls="none", marker=marker, color=c, mfc=mfc or c, ms=ms, zorder=zorder, label=lab,
                    **point_kw)
            drawn = True
        if drawn:
            seen.add(key)
    if join:
        ax.plot(*xy(vals, base + offset), color=cols[0], lw=lw, zorder=zorder - 0.5)
    if ticks and label in df.columns:
        names = [textwrap.fill(str(t), wrap) if wrap else str(t) for t in df[label]]
        (ax.set_yticks if orient == "h" else ax.set_xticks)(base, names)
    return base


def log_ticks(ax, axis: str = "x") -> None:
    """Plain-number labels at 1, 2 and 5 × 10ᵏ on a log axis that spans less than two decades (where
    matplotlib labels its minor ticks, which crowd); call it once the data are drawn."""
    import matplotlib.ticker as mticker

    a = ax.xaxis if axis == "x" else ax.yaxis
    lo, hi = sorted(a.get_view_interval())
    if lo > 0 and np.log10(hi / lo) < 2:
        a.set_major_locator(mticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        a.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))
        a.set_minor_formatter(mticker.NullFormatter())


def legend_outside(ax, **kw) -> None:
    """A legend to the right of the axes, never on top of the data (one entry per label)."""
    handles, labels = ax.get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    if handles:
        ax.legend(by_label.values(), by_label.keys(), loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  **kw)


def tidy(fig) -> None:
    """Tight layout unless the figure already has a layout engine.

    After :func:`use`, figures are made with the constrained layout; asking for the tight
    layout on one that has a colorbar raises in matplotlib ≥ 3.6. Figures made before
    :func:`use` (or in tests that never call it) get the tight layout.
    """
    if fig.get_layout_engine() is None:
        fig.tight_layout()


def labels(ax, xlabel: str, ylabel: str, title: str | None = None, *, legend: bool = False,
           xscale: str | None = None, yscale: str | None = None) -> None:
    """Axis labels (with units), an optional title, log scales and a small legend, in one call."""
    if xscale:
        ax.set_xscale(xscale)
    if yscale:
        ax.set_yscale(yscale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(fontsize=8)
