"""``grad-throughput``: per-example gradients against this machine's dense matmul rate.

Per-example gradients of the answer loss (:meth:`~icp_influence.gradients.Objective.per_example_grads`,
its default path — ``"hooks"``: one batched forward/backward per length bucket of at most
``chunk_size`` examples (:func:`~icp_influence.gradients.length_batches`, little padding),
per-example weight gradients ``Σ_t δ_t a_tᵀ`` from module hooks, the LM head evaluated at answer
positions only) on a seeded sample of the instruction set (realistic lengths), with SmolLM2-135M-Instruct
and a realistic parameter selection: the query and value projections of every block
(``regex:^model\\.layers\\.\\d+\\.self_attn\\.(q_proj|v_proj)\\.weight$``, 13.3 M numbers per example).

**FLOPs** are counted from the shapes run (:func:`~icp_influence.cost.gradient_flop_count`),
padding excluded: per real token ``2·in·out`` for every linear layer in the forward, the same
again for the input gradients of every layer downstream of the first selected parameter (all
but block 0's q/k/v here), ``2·in·out`` per selected weight for the per-example weight gradients;
the LM head ``2·d·V`` forward and ``2·d·V`` backward at each answer position; causal attention
scores ``4·d_attn`` per (query, key) pair and block forward, twice that backward. That is about
``4·N·T + 2·N_sel·T`` (``N`` = 106 M non-embedding parameters, ``N_sel`` = 13.3 M) rather than
the ``6·N·T`` of a full training step (reported as ``flops_6N`` for reference): no weight
gradient of an unselected layer is computed. The count's matrix-product part is checked
against ``torch.utils.flop_counter.FlopCounterMode`` in the tests.

**Efficiency** = achieved GFLOP/s / the dense fp32 matmul GFLOP/s of this machine, measured in
the same run with the same threads (``torch.matmul`` of two ``n × n`` matrices, ``n = 2048``,
before and after the gradients; the median of all samples). Goal: ``efficiency ≥ 0.4``.

Also reported: the ``vmap(grad)`` path on the first chunk (``vmap_seconds_per_example``,
``speedup_vs_vmap``, ``max_rel_diff_vs_vmap``), a chunk-size sweep, and the cost of projecting one
example's gradient to ``k = 8192`` with a Gaussian matrix (``2·D·k`` FLOPs plus generating
``D·k`` normal numbers, shared by a chunk of 8; ``generation_share`` of the time, and the bound
``2·D·k`` / matmul rate that no chunk size beats) and with CountSketch (``O(D)``), for this
selection and for the "paper" selection (every linear layer of every block, 106 M numbers):
both are linear in ``D``, so they are timed on a slice of the coordinates and scaled. Run it
with ``ICP_THREADS=1`` on a shared CPU: with two OpenMP threads on two busy cores the
element-wise operators stall several-fold.

Per dtype (``by_dtype``): where the processor has native bf16 matrix units (``cpu_bf16``), the
same gradients are computed again in ``bfloat16`` (:mod:`icp_influence.precision`: forward and
backward matrix products under bf16 autocast, the LM head and log-softmax in float32, the
per-example weight-gradient sums in float32, gradients stored in float32), with the dense bf16
matmul rate measured in the same run: each dtype's ``efficiency`` against its own matmul rate,
``speedup_vs_fp32`` and, for the inner products of the first half of the examples (candidates)
with the second half (probes), ``max_abs_diff`` and ``candidate_spearman`` against float32
(``bf16_agreement`` holds the rest; ``grad_max_rel_diff``: the largest relative difference of one
example's gradient). ``dtype_chosen``: what ``"auto"`` chooses for ``inner_product`` here, and why.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from ..registry import benchmark
from ._common import configure_threads, load_smollm2
from ._timing import matmul_gflops, median_time

QV = r"regex:^model\.layers\.\d+\.self_attn\.(q_proj|v_proj)\.weight$"


def instruction_sample(n: int, seed: int = 0, *, shortest: int | None = None) -> list:
    """``n`` examples of the instruction set, drawn without replacement (seeded); from the
    ``shortest`` ones only when given (smoke runs of byte-level tiny models)."""
    from ..instructions import load_instructions

    pool = list(load_instructions())
    if shortest is not None:
        pool = sorted(pool, key=lambda e: len(e.instruction) + len(e.input) + len(e.output))[:shortest]
    rng = np.random.default_rng(seed)
    return [pool[i] for i in sorted(rng.choice(len(pool), size=min(n, len(pool)), replace=False).tolist())]


def padded_lengths(lengths, chunk_size: int) -> list[int]:
    """Tokens run per example by :meth:`~icp_influence.gradients.Objective.per_example_grads`:
    each example padded to the longest of its length bucket (:func:`~icp_influence.gradients.length_batches`)."""
    from ..gradients import length_batches

    out = []
    for b in length_batches(lengths, chunk_size):
        out += [max(lengths[i] for i in b)] * len(b)
    return out


def projection_cost(sizes, k: int, kind: str, *, batch: int = 8, max_coords: int, seed: int = 0,
                    repeats: int = 2) -> dict:
    """Seconds per example to project gradients over tensors of ``sizes`` to ``k`` dimensions.

    Timed on the leading tensors up to ``max_coords`` coordinates (a chunk of ``batch``
    random rows), then scaled by ``D / coordinates timed`` (both kinds cost linearly in ``D``).
    """
    import torch

    from ..gradients import Projector

    part_sizes, total = [], 0
    for s in sizes:
        if total >= max_coords:
            break
        take = min(s, max_coords - total)
        part_sizes.append(take)
        total += take
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randn(batch, s, generator=g) for s in part_sizes]
    proj = Projector(part_sizes, k, seed=seed, kind=kind)
    t = median_time(lambda: proj.project_parts(parts), repeats=repeats, warmup=1)
    D = int(sum(sizes))
    per_example = t.median / batch * D / total
    out = {"kind": kind, "k": k, "D": D, "coords_timed": total, "batch": batch, "chunk_s": t.median,
           "seconds_per_example": per_example, "ns_per_coordinate": per_example / D * 1e9}
    # what the time is made of: generating P (or the buckets) on the fly, shared by the chunk's rows
    if kind == "countsketch":
        def generate():
            for i, s in enumerate(part_sizes):
                for j, r0 in enumerate(range(0, s, proj.block_rows)):
                    proj._buckets(i, j, min(proj.block_rows, s - r0), "cpu")
    else:
        def generate():
            for i, s in enumerate(part_sizes):
                for j, r0 in enumerate(range(0, s, proj.block_rows)):
                    proj._block(i, j, min(proj.block_rows, s - r0), "cpu", torch.float32)
    g_t = median_time(generate, repeats=repeats, warmup=0)
    out["generation_share"] = min(1.0, g_t.median / t.median)
    return out


@benchmark("grad-throughput", "per-example gradients (SmolLM2, q/v of every block): achieved GFLOP/s vs dense matmul")
def run(*, smoke: bool = False, seed: int = 0) -> dict:
    import torch

    from ..cost import gradient_flop_count
    from ..gradients import encode_examples, lm_objective, select_parameters
    from ..precision import choose_dtype, hardware_bf16, processor_kind

    env = configure_threads()
    if smoke:
        from ..models import load_model

        model, tok = load_model("tiny-llama", device="cpu")
        name, n, chunk, sweep, repeats, mm_n, n_vmap = "tiny-llama (random, hidden 32, 2 layers)", 8, 4, (8,), 1, 512, 2
        proj_k, proj_coords = 256, 1 << 10
    else:
        model, tok = load_smollm2()
        name, n, chunk, sweep, repeats, mm_n, n_vmap = "smollm2-135m-instruct", 32, 8, (4, 16), 1, 2048, 4
        proj_k, proj_coords = 8192, 1 << 17
    examples = instruction_sample(n, seed=seed, shortest=4 * n if smoke else None)
    encs = encode_examples(tok, examples, template="paper")
    obj = lm_objective(model, tok, params=QV)
    method = obj.grad_methods[0]
    lengths = [len(e) for e in encs]
    answers = [len(e.answer_ids) for e in encs]

    shortest = sorted(range(n), key=lambda i: lengths[i])
    mm_before = matmul_gflops(mm_n, repeats=5, warmup=2)
    t = median_time(lambda: obj.per_example_grads(encs, chunk_size=chunk, method=method, progress=not smoke,
                                                  desc="grad-throughput"), repeats=repeats, warmup=1)
    mm_after = matmul_gflops(mm_n, repeats=5, warmup=2)
    mm_s = statistics.median(mm_before["samples_s"] + mm_after["samples_s"])
    mm_gflops = 2 * mm_n**3 / mm_s / 1e9
    count = gradient_flop_count(model, obj.names, lengths, answers, padded_lengths=padded_lengths(lengths, chunk))
    achieved = count["flops"] / t.median / 1e9

    sweep_rows = []
    for cs in sweep:
        ts = median_time(lambda: obj.per_example_grads(encs, chunk_size=cs, method=method), repeats=1, warmup=0)
        c = gradient_flop_count(model, obj.names, lengths, answers, padded_lengths=padded_lengths(lengths, cs))
        sweep_rows.append({"chunk_size": cs, "seconds_per_example": ts.median / n,
                           "padded_tokens": c["padded_tokens"], "efficiency": c["flops"] / ts.median / 1e9 / mm_gflops})

    # where the time goes: self CPU time of one chunk (median-length examples) by kind of operator
    from ..cost import top_operators

    mid = shortest[(n - chunk) // 2:(n - chunk) // 2 + chunk]
    ops = top_operators(lambda: obj.per_example_grads([encs[i] for i in mid], chunk_size=chunk, method=method),
                        top=10_000, warmup=0)
    shares = {"matrix_products": 0.0, "attention_kernels": 0.0, "softmax_over_vocabulary": 0.0, "other": 0.0}
    for o in ops:
        nm = o["name"]
        if nm in ("aten::mm", "aten::bmm", "aten::addmm", "aten::matmul", "aten::linear"):
            shares["matrix_products"] += o["share"]
        elif "scaled_dot_product" in nm:
            shares["attention_kernels"] += o["share"]
        elif "log_softmax" in nm:
            shares["softmax_over_vocabulary"] += o["share"]
        else:
            shares["other"] += o["share"]
    top_other = [{"name": o["name"], "share": o["share"]} for o in ops
                 if o["name"] not in ("aten::mm", "aten::bmm", "aten::addmm") and "scaled_dot" not in o["name"]][:6]

    # the vmap(grad) path on the shortest examples (it is slow: torch's vmap loops over CPU flash attention)
    order = shortest[:n_vmap]
    sub = [encs[i] for i in order]
    G_hooks = t.result[order].double()
    t0 = time.perf_counter()
    G_vmap = obj.per_example_grads(sub, chunk_size=n_vmap, method="vmap").double()
    vmap_s = (time.perf_counter() - t0) / len(sub)
    t0 = time.perf_counter()
    obj.per_example_grads(sub, chunk_size=n_vmap, method=method)
    hooks_sub_s = (time.perf_counter() - t0) / len(sub)
    rel = float(((G_hooks - G_vmap).norm(dim=1) / G_vmap.norm(dim=1).clamp_min(1e-30)).max())

    paper = set(select_parameters(model, "paper"))
    paper_sizes = [int(p.numel()) for nm, p in model.named_parameters() if nm in paper]
    projections = {}
    for kind in ("countsketch", "gaussian"):
        coords = proj_coords * (32 if kind == "countsketch" else 1)
        qv = projection_cost(obj.sizes, proj_k, kind, batch=chunk, max_coords=coords, seed=seed)
        projections[kind] = {"k": proj_k, "ns_per_coordinate": qv["ns_per_coordinate"],
                             "generation_share": qv["generation_share"],
                             "coords_timed": qv["coords_timed"], "batch": chunk,
                             "seconds_per_example_qv": qv["seconds_per_example"], "D_qv": obj.dim,
                             "seconds_per_example_paper": qv["ns_per_coordinate"] * sum(paper_sizes) / 1e9,
                             "D_paper": int(sum(paper_sizes))}
    # a Gaussian projection can never beat its 2·D·k FLOPs at the matmul rate, however big the chunk
    projections["gaussian"]["matmul_bound_seconds_per_example_paper"] = 2 * sum(paper_sizes) * proj_k / (mm_gflops * 1e9)
    projections["gaussian"]["matmul_bound_seconds_per_example_qv"] = 2 * obj.dim * proj_k / (mm_gflops * 1e9)
    eff = achieved / mm_gflops
    dtypes = _by_dtype(obj, encs, t, count["flops"], mm_gflops, eff, chunk=chunk, method=method, mm_n=mm_n,
                       repeats=repeats)
    dt, why = choose_dtype("auto", "cpu", method="inner_product")
    dtypes.update({"cpu_bf16": hardware_bf16("cpu")[0], "processor_kind": processor_kind("cpu"),
                   "dtype_chosen": dt, "dtype_reason": why})
    return {
        "model": name,
        "params": QV,
        "grad_dim": obj.dim,
        "method": method,
        "n_examples": n,
        "chunk_size": chunk,
        "repeats": repeats,
        "data": "instruction set (seeded sample)",
        "tokens": count["tokens"],
        "answer_tokens": count["answer_tokens"],
        "padded_tokens": count["padded_tokens"],
        "padding_waste": count["padded_tokens"] / count["tokens"] - 1,
        "seconds": t.median,
        "seconds_per_example": t.median / n,
        "tokens_per_s": count["tokens"] / t.median,
        "flops": count["flops"],
        "flops_breakdown": {k: count[k] for k in ("forward_flops", "backward_input_flops", "weight_grad_flops",
                                                  "attention_flops")},
        "flops_6N": count["flops_6N"],
        "achieved_gflops": achieved,
        "matmul_n": mm_n,
        "matmul_gflops": mm_gflops,
        "matmul_gflops_before_after": [mm_before["gflops"], mm_after["gflops"]],
        "efficiency": eff,
        "chunk_sweep": sweep_rows,
        "time_shares": shares,
        "time_shares_note": "self CPU time of one chunk by operator kind (torch.profiler); element-wise work "
                            "(norms, activations, rotary, copies) does no matrix FLOPs",
        "top_other_operators": top_other,
        "vmap_examples": len(sub),
        "vmap_seconds_per_example": vmap_s,
        "hooks_seconds_per_example_same_examples": hooks_sub_s,
        "speedup_vs_vmap": vmap_s / hooks_sub_s,
        "max_rel_diff_vs_vmap": rel,
        "projection": projections,
        "samples": {"gradients": t.samples},
        "torch_version": torch.__version__,
        **env,
        "goal": "efficiency >= 0.4",
        "goal_met": bool(eff >= 0.4),
        **dtypes,
    }


def _by_dtype(obj, encs, t32, flops: float, mm_gflops: float, eff: float, *, chunk: int, method: str, mm_n: int,
              repeats: int) -> dict:
    """float32 vs bfloat16 per-example gradients: speed against each dtype's own matmul rate, and the
    inner products' agreement (first half of the examples as candidates, second half as probes)."""
    import torch

    from ..gradient_scores import inner_product_scores
    from ..precision import autocast, hardware_bf16, precision_agreement

    G32 = t32.result
    h = len(encs) // 2
    ip32 = inner_product_scores(G32[:h], G32[h:])
    out = {"by_dtype": {"float32": {"efficiency": eff, "speedup_vs_fp32": 1.0, "matmul_gflops": mm_gflops,
                                    "seconds_per_example": t32.median / len(encs)}}}
    ok, why = hardware_bf16("cpu")
    if not ok:
        out["by_dtype"]["bfloat16"] = {"skipped": f"no native bf16 matrix units ({why})"}
        return out

    def bf16_grads():
        with autocast("bf16", "cpu"):
            return obj.per_example_grads(encs, chunk_size=chunk, method=method)

    mm1 = matmul_gflops(mm_n, repeats=3, warmup=1, dtype="bfloat16")
    t16 = median_time(bf16_grads, repeats=repeats, warmup=1)
    mm2 = matmul_gflops(mm_n, repeats=3, warmup=1, dtype="bfloat16")
    mm16 = 2 * mm_n**3 / statistics.median(mm1["samples_s"] + mm2["samples_s"]) / 1e9
    G16 = t16.result
    agree = precision_agreement(inner_product_scores(G16[:h], G16[h:]), ip32, aggregates=("mean",), n_boot=200)
    rel = float(((G16.double() - G32.double()).norm(dim=1) / G32.double().norm(dim=1).clamp_min(1e-30)).max())
    out["by_dtype"]["bfloat16"] = {
        "efficiency": flops / t16.median / 1e9 / mm16, "speedup_vs_fp32": t32.median / t16.median,
        "matmul_gflops": mm16, "seconds_per_example": t16.median / len(encs),
        "max_abs_diff": agree["max_abs_diff"], "max_abs_diff_against": "float32 inner products",
        "candidate_spearman": {k: v["candidate_spearman"] for k, v in agree["aggregates"].items()},
        "grad_max_rel_diff": rel}
    out["bf16_agreement"] = agree
    return out
