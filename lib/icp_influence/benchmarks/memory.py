"""``memory``: peak memory of inner-product scoring is bounded by the chunk, not by the pool.

:class:`~icp_influence.valuators.InnerProduct` over the query and value projections of every
block of SmolLM2-135M-Instruct, unprojected (13.3 M numbers = 53 MB per gradient), scores
100 and then 400 candidates of the instruction set against 16 probes (chunks of 16
candidates, gradient batches of 8). The probe gradients (16 × 53 MB) are held throughout;
candidate gradients are computed one chunk at a time, scored and dropped — so the peak
should not depend on the pool: goal ``peak_ratio = peak(400) / peak(100) ≤ 1.2``.

Each pool size is measured in a **fresh process** (the model loaded, one warm-up chunk
scored, ``gc.collect()`` and glibc's ``malloc_trim(0)`` called, then the measured
``score``), so the allocator's retained heap from one measurement cannot hide or inflate
the other's. Peak memory = the growth of the process's resident set size above its level
just before ``score`` (:class:`~icp_influence.benchmarks._timing.PeakRSS`, sampled every
5 ms). Also reported: the wall time of each run (``time_ratio`` ≈ 4 when time is linear in
the pool) and the sizes the peak is expected to be made of.
"""
from __future__ import annotations

import ctypes
import gc
import time

from ..registry import benchmark
from ._common import configure_threads

QV = r"regex:^model\.layers\.\d+\.self_attn\.(q_proj|v_proj)\.weight$"


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


def measure_once(n_candidates: int, n_probes: int, *, smoke: bool, chunk_size: int, grad_chunk: int,
                 seed: int = 0) -> dict:
    """One measurement (meant to run in a fresh process): peak RSS growth while scoring."""
    from ..instructions import load_instructions
    from ..valuators import InnerProduct
    from ._timing import PeakRSS, rss_bytes

    env = configure_threads()
    if smoke:
        from ..models import load_model

        model, tok = load_model("tiny-llama", device="cpu")
    else:
        from ._common import load_smollm2

        model, tok = load_smollm2()
    import numpy as np

    pool = list(load_instructions())
    if smoke:  # the byte-level tokenizer of the tiny model makes long sequences: take the shortest examples
        pool = sorted(pool, key=lambda e: len(e.instruction) + len(e.input) + len(e.output))[:n_probes + n_candidates]
    order = np.random.default_rng(seed).permutation(len(pool)).tolist()
    probes = [pool[i] for i in order[:n_probes]]
    cands = [pool[i] for i in order[n_probes:n_probes + n_candidates]]
    v = InnerProduct(model, tok, params=QV, chunk_size=chunk_size, grad_chunk=grad_chunk)
    v.score(cands[:chunk_size], probes)  # warm-up: kernels, thread pools, allocator
    _trim()
    start = rss_bytes()
    t0 = time.perf_counter()
    with PeakRSS() as m:
        sm = v.score(cands, probes, progress=not smoke)
    seconds = time.perf_counter() - t0
    dim = v.objective.dim
    return {"n_candidates": n_candidates, "peak_mb": m.peak_mb, "rss_before_mb": start / 2**20, "seconds": seconds,
            "seconds_per_candidate": seconds / n_candidates, "grad_dim": dim, "shape": list(sm.values.shape),
            "finite": bool(np.isfinite(sm.values).all()), **env}


def _run_in_fresh_process(**kw) -> dict:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as ex:
        return ex.submit(measure_once, **kw).result()


@benchmark("memory", "peak RSS of inner-product scoring (SmolLM2 q/v, unprojected): 100 vs 400 candidates")
def run(*, smoke: bool = False, seed: int = 0) -> dict:
    env = configure_threads()
    if smoke:
        sizes, n_probes, chunk, gchunk, model = (4, 16), 2, 4, 4, "tiny-llama (random, hidden 32, 2 layers)"
    else:
        sizes, n_probes, chunk, gchunk, model = (100, 400), 16, 16, 8, "smollm2-135m-instruct"
    rows = [_run_in_fresh_process(n_candidates=n, n_probes=n_probes, smoke=smoke, chunk_size=chunk,
                                  grad_chunk=gchunk, seed=seed) for n in sizes]
    dim = rows[0]["grad_dim"]
    mb = dim * 4 / 2**20
    ratio = rows[1]["peak_mb"] / rows[0]["peak_mb"]
    return {
        "model": model,
        "params": QV,
        "grad_dim": dim,
        "n_probes": n_probes,
        "chunk_size": chunk,
        "grad_chunk": gchunk,
        "rows": [{k: r[k] for k in ("n_candidates", "peak_mb", "rss_before_mb", "seconds", "seconds_per_candidate")}
                 for r in rows],
        "peak_mb": {str(r["n_candidates"]): r["peak_mb"] for r in rows},
        "peak_ratio": ratio,
        "time_ratio": rows[1]["seconds"] / rows[0]["seconds"],
        "pool_ratio": sizes[1] / sizes[0],
        "expected_mb": {"one_gradient": mb, "probe_gradients": n_probes * mb, "one_chunk_of_gradients": chunk * mb,
                        "if_the_pool_were_held": sizes[1] * mb},
        "memory_method": "RSS growth above the level before score(), sampled every 5 ms (/proc/self/statm); "
                         "each pool size in a fresh process after a warm-up chunk, gc and malloc_trim",
        **{k: rows[0][k] for k in ("threads", "cpu_count")},
        "load_avg_1min": env["load_avg_1min"],
        "goal": "peak_ratio <= 1.2",
        "goal_met": bool(ratio <= 1.2),
    }
