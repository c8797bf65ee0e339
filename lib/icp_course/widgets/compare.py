"""Explorers for notebooks 05 (do the rankings agree?) and 06 (fine-tuning on selected data)."""
from __future__ import annotations

from typing import Any, Mapping



def agreement_explorer(valuators: Mapping[str, Any], *, noisy_ids=None, default_a: str | None = None,
                       default_b: str | None = None, default_k: int | None = None):
    """Pick two valuators and a budget k: rank scatter, top-k overlap and Spearman recomputed.

    ``valuators``: ``name -> ScoreMatrix`` or ``name -> (ScoreMatrix, aggregate)``.
    Returns a ``VBox`` with ``.update(a=..., b=..., k=...)`` (returns the numbers shown)
    and ``.last`` (the latest numbers).
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    from icp_influence import compare as C
    from icp_course.plots.compare import rank_scatter

    names = list(valuators)
    n = len(C.as_series(valuators[names[0]])[0])
    dd_a = W.Dropdown(options=names, value=default_a or names[0], description="valuator A")
    dd_b = W.Dropdown(options=names, value=default_b or names[min(1, len(names) - 1)], description="valuator B")
    k_sl = W.IntSlider(value=default_k or max(1, n // 10), min=1, max=n, description="budget k",
                       continuous_update=False)
    text = W.HTML()
    out = W.Output()
    box = W.VBox([W.HBox([dd_a, dd_b, k_sl]), text, out])
    box.add_class("icp-explorer")
    box.last = {}

    def update(a: str | None = None, b: str | None = None, k: int | None = None) -> dict[str, float]:
        if a is not None:
            dd_a.value = a
        if b is not None:
            dd_b.value = b
        if k is not None:
            k_sl.value = int(k)
        va, vb, kk = valuators[dd_a.value], valuators[dd_b.value], int(k_sl.value)
        ag = C.agreement(va, vb, n_boot=200)
        ov = C.overlap_curve(va, vb, [kk])
        res = {"spearman": ag.spearman, "spearman_lo": ag.ci[0], "spearman_hi": ag.ci[1],
               "kendall": ag.kendall, "k": kk, "overlap": ov["overlap"][0], "overlap_frac": ov["overlap_frac"][0],
               "jaccard": ov["jaccard"][0], "random_frac": ov["random"][0]}
        text.value = (f"<b>{dd_a.value}</b> vs <b>{dd_b.value}</b>: Spearman {ag.spearman:.3f} "
                      f"[{ag.ci[0]:.3f}, {ag.ci[1]:.3f}], Kendall {ag.kendall:.3f}; "
                      f"top-{kk} overlap {res['overlap']} ({res['overlap_frac']:.2f}; random {res['random_frac']:.2f}), "
                      f"Jaccard {res['jaccard']:.2f}")
        with out:
            out.clear_output(wait=True)
            fig = rank_scatter(va, vb, name_a=dd_a.value, name_b=dd_b.value, highlight=noisy_ids)
            plt.show()
            plt.close(fig)
        box.last = res
        return res

    for w in (dd_a, dd_b, k_sl):
        w.observe(lambda _change: update(), names="value")
    box.update = update
    update()
    return box


def arms_explorer(outcomes: Mapping[int, Mapping[str, Any]], *, default_arms=None):
    """Pick arms and a budget among precomputed outcomes (``budget -> Outcome dict``).

    Shows the arms' mean ± 95% CI and each arm's gain over the base model. Returns a
    ``VBox`` with ``.update(arms=[...], budget=...)`` returning ``{arm: (mean, lo, hi)}``.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    from icp_course.plots.compare import arms_plot

    budgets = sorted(int(b) for b in outcomes)
    all_arms = list(next(iter(outcomes.values()))["arms"])
    sel = W.SelectMultiple(options=all_arms, value=tuple(default_arms or all_arms), description="arms", rows=6)
    bud = W.Dropdown(options=budgets, value=budgets[-1], description="budget")
    view = W.Dropdown(options=["absolute", "gain over base"], value="absolute", description="show")
    text = W.HTML()
    out = W.Output()
    # the view dropdown comes first: it always has a choice, even with a single budget
    box = W.VBox([W.HBox([view, sel, bud]), text, out])
    box.add_class("icp-explorer")
    box.last = {}

    def update(arms=None, budget: int | None = None, show: str | None = None) -> dict[str, tuple]:
        if show is not None:
            view.value = show
        if budget is not None:
            bud.value = int(budget)
        if arms is not None:
            sel.value = tuple(arms)
        o = outcomes[bud.value] if bud.value in outcomes else outcomes[str(bud.value)]
        chosen = [a for a in sel.value if a in o["arms"]]
        sub = {**o, "arms": {a: o["arms"][a] for a in chosen}}
        gain = view.value == "gain over base"
        shift = o["base"] if gain else 0.0  # gain view: every value (mean, interval, seeds) relative to the base model
        res = {a: (v["mean"] - shift, *((c - shift for c in v["ci"]) if v.get("ci") else (None, None)))
               for a, v in sub["arms"].items()}
        rows = "".join(f"<tr><td>{a}</td><td>{m:.3f}</td><td>{m + shift - o['base']:+.3f}</td></tr>"
                       for a, (m, *_r) in res.items())
        text.value = (f"<table><tr><th>arm</th><th>{view.value}</th><th>vs base ({o['base']:.3f})</th></tr>{rows}</table>")
        with out:
            out.clear_output(wait=True)
            if chosen:
                fig = arms_plot(sub, metric_label=o.get("metric_label"), gain=gain)
                plt.show()
                plt.close(fig)
        box.last = res
        return res

    sel.observe(lambda _c: update(), names="value")
    bud.observe(lambda _c: update(), names="value")
    view.observe(lambda _c: update(), names="value")
    box.update = update
    update()
    return box
