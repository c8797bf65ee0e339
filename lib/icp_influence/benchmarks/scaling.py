"""``scaling``: wall time and peak memory against pool size (doubling 4 times).

ICP (KV-cached scorer, baseline included) and projected inner-product influence
(``projection_dim`` = 256, probe and candidate gradients computed from scratch with a
fresh gradient cache) on the same seeded GPT-NeoX, pool sizes ``n0 · 2^i`` for
``i = 0..4``. The exponents are least-squares slopes of log time against log pool size
(1 = linear). Peak memory = the growth of the process RSS above its level at the start
of each measurement (sampled every 5 ms; see :class:`~icp_influence.benchmarks._timing.PeakRSS`).
"""
from __future__ import annotations

import tempfile

from ..registry import benchmark
from ._common import bench_lm, configure_threads, synthetic_split
from ._timing import PeakRSS, loglog_slope, median_time


@benchmark("scaling", "wall time and peak memory vs pool size (x16) for ICP and projected inner product")
def run(*, smoke: bool = False, seed: int = 0) -> dict:
    from ..icp import loglik_matrix
    from ..valuators import InnerProduct

    env = configure_threads()
    hidden, layers, n0, n_p, k, repeats = (64, 2, 2, 4, 64, 1) if smoke else (64, 2, 8, 8, 128, 2)
    sizes = [n0 * 2**i for i in range(5)]
    model, tok = bench_lm(hidden, layers, seed=seed)
    pool, probes = synthetic_split(sizes[-1], n_p, seed=seed)

    def icp(n):
        return loglik_matrix(model, tok, pool[:n], probes, batch_size=16)

    def ip(n):
        return InnerProduct(model, tok, params="paper", projection_dim=k, grad_chunk=8, chunk_size=8).score(pool[:n], probes)

    icp(sizes[0]), ip(sizes[0])  # warm-up
    rows = []
    for n in sizes:
        with PeakRSS() as m_icp:
            t_icp = median_time(lambda: icp(n), repeats=repeats, warmup=0)
        with PeakRSS() as m_ip:
            t_ip = median_time(lambda: ip(n), repeats=repeats, warmup=0)
        rows.append({"pool_size": n, "icp_s": t_icp.median, "ip_s": t_ip.median,
                     "icp_peak_mb": m_icp.peak_mb, "ip_peak_mb": m_ip.peak_mb})
    xs = [r["pool_size"] for r in rows]
    return {
        "model": f"gpt-neox hidden={hidden} layers={layers} (random, seed {seed})",
        "n_probes": n_p,
        "projection_dim": k,
        "repeats": repeats,
        "rows": rows,
        "icp_exponent": loglog_slope(xs, [r["icp_s"] for r in rows]),
        "ip_exponent": loglog_slope(xs, [r["ip_s"] for r in rows]),
        "peak_mb": {"icp": max(r["icp_peak_mb"] for r in rows), "ip": max(r["ip_peak_mb"] for r in rows)},
        "memory_method": "RSS growth above the start of each measurement, sampled every 5 ms (/proc/self/statm)",
        **env,
    }
