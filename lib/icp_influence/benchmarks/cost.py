"""``cost``: seconds per candidate for ICP, inner-product influence and EK-FAC vs the number of probes.

Per-candidate cost with the probe-side work done once and excluded (it is paid once per
probe set, not per candidate): ICP's zero-shot baselines; the probe gradients of
inner-product influence (candidate gradients are computed fresh each repetition — a new
gradient cache); EK-FAC's factor fitting (on a fixed training set) is done once and reported
separately as ``ekfac_fit_s``; ``ekfac_s`` is kronfluence's pairwise scoring time / C
(which still includes its per-call preconditioning of the probe gradients). The warm-up
call runs once, at the first probe count (the code paths are the same for the others).
Same seeded GPT-NeoX model for all three ("paper" parameter set), probes 1, 10, 100.
"""
from __future__ import annotations

import time

from ..registry import benchmark
from ._common import bench_lm, configure_threads, synthetic_split
from ._timing import median_time


def crossover(rows: list[dict], a: str, b: str) -> float | None:
    """Number of probes where ``a`` becomes as expensive as ``b`` (log-log interpolation), or None."""
    import numpy as np

    xs = [r["n_probes"] for r in rows]
    d = [np.log(r[a]) - np.log(r[b]) for r in rows]
    for i in range(len(rows) - 1):
        if d[i] == 0:
            return float(xs[i])
        if d[i] * d[i + 1] < 0:
            lx0, lx1 = np.log(xs[i]), np.log(xs[i + 1])
            return float(np.exp(lx0 + (lx1 - lx0) * (-d[i]) / (d[i + 1] - d[i])))
    return None


@benchmark("cost", "seconds per candidate: ICP vs inner product vs EK-FAC, 1 / 10 / 100 probes")
def run(*, smoke: bool = False, seed: int = 0) -> dict:
    from ..encoding import encode_example
    from ..gradients import lm_objective
    from ..icp import IcpScorer
    from ..influence import EkfacFactors
    from ..valuators import InnerProduct

    env = configure_threads()
    if smoke:
        hidden, layers, n_c, probe_counts, repeats, n_train = 64, 2, 4, (1, 10, 100), 1, 8
    else:
        hidden, layers, n_c, probe_counts, repeats, n_train = 128, 4, 4, (1, 10, 100), 3, 32
    model, tok = bench_lm(hidden, layers, seed=seed)
    pool, probes_all = synthetic_split(n_c + n_train, max(probe_counts), seed=seed)
    cands, train = pool[:n_c], pool[n_c:]
    obj = lm_objective(model, tok, params="paper")

    def enc(xs):
        return [encode_example(tok, e, template="paper") for e in xs]

    rows = []
    t0 = time.perf_counter()
    ekt = EkfacFactors(obj, enc(train), damping=1e-3, batch_size=8, seed=seed)
    ekfac_fit_s = time.perf_counter() - t0
    if True:
        for n_p in probe_counts:
            probes = probes_all[:n_p]
            scorer = IcpScorer(model, tok, probes, template="paper", batch_size=16)
            _ = scorer.baseline
            t_icp = median_time(lambda: scorer.loglik(cands), repeats=repeats, warmup=1 if n_p == probe_counts[0] else 0)

            ipv = InnerProduct(model, tok, params="paper", grad_chunk=8)
            ipv._prepare(list(probes))  # the probe side once; each repetition times the candidates only
            t_ip = median_time(lambda: ipv._score_rows(list(cands)), repeats=repeats,
                               warmup=1 if n_p == probe_counts[0] else 0)

            pe, ce = enc(probes), enc(cands)
            t_ek = median_time(lambda: ekt.scores(ce, pe), repeats=repeats, warmup=1 if n_p == probe_counts[0] else 0)
            rows.append({"n_probes": n_p,
                         "icp_s": t_icp.median / n_c,
                         "inner_product_s": t_ip.median / n_c,
                         "ekfac_s": t_ek.median / n_c,
                         "samples": {"icp": t_icp.samples, "inner_product": t_ip.samples, "ekfac": t_ek.samples}})
    cheapest = {str(r["n_probes"]): min(("icp", "inner_product", "ekfac"), key=lambda k: r[f"{k}_s"]) for r in rows}
    return {
        "model": f"gpt-neox hidden={hidden} layers={layers} (random, seed {seed})",
        "params": "paper",
        "n_candidates": n_c,
        "n_train_for_ekfac": n_train,
        "ekfac_fit_s": ekfac_fit_s,
        "repeats": repeats,
        "rows": rows,
        "cheapest": cheapest,
        "icp_equals_inner_product_at_probes": crossover(rows, "icp_s", "inner_product_s"),
        "icp_equals_ekfac_at_probes": crossover(rows, "icp_s", "ekfac_s"),
        **env,
    }
