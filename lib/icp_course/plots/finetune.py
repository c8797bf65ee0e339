"""Figures of notebook 06: outcomes of fine-tuning on each arm's selection, and the
equivalence tests between arms (seaborn)."""
from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..style import color, colors, figure, forest, legend_outside, log_ticks, palette

VERDICT_COLORS = {"equivalent": "#2ca02c", "different": "#d62728", "inconclusive": "#7f7f7f"}


def budget_curves(arms: Mapping[str, Mapping[str, Mapping[str, Any]]], *, base: float | None = None,
                  metric_label: str = "held-out answer log-likelihood (nats / token)", title: str = ""):
    """One line per arm: mean over seeds and its 95% t-interval against the budget."""
    budgets = sorted(arms, key=int)
    names = list(next(iter(arms.values())))
    fig, ax = figure(figsize=(6.4, 4.0))
    cols = dict(zip(names, palette(len(names))))
    if "random" in cols:    # the random selection in the random null model's grey, as everywhere in the course
        cols["random"] = color("random")
    offsets = np.linspace(-0.15, 0.15, len(names)) if len(names) > 1 else [0.0]
    for off, name in zip(offsets, names):
        df = pd.DataFrame({"budget": budgets, "value": [arms[b][name]["mean"] for b in budgets],
                           "lo": [arms[b][name]["ci"][0] for b in budgets], "hi": [arms[b][name]["ci"][1] for b in budgets]})
        forest(ax, df, label="budget", orient="v", offset=off, color=cols[name], legend=name, capsize=3, join=True)
    if base is not None:
        ax.axhline(base, color="black", ls="--", lw=1, label="base model (no fine-tuning)")
    ax.set_xlabel("budget (training examples selected)")
    ax.set_ylabel(metric_label)
    if title:
        ax.set_title(textwrap.fill(title, 56))
    legend_outside(ax, fontsize=8)
    return fig


def paired_differences(rows: Sequence[Mapping[str, Any]], *, margin: float, title: str = "",
                       xlabel: str = "paired difference a − b (nats / token), 95% CI"):
    """Each pair of arms: the mean paired difference with its CI, the ±margin band, the verdict."""
    fig, ax = figure(figsize=(7.5, 0.38 * len(rows) + 1.3))
    ax.axvspan(-margin, margin, color="#2ca02c", alpha=0.12, label=f"±margin ({margin:.3g})")
    df = pd.DataFrame({"label": [f"{r['a']} − {r['b']} (budget {r['budget']}): {r['verdict']}" for r in rows],
                       "value": [r["diff"] for r in rows], "lo": [r["ci"][0] for r in rows],
                       "hi": [r["ci"][1] for r in rows],
                       "color": [VERDICT_COLORS.get(r["verdict"], "black") for r in rows]})
    forest(ax, df, color="color", lw=2)
    ax.tick_params(axis="y", labelsize=8)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_xlabel(xlabel)
    if title:
        ax.set_title(textwrap.fill(title, 56))
    for v, c in VERDICT_COLORS.items():
        ax.plot([], [], color=c, lw=2, label=v)
    legend_outside(ax, fontsize=8)
    return fig


def training_curve(losses: Sequence[float], *, steps_per_epoch: int | None = None, before: float | None = None,
                   after: float | None = None, title: str = "",
                   ylabel: str = "training answer loss (nats / token)"):
    """The loss of each optimiser step, measured on **that step's batch** (other examples at each
    step), with epoch boundaries; and, when given, the loss on **all** the training examples before
    and after training (the same examples both times: the comparison that shows learning)."""
    losses = np.asarray(losses, float)
    if losses.size == 0:
        raise ValueError("training_curve needs at least one step's loss.")
    steps = np.arange(1, losses.size + 1)
    fig, ax = figure(figsize=(6.0, 3.4))
    ax.plot(steps, losses, marker="o", color="tab:blue", label="each step, on its own batch")
    if steps_per_epoch:
        for b in range(steps_per_epoch, losses.size, steps_per_epoch):
            ax.axvline(b + 0.5, color="grey", ls=":", lw=1)
        ax.plot([], [], color="grey", ls=":", lw=1, label="epoch boundary")
    if before is not None:
        ax.plot([0], [before], marker="s", ls="none", color="black", label="all training examples, before")
    if after is not None:
        ax.plot([losses.size + 1], [after], marker="D", ls="none", color="tab:green",
                label="all training examples, after")
    if before is not None and after is not None:
        ax.plot([0, losses.size + 1], [before, after], color="tab:green", ls="--", lw=1)
    lo = 0 if before is not None else 1
    hi = losses.size + (1 if after is not None else 0)
    every = max(1, int(np.ceil(losses.size / 10)))   # at most about ten numbered steps: labels never crowd
    nums = [i for i in range(every, losses.size + 1, every) if after is None or losses.size + 1 - i >= every]
    ticks = ([0] if before is not None else []) + ([1] if every > 1 and before is None else []) + nums \
        + ([losses.size + 1] if after is not None else [])
    ax.set_xticks(ticks, ["before" if (i == 0 and before is not None) else
                          "after" if (i == losses.size + 1) else str(i) for i in ticks])
    ax.set_xlabel("optimiser step")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(textwrap.fill(title, 38))   # the legend to the right leaves the axes about 3.5 inches
    legend_outside(ax, fontsize=8)
    return fig


