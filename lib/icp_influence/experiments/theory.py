"""Theory experiments (notebooks 01 and 02): ``lsa-gd`` and ``icp-vs-influence-linear``."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..registry import experiment
from ..utils import torch_threads


def single_thread():
    """Tiny tensors: one torch thread is faster (and much faster on a busy machine)."""
    return torch_threads(1)


def lsa_gd_sizes(smoke: bool) -> dict[str, int]:
    return {"steps": 600 if smoke else 5000, "batch_size": 512 if smoke else 1024,
            "eval_tasks": 2000 if smoke else 10_000, "construction_tasks": 1000}


@experiment("lsa-gd", "a linear self-attention layer trained on in-context regression vs one step of gradient descent")
def lsa_gd(*, smoke: bool = False, seed: int = 0) -> dict[str, Any]:
    from ..theory import compare_with_gd, construction_max_abs_diff, optimal_gd_lr, sample_tasks, train_lsa

    d, n_points = 10, 10
    sz = lsa_gd_sizes(smoke)
    with single_thread():
        gd_lr = optimal_gd_lr(sample_tasks(sz["eval_tasks"], n_points, d, seed=seed + 101))  # line search: own tasks
        constr = construction_max_abs_diff(sz["construction_tasks"], d, n_points, lr=gd_lr, seed=seed + 202)
        model, hist = train_lsa(d, n_points, steps=sz["steps"], batch_size=sz["batch_size"], seed=seed)
        ev = compare_with_gd(model, sample_tasks(sz["eval_tasks"], n_points, d, seed=seed + 303), gd_lr)
    return {
        "gd_lr": gd_lr, **ev,
        "lsa_over_gd_loss": ev["lsa_loss"] / ev["gd_loss"] - 1.0,
        "construction_max_abs_diff": constr,
        "steps": sz["steps"], "eval_tasks": sz["eval_tasks"], "batch_size": sz["batch_size"],
        "construction_tasks": sz["construction_tasks"], "d": d, "n_points": n_points,
        "final_train_loss": hist.loss[-1],
    }


#: Out-of-domain demonstrations for the headline number: shift of 2 input std, label noise
#: of 2 std(y), or the opposite task (‖w' − w‖ = 2‖w‖).
OOD_DISTANCE = 2.0


def icp_sizes(smoke: bool) -> dict[str, int]:
    return {
        "lin_tasks": 4 if smoke else 20, "lin_candidates": 50 if smoke else 100, "lin_probes": 25 if smoke else 50,
        "lsa_steps": 600 if smoke else 5000, "lsa_batch": 512 if smoke else 1024,
        "tf_tasks": 6 if smoke else 20, "tf_candidates": 40 if smoke else 60, "tf_probes": 20 if smoke else 30,
        "n_boot": 200 if smoke else 1000,
    }


def linear_pools(*, n_tasks: int, n_candidates: int, n_probes: int, d: int = 10, seed: int = 0) -> list[Any]:
    """The ``n_tasks`` in-domain pools (von Oswald inputs) that :func:`linear_icp_scores` scores."""
    from ..theory import sample_pool

    return [sample_pool(n_candidates, n_probes, d, seed=seed * 100_003 + t) for t in range(n_tasks)]


def linear_icp_scores(predict: Any, *, n_tasks: int, n_candidates: int, n_probes: int, d: int = 10,
                      step: float | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """ICP / inner product / Newton-preconditioned inner product (key ``influence``) (/ second-order)
    matrices over the pools of :func:`linear_pools`, rows of all tasks stacked: ``[n_tasks·M, K]``."""
    from ..theory import icp_vs_gradients

    parts = [icp_vs_gradients(predict, pool, step=step)
             for pool in linear_pools(n_tasks=n_tasks, n_candidates=n_candidates, n_probes=n_probes, d=d, seed=seed)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def gap_vs_step(eta: float, factors: Any = (1.0, 0.3, 0.1, 0.03, 0.01), *, n_tasks: int, n_candidates: int,
                n_probes: int, d: int = 10, n_points: int = 10, seed: int = 0) -> dict[str, Any]:
    """How the first-order gap closes as the implicit step ``s = η/N`` shrinks (notebook 02, §2).

    For each factor ``f`` the constructed LSA with learning rate ``f·η`` (step ``s = f·η/N``) is
    scored on the pools of :func:`linear_pools`. Returns ``steps`` ``[F]``, ``one_minus_pearson``
    (``1 − Pearson(ICP, IP)``), ``relative_gap`` (``mean|ICP − s·IP| / mean|s·IP|``) and the fitted
    exponents ``slope_pearson`` and ``slope_relative`` (:func:`~icp_influence.stats.loglog_slope`,
    OLS on log–log axes with a t-interval). With ``ICP = s·IP − ½s²Q`` exactly, the relative gap is
    proportional to ``s`` (slope 1) and ``1 − Pearson``, quadratic in that relative size, to ``s²``
    (slope 2 as ``s → 0``).
    """
    from ..stats import loglog_slope, pearson
    from ..theory import construct_gd_lsa

    steps, one_minus, rel = [], [], []
    for f in factors:
        s = float(f) * eta / n_points
        r = linear_icp_scores(construct_gd_lsa(d, float(f) * eta, n_points).predict, n_tasks=n_tasks,
                              n_candidates=n_candidates, n_probes=n_probes, d=d, seed=seed)
        steps.append(s)
        one_minus.append(1.0 - pearson(r["icp"], r["inner_product"]))
        first = s * r["inner_product"]
        rel.append(float(np.abs(r["icp"] - first).mean() / np.abs(first).mean()))
    steps_a, om, rl = np.asarray(steps), np.asarray(one_minus), np.asarray(rel)
    return {"steps": steps_a, "one_minus_pearson": om, "relative_gap": rl,
            "slope_pearson": loglog_slope(steps_a, om), "slope_relative": loglog_slope(steps_a, rl)}


@experiment("icp-vs-influence-linear",
            "ICP vs gradient inner product in the constructed LSA, a trained LSA and a small softmax transformer")
def icp_vs_influence_linear(*, smoke: bool = False, seed: int = 0) -> dict[str, Any]:
    from ..stats import bootstrap_ci, pearson, spearman
    from ..theory import construct_gd_lsa, optimal_gd_lr, sample_tasks, train_lsa
    from ..theory_transformer import DOMAIN_KINDS, domain_agreement, get_regression_transformer

    sz = icp_sizes(smoke)
    d, n_points = 10, 10
    nb = sz["n_boot"]
    out: dict[str, Any] = {}
    with single_thread():
        # 1. the constructed LSA (exactly one GD step)
        eta = optimal_gd_lr(sample_tasks(10_000, n_points, d, seed=seed + 101))
        lsa = construct_gd_lsa(d, eta, n_points)
        lin = dict(n_tasks=sz["lin_tasks"], n_candidates=sz["lin_candidates"], n_probes=sz["lin_probes"], d=d, seed=seed)
        c = linear_icp_scores(lsa.predict, step=eta / n_points, **lin)
        out["constructed_pearson"] = pearson(c["icp"], c["inner_product"])
        out["constructed_pearson_ci"] = list(bootstrap_ci(c["icp"], c["inner_product"], "pearson", n_boot=nb, seed=seed))
        out["constructed_spearman"] = spearman(c["icp"], c["inner_product"])
        out["constructed_influence_pearson"] = pearson(c["icp"], c["influence"])
        out["constructed_influence_spearman"] = spearman(c["icp"], c["influence"])
        out["constructed_second_order_pearson"] = pearson(c["icp"], c["taylor2"])
        out["constructed_second_order_max_abs_diff"] = float(np.abs(c["icp"] - c["taylor2"]).max())
        out["constructed_second_order_rel_size"] = float(np.abs(c["second_order"]).mean() / np.abs(c["icp"]).mean())
        out["gd_lr"] = eta
        # 2. a trained LSA
        model, _ = train_lsa(d, n_points, steps=sz["lsa_steps"], batch_size=sz["lsa_batch"], seed=seed)
        t = linear_icp_scores(model.predict, **lin)
        out["trained_lsa_spearman"] = spearman(t["icp"], t["inner_product"])
        out["trained_lsa_spearman_ci"] = list(bootstrap_ci(t["icp"], t["inner_product"], "spearman", n_boot=nb, seed=seed))
        out["trained_lsa_pearson"] = pearson(t["icp"], t["inner_product"])
        # 3. the softmax transformer, in-domain vs out-of-domain demonstrations
        tf, source = get_regression_transformer(smoke=smoke, seed=seed)
        res = domain_agreement(tf.predict, kinds=DOMAIN_KINDS, distances=(OOD_DISTANCE,), n_tasks=sz["tf_tasks"],
                               n_candidates=sz["tf_candidates"], n_probes=sz["tf_probes"], d=tf.cfg.d, seed=seed)
        ind = res[("in_domain", 0.0)]
        ood_keys = [k for k in res if k[0] != "in_domain"]
        ood = {m: np.concatenate([res[k][m] for k in ood_keys]) for m in ("icp", "inner_product")}
        out["transformer_in_domain_spearman"] = spearman(ind["icp"], ind["inner_product"])
        out["transformer_in_domain_spearman_ci"] = list(bootstrap_ci(ind["icp"], ind["inner_product"], "spearman", n_boot=nb, seed=seed))
        out["transformer_out_of_domain_spearman"] = spearman(ood["icp"], ood["inner_product"])
        out["transformer_out_of_domain_spearman_ci"] = list(bootstrap_ci(ood["icp"], ood["inner_product"], "spearman", n_boot=nb, seed=seed))
        out["transformer_in_minus_out_spearman"] = out["transformer_in_domain_spearman"] - out["transformer_out_of_domain_spearman"]
        out["transformer_by_kind_spearman"] = {k[0]: spearman(res[k]["icp"], res[k]["inner_product"]) for k in res}
        out["transformer_ood_distance"] = OOD_DISTANCE
        out["transformer_source"] = source
        out["transformer_d"] = tf.cfg.d
    out["sizes"] = sz
    return out
