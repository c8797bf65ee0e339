"""``cost``: seconds per candidate of each valuator at 1, 8, 64 and 100 probes, the crossover,
and the extrapolation to the paper's setup.

SmolLM2-135M-Instruct on the instruction set (realistic lengths; probes, candidates and
EK-FAC's training examples are disjoint seeded draws). Valuators, through their public API
(``fit`` / ``score``), on the query and value projections of every block where they take
parameters:

* ``icp`` — :class:`~icp_influence.valuators.Icp` (KV-cached scorer; its zero-shot
  baselines are the probe side);
* ``inner_product`` — :class:`~icp_influence.valuators.InnerProduct`, unprojected (13.3 M
  numbers per gradient), with a gradient cache (``cache_dir``): the first call computes the
  probe gradients, later calls read them, as a long run does;
* ``ekfac`` — :class:`~icp_influence.valuators.EkfacInfluence` (kronfluence), factors fitted
  once (``ekfac_fit_s``, reported separately);
* ``one_step`` — :class:`~icp_influence.valuators.OneStep` (SGD step on the candidate, every
  probe's loss re-evaluated).

**Per-candidate cost** = ``(T(2n) − T(n)) / n`` with ``T(m)`` the wall time of ``score()`` on
``m`` candidates (one call each, one chunk): the difference removes everything paid once per
call (the probe side: baselines, probe gradients, kronfluence's probe preconditioning).
``probe_side_s`` = ``T(n) − n × per-candidate``. kronfluence redoes its probe side for every
chunk of candidates, so ``ekfac_effective_s`` adds ``probe_side / chunk_size`` (what a long
run pays per candidate). Few candidates (1–2 for the forward-heavy ICP and one-step, 2–4 for
the gradient valuators); single timings, so expect noise of a few percent (``load_avg_1min``
says how busy the machine was). The default run takes about 20 minutes on two cores, not
ten: at 64 and 100 probes ICP and the one-step ground truth each need two probe sides and
three candidates — 5 × 164 probe-sequence forwards (≈ 20 TFLOP) between them — to separate
the per-candidate cost from the probe side. Use ``ICP_THREADS=1`` on a busy machine.

**Crossover**: the number of probes where ICP's per-candidate cost reaches the inner
product's — log-log interpolation between measured probe counts, and from straight-line fits
of both (``icp = a₀ + a·P``, ``ip = b + c·P`` → ``P* = (b − a₀)/(a − c)``).

**FLOP-model check**: :class:`~icp_influence.cost.CostModel` with SmolLM2's sizes and token
counts measured on the probes predicts each valuator's FLOPs per candidate; divided by the
measured seconds and by the dense matmul rate measured in this run, that is each valuator's
efficiency on this machine.

**Extrapolation** to the paper (52,002 candidates × 100 probes, Pythia-1b-deduped) on one GPU:
the same FLOP model with Pythia-1b's sizes, the token counts measured here, and the
assumptions listed under ``extrapolation.assumptions``; next to it, this machine's measured
seconds × 52,002 for SmolLM2 (``this_machine_hours``).
"""
from __future__ import annotations

import tempfile
import time
from typing import Any, Callable

import numpy as np

from ..registry import benchmark
from ._common import configure_threads
from ._timing import matmul_gflops

QV = r"regex:^model\.layers\.\d+\.self_attn\.(q_proj|v_proj)\.weight$"
PROBE_COUNTS = (1, 8, 64, 100)
VALUATORS = ("icp", "inner_product", "ekfac", "one_step")


def crossover(rows: list[dict], a: str, b: str) -> float | None:
    """Number of probes where ``a`` becomes as expensive as ``b`` (log-log interpolation), or None."""
    xs = [r["n_probes"] for r in rows]
    if any(r[a] is None or r[b] is None or r[a] <= 0 or r[b] <= 0 for r in rows):
        return None
    d = [np.log(r[a]) - np.log(r[b]) for r in rows]
    for i in range(len(rows) - 1):
        if d[i] == 0:
            return float(xs[i])
        if d[i] * d[i + 1] < 0:
            lx0, lx1 = np.log(xs[i]), np.log(xs[i + 1])
            return float(np.exp(lx0 + (lx1 - lx0) * (-d[i]) / (d[i + 1] - d[i])))
    return None


