"""``influence-vs-loo``: influence functions against leave-one-out retraining (notebook 03)."""
from __future__ import annotations

import time

import numpy as np

from ..registry import experiment


@experiment("influence-vs-loo", "exact IF, LiSSA, CG, EK-FAC and inner product vs leave-one-out retraining (L2 logistic regression)")
def influence_vs_loo(*, smoke: bool = False, seed: int = 0) -> dict:
    from ..loo_models import compare_methods, lab_scores, logreg_lab, mlp_lab
    from ..stats import pearson, spearman

    n = 40 if smoke else 150
    t0 = time.perf_counter()
    lab = logreg_lab(n, 5, n_probes=3 if smoke else 8, l2=0.01, seed=seed)
    scores = compare_methods(lab, seed=seed)
    out = {
        "n_train": lab.n,
        "n_probes": len(lab.Xp),
        "l2": lab.l2,
        "pearson_exact": pearson(scores["exact"], lab.loo),
        "pearson_lissa": pearson(scores["lissa"], lab.loo),
        "pearson_cg": pearson(scores["cg"], lab.loo),
        "pearson_ekfac": pearson(scores["ekfac"], lab.loo),
        "pearson_inner_product": pearson(scores["inner_product"], lab.loo),
        "spearman_inner_product": spearman(scores["inner_product"], lab.loo),
        "spearman_exact": spearman(scores["exact"], lab.loo),
        "lissa_rel_err_vs_exact": float(np.abs(scores["lissa"] - scores["exact"]).max() / np.abs(scores["exact"]).max()),
        "cg_rel_err_vs_exact": float(np.abs(scores["cg"] - scores["exact"]).max() / np.abs(scores["exact"]).max()),
        "logreg_s": round(time.perf_counter() - t0, 2),
    }
    if not smoke:
        ml = mlp_lab(seed=seed)
        ex = lab_scores(ml.obj, ml.train, ml.train, ml.probes, "exact", damping=0.1)
        ek = lab_scores(ml.obj, ml.train, ml.train, ml.probes, "ekfac", damping=0.1, batch_size=64, seed=seed)
        out["mlp_ekfac_vs_exact_spearman"] = spearman(ek, ex)
        out["mlp_ekfac_vs_exact_pearson"] = pearson(ek, ex)
    return out
