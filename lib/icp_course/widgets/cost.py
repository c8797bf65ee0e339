"""Notebook 07: sliders for pool size, probes, GPU throughput and efficiency → GPU-hours."""
from __future__ import annotations

import ipywidgets as W
import matplotlib.pyplot as plt
from IPython.display import display

from icp_influence.cost import GPU_PEAK_TFLOPS, CostModel, extrapolate
from icp_course.plots.cost import plot_extrapolation


def cost_explorer(model: CostModel | None = None, *, efficiency: float = 0.5, n_candidates: int = 52_002,
                  n_probes: int = 100, peak_tflops: float = GPU_PEAK_TFLOPS["A6000 fp32"]):
    """Recompute the extrapolated cost of each valuator as the sliders move.

    Returns ``(widget, update)``; ``update(n_candidates=..., n_probes=..., peak_tflops=...,
    efficiency=..., projection_dim=..., projection=...)`` sets the sliders, recomputes and
    returns the estimate dict (tests call it without a browser).
    """
    m = model or CostModel()
    pool = W.IntSlider(value=n_candidates, min=1_000, max=200_000, step=1_000, description="pool size",
                       continuous_update=False, style={"description_width": "120px"})
    probes = W.IntSlider(value=n_probes, min=1, max=1_000, step=1, description="probes",
                         continuous_update=False, style={"description_width": "120px"})
    tflops = W.FloatLogSlider(value=peak_tflops, base=10, min=0, max=3.2, step=0.05, description="GPU TFLOP/s",
                              continuous_update=False, style={"description_width": "120px"})
    eff = W.FloatSlider(value=efficiency, min=0.05, max=1.0, step=0.05, description="efficiency",
                        continuous_update=False, style={"description_width": "120px"})
    proj = W.IntSlider(value=m.projection_dim or 0, min=0, max=16_384, step=512, description="projection k (0=off)",
                       continuous_update=False, style={"description_width": "120px"})
    kind = W.Dropdown(options=["gaussian", "countsketch"], value=m.projection if m.projection != "rademacher"
                      else "gaussian", description="projection kind", style={"description_width": "120px"})
    text = W.HTML()
    out = W.Output()
    state: dict = {}

    def _recompute(*_) -> dict:
        m.projection_dim = int(proj.value) or None
        m.projection = str(kind.value)
        est = extrapolate(int(pool.value), int(probes.value), model=m, peak_tflops=float(tflops.value),
                          efficiency=float(eff.value))
        state["last"] = est
        text.value = (f"<b>ICP (cached)</b> {est['icp_cached_gpu_hours']:.1f} h · "
                      f"<b>ICP (naive)</b> {est['icp_naive_gpu_hours']:.1f} h · "
                      f"<b>inner product (ours)</b> {est['ip_gpu_hours']:.2f} h · "
                      f"<b>EK-FAC</b> {est['ekfac_gpu_hours']:.2f} h · "
                      f"<b>one-step</b> {est['one_step_gpu_hours']:.1f} h · "
                      f"<b>authors' IP</b> {est['authors_ip_a6000_hours']:.0f} A6000-h")
        with out:
            out.clear_output(wait=True)
            fig = plot_extrapolation(est)
            display(fig)
            plt.close(fig)
        return est

    def update(*, n_candidates=None, n_probes=None, peak_tflops=None, efficiency=None, projection_dim=None,
               projection=None) -> dict:
        for w, v in ((pool, n_candidates), (probes, n_probes), (tflops, peak_tflops), (eff, efficiency),
                     (proj, projection_dim), (kind, projection)):
            if v is not None:
                w.unobserve(_recompute, names="value")
                w.value = v
                w.observe(_recompute, names="value")
        return _recompute()

    for w in (pool, probes, tflops, eff, proj, kind):
        w.observe(_recompute, names="value")
    _recompute()
    box = W.VBox([W.HTML("<b>Extrapolated cost</b> (FLOP model of <code>icp_influence.cost</code>)"),
                  pool, probes, tflops, eff, proj, kind, text, out])
    box.add_class("icp-explorer")
    return box, update

