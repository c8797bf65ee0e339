"""The measurement explorer of notebook 05: change what the course says matters — the number
of probes, the ICP aggregate, the baseline, the gradient valuator — and see the reliability
of both scores and their agreement recomputed from the cached per-pair matrices.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

AGGREGATIONS = {"mean Δ": "icp_mean_delta", "win-rate": "icp_win_rate", "per-token Δ": "icp_per_token"}
BASELINES = ("zero-shot", "neutral demonstration")


def _icp_view(mats: Mapping[str, Any], aggregation: str, baseline: str) -> tuple[np.ndarray, str]:
    icp = mats["icp"]
    D = icp.values
    if baseline == "neutral demonstration":
        if "icp_neutral" not in mats:
            from icp_influence.errors import ConfigError

            raise ConfigError("These results have no neutral-demonstration row (icp_neutral).")
        D = D - mats["icp_neutral"].values[0][None, :]
    if aggregation == "per-token Δ":
        from icp_influence.icp import per_token

        return per_token(D, icp.meta["n_answer_tokens"]), "mean"
    return D, "win_rate" if aggregation == "win-rate" else "mean"


def measure(mats: Mapping[str, Any], *, n_probes: int, aggregation: str = "mean Δ", baseline: str = "zero-shot",
            gradient: str = "ip", seed: int = 0, n_boot: int = 200) -> dict[str, Any]:
    """Reliability of the ICP score and of ``gradient`` on a seeded subset of ``n_probes``
    probes, and their agreement (two-way CI, attenuation-corrected)."""
    from icp_influence import stats as S

    X, how = _icp_view(mats, aggregation, baseline)
    G = mats[gradient].aligned(mats["icp"]).values
    P = X.shape[1]
    n_probes = int(min(max(4, n_probes), P))
    cols = np.sort(np.random.default_rng(seed).choice(P, size=n_probes, replace=False))
    Xs, Gs = X[:, cols], G[:, cols]
    ag = S.agreement(Xs, Gs, how, "mean", n_boot=n_boot, seed=seed, boot_splits=4, n_splits=50)
    return {"n_probes": n_probes, "aggregation": aggregation, "baseline": baseline, "gradient": gradient,
            "rel_icp": ag.rel_a, "rel_gradient": ag.rel_b, "spearman": ag.spearman, "ci": list(ag.ci),
            "disattenuated": ag.disattenuated, "scores": (S.aggregate(Xs, how), Gs.mean(axis=1))}


def measurement_explorer(mats: Mapping[str, Any], *, noisy: np.ndarray | None = None, n_boot: int = 200,
                         gradients: tuple[str, ...] = ("ip", "cosine", "ekfac", "psl", "ip_last2", "ip_linear")):
    """Sliders and menus over :func:`measure`; the summary line and the scatter update together.

    Returns a ``VBox`` with ``.update(**changes)`` (returns the numbers it shows).
    """
    import ipywidgets as W
    import matplotlib.pyplot as plt

    from icp_course.plots.agreement import rank_joint
    from icp_course.style import label
    from icp_course.tables import fmt, fmt_ci

    P = mats["icp"].shape[1]
    grads = [g for g in gradients if g in mats]
    probes = W.IntSlider(value=P, min=4, max=P, step=4, description="probes", continuous_update=False)
    agg = W.Dropdown(options=list(AGGREGATIONS), value="mean Δ", description="ICP score")
    base = W.Dropdown(options=[b for b in BASELINES if b == "zero-shot" or "icp_neutral" in mats], value="zero-shot",
                      description="baseline")
    grad = W.Dropdown(options=[(label(g), g) for g in grads], value=grads[0], description="vs")
    seed = W.IntSlider(value=0, min=0, max=9, description="probe draw", continuous_update=False)
    text = W.HTML()
    out = W.Output()
    box = W.VBox([W.HBox([probes, seed]), W.HBox([agg, base, grad]), text, out])
    box.add_class("icp-explorer")

    def update(**changes: Any) -> dict[str, Any]:
        for name, w in (("n_probes", probes), ("aggregation", agg), ("baseline", base), ("gradient", grad),
                        ("seed", seed)):
            if name in changes:
                w.value = changes[name]
        r = measure(mats, n_probes=probes.value, aggregation=agg.value, baseline=base.value, gradient=grad.value,
                    seed=seed.value, n_boot=n_boot)
        text.value = (f"<b>{r['n_probes']} probes</b>: reliability of ICP {r['aggregation']} = {fmt(r['rel_icp'])}, "
                      f"of {label(r['gradient'])} = {fmt(r['rel_gradient'])}; Spearman = "
                      f"{fmt_ci(r['spearman'], r['ci'])}, corrected for attenuation = {fmt(r['disattenuated'])}")
        with out:
            out.clear_output(wait=True)
            fig = rank_joint(r["scores"][0], r["scores"][1], name_a=f"ICP {r['aggregation']}",
                             name_b=label(r["gradient"]), highlight=noisy)
            plt.show()
            plt.close(fig)
        return {k: v for k, v in r.items() if k != "scores"}

    for w in (probes, agg, base, grad, seed):
        w.observe(lambda _change: update(), names="value")
    box.update = update  # type: ignore[attr-defined]
    update()
    return box