def linear_fit(rows: list[dict], key: str) -> tuple[float, float]:
    """``(intercept, slope)`` of ``key`` against the number of probes (least squares)."""
    x = np.array([r["n_probes"] for r in rows], dtype=float)
    y = np.array([r[key] for r in rows], dtype=float)
    slope, intercept = np.polyfit(x, y, 1)
    return float(intercept), float(slope)


def marginal_cost(score: Callable[[list], Any], small: list, large: list) -> dict[str, Any]:
    """Per-candidate and once-per-call seconds from ``score(small)`` and ``score(large)``."""
    t0 = time.perf_counter()
    score(small)
    t_small = time.perf_counter() - t0
    t0 = time.perf_counter()
    score(large)
    t_large = time.perf_counter() - t0
    per = (t_large - t_small) / (len(large) - len(small))
    out = {"per_candidate_s": per, "probe_side_s": t_small - len(small) * per, "t_small_s": t_small,
           "t_large_s": t_large, "n_small": len(small), "n_large": len(large)}
    if per <= 0:  # the larger call was not slower: timing noise (a busy machine) exceeded the marginal cost
        out.update(per_candidate_s=None, probe_side_s=None,
                   error=f"not measurable: {len(large)} candidates took {t_large:.3g} s, {len(small)} took {t_small:.3g} s "
                         "(timing noise larger than the cost of the extra candidates; rerun on a quieter machine)")
    return out


