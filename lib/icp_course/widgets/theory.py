"""Explorers for notebooks 01 and 02. Each factory returns ``(widget, update)``;
``update(**values)`` sets the controls, recomputes once and returns the numbers shown
(tests drive it without a browser)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import ipywidgets as W
import matplotlib.pyplot as plt
import torch
from IPython.display import display


def _driver(controls: Mapping[str, Any], recompute: Callable[[], dict]) -> tuple[Callable[..., dict], dict]:
    state: dict = {"hold": False, "last": {}}

    def on_change(_: Any = None) -> None:
        if not state["hold"]:
            state["last"] = recompute()

    for c in controls.values():
        c.observe(on_change, names="value")

    def update(**values: Any) -> dict:
        unknown = set(values) - set(controls)
        if unknown:
            from icp_influence.errors import ConfigError

            raise ConfigError(f"Unknown control(s) {sorted(unknown)}; known: {sorted(controls)}.")
        state["hold"] = True
        try:
            for k, v in values.items():
                controls[k].value = v
        finally:
            state["hold"] = False
        state["last"] = recompute()
        return state["last"]

    return update, state


def explorer(controls: Mapping[str, Any], recompute: Callable[[], dict], children: list, *,
             each_control: bool = False) -> tuple[Any, Callable[..., dict]]:
    """The ``(widget, update)`` of an explorer: ``recompute`` runs once now and on every
    change; ``children`` are laid out in a column. ``each_control``: the browser check moves
    every control of this explorer, not only the first."""
    update, state = _driver(controls, recompute)
    state["last"] = recompute()
    box = W.VBox(children)
    box.add_class("icp-explorer")
    if each_control:
        box.add_class("icp-explorer-each-control")
    return box, update


def show(out: Any, fig: Any) -> None:
    """Replace what the output area ``out`` shows by the figure ``fig`` (and free it)."""
    with out:
        out.clear_output(wait=True)
        display(fig)
        plt.close(fig)


def gd_vs_lsa_explorer(trained: Any = None, *, n_tasks: int = 400, seed: int = 0, lr: float = 6.0):
    """Sliders for the learning rate η, context length N, dimension d and label noise.

    For fresh tasks it plots ``ŷ`` of the constructed LSA (built for the slider's η) and of
    the ``trained`` LSA (fixed weights; only when ``d`` matches) against one GD step with η.
    Returns ``(widget, update)``; ``update(lr=..., n_points=..., d=..., noise=...)`` → numbers.
    """
    from icp_influence.theory import construct_gd_lsa, gd_predict, half_mse, sample_tasks

    controls = {
        "lr": W.FloatSlider(value=lr, min=0.5, max=20.0, step=0.5, description="η", continuous_update=False),
        "n_points": W.IntSlider(value=10, min=1, max=40, description="N", continuous_update=False),
        "d": W.IntSlider(value=10, min=1, max=20, description="d", continuous_update=False),
        "noise": W.FloatSlider(value=0.0, min=0.0, max=1.0, step=0.05, description="label noise σ",
                               continuous_update=False, style={"description_width": "initial"}),
    }
    out, status = W.Output(), W.HTML()

    def recompute() -> dict:
        v = {k: c.value for k, c in controls.items()}
        t = sample_tasks(n_tasks, v["n_points"], v["d"], noise=v["noise"], seed=seed)
        with torch.no_grad():
            y_gd = gd_predict(t.xs, t.ys, t.xq, v["lr"])
            y_con = construct_gd_lsa(v["d"], v["lr"], v["n_points"]).predict(t.xs, t.ys, t.xq)
            y_tr = trained.predict(t.xs, t.ys, t.xq) if trained is not None and trained.d == v["d"] else None
        res = {**v, "gd_loss": half_mse(y_gd, t.yq), "constructed_max_abs_diff": float((y_con - y_gd).abs().max())}
        if y_tr is not None:
            res.update(trained_loss=half_mse(y_tr, t.yq), trained_mean_abs_diff=float((y_tr - y_gd).abs().mean()))
        status.value = (f"GD loss {res['gd_loss']:.4f} · constructed LSA: max|Δŷ| = {res['constructed_max_abs_diff']:.1e}"
                        + (f" · trained LSA loss {res['trained_loss']:.4f}, mean|Δŷ| = {res['trained_mean_abs_diff']:.4f}"
                           if y_tr is not None else " · trained LSA: only for its own d"))
        with out:
            out.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(5, 4))
            ax.scatter(y_gd, y_con, s=8, alpha=0.6, label="constructed LSA")
            if y_tr is not None:
                ax.scatter(y_gd, y_tr, s=8, alpha=0.5, label="trained LSA")
            lim = float(y_gd.abs().max()) * 1.1 or 1.0
            ax.plot([-lim, lim], [-lim, lim], color="grey", ls="--", lw=0.8)
            ax.set_xlabel("ŷ of one GD step with η (units of y)")
            ax.set_ylabel("ŷ of the LSA (units of y)")
            ax.legend(fontsize=8)
            display(fig)
            plt.close(fig)
        return res

    return explorer(controls, recompute,
                    [W.HBox([controls["lr"], controls["n_points"]]), W.HBox([controls["d"], controls["noise"]]), status, out])


def icp_scatter_explorer(models: Mapping[str, tuple[Any, int, str]], *, n_tasks: int = 4, n_candidates: int = 40,
                         n_probes: int = 20, seed: int = 0):
    """Model, out-of-domain kind and shift → the ICP-vs-inner-product scatter and correlations.

    ``models[name] = (predict, d, x_dist)``. Returns ``(widget, update)``;
    ``update(model=..., kind=..., distance=...)`` → ``{"pearson", "spearman", ...}``.
    """
    from icp_course.plots.theory import plot_icp_scatter
    from icp_influence.stats import pearson, spearman
    from icp_influence.theory_transformer import DOMAIN_KINDS, domain_agreement

    names = list(models)
    controls = {
        "model": W.Dropdown(options=names, value=names[0], description="model"),
        "kind": W.Dropdown(options=list(DOMAIN_KINDS), value="in_domain", description="demos"),
        "distance": W.FloatSlider(value=1.0, min=0.0, max=2.0, step=0.25, description="shift", continuous_update=False),
    }
    out, status = W.Output(), W.HTML()

    def recompute() -> dict:
        v = {k: c.value for k, c in controls.items()}
        predict, d, x_dist = models[v["model"]]
        res = domain_agreement(predict, kinds=(v["kind"],), distances=(float(v["distance"]),), n_tasks=n_tasks,
                               n_candidates=n_candidates, n_probes=n_probes, d=d, x_dist=x_dist, seed=seed)
        r = next(iter(res.values()))
        num = {**v, "pearson": pearson(r["icp"], r["inner_product"]), "spearman": spearman(r["icp"], r["inner_product"])}
        status.value = f"Pearson {num['pearson']:.4f} · Spearman {num['spearman']:.4f} ({r['icp'].size} pairs)"
        show(out, plot_icp_scatter(r["inner_product"], r["icp"], title=f"{v['model']} · {v['kind']} · shift {v['distance']}"))
        return num

    return explorer(controls, recompute,
                    [W.HBox([controls["model"], controls["kind"], controls["distance"]]), status, out])