#: The grid's arms in the order its figures list them: the two valuators, the referee, the
#: length and random controls, then the selections meant to be bad (notebook 06).
GRID_ORDER = ("icp-top", "ip-top", "gt-top", "longest", "length_matched_random", "random", "icp-bottom", "corrupted")


def grid_gains(loglik: Mapping[str, Mapping[str, Mapping[str, Any]]], *, base: float, title: str = "",
               metric_label: str = "gain over the base model (nats / token)"):
    """The grid's outcome per arm: each seed's gain over the base model (dots), the arm's mean and
    its 95% t-interval (bar), one colour per budget. ``loglik``: budget → arm → {mean, ci, seeds}."""
    import pandas as pd
    import seaborn as sns

    budgets = sorted(loglik, key=int)
    arms = [a for a in GRID_ORDER if a in loglik[budgets[0]]] + [a for a in loglik[budgets[0]] if a not in GRID_ORDER]
    seeds = pd.DataFrame([{"arm": a, "budget": str(b), "gain": v - base}
                          for b in budgets for a in arms for v in loglik[b][a]["seeds"]])
    fig, ax = figure(figsize=(7.2, 0.42 * len(arms) * max(1, len(budgets)) ** 0.5 + 1.6))
    pal = dict(zip(map(str, budgets), palette(max(3, len(budgets)))))
    sns.stripplot(data=seeds, x="gain", y="arm", hue="budget", order=arms, hue_order=list(map(str, budgets)),
                  palette=pal, dodge=len(budgets) > 1, alpha=0.45, size=4, jitter=0.15, ax=ax, legend=False)
    width = 0.8 / len(budgets)
    for i, b in enumerate(budgets):
        off = (i - (len(budgets) - 1) / 2) * width if len(budgets) > 1 else 0.0
        df = pd.DataFrame({"arm": arms, "value": [loglik[b][a]["mean"] - base for a in arms],
                           "lo": [loglik[b][a]["ci"][0] - base for a in arms],
                           "hi": [loglik[b][a]["ci"][1] - base for a in arms]})
        forest(ax, df, label="arm", y=range(len(arms)), offset=off, marker="D", ms=5, capsize=3, ticks=False,
               color=pal[str(b)], legend=f"budget {b}: mean, 95% CI")
    ax.axvline(0, color="black", lw=0.8, ls="--", label="base model")
    ax.set_xlabel(metric_label)
    ax.set_ylabel("")
    if title:
        ax.set_title(textwrap.fill(title, 60))
    legend_outside(ax, fontsize=8)
    return fig


def grid_gain_vs_length(loglik: Mapping[str, Mapping[str, Mapping[str, Any]]],
                        selected: Mapping[str, Mapping[str, Mapping[str, float]]], *, base: float, title: str = ""):
    """Each arm's mean gain over the base model (95% t-interval) against the mean answer length
    (tokens) of what it selected, one colour per arm and one marker per budget: does the outcome
    follow what a selection *is*, or only how long its answers are? ``selected``: budget → arm →
    {answer_tokens, noisy_fraction} (the grid's ``selected``)."""
    import seaborn as sns

    budgets = sorted(loglik, key=int)
    arms = [a for a in GRID_ORDER if a in loglik[budgets[0]]] + [a for a in loglik[budgets[0]] if a not in GRID_ORDER]
    df = pd.DataFrame([{"arm": a, "budget": str(b), "tokens": selected[b][a]["answer_tokens"],
                        "gain": loglik[b][a]["mean"] - base, "lo": loglik[b][a]["ci"][0] - base,
                        "hi": loglik[b][a]["ci"][1] - base} for b in budgets for a in arms])
    fig, ax = figure(figsize=(7.4, 4.4))
    pal = dict(zip(arms, colors(arms)))   # a valuator's arm (random) keeps its course colour
    for _, r in df.iterrows():
        ax.errorbar(r["tokens"], r["gain"], yerr=[[r["gain"] - r["lo"]], [r["hi"] - r["gain"]]], color=pal[r["arm"]],
                    lw=1, capsize=2, alpha=0.7)
    sns.scatterplot(data=df, x="tokens", y="gain", hue="arm", hue_order=arms, palette=pal, style="budget",
                    style_order=[str(b) for b in budgets], s=60, ax=ax, zorder=3)
    ax.set_xscale("log")
    log_ticks(ax, "x")
    ax.set_xlabel("mean answer length of the selected examples (tokens, log scale)")
    ax.set_ylabel("gain over the base model (nats / token)")
    if title:
        ax.set_title(textwrap.fill(title, 62))
    legend_outside(ax, fontsize=8)
    return fig
