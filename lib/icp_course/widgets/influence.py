"""Notebook 03: what damping and projection dimension do to influence estimates."""
from __future__ import annotations

import numpy as np


def damping_projection_explorer(lab, *, seed: int = 0):
    """Sliders for damping λ (log10) and projection dimension k on a logistic-regression lab.

    Each change recomputes (1) the exact influence with damping λ and its Pearson r with the
    leave-one-out ground truth, and (2) the inner product of gradients randomly projected to
    k dimensions and its Spearman ρ with the unprojected inner product. Returns
    ``(widget, update)``; ``update(log10_damping=..., k=...)`` returns the numbers.
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt
    import torch

    from icp_influence.gradients import Projector
    from icp_influence.gradient_scores import inner_product_scores
    from icp_influence.stats import pearson, spearman
    from icp_course.plots.influence import scatter_vs_loo

    G = lab.obj.per_example_grads(lab.train, out_dtype=torch.float64)
    Gp = lab.obj.per_example_grads(lab.probes, out_dtype=torch.float64)
    H = lab.obj.hessian(lab.train)
    ip_full = inner_product_scores(G, Gp)
    damp = W.FloatSlider(value=float(np.log10(lab.l2)), min=-4, max=1, step=0.25, description="log10 λ",
                         continuous_update=False)
    kdim = W.IntSlider(value=4, min=1, max=256, step=1, description="k (proj.)", continuous_update=False)
    status = W.HTML()
    out = W.Output()
    state: dict = {}

    def _recompute(*_) -> dict:
        from icp_influence.ihvp import ihvp_exact

        lam = 10 ** damp.value
        S = ihvp_exact(H, Gp, lam)
        exact = inner_product_scores(G, S)
        proj = Projector(lab.obj.sizes, int(kdim.value), seed=seed)
        ip_proj = inner_product_scores(proj.project(G), proj.project(Gp))
        res = {"damping": lam, "k": int(kdim.value), "pearson_exact_vs_loo": pearson(exact, lab.loo),
               "spearman_projected_vs_full": spearman(ip_proj, ip_full),
               "pearson_projected_vs_loo": pearson(ip_proj, lab.loo)}
        state["last"] = res
        status.value = (f"λ = {lam:.3g} (training used {lab.l2:g}): exact IF vs LOO Pearson r = "
                        f"<b>{res['pearson_exact_vs_loo']:.3f}</b> &nbsp;|&nbsp; k = {res['k']} of D = {lab.obj.dim}: "
                        f"projected vs full inner product Spearman ρ = <b>{res['spearman_projected_vs_full']:.3f}</b>")
        with out:
            out.clear_output(wait=True)
            a, b = f"exact, λ={lam:.2g}", f"projected inner product, k={res['k']}"
            fig = scatter_vs_loo(lab.loo, {a: exact, b: ip_proj}, ncols=2,
                                 kinds={a: "exact", b: "projected_inner_product"})
            from IPython.display import display

            display(fig)
            plt.close(fig)
        return res

    def update(log10_damping: float | None = None, k: int | None = None) -> dict:
        changed = False
        if log10_damping is not None and log10_damping != damp.value:
            damp.value = log10_damping
            changed = True
        if k is not None and k != kdim.value:
            kdim.value = k
            changed = True
        return state["last"] if changed else _recompute()

    damp.observe(_recompute, names="value")
    kdim.observe(_recompute, names="value")
    _recompute()
    box = W.VBox([W.HBox([damp, kdim]), status, out])
    box.add_class("icp-explorer")
    return box, update
