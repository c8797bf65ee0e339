"""``flops``: achieved forward throughput of cached ICP scoring vs dense matmul throughput.

FLOPs of ICP scoring are counted from the tokens the cached scorer really processes:
every demonstration prefix once per candidate, every probe suffix (query + answer)
once per (candidate, probe) pair, padding excluded. Each token costs ``2 × N`` FLOPs
with ``N`` the non-embedding parameters (the embedding lookup is not a matmul), and the
LM head (``2 × hidden × vocab``) is counted only at the positions whose logits are kept
(the answer positions). Attention-score FLOPs (``≈ 4 · layers · hidden · context`` per
token, under 2 % here) are left out, so the figure is slightly conservative. The
machine's dense fp32 matmul throughput is measured in the same run (before and after,
same thread count) with ``torch.matmul`` of ``n × n`` matrices. Goal: ``efficiency ≥ 0.5``.
"""
from __future__ import annotations

import statistics

from ..registry import benchmark
from ._common import bench_lm, configure_threads, load_smollm2, synthetic_split
from ._timing import matmul_gflops, median_time


def icp_flop_count(model, scorer, candidates) -> dict:
    """Tokens the cached scorer processes for ``candidates`` (baseline excluded) and their FLOPs."""
    emb = model.get_input_embeddings().weight
    n_total = sum(p.numel() for p in model.parameters())
    n_embed = emb.numel()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == emb.data_ptr()
    n_nonembed = n_total - n_embed - (0 if tied or head is None else head.weight.numel())
    hidden, vocab = emb.shape[1], emb.shape[0]
    prefix_tokens = suffix_tokens = answer_tokens = 0
    for z in candidates:
        encs = [scorer.encode(p, z) for p in scorer.probes]
        prefixes = {e.prefix_ids for e in encs}
        prefix_tokens += sum(len(p) for p in prefixes)
        suffix_tokens += sum(len(e.query_ids) + len(e.answer_ids) for e in encs)
        answer_tokens += sum(len(e.answer_ids) for e in encs)
    tokens = prefix_tokens + suffix_tokens
    flops = 2 * n_nonembed * tokens + 2 * hidden * vocab * answer_tokens
    return {"prefix_tokens": prefix_tokens, "suffix_tokens": suffix_tokens, "answer_tokens": answer_tokens,
            "tokens": tokens, "n_params": n_total, "n_nonembed_params": n_nonembed, "flops": flops,
            "flops_2N_all_params": 2 * n_total * tokens}


@benchmark("flops", "achieved ICP forward GFLOP/s vs this machine's dense fp32 matmul GFLOP/s")
def run(*, smoke: bool = False, seed: int = 0) -> dict:
    from ..icp import IcpScorer

    env = configure_threads()
    if smoke:
        model, tok = bench_lm(256, 4, seed=seed)
        name, n_c, n_p, bs, repeats, mm_n = "gpt-neox hidden=256 layers=4 (random)", 4, 8, 8, 2, 1024
    else:
        model, tok = load_smollm2()
        name, n_c, n_p, bs, repeats, mm_n = "smollm2-135m-instruct", 4, 16, 16, 3, 2048
    cands, probes = synthetic_split(n_c, n_p, seed=seed)
    mm_before = matmul_gflops(mm_n, repeats=repeats + 2)
    scorer = IcpScorer(model, tok, probes, template="paper", batch_size=bs)
    _ = scorer.baseline  # once per probe, shared by every candidate: not part of the per-candidate work
    t = median_time(lambda: scorer.loglik(cands), repeats=repeats, warmup=1)
    mm_after = matmul_gflops(mm_n, repeats=repeats + 2)
    count = icp_flop_count(model, scorer, cands)
    achieved = count["flops"] / t.median / 1e9
    mm = statistics.median(mm_before["samples_s"] + mm_after["samples_s"])
    mm_gflops = 2 * mm_n**3 / mm / 1e9
    return {
        "model": name,
        "n_candidates": n_c,
        "n_probes": n_p,
        "batch_size": bs,
        "repeats": repeats,
        "icp_s": t.median,
        **count,
        "tokens_per_s": count["tokens"] / t.median,
        "achieved_gflops": achieved,
        "achieved_gflops_2N_all_params": count["flops_2N_all_params"] / t.median / 1e9,
        "matmul_n": mm_n,
        "matmul_gflops": mm_gflops,
        "matmul_gflops_before_after": [mm_before["gflops"], mm_after["gflops"]],
        "efficiency": achieved / mm_gflops,
        "samples": {"icp": t.samples},
        **env,
        "goal": "efficiency >= 0.5",
        "goal_met": bool(achieved / mm_gflops >= 0.5),
    }
