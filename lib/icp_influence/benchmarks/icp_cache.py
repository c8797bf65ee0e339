"""``icp-cache``: naive per-pair ICP vs the KV-cached, batched scorer (SmolLM2).

Naive = :func:`~icp_influence.icp.naive_loglik_matrix` with ``batch_size=1``: one full
forward pass per (candidate, probe) sequence. Cached = :func:`~icp_influence.icp.loglik_matrix`:
each demonstration prefix runs once, its KV cache is shared by a batch of probe suffixes,
and logits are computed only where answer tokens are scored. Full size: 8 candidates × 16
probes (the per-candidate ratio does not depend on the number of candidates; 16 × 16
does not fit the 15-minute ``make bench`` budget on a 2-core CPU). Also reported: the naive
path with batching (``batch_size`` sequences per forward) to separate the two effects.
Goal: ``speedup ≥ 5`` with ``max_abs_diff ≤ 1e-4`` nats.
"""
from __future__ import annotations

import numpy as np

from ..registry import benchmark
from ._common import configure_threads, load_smollm2, synthetic_split
from ._timing import median_time


@benchmark("icp-cache", "naive per-pair ICP vs the KV-cached batched scorer (SmolLM2, 8 x 16)")
def run(*, smoke: bool = False, seed: int = 0) -> dict:
    from ..icp import loglik_matrix, naive_loglik_matrix

    env = configure_threads()
    n_c, n_p, repeats, bs = (2, 4, 2, 8) if smoke else (8, 16, 3, 16)
    model, tok = load_smollm2()
    cands, probes = synthetic_split(n_c, n_p, seed=seed)
    warm_c = cands[:2]

    def naive():
        return naive_loglik_matrix(model, tok, cands, probes, batch_size=1)

    def naive_batched():
        return naive_loglik_matrix(model, tok, cands, probes, batch_size=bs)

    def cached():
        return loglik_matrix(model, tok, cands, probes, batch_size=bs)

    # warm-up on a slice (allocator, kernels), then timed repetitions of the full 16 x 16
    naive_loglik_matrix(model, tok, warm_c, probes, batch_size=1)
    t_cached = median_time(cached, repeats=repeats, warmup=1)
    t_naive = median_time(naive, repeats=repeats, warmup=0)
    t_nb = median_time(naive_batched, repeats=repeats, warmup=1)
    ll_n, ll_c = t_naive.result, t_cached.result
    diff = max(float(np.max(np.abs(ll_n.ll - ll_c.ll))), float(np.max(np.abs(ll_n.baseline - ll_c.baseline))))
    diff_b = float(np.max(np.abs(t_nb.result.ll - ll_c.ll)))
    return {
        "model": "smollm2-135m-instruct",
        "n_candidates": n_c,
        "n_probes": n_p,
        "batch_size": bs,
        "repeats": repeats,
        "naive_s": t_naive.median,
        "cached_s": t_cached.median,
        "speedup": t_naive.median / t_cached.median,
        "max_abs_diff": diff,
        "naive_batched_s": t_nb.median,
        "speedup_vs_naive_batched": t_nb.median / t_cached.median,
        "max_abs_diff_batched": diff_b,
        "samples": {"naive": t_naive.samples, "cached": t_cached.samples, "naive_batched": t_nb.samples},
        **env,
        "goal": "speedup >= 5 and max_abs_diff <= 1e-4",
        "goal_met": bool(t_naive.median / t_cached.median >= 5 and diff <= 1e-4),
    }
