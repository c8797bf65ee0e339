"""Explorer for notebook 04: how one demonstration changes each answer token's log-probability.

``token_explorer(...)`` returns ``(widget, update)``; ``update(candidate=..., probe=...)``
sets the dropdowns, recomputes (two forward passes) and returns the numbers shown.
"""
from __future__ import annotations

from typing import Any, Sequence

import ipywidgets as W
import matplotlib.pyplot as plt
from IPython.display import display

from icp_influence.data import Example


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
    from .theory import _driver

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

    update, state = _driver(controls, recompute)
    state["last"] = recompute()
    box = W.VBox([W.HBox([controls["candidate"], controls["probe"]]), text, status, out])
    box.add_class("icp-explorer")
    return box, update
