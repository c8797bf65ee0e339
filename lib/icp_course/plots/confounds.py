"""Figures of what drives the agreement in notebook 05 (the ``confounds`` result): null models,
agreement controlled for answer length, the pair level, the length intervention and the
dose–response curve with its prediction for a pool as wide as the paper's.

Every function takes the plain result dict of :mod:`icp_influence.experiments.confounds`
(and, where it reports a pair's raw agreement, the agreement run's summary, so a comparison
shows the one number section 2 reports), returns the Figure, gives each valuator and null
model its course colour (:mod:`icp_course.style`) and keeps legends off the data.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..style import NULL_MODELS, colors, figure, forest, group_colors, label
from .agreement import bars_with_ci

#: The pairs the figures show, in order.
PAIRS = (("icp_mean_delta", "ip"), ("icp_win_rate", "ip"), ("icp_mean_delta", "cosine"))
METHODS = (("raw", "raw"), ("partial", "partial, given answer tokens"), ("stratified", "within length quintiles"),
           ("per_token", "per-token forms"))


def _row(e: Mapping[str, Any] | None, **extra) -> dict[str, Any]:
    """A Spearman with its interval as one row of a forest (missing values: NaN, drawn as nothing)."""
    e = e or {}
    lo, hi = e.get("ci") or (None, None)
    return {"value": e.get("spearman"), "lo": lo, "hi": hi, **extra}


def _raw(res, summary, a, b):
    from icp_influence.experiments.confounds_report import raw_agreement

    return raw_agreement(res, summary, f"{a} vs {b}")


def null_models(res: Mapping[str, Any], summary: Mapping[str, Any] | None = None,
                pairs: Sequence[tuple[str, str]] = PAIRS[:2]):
    """One panel per pair of paper valuators: the pair's agreement (top row, black) and, for each
    null model, its Spearman with the first valuator (●) and with the second (■), with two-way
    95% intervals. A null model right of the dotted line on both markers agrees with both
    valuators at least as well as they agree with each other."""
    import pandas as pd

    nulls = [n for n in NULL_MODELS if n in res.get("null_models", {})]
    fig, axes = figure(ncols=len(pairs), figsize=(5.2 * len(pairs), 0.55 * (len(nulls) + 1) + 1.9), sharey=True,
                       squeeze=False)
    y = np.arange(len(nulls))[::-1]
    for ax, (a, b) in zip(axes[0], pairs):
        pair = _raw(res, summary, a, b)
        if pair is not None:
            forest(ax, pd.DataFrame([_row(pair)]), y=[len(nulls)], marker="D", ms=7, capsize=3, ticks=False)
            ax.axvline(pair["spearman"], color="black", ls=":", lw=1)
        vs = {n: res["null_models"][n]["spearman_vs"] for n in nulls}
        for dy, other, marker in ((0.15, a, "o"), (-0.15, b, "s")):
            df = pd.DataFrame([_row(vs[n].get(other), color=c) for n, c in zip(nulls, colors(nulls))])
            forest(ax, df, y=y, offset=dy, color="color", marker=marker, mfc=None if marker == "o" else "white",
                   capsize=2, ticks=False)
        ax.axvline(0, color="grey", lw=0.6)
        ax.set_xlim(-1.08, 1.08)
        ax.set_xticks([-1, -0.5, 0, 0.5, 1])
        ax.set_title(f"{label(a)} vs {label(b)}")
        ax.set_xlabel("Spearman ρ (95% two-way CI)")
    ticks = ["the two valuators"] + [label(n) for n in nulls]
    axes[0, 0].set_yticks(np.arange(len(nulls), -1, -1), ticks)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="D", color="black", ls="none", label="the two valuators with each other"),
               Line2D([], [], marker="o", color="grey", ls="none", label="null model with the first (ICP)"),
               Line2D([], [], marker="s", color="grey", mfc="white", ls="none", label="null model with the second")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle("Does a null model agree with both valuators as well as they agree with each other?",
                 fontweight="bold", fontsize="medium")
    return fig


def controlled(res: Mapping[str, Any], summary: Mapping[str, Any] | None = None,
               pairs: Sequence[tuple[str, str]] = PAIRS):
    """Agreement of each pair raw and controlled for answer length (partial, within quintiles,
    per-token forms), with two-way 95% intervals. Colour: the ICP score; marker: the gradient
    valuator (● inner product, ◆ cosine)."""
    import pandas as pd

    lc = res.get("length_controlled", {})
    pairs = [p for p in pairs if f"{p[0]} vs {p[1]}" in lc]
    fig, ax = figure(figsize=(8.0, 0.5 * len(METHODS) * max(1, len(pairs)) * 0.55 + 2.2))
    n = max(1, len(pairs))
    offs = ((n - 1) / 2 - np.arange(n)) * 0.22      # the first pair on top
    markers = {"ip": "o", "cosine": "D"}
    for k, (a, b) in enumerate(pairs):
        row = lc[f"{a} vs {b}"]
        df = pd.DataFrame([_row(_raw(res, summary, a, b) if m == "raw" else row.get(m), label=t) for m, t in METHODS])
        forest(ax, df, offset=offs[k], color=colors([a])[0], marker=markers.get(b, "s"), capsize=2,
               legend=f"{label(a)} vs {label(b)}")
    ax.axvline(0, color="grey", lw=0.6)
    ax.set_yticks(np.arange(len(METHODS))[::-1], [t for _, t in METHODS])     # also when no pair is drawn
    ax.set_xlabel("Spearman ρ of the candidate scores (95% two-way CI)")
    ax.set_title("Agreement, raw and controlled for answer length")
    fig.legend(loc="outside lower center", ncol=1, frameon=False)
    return fig


def within_probe(pair_level: Mapping[str, Any]):
    """For each probe, the Spearman of Δ and the inner product across candidates (one dot per
    probe), raw and with the inner product divided by the candidate's answer tokens; the mean
    with its 95% interval as a black bar."""
    import pandas as pd
    import seaborn as sns

    forms = [("raw", "inner product"), ("ip_per_candidate_token", "inner product ÷ candidate tokens")]
    forms = [(k, t) for k, t in forms if k in pair_level]
    df = pd.concat([pd.DataFrame({"form": t, "rho": pair_level[k]["values"]}) for k, t in forms], ignore_index=True)
    fig, ax = figure(figsize=(8.0, 1.3 * len(forms) + 1.6))
    pal = dict(zip([t for _, t in forms], colors(["ip", "ip_per_candidate_token"][:len(forms)])))
    sns.stripplot(data=df, x="rho", y="form", hue="form", palette=pal, legend=False, ax=ax, size=5, jitter=0.2,
                  alpha=0.75)
    means = pd.DataFrame([{"value": pair_level[k]["mean"], "lo": pair_level[k]["ci"][0], "hi": pair_level[k]["ci"][1]}
                          for k, _ in forms])
    forest(ax, means, y=range(len(forms)), marker="|", ms=22, mew=2.5, lw=2, capsize=5, zorder=5, ticks=False)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_ylabel("")
    ax.set_yticks(range(len(forms)), [f"{t}\nmean {pair_level[k]['mean']:.2f}, positive for "
                                      f"{pair_level[k]['fraction_positive']:.0%}" for k, t in forms])
    ax.set_xlabel("Spearman(Δ, gradient score) across candidates\n(one dot per probe)")
    ax.set_title("Within one probe: does Δ follow the inner product?")
    return fig


def intervention(effects: Mapping[str, Mapping[str, Any]], *, names: Sequence[str] | None = None):
    """Each valuator's paired effect of a longer answer with content fixed: mean over instructions
    of rank(long) − rank(short), in percentile points of the variant pool, with its 95% interval."""
    import pandas as pd

    names = [n for n in (names or ("answer_length", "ip", "icp_mean_delta", "icp_win_rate")) if n in effects]
    fig, ax = figure(figsize=(7.5, 0.55 * len(names) + 1.6))
    df = pd.DataFrame([{"name": n, "value": effects[n]["rank_effect"], "lo": effects[n]["rank_ci"][0],
                        "hi": effects[n]["rank_ci"][1]} for n in names], columns=["name", "value", "lo", "hi"])
    bars_with_ci(ax, df)
    ax.axvline(0, color="black", lw=0.6)
    lo, hi = df["lo"].to_numpy(float), df["hi"].to_numpy(float)
    lim = max(10.0, float(np.nanmax(np.abs(np.r_[lo, hi]))) * 1.1)
    ax.set_xlim(-lim, lim)
    ax.set_xlabel("rank(long answer) − rank(short answer), percentile points (95% CI)")
    ax.set_title("Same instruction, longer answer: how does each valuator move it?")
    return fig


def dose_response(table: Sequence[Mapping[str, Any]], prediction: Mapping[str, Any], *, paper: float,
                  pool_sd: float | None = None):
    """Agreement of ICP mean Δ and the inner product against the spread of answer lengths
    (standard deviation of log answer tokens): raw and given length, with 95% bands, the straight
    lines on Fisher's z extended to the prediction, the prediction with its interval, and the
    paper's value at the paper's spread."""
    fig, ax = figure(figsize=(7.5, 4.4))
    sd = np.array([r["log_token_sd"] for r in table], dtype=float)
    styles = (("raw", "raw", colors(["ip"])[0], "o"), ("partial", "given answer tokens", colors(["icp_mean_delta"])[0], "s"))
    x_pred = float(prediction["log_token_sd"])
    for key, name, c, marker in styles:
        val = np.array([np.nan if r[key]["spearman"] is None else r[key]["spearman"] for r in table], dtype=float)
        lo = np.array([np.nan if r[key]["ci"][0] is None else r[key]["ci"][0] for r in table], dtype=float)
        hi = np.array([np.nan if r[key]["ci"][1] is None else r[key]["ci"][1] for r in table], dtype=float)
        ok = np.isfinite(val)
        if not ok.any():
            continue
        ax.fill_between(sd[ok], lo[ok], hi[ok], color=c, alpha=0.15, lw=0)
        ax.plot(sd[ok], val[ok], marker=marker, color=c, label=f"measured, {name}")
        if ok.sum() >= 2:
            z = np.polyfit(sd[ok], np.arctanh(np.clip(val[ok], -0.999, 0.999)), 1)
            xs = np.linspace(sd[ok].min(), max(x_pred, sd[ok].max()), 50)
            ax.plot(xs, np.tanh(np.polyval(z, xs)), color=c, ls="--", lw=1)
        p = prediction.get(key) or {}
        if p.get("spearman") is not None:
            plo, phi = (np.nan if q is None else q for q in p["ci"])
            ax.errorbar([x_pred], [p["spearman"]], yerr=[[p["spearman"] - plo], [phi - p["spearman"]]], fmt=marker,
                        color=c, mfc="white", ms=8, capsize=4, label=f"predicted, {name}")
    ax.plot([x_pred], [paper], marker="*", color="black", ms=14, ls="none", label=f"the paper ({paper})")
    if pool_sd is not None:
        ax.axvline(pool_sd, color="grey", ls=":", lw=1)
        ax.text(pool_sd, 0.98, "this instruction set ", rotation=90, va="top", ha="right", color="grey", fontsize=9,
                transform=ax.get_xaxis_transform())
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_ylim(-1, 1)
    ax.set_xlabel("spread of answer lengths: standard deviation of log answer tokens")
    ax.set_ylabel("Spearman(ICP mean Δ, inner product)")
    ax.set_title("Dose–response: does a wider length spread raise agreement?")
    ax.legend(loc="lower left", fontsize=9, ncol=2)
    return fig


def probe_count_spread(spread: Sequence[Mapping[str, Any]], drawn: Mapping[int, float] | None = None):
    """The Spearman of many random subsets of ``k`` probes (one dot per draw) with their mean;
    ``drawn``: the value of the one subset an ablation row used, per ``k`` (a red cross)."""
    import pandas as pd
    import seaborn as sns

    df = pd.concat([pd.DataFrame({"k": str(s["k"]), "rho": s["values"]}) for s in spread], ignore_index=True)
    fig, ax = figure(figsize=(7.5, 3.8))
    sns.stripplot(data=df, x="k", y="rho", color=colors(["icp_mean_delta"])[0], alpha=0.35, size=3, jitter=0.25, ax=ax)
    ks = [str(s["k"]) for s in spread]
    ax.plot(ks, [s["mean"] for s in spread], "_", color="black", ms=30, mew=2.5, label="mean over random subsets")
    if drawn:
        pts = [(str(k), v) for k, v in drawn.items() if str(k) in ks]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "X", color="#d62728", ms=9, ls="none",
                label="the one subset of the ablation rows")
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_xlabel("probes per score (random subsets)")
    ax.set_ylabel("Spearman(ICP mean Δ, inner product)")
    ax.set_title("Agreement computed from random subsets of k probes")
    ax.legend(loc="lower right", fontsize=9)
    return fig


def scores_vs_length(tokens: np.ndarray, scores: Mapping[str, np.ndarray]):
    """Each per-candidate score against the candidate's answer tokens (log scale), one panel per
    score (``{valuator name: values}``), the Spearman correlation in each panel's title."""
    import seaborn as sns

    from icp_influence.stats import spearman

    names = list(scores)
    fig, axes = figure(ncols=len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    t = np.asarray(tokens, dtype=float)
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, size=t.size)  # many answers share a length
    for ax, n in zip(axes[0], names):
        y = np.asarray(scores[n], dtype=float)
        sns.scatterplot(x=t * np.exp(jitter), y=y, s=18, alpha=0.7, color=colors([n])[0], ax=ax)
        ax.set_xscale("log")
        ax.set_xlabel("candidate's answer tokens\n(log scale, jittered)")
        ax.set_ylabel(label(n))
        ax.set_title(f"{label(n)}: Spearman {spearman(t, y):.2f}")
    return fig


