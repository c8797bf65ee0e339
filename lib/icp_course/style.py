"""One look for every figure of the course, set in one place.

Every notebook's setup cell calls :func:`use` once. It sets seaborn's theme (white grid,
a readable font size) and the figure defaults (resolution, legends outside the data),
and :func:`palette` gives as many distinct colours as there are categories.
"""
from __future__ import annotations

from typing import Sequence

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


def legend_outside(ax, **kw) -> None:
    """A legend to the right of the axes, never on top of the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, **kw)


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
