"""Explorers for notebook 04 (in-context probing an LLM).

* ``token_explorer(...)``: how one demonstration changes each answer token's log-probability;
  ``update(candidate=..., probe=...)`` sets the dropdowns, recomputes (two forward passes)
  and returns the numbers shown.
* ``reliability_explorer(cache)``: the number of probes, the aggregation (win-rate / mean Δ /
  per-token Δ) and the baseline (zero-shot / neutral demonstration) → the candidate ranking
  and its split-half reliability, re-aggregated from a :class:`PairCache` (no model call).
* ``own_demo_explorer(model, tok, probes)``: text boxes for a demonstration of your own → its
  Δ per probe and per answer token.
"""
from __future__ import annotations

from icp_course.style import tidy

from dataclasses import dataclass
from typing import Any, Sequence

import ipywidgets as W
import numpy as np
import matplotlib.pyplot as plt
from IPython.display import display

from icp_influence.data import Example
from icp_influence.icp import per_token


def token_explorer(model, tokenizer, candidates: Sequence[Example], probes: Sequence[Example], *,
                   template: str = "paper", candidate: str | None = None, probe: str | None = None):
    """Dropdowns for a candidate (demonstration) and a probe → the per-token view.

    Each change recomputes ``log p(y_t | x, y_<t)`` and ``log p(y_t | z, x, y_<t)`` with the
    model (:func:`~icp_influence.icp.token_logprobs`) and redraws the bar chart.
    Returns ``(widget, update)``; ``update(candidate=id, probe=id)`` →
    ``{"candidate", "probe", "tokens", "with_demo", "without_demo", "delta", "n_improved"}``.
    """
    from icp_influence.errors import ConfigError
    from icp_influence.icp import token_logprobs
    from icp_course.plots.icp import plot_token_view
    from .theory import explorer

    cands = {c.id: c for c in candidates}
    prbs = {p.id: p for p in probes}
    if not cands or not prbs:
        raise ConfigError("token_explorer needs at least one candidate and one probe.")
    controls = {
        "candidate": W.Dropdown(options=list(cands), value=candidate or next(iter(cands)), description="demo z",
                                layout=W.Layout(width="320px")),
        "probe": W.Dropdown(options=list(prbs), value=probe or next(iter(prbs)), description="probe p",
                            layout=W.Layout(width="320px")),
    }
    out, status, text = W.Output(), W.HTML(), W.HTML()

    def recompute() -> dict[str, Any]:
        z, p = cands[controls["candidate"].value], prbs[controls["probe"].value]
        tv = token_logprobs(model, tokenizer, p, z, template=template)
        res = {"candidate": z.id, "probe": p.id, "tokens": tv.tokens, "with_demo": tv.with_demo.tolist(),
               "without_demo": tv.without_demo.tolist(), "delta": tv.total_delta,
               "n_improved": int((tv.delta > 0).sum())}
        text.value = (f"<b>z</b>: {z.instruction} | {z.input} → {z.output}<br>"
                      f"<b>p</b>: {p.instruction} | {p.input} → <u>{p.output}</u>")
        status.value = (f"ll(p) = {tv.without_demo.sum():.3f} nats · ll(p|z) = {tv.with_demo.sum():.3f} nats · "
                        f"Δ = {tv.total_delta:+.3f} nats · {res['n_improved']}/{len(tv.tokens)} tokens more likely")
        with out:
            out.clear_output(wait=True)
            fig = plot_token_view(tv.tokens, tv.with_demo, tv.without_demo,
                                  title=f"{z.id} → {p.id}: Δ = {tv.total_delta:+.3f} nats")
            display(fig)
            plt.close(fig)
        return res

    return explorer(controls, recompute, [W.HBox([controls["candidate"], controls["probe"]]), text, status, out])


# --------------------------------------------------------------------------------------------
# Reliability and ranking explorer: probes × aggregation × baseline, from a cached matrix
# --------------------------------------------------------------------------------------------
#: aggregation name shown to students -> (per-probe values, statistics aggregate)
AGGREGATIONS = {"win-rate": ("delta", "win_rate"), "mean Δ": ("delta", "mean"), "per-token Δ": ("per_token", "mean")}
BASELINES = ("zero-shot", "neutral demonstration")