@benchmark("cost", "seconds per candidate: ICP, inner product, EK-FAC, one-step at 1/8/64/100 probes (SmolLM2)")
def run(*, smoke: bool = False, seed: int = 0) -> dict:
    from ..cost import GPU_PEAK_TFLOPS, PAPER, PYTHIA_1B, CostModel, extrapolate, crossover_probes, mean_tokens
    from ..instructions import load_instructions
    from ..valuators import EkfacInfluence, Icp, InnerProduct, OneStep

    env = configure_threads()
    pool = list(load_instructions())
    if smoke:
        from ..models import load_model

        model, tok = load_model("tiny-llama", device="cpu")
        name, probe_counts, n_train = "tiny-llama (random, hidden 32, 2 layers)", (1, 2), 4
        pool = sorted(pool, key=lambda e: len(e.instruction) + len(e.input) + len(e.output))[:40]
        mm_n = 512
    else:
        from ._common import load_smollm2

        model, tok = load_smollm2()
        name, probe_counts, n_train, mm_n = "smollm2-135m-instruct", PROBE_COUNTS, 32, 2048
    order = np.random.default_rng(seed).permutation(len(pool)).tolist()
    P_max = max(probe_counts)
    probes_all = [pool[i] for i in order[:P_max]]
    train = [pool[i] for i in order[P_max:P_max + n_train]]
    cands = [pool[i] for i in order[P_max + n_train:P_max + n_train + 16]]
    n_fwd, n_grad = 1, 2  # n for the forward-heavy valuators (ICP, one-step) and the gradient ones
    chunk = 16
    mm = matmul_gflops(mm_n, repeats=3, warmup=1)

    icp = Icp(model, tok, chunk_size=chunk, batch_size=16)
    ip_kw = dict(params=QV, chunk_size=chunk, grad_chunk=8)
    one = OneStep(model, tok, params=QV, lr=1e-4, chunk_size=chunk)
    ek = EkfacInfluence(model, tok, params=QV, damping=1e-3, hessian_examples=None, chunk_size=chunk,
                        batch_size=8)
    t0 = time.perf_counter()
    ek.fit(train)
    ekfac_fit_s = time.perf_counter() - t0
    for v in (icp, InnerProduct(model, tok, **ip_kw), ek, one):  # warm-up: kernels, allocator, thread pools
        v.score(cands[:1], probes_all[:1])

    rows = []
    steps = [(P, v) for P in probe_counts for v in VALUATORS]
    bar = None
    if not smoke:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(steps), desc="cost", unit="step")
    def inner_product(probes):
        with tempfile.TemporaryDirectory(prefix="icp-cost-") as tmp:
            ipv = InnerProduct(model, tok, cache_dir=tmp, **ip_kw)
            t0 = time.perf_counter()
            ipv.score(cands[10:10 + n_grad], probes)  # computes and caches the probe gradients
            t_fill = time.perf_counter() - t0
            d = marginal_cost(lambda c: ipv.score(c, probes), cands[:n_grad], cands[2:2 + 2 * n_grad])
            if d["per_candidate_s"] is not None:
                d["probe_side_s"] = t_fill - n_grad * d["per_candidate_s"]  # computing the probe gradients
                d["probe_gradients_read_s"] = d["t_small_s"] - n_grad * d["per_candidate_s"]
            return d

    measure = {
        "icp": lambda probes: marginal_cost(lambda c: icp.score(c, probes), cands[:n_fwd], cands[:2 * n_fwd]),
        "inner_product": inner_product,
        "ekfac": lambda probes: marginal_cost(lambda c: ek.score(c, probes), cands[:n_grad], cands[:2 * n_grad]),
        "one_step": lambda probes: marginal_cost(lambda c: one.score(c, probes), cands[:n_fwd], cands[:2 * n_fwd]),
    }
    for P in probe_counts:
        probes = probes_all[:P]
        row: dict[str, Any] = {"n_probes": P}
        details: dict[str, Any] = {}
        for k in VALUATORS:
            try:
                details[k] = measure[k](probes)
            except Exception as e:  # noqa: BLE001 - one failing valuator (e.g. out of memory) must not lose the rest
                details[k] = {"per_candidate_s": None, "probe_side_s": None, "error": f"{type(e).__name__}: {e}"}
            if bar is not None:
                bar.update()
        for k in VALUATORS:
            row[f"{k}_s"] = details[k]["per_candidate_s"]
        ek_d = details["ekfac"]
        row["ekfac_effective_s"] = (ek_d["per_candidate_s"] + max(ek_d["probe_side_s"], 0) / chunk
                                    if ek_d["per_candidate_s"] is not None else None)
        row["probe_side_s"] = {k: details[k]["probe_side_s"] for k in VALUATORS}
        row["details"] = details
        rows.append(row)
    if bar is not None:
        bar.close()

    cheapest = {str(r["n_probes"]): min((k for k in VALUATORS if r[f"{k}_s"] is not None), key=lambda k: r[f"{k}_s"],
                                        default=None) for r in rows}
    ok = [r for r in rows if r["icp_s"] is not None and r["inner_product_s"] is not None]
    a0, a = linear_fit(ok, "icp_s") if len(ok) >= 2 else (float("nan"), float("nan"))
    b, c = linear_fit(ok, "inner_product_s") if len(ok) >= 2 else (float("nan"), float("nan"))
    p_star = crossover_probes(a, b, c, icp_fixed_s=a0) if len(ok) >= 2 else float("nan")
    p_star = p_star if np.isfinite(p_star) and p_star > 0 else None

    # the FLOP model against the measurements (SmolLM2's sizes, token counts of these probes)
    tokens = mean_tokens(tok, probes_all, template="paper")
    from ..gradients import lm_objective

    qv_dim = lm_objective(model, tok, params=QV).dim
    emb = model.get_input_embeddings().weight
    n_nonembed = sum(p.numel() for p in model.parameters()) - emb.numel()
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != emb.data_ptr():
        n_nonembed -= head.weight.numel()
    here = CostModel(n_nonembed=int(n_nonembed), hidden=int(emb.shape[1]), vocab=int(emb.shape[0]), grad_dim=qv_dim,
                     **tokens)
    predicted = {"icp": here.icp_cached_flops, "inner_product": here.ip_flops, "ekfac": here.ekfac_flops,
                 "one_step": here.one_step_flops}
    check = []
    for r in rows:
        entry: dict[str, Any] = {"n_probes": r["n_probes"]}
        for k in VALUATORS:
            f = predicted[k](r["n_probes"])
            entry[f"{k}_predicted_gflop"] = f / 1e9
            s = r[f"{k}_s"]
            entry[f"{k}_efficiency"] = (f / s / 1e9 / mm["gflops"]) if s is not None and s > 0 else None
        check.append(entry)

    # extrapolation to the paper's setup
    assumptions = {
        "model": PAPER["model"], "n_nonembed": PYTHIA_1B["n_nonembed"], "hidden": PYTHIA_1B["hidden"],
        "vocab": PYTHIA_1B["vocab"], "tokens": {k: round(v, 1) for k, v in tokens.items()},
        "tokens_from": "the instruction set with the SmolLM2 tokenizer (a BPE like Pythia's), template 'paper'",
        "gpu": "one NVIDIA RTX A6000 (the authors' GPU), fp32", "peak_tflops": GPU_PEAK_TFLOPS["A6000 fp32"],
        "efficiency": 0.4, "efficiency_means": "fraction of peak reached by every valuator (same for all; "
                                              "grad-throughput measures it for gradients on this CPU)",
        "gradient_parameters": "the authors' set: every linear layer of every block (D = N)",
        "projection": "countsketch, k = 8192 (100 unprojected Pythia-1b probe gradients would be 322 GB)",
        "probe_side": "computed once for the pool (baselines, probe gradients); kronfluence's per-chunk "
                      "re-preconditioning not included",
        "attention_flops": "ignored (contexts of a few hundred tokens)",
    }
    cm = CostModel(**tokens, projection_dim=8192, projection="countsketch")
    est = extrapolate(PAPER["n_candidates"], PAPER["n_probes"], model=cm, peak_tflops=assumptions["peak_tflops"],
                      efficiency=assumptions["efficiency"])
    big = next((r for r in rows if r["n_probes"] == P_max), rows[-1])
    this_machine = {k: (PAPER["n_candidates"] * big[f"{k}_s"] + big["probe_side_s"][k]) / 3600
                    for k in VALUATORS if big[f"{k}_s"] is not None}
    extrap = {"assumptions": assumptions, "gpu_hours": {k: est[f"{k}_gpu_hours"] for k in
                                                        ("icp_cached", "icp_naive", "ip", "ekfac", "one_step")},
              "flops": {k: est[f"{k}_flops"] for k in ("icp_cached", "icp_naive", "ip", "ekfac", "one_step")},
              "authors_ip_a6000_hours": est["authors_ip_a6000_hours"],
              "this_machine_hours": this_machine,
              "this_machine_note": f"{name} on this CPU, {P_max} probes, per-candidate seconds measured here × "
                                   f"{PAPER['n_candidates']:,} + the probe side once"}
    return {
        "model": name,
        "params": QV,
        "data": "instruction set (seeded, disjoint probes / candidates / EK-FAC training examples)",
        "probe_counts": list(probe_counts),
        "n_candidates_timed": {"icp": [n_fwd, 2 * n_fwd], "inner_product": [n_grad, 2 * n_grad],
                               "ekfac": [n_grad, 2 * n_grad], "one_step": [n_fwd, 2 * n_fwd]},
        "chunk_size": chunk,
        "n_train_for_ekfac": n_train,
        "ekfac_fit_s": ekfac_fit_s,
        "rows": rows,
        "cheapest": cheapest,
        "icp_equals_inner_product_at_probes": crossover(rows, "icp_s", "inner_product_s"),
        "icp_equals_inner_product_linear_fit": {"icp_fixed_s": a0, "icp_per_probe_s": a, "ip_fixed_s": b,
                                                "ip_per_probe_s": c, "crossover_probes": p_star},
        "icp_equals_ekfac_at_probes": crossover(rows, "icp_s", "ekfac_s"),
        "matmul_gflops": mm["gflops"],
        "flop_model_check": check,
        "extrapolation": extrap,
        **env,
    }
