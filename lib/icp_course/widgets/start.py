"""Notebook 00: pick a demonstration and a probe, see each answer token's log-probability move."""
from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt

from icp_influence.lm import token_logprob_comparison
from icp_course.plots.start import plot_token_logprobs


def token_explorer(model, tokenizer, pool, *, template: str = "paper"):
    """Dropdowns for demonstration and probe; the figure and the ICP delta recompute.

    Returns ``(widget, update)``; ``update(demo_id=..., probe_id=...)`` recomputes and
    returns the comparison dict (tests call it without a browser).
    """
    options = [(f"{ex.id}: {ex.input or ex.instruction} → {ex.output}", ex.id) for ex in pool]
    demo_dd = W.Dropdown(options=options, value=pool[0].id, description="demo z", layout=W.Layout(width="95%"))
    probe_dd = W.Dropdown(options=options, value=pool[min(1, len(pool) - 1)].id, description="probe p",
                          layout=W.Layout(width="95%"))
    out = W.Output()
    status = W.HTML()

    def update(demo_id: str | None = None, probe_id: str | None = None) -> dict:
        if demo_id is not None:
            demo_dd.value = demo_id  # triggers the observer, which recomputes
            if probe_id is None:
                return state["last"]
        if probe_id is not None:
            probe_dd.value = probe_id
            return state["last"]
        return _recompute()

    state: dict = {}

    def _recompute(*_) -> dict:
        comp = token_logprob_comparison(model, tokenizer, pool.by_id(probe_dd.value), pool.by_id(demo_dd.value),
                                        template=template)
        state["last"] = comp
        status.value = (f"<b>ICP delta</b> = {comp['delta']:+.3f} nats → the demonstration "
                        f"{'helps' if comp['delta'] > 0 else 'does not help'} this probe")
        with out:
            out.clear_output(wait=True)
            fig = plot_token_logprobs(comp)
            plt.show(fig)
        return comp

    demo_dd.observe(_recompute, names="value")
    probe_dd.observe(_recompute, names="value")
    _recompute()
    box = W.VBox([demo_dd, probe_dd, status, out])
    box.add_class("icp-explorer")  # the browser test finds explorers by this class
    return box, update