@dataclass
class PairCache:
    """Everything the reliability explorer needs, computed once in the notebook.

    ``ll`` ``[C, P]``: ``ll(p | z)``; ``zero_shot`` ``[P]``: ``ll(p)``; ``neutral`` ``[P]``:
    ``ll(p | neutral demonstration)`` (or ``None``); ``n_answer_tokens`` ``[P]``. Changing a
    control only re-aggregates these numbers: no model call.
    """

    ll: np.ndarray
    zero_shot: np.ndarray
    n_answer_tokens: np.ndarray
    candidate_ids: list[str]
    probe_ids: list[str]
    neutral: np.ndarray | None = None
    groups: list[str] | None = None

    @classmethod
    def from_scores(cls, sm: Any, neutral: Any = None, groups: Sequence[str] | None = None) -> "PairCache":
        """From the ``"icp"`` valuator's ScoreMatrix (and, optionally, its one-row ScoreMatrix of the
        neutral demonstration scored on the same probes with the same zero-shot baseline).

        ``ll(p | z)`` is each stored Δ plus the baseline the matrix records.
        """
        from icp_influence.errors import ConfigError
        from icp_influence.icp import delta_values

        def ll_of(m: Any) -> tuple[np.ndarray, np.ndarray]:
            base = np.asarray(m.meta.get("baseline"), dtype=np.float64)
            if base.shape != (m.shape[1],) or m.meta.get("baseline_kind", "zero_shot") != "zero_shot":
                raise ConfigError("PairCache needs ICP scores against the zero-shot baseline "
                                  "(valuators.make('icp', ...) without baseline_demo).")
            return delta_values(m) + base[None, :], base

        ll, base = ll_of(sm)
        neutral_ll = None
        if neutral is not None:
            if list(neutral.probe_ids) != list(sm.probe_ids) or neutral.shape[0] != 1:
                raise ConfigError("The neutral demonstration must be one row scored on the same probes.")
            neutral_ll = ll_of(neutral)[0][0]
        return cls(ll, base, np.asarray(sm.meta["n_answer_tokens"], dtype=np.float64), list(sm.candidate_ids),
                   list(sm.probe_ids), neutral_ll, None if groups is None else list(groups))

    def values(self, aggregation: str, baseline: str) -> tuple[np.ndarray, str]:
        """``(V [C, P], how)``: the per-pair values and the ``icp_influence.stats`` aggregate."""
        from icp_influence.errors import ConfigError

        if aggregation not in AGGREGATIONS:
            raise ConfigError(f"Unknown aggregation {aggregation!r}; choose one of {', '.join(AGGREGATIONS)}.")
        if baseline not in BASELINES:
            raise ConfigError(f"Unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}.")
        if baseline == "neutral demonstration" and self.neutral is None:
            raise ConfigError("This cache has no neutral-demonstration row: pass neutral=... to PairCache.from_scores.")
        base = self.zero_shot if baseline == "zero-shot" else self.neutral
        V = self.ll - base[None, :]
        kind, how = AGGREGATIONS[aggregation]
        if kind == "per_token":
            V = per_token(V, self.n_answer_tokens)
        return V, how


def probe_order(n_probes: int, seed: int = 0) -> np.ndarray:
    """The fixed random order in which the explorer adds probes (nested subsets)."""
    return np.random.default_rng(seed).permutation(n_probes)