def category_structure(structure: Mapping[str, Mapping[str, Any]], pair: str = "icp_mean_delta vs ip"):
    """For each pool: the agreement of the pair raw, within task categories and between the
    categories' means, with two-way 95% intervals (one colour per pool)."""
    rows = [("raw", "raw (all candidates)"), ("within_groups", "within a category"),
            ("between_groups", "between category means")]
    import pandas as pd

    pools = [p for p in ("instructions", "synthetic") if pair in structure.get(p, {})]
    names = {"instructions": "instruction set", "synthetic": "synthetic task families"}
    fig, ax = figure(figsize=(7.5, 3.2))
    offs = ((len(pools) - 1) / 2 - np.arange(max(1, len(pools)))) * 0.25
    pal = group_colors(pools)
    for k, p in enumerate(pools):
        t = structure[p]
        df = pd.DataFrame([_row(t[pair].get(m), label=name) for m, name in rows])
        forest(ax, df, offset=offs[k], color=pal[p], capsize=3, legend=f"{names[p]} ({t['n_categories']} categories)")
    ax.axvline(0, color="grey", lw=0.6)
    ax.set_yticks(np.arange(len(rows))[::-1], [t for _, t in rows])
    a, b = pair.split(" vs ")
    ax.set_xlabel(f"Spearman ρ, {label(a)} vs {label(b)} (95% two-way CI)")
    ax.set_title("Do they agree about examples, or about kinds of example?")
    fig.legend(loc="outside lower center", ncol=2, frameon=False, fontsize=8)
    return fig