def icp_view(cache: PairCache, n_probes: int, aggregation: str = "win-rate", baseline: str = "zero-shot", *,
             seed: int = 0, n_boot: int = 200) -> dict[str, Any]:
    """Scores, ranking and split-half reliability over the first ``n_probes`` probes (of :func:`probe_order`).

    Returns ``{"n_probes", "aggregation", "baseline", "how", "probe_ids", "scores", "ranking",
    "reliability", "lo", "hi", "half", "rank_vs_all"}`` — ``reliability`` and its interval are
    :func:`icp_influence.stats.split_half` of the chosen values; ``rank_vs_all`` is the Spearman
    correlation of these scores with the same score over every probe.
    """
    from icp_influence.errors import ConfigError
    from icp_influence.stats import aggregate, spearman, split_half

    P = len(cache.probe_ids)
    if not 4 <= int(n_probes) <= P:
        raise ConfigError(f"Choose between 4 and {P} probes (split-half reliability needs at least 4), got {n_probes}.")
    V, how = cache.values(aggregation, baseline)
    cols = probe_order(P, seed)[: int(n_probes)]
    Vk = V[:, cols]
    scores = aggregate(Vk, how)
    order = np.argsort(-scores, kind="stable")
    rel = split_half(Vk, how, n_boot=n_boot, seed=seed)
    all_scores = aggregate(V, how)
    return {"n_probes": int(n_probes), "aggregation": aggregation, "baseline": baseline, "how": how,
            "probe_ids": [cache.probe_ids[j] for j in cols], "scores": scores,
            "ranking": [cache.candidate_ids[i] for i in order], "all_scores": all_scores,
            "reliability": rel.value, "lo": rel.lo, "hi": rel.hi, "half": rel.half,
            "rank_vs_all": spearman(scores, all_scores)}


def _summary_html(v: dict[str, Any]) -> str:
    top = ", ".join(v["ranking"][:3])
    return (f"<b>{v['n_probes']} probes</b> · <b>{v['aggregation']}</b> against the <b>{v['baseline']}</b> baseline · "
            f"split-half reliability <b>{v['reliability']:.2f}</b> (95% interval {v['lo']:.2f} to {v['hi']:.2f}) · "
            f"Spearman with the ranking over all probes {v['rank_vs_all']:.2f}<br>top 3: {top}")


def plot_reliability_view(cache: PairCache, view: dict[str, Any], others: dict[str, dict[str, Any]], *, top: int = 8):
    """Left: the top candidates' scores (rank over all probes in brackets). Right: reliability
    of the three aggregations at the same probe count and baseline, the chosen one highlighted."""
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 3.8), gridspec_kw={"width_ratios": [1.5, 1]})
    ax = axes[0]
    idx = [cache.candidate_ids.index(c) for c in view["ranking"][:top]]
    all_rank = {cache.candidate_ids[i]: r + 1 for r, i in enumerate(np.argsort(-view["all_scores"], kind="stable"))}
    labels = [f"{cache.candidate_ids[i]}" + (f" ({cache.groups[i]})" if cache.groups else "")
              + f"  [#{all_rank[cache.candidate_ids[i]]}]" for i in idx]
    vals = view["scores"][idx]
    ax.barh(range(len(idx)), vals, color=["tab:green" if x > 0 else "tab:red" for x in vals])
    ax.set_yticks(range(len(idx)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.6)
    unit = {"win-rate": "fraction of probes with Δ > 0", "mean Δ": "nats", "per-token Δ": "nats / answer token"}
    ax.set_xlabel(f"{view['aggregation']} ({unit[view['aggregation']]})")
    ax.set_ylabel(f"top {len(idx)} candidates [rank over all probes]")
    ax.set_title(f"Ranking over {view['n_probes']} probes, {view['baseline']} baseline", fontsize=9)
    ax = axes[1]
    names = list(AGGREGATIONS)
    for k, name in enumerate(names):
        o = others[name]
        chosen = name == view["aggregation"]
        ax.errorbar([k], [o["reliability"]], yerr=[[o["reliability"] - o["lo"]], [o["hi"] - o["reliability"]]],
                    fmt="o", color="tab:blue" if chosen else "tab:grey", ms=9 if chosen else 6, capsize=4)
        ax.annotate(f"{o['reliability']:.2f}", (k, o["reliability"]), xytext=(8, 0), textcoords="offset points",
                    fontsize=8, va="center")
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylim(min(-0.2, min(others[n]["lo"] for n in names) - 0.05), 1.05)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("aggregation")
    ax.set_ylabel("split-half reliability (Spearman–Brown)")
    ax.set_title(f"Reliability with {view['n_probes']} probes (95% interval)", fontsize=9)
    tidy(fig)
    return fig


def reliability_explorer(cache: PairCache, *, n_probes: int | None = None, aggregation: str = "win-rate",
                         baseline: str = "zero-shot", seed: int = 0, n_boot: int = 200, top: int = 8):
    """Slider for the number of probes, buttons for the aggregation and the baseline.

    Every change re-aggregates the cached matrix (no model call; about a second for the
    notebook's sizes, mostly the bootstrap intervals) and redraws the ranking and the reliability of all three
    aggregations; the summary line above the figure is part of the widget, so it always
    describes the current setting. Returns ``(widget, update)``;
    ``update(n_probes=..., aggregation=..., baseline=...)`` → the :func:`icp_view` of the
    chosen setting, plus ``"others"`` (the view of every aggregation).
    """
    from .theory import explorer, show

    P = len(cache.probe_ids)
    baselines = list(BASELINES) if cache.neutral is not None else ["zero-shot"]
    controls = {
        "n_probes": W.IntSlider(value=int(n_probes or P), min=4, max=P, step=1, description="probes",
                                continuous_update=False),
        "aggregation": W.ToggleButtons(options=list(AGGREGATIONS), value=aggregation, description="aggregation",
                                       style={"button_width": "95px"}),
        "baseline": W.ToggleButtons(options=baselines, value=baseline, description="baseline",
                                    style={"button_width": "190px"}),
    }
    out, status = W.Output(), W.HTML()

    def recompute() -> dict[str, Any]:
        k, base = controls["n_probes"].value, controls["baseline"].value
        others = {a: icp_view(cache, k, a, base, seed=seed, n_boot=n_boot) for a in AGGREGATIONS}
        view = dict(others[controls["aggregation"].value])
        view["others"] = {a: {"reliability": o["reliability"], "lo": o["lo"], "hi": o["hi"]} for a, o in others.items()}
        status.value = _summary_html(view)
        show(out, plot_reliability_view(cache, view, others, top=top))
        return view

    return explorer(controls, recompute,
                    [controls["n_probes"], controls["aggregation"], controls["baseline"], status, out], each_control=True)


# --------------------------------------------------------------------------------------------
# Your own demonstration: its Δ on a few probes, per probe and per answer token
# --------------------------------------------------------------------------------------------
def score_demonstration(model, tokenizer, demo: Example, probes: Sequence[Example], *,
                        template: str = "paper") -> dict[str, Any]:
    """Δ of ``demo`` on every probe and on every answer token (two forward passes per probe,
    :func:`~icp_influence.icp.token_logprobs`).

    Returns ``{"demo", "probe_ids", "delta_per_probe", "tokens", "token_deltas", "mean_delta", "wins"}``
    (nats; ``tokens`` with whitespace made visible).
    """
    from icp_influence.icp import token_logprobs
    from icp_course.plots.tokens import visible_tokens

    views = [token_logprobs(model, tokenizer, p, demo, template=template) for p in probes]
    deltas = np.array([v.total_delta for v in views])
    return {"demo": demo, "probe_ids": [p.id for p in probes], "delta_per_probe": deltas,
            "tokens": [visible_tokens(v.tokens) for v in views], "token_deltas": [v.delta for v in views],
            "mean_delta": float(deltas.mean()), "wins": int((deltas > 0).sum())}


def plot_demonstration_scores(res: dict[str, Any], *, groups: Sequence[str] | None = None):
    """Left: Δ per probe. Right: Δ per answer token (rows = probes, ␣ = space)."""
    import matplotlib.colors as mcolors

    n = len(res["probe_ids"])
    width = max(len(t) for t in res["tokens"])
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 0.55 * n + 2.0), gridspec_kw={"width_ratios": [1, 1.8]})
    ax = axes[0]
    d = res["delta_per_probe"]
    labels = [pid + (f" ({g})" if groups else "") for pid, g in zip(res["probe_ids"], groups or [""] * n)]
    ax.barh(range(n), d, color=["tab:green" if x > 0 else "tab:red" for x in d])
    ax.set_yticks(range(n), labels, fontsize=7)
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel("Δ = ll(p|z) − ll(p) (nats)")
    ax.set_ylabel("probe p")
    ax.set_title(f"your demonstration: mean Δ {res['mean_delta']:+.3f} nats, wins {res['wins']}/{n}", fontsize=9)
    ax = axes[1]
    M = np.full((n, width), np.nan)
    for i, td in enumerate(res["token_deltas"]):
        M[i, : len(td)] = td
    lim = float(np.nanmax(np.abs(M))) if np.isfinite(M).any() else 1.0
    ax.grid(False)  # the course style's grid would cross every cell of an image
    ax.imshow(np.ma.masked_invalid(M), aspect="auto", cmap="RdBu_r",
              norm=mcolors.TwoSlopeNorm(0.0, -(lim or 1.0), lim or 1.0))
    for i, (toks, td) in enumerate(zip(res["tokens"], res["token_deltas"])):
        for j, (t, x) in enumerate(zip(toks, td)):
            ax.text(j, i, f"{t[:8]}\n{x:+.2f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(x) > 0.6 * (lim or 1.0) else "black")
    ax.set_yticks(range(n), res["probe_ids"], fontsize=7)
    ax.set_xticks(range(width), [str(j + 1) for j in range(width)], fontsize=7)
    ax.set_xlabel("answer token position t (token and its Δ_t in nats; ␣ = space)")
    ax.set_ylabel("probe p")
    ax.set_title("Δ per answer token: log p(y_t | z, x, y_<t) − log p(y_t | x, y_<t)", fontsize=9)
    tidy(fig)
    return fig


def own_demo_explorer(model, tokenizer, probes: Sequence[Example], *, template: str = "paper",
                      instruction: str = "Reverse the word.", input: str = "stone", output: str = "enots"):
    """Three text boxes (instruction, input, output) for a demonstration of your own.

    Each edit (Enter, or leaving the box) scores it on ``probes`` with the model — two
    forward passes per probe — and redraws Δ per probe and per answer token. Returns
    ``(widget, update)``; ``update(instruction=..., input=..., output=...)`` →
    :func:`score_demonstration`'s result (or ``{"error": message}`` for an unusable demonstration).
    """
    from icp_influence.errors import ConfigError, IcpError
    from .theory import explorer, show

    probes = list(probes)
    if not probes:
        raise ConfigError("own_demo_explorer needs at least one probe.")
    lay = W.Layout(width="520px")
    controls = {
        "instruction": W.Text(value=instruction, description="instruction", continuous_update=False, layout=lay),
        "input": W.Text(value=input, description="input", continuous_update=False, layout=lay),
        "output": W.Text(value=output, description="output", continuous_update=False, layout=lay),
    }
    out, status = W.Output(), W.HTML()
    groups = [p.task or "" for p in probes]

    def recompute() -> dict[str, Any]:
        vals = {k: c.value for k, c in controls.items()}
        try:
            demo = Example("my-demo", vals["instruction"], vals["input"], vals["output"])
            res = score_demonstration(model, tokenizer, demo, probes, template=template)
        except IcpError as e:  # an unusable demonstration: say why, keep the widget alive
            status.value = f"<b>cannot score this demonstration:</b> {e}"
            with out:
                out.clear_output()
            return {"error": str(e)}
        status.value = (f"<b>your demonstration</b> “{vals['instruction']} | {vals['input']} → {vals['output']}”: "
                        f"mean Δ <b>{res['mean_delta']:+.3f} nats</b> over {len(probes)} probes, "
                        f"wins {res['wins']}/{len(probes)} · Δ per probe: "
                        + ", ".join(f"{pid} {d:+.2f}" for pid, d in zip(res["probe_ids"], res["delta_per_probe"])))
        show(out, plot_demonstration_scores(res, groups=groups))
        return res

    return explorer(controls, recompute, [controls["instruction"], controls["input"], controls["output"], status, out])
