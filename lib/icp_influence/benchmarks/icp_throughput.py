"""``icp-throughput``: the ICP engine against this CPU's matmul rate and a simple reference.

On instruction-set lengths (``data/instructions/*.jsonl`` when present, else generated
examples with demonstration outputs of ~65–120 tokens and probe answers of ~65–125), one
run measures 3 candidates × 12 probes, one round per candidate, everything in a round
side by side on the same pairs with the same threads (the load of a shared CPU drifts
within minutes, so ratios are taken per round and their median reported):

* **engine** — :class:`~icp_influence.icp.IcpScorer` (packed suffixes, prefix once per
  candidate, head on answer rows only), timed at the start and the end of the round;
  the baseline (once per probe set) is excluded;
* **reference** — one unpadded sequence per forward pass, no cache, float32, full logits
  (= :func:`~icp_influence.icp.naive_loglik_matrix` with ``batch_size=1``);
* **naive path** — what :func:`~icp_influence.icp.naive_loglik_matrix` runs with its
  default right-padded batches of 8 (``max_abs_diff`` is measured against it, baselines
  included);
* **previous engine** — the replicated-``DynamicCache`` path (``engine="hf-cache"``);
* the machine's dense fp32 matmul rate (``n × n``, at the start and end of each round).

FLOPs are counted from the shapes actually run, padding excluded: ``2·N_body`` per token
through the body (``N_body`` = non-embedding parameters), ``2·d·V`` per position whose
logits are computed, and ``2·2·L_q·L_kv·d`` per layer for attention (causal part only).
``efficiency`` = achieved engine FLOP/s ÷ matmul FLOP/s. The cache's speed-up is bounded
by the work it saves: ``flop_ratio`` = reference FLOPs ÷ engine FLOPs is the speed-up at
equal efficiency. Goals (from the issue): efficiency ≥ 0.6, speed-up ≥ 3, |Δ| ≤ 1e-4 nats.

Per dtype (``by_dtype``): the engine also runs in ``bfloat16`` (:mod:`icp_influence.precision`:
bf16 matrix products under autocast, LM head and sums in float32/float64) in every round, timed
beside the float32 engine, with the dense **bf16** matmul rate measured in the same rounds; the
reference stays float32. Each dtype reports its ``efficiency`` against its own matmul rate, its
``speedup_vs_reference``, ``max_abs_diff`` (float32: against the naive path; bfloat16: Δ against
the float32 engine's Δ) and ``candidate_spearman`` per aggregate (``mean``, ``win_rate``) with
the float32 engine (the full bf16-vs-fp32 agreement of these pairs is under ``bf16_agreement``;
on 3 candidates it says little — the policy's check, 16 candidates × 8 probes, is
``precision_check``, read from ``benchmarks/results/precision-check.json``). ``cpu_bf16``: whether the
processor has native bf16 matrix units (without them bf16 is skipped: it is emulated and
slow); ``dtype_chosen``: what ``dtype="auto"`` chooses for ICP here, and why.

``--smoke``: a small random GPT-NeoX on short synthetic examples (seconds).
Threads: ``ICP_THREADS`` (see :func:`~icp_influence.benchmarks._common.configure_threads`).
"""
from __future__ import annotations

import glob
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..registry import benchmark
from ._common import bench_lm, configure_threads, load_smollm2, synthetic_split
from ._timing import matmul_gflops

INSTRUCTIONS_ENV = "ICP_INSTRUCTIONS_DIR"
#: The issue's goals: efficiency, speed-up over the one-sequence reference, |Δ| in nats.
GOALS = {"efficiency": 0.6, "speedup": 3.0, "max_abs_diff": 1e-4}


def instruction_files() -> list[str]:
    """``data/instructions/*.jsonl`` of the working directory or the repository, if any."""
    roots = [os.environ.get(INSTRUCTIONS_ENV, ""), "data/instructions",
             str(Path(__file__).resolve().parents[3] / "data" / "instructions")]
    for root in roots:
        if root and Path(root).is_dir():
            files = sorted(glob.glob(str(Path(root) / "*.jsonl")))
            if files:
                return files
    return []


_WORDS = ("the a of to and in is for that with on as it by be are this from or at can your more when "
          "water heat time people food plan money cost simple small large better often most each step "
          "helps keeps makes uses needs means gives shows lets turns builds slowly quickly because while "
          "after before during without between through around every many some other first second next").split()


def _text_of_tokens(tokenizer, rng: random.Random, n_tokens: int) -> str:
    words: list[str] = []
    while len(tokenizer(" ".join(words), add_special_tokens=False).input_ids) < n_tokens:
        words.extend(rng.choice(_WORDS) for _ in range(4))
        if rng.random() < 0.15:
            words[-1] += "."
    return " ".join(words).capitalize() + "."


def alpaca_like(tokenizer, n: int, *, answer_tokens: tuple[int, int], seed: int = 0, prefix: str = "gen"):
    """``n`` generated instruction examples whose outputs have ``answer_tokens`` tokens (range)."""
    from ..data import Example

    rng = random.Random(seed)
    out = []
    for i in range(n):
        instr = _text_of_tokens(tokenizer, rng, rng.randint(10, 30)).rstrip(".") + "?"
        out.append(Example(f"{prefix}-{i}", instr, "", _text_of_tokens(tokenizer, rng, rng.randint(*answer_tokens)),
                           task="generated"))
    return out


def instruction_split(tokenizer, n_candidates: int, n_probes: int, seed: int = 0):
    """Candidates and probes at instruction-set lengths: the data set if present, else generated."""
    files = instruction_files()
    if files:
        from ..data import load_alpaca

        ex = [e for f in files for e in load_alpaca(f)]
        random.Random(seed).shuffle(ex)
        return ex[:n_candidates], ex[n_candidates:n_candidates + n_probes], f"{len(files)} files in {Path(files[0]).parent}"
    cands = alpaca_like(tokenizer, n_candidates, answer_tokens=(65, 120), seed=seed, prefix="cand")
    probes = alpaca_like(tokenizer, n_probes, answer_tokens=(65, 125), seed=seed + 1, prefix="probe")
    return cands, probes, "generated (no data/instructions)"


def model_shape(model) -> dict[str, int]:
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == emb.data_ptr()
    n_total = sum(p.numel() for p in model.parameters())
    n_body = n_total - emb.numel() - (0 if tied or head is None else head.weight.numel())
    cfg = model.config
    layers = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer")
    return {"n_body": int(n_body), "d": int(emb.shape[1]), "vocab": int(emb.shape[0]), "layers": int(layers)}


def _attn(n_q: int, n_ctx: int) -> float:
    """Causal (query, key) pairs: ``n_q`` queries after ``n_ctx`` context keys."""
    return n_q * n_ctx + n_q * (n_q + 1) / 2


def engine_flops(shape: dict[str, int], encs_per_candidate) -> dict[str, float]:
    """FLOPs of the packed engine: each distinct prefix once, suffixes ``query + answer[:-1]``."""
    nb, d, V, nl = shape["n_body"], shape["d"], shape["vocab"], shape["layers"]
    tokens = logit_rows = pairs_attn = 0.0
    for encs in encs_per_candidate:
        for prefix in {e.prefix_ids for e in encs}:
            tokens += len(prefix)
            pairs_attn += _attn(len(prefix), 0)
        for e in encs:
            L = len(e.query_ids) + len(e.answer_ids) - 1
            tokens += L
            logit_rows += len(e.answer_ids)
            pairs_attn += _attn(L, len(e.prefix_ids))
    flops = 2 * nb * tokens + 2 * d * V * logit_rows + 4 * d * nl * pairs_attn
    return {"tokens": tokens, "logit_rows": logit_rows, "flops": flops}


def reference_flops(shape: dict[str, int], encs) -> float:
    """FLOPs of one full forward per pair with logits at every position."""
    nb, d, V, nl = shape["n_body"], shape["d"], shape["vocab"], shape["layers"]
    return float(sum((2 * nb + 2 * d * V) * len(e) + 4 * d * nl * _attn(len(e), 0) for e in encs))


def speedup_at(efficiency: float, *, flop_ratio: float, reference_efficiency: float) -> float:
    """Speed-up over the reference of an engine running at ``efficiency`` of the matmul rate.

    Both efficiencies are FLOP rates over the same matmul rate, so ``t_ref / t_engine`` =
    ``(F_ref / F_engine) · (efficiency / reference_efficiency)``: an identity per round,
    not a model. A cache that only skips work can beat the reference by the FLOP ratio
    times whatever it gains in efficiency — and efficiency cannot pass 1 by much.
    """
    return flop_ratio * efficiency / reference_efficiency


def efficiency_needed(speedup: float, *, flop_ratio: float, reference_efficiency: float) -> float:
    """The engine efficiency at which it would run ``speedup`` times faster than the reference."""
    return speedup * reference_efficiency / flop_ratio


def round_bounds(result: dict[str, Any], goal: float = GOALS["speedup"]) -> list[dict[str, float]]:
    """Per round of an ``icp-throughput`` result: its FLOP ratio, both efficiencies, the
    speed-up, the efficiency ``goal`` would need, and the speed-up at ``e = 1`` (the engine at
    the dense-matmul rate). The identity holds per round; medians of ratios do not multiply
    out, so the bound is read round by round (older results lack the derived fields)."""
    out = []
    for r in result["rounds"]:
        fr = r["reference_gflop"] / r["engine_gflop"]
        ref_e = r["reference_gflop"] / r["reference_s"] / float(np.mean(r["matmul_gflops"]))
        out.append({"flop_ratio": fr, "reference_efficiency": ref_e, "efficiency": r["efficiency"],
                    "speedup": r["speedup_vs_reference"],
                    "efficiency_needed": efficiency_needed(goal, flop_ratio=fr, reference_efficiency=ref_e),
                    "speedup_at_matmul_rate": speedup_at(1.0, flop_ratio=fr, reference_efficiency=ref_e)})
    return out


def _by_dtype(res: dict, rounds: list[dict], d32: np.ndarray, d_naive: np.ndarray, d16: np.ndarray | None,
              bf16_why: str, agreement) -> dict[str, Any]:
    """``by_dtype`` (float32 and bfloat16 engines, each against its own matmul rate) and ``bf16_agreement``."""
    def spearmans(a, b):
        r = agreement(a, b, aggregates=("mean", "win_rate"), n_boot=200)
        return r, {k: v["candidate_spearman"] for k, v in r["aggregates"].items()}

    _, sp32 = spearmans(d32, d_naive)
    out: dict[str, Any] = {"by_dtype": {"float32": {
        "efficiency": res["efficiency"], "speedup_vs_reference": res["speedup_vs_reference"],
        "max_abs_diff": res["max_abs_diff"], "max_abs_diff_against": "naive path (float32)",
        "candidate_spearman": sp32, "matmul_gflops": res["matmul_gflops"], "seconds_per_pair": res["seconds_per_pair"]}}}
    if d16 is None:
        out["by_dtype"]["bfloat16"] = {"skipped": f"no native bf16 matrix units ({bf16_why})"}
        return out
    agree, sp16 = spearmans(d16, d32)
    n_pairs = d32.size
    out["by_dtype"]["bfloat16"] = {
        "efficiency": statistics.median(r["bf16_efficiency"] for r in rounds),
        "speedup_vs_reference": statistics.median(r["bf16_speedup_vs_reference"] for r in rounds),
        "speedup_vs_fp32_engine": statistics.median(r["bf16_speedup_vs_fp32_engine"] for r in rounds),
        "max_abs_diff": agree["max_abs_diff"], "max_abs_diff_against": "float32 engine (Δ, baseline included)",
        "candidate_spearman": sp16,
        "matmul_gflops": statistics.median(g for r in rounds for g in r["bf16_matmul_gflops"]),
        "seconds_per_pair": sum(np.mean(r["bf16_engine_s"]) for r in rounds) / n_pairs}
    out["bf16_agreement"] = agree
    return out


def _clock(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


@benchmark("icp-throughput", "ICP engine GFLOP/s vs dense fp32 matmul, speed-up vs a one-sequence reference "
                             "(SmolLM2, instruction-set lengths)")
def run(*, smoke: bool = False, seed: int = 0) -> dict:
    import torch

    from ..icp import IcpScorer
    from ..lm import answer_logprobs
    from ..precision import choose_dtype, hardware_bf16, precision_agreement, processor_kind, recorded_checks

    env = configure_threads()
    cpu_bf16, bf16_why = hardware_bf16("cpu")
    if smoke:
        model, tok = bench_lm(128, 2, seed=seed)
        cands, probes = synthetic_split(3, 4, seed=seed)
        name, data, mm_n = "gpt-neox hidden=128 layers=2 (random)", "synthetic", 512
    else:
        model, tok = load_smollm2()
        cands, probes, data = instruction_split(tok, 3, 12, seed=seed)
        name, mm_n = "smollm2-135m-instruct", 2048
    shape = model_shape(model)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    P = len(probes)

    scorer = IcpScorer(model, tok, probes)
    fast = IcpScorer(model, tok, probes, precision="bf16") if cpu_bf16 else None
    old = IcpScorer(model, tok, probes, batch_size=8, engine="hf-cache")
    base, base_old = scorer.baseline, old.baseline  # once per probe set: not part of the per-pair work
    base_fast = fast.baseline if fast is not None else None
    base_naive = np.array([lp.sum() for lp in answer_logprobs(model, old._base_encs, pad_id=pad, batch_size=8)])

    def pairs(z):
        return [scorer.encode(p, z) for p in probes]

    def sums(lps):
        return np.array([lp.sum() for lp in lps])

    with torch.no_grad():  # warm-up: kernels, allocator
        scorer.loglik_one(cands[0])
        if fast is not None:
            fast.loglik_one(cands[0])
        answer_logprobs(model, pairs(cands[0])[:2], pad_id=pad, batch_size=1)
    # One round per candidate, each measured side by side (a shared CPU's load drifts):
    # matmul, engine, reference, naive path, previous engine, engine again, matmul.
    rounds = []
    ll, ref, naive, ll_old, ll_fast = [], [], [], [], []
    for z in cands:
        encs = pairs(z)
        mm1 = matmul_gflops(mm_n, repeats=2, warmup=1)["gflops"]
        bf = {}
        if fast is not None:  # bf16 engine and bf16 matmul rate, beside the float32 ones
            mmb1 = matmul_gflops(mm_n, repeats=2, warmup=1, dtype="bfloat16")["gflops"]
            t_f1, ll_fast_z = _clock(lambda: fast.loglik_one(z))
            ll_fast.append(ll_fast_z)
        t_e1, ll_z = _clock(lambda: scorer.loglik_one(z))
        with torch.no_grad():
            t_ref, ref_z = _clock(lambda: sums(answer_logprobs(model, encs, pad_id=pad, batch_size=1)))
            t_naive, naive_z = _clock(lambda: sums(answer_logprobs(model, encs, pad_id=pad, batch_size=8)))
        t_old, old_z = _clock(lambda: old.loglik_one(z))
        t_e2, _ = _clock(lambda: scorer.loglik_one(z))
        mm2 = matmul_gflops(mm_n, repeats=2, warmup=0)["gflops"]
        t_eng = (t_e1 + t_e2) / 2
        fl = engine_flops(shape, [encs])["flops"]
        if fast is not None:
            t_f2, _ = _clock(lambda: fast.loglik_one(z))
            mmb2 = matmul_gflops(mm_n, repeats=2, warmup=0, dtype="bfloat16")["gflops"]
            t_f = (t_f1 + t_f2) / 2
            bf = {"bf16_engine_s": [t_f1, t_f2], "bf16_matmul_gflops": [mmb1, mmb2],
                  "bf16_efficiency": fl / t_f / 1e9 / ((mmb1 + mmb2) / 2), "bf16_speedup_vs_reference": t_ref / t_f,
                  "bf16_speedup_vs_fp32_engine": t_eng / t_f}
        rounds.append({"engine_s": [t_e1, t_e2], "reference_s": t_ref, "naive_s": t_naive, "previous_engine_s": t_old,
                       "matmul_gflops": [mm1, mm2], "engine_gflop": fl / 1e9, "reference_gflop": reference_flops(shape, encs) / 1e9,
                       "efficiency": fl / t_eng / 1e9 / ((mm1 + mm2) / 2), "speedup_vs_reference": t_ref / t_eng, **bf})
        ll.append(ll_z)
        ref.append(ref_z)
        naive.append(naive_z)
        ll_old.append(old_z)
    ll, ref, naive, ll_old = map(np.array, (ll, ref, naive, ll_old))

    encs_all = [pairs(z) for z in cands]
    n_pairs = len(cands) * P
    fl = engine_flops(shape, encs_all)
    ref_fl = sum(reference_flops(shape, e) for e in encs_all)
    t_eng = sum(np.mean(r["engine_s"]) for r in rounds)
    t_ref = sum(r["reference_s"] for r in rounds)
    t_naive = sum(r["naive_s"] for r in rounds)
    t_old = sum(r["previous_engine_s"] for r in rounds)
    mm_gflops = statistics.median([g for r in rounds for g in r["matmul_gflops"]])
    diff = max(float(np.abs(ll - naive).max()), float(np.abs(base - base_naive).max()))
    flat = [e for row in encs_all for e in row]
    res: dict[str, Any] = {
        "model": name,
        "data": data,
        "n_candidates": len(cands),
        "n_probes": P,
        "pairs": n_pairs,
        "token_budget": scorer.token_budget,
        "engine": scorer.engine,
        "mean_prefix_tokens": float(np.mean([len(e.prefix_ids) for e in flat])),
        "mean_query_tokens": float(np.mean([len(e.query_ids) for e in flat])),
        "mean_answer_tokens": float(np.mean([len(e.answer_ids) for e in flat])),
        "seconds_per_pair": t_eng / n_pairs,
        "reference_seconds_per_pair": t_ref / n_pairs,
        "naive_seconds_per_pair": t_naive / n_pairs,
        "previous_engine_seconds_per_pair": t_old / n_pairs,
        # per-round ratios (each round measured side by side), median over rounds
        "speedup_vs_reference": statistics.median(r["speedup_vs_reference"] for r in rounds),
        "speedup_vs_naive": statistics.median(r["naive_s"] / np.mean(r["engine_s"]) for r in rounds),
        "speedup_vs_previous_engine": statistics.median(r["previous_engine_s"] / np.mean(r["engine_s"]) for r in rounds),
        "tokens": int(fl["tokens"]),
        "logit_rows": int(fl["logit_rows"]),
        "engine_gflop": fl["flops"] / 1e9,
        "reference_gflop": ref_fl / 1e9,
        "flop_ratio": ref_fl / fl["flops"],
        "achieved_gflops": fl["flops"] / t_eng / 1e9,
        "reference_gflops": ref_fl / t_ref / 1e9,
        "matmul_n": mm_n,
        "matmul_gflops": mm_gflops,
        "efficiency": statistics.median(r["efficiency"] for r in rounds),
        "reference_efficiency": statistics.median(
            r["reference_gflop"] / r["reference_s"] / np.mean(r["matmul_gflops"]) for r in rounds),
        "max_abs_diff": diff,
        "max_abs_diff_reference": float(np.abs(ll - ref).max()),
        "max_abs_diff_previous_engine": max(float(np.abs(ll - ll_old).max()), float(np.abs(base - base_old).max())),
        # float32 noise floor of the reference itself: padded batches vs one sequence per forward
        "naive_vs_reference_max_abs_diff": float(np.abs(naive - ref).max()),
        "rounds": rounds,
        **shape,
        **env,
        "load_avg_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "goal": (f"efficiency >= {GOALS['efficiency']:g}, speedup_vs_reference >= {GOALS['speedup']:g}, "
                 f"max_abs_diff <= {GOALS['max_abs_diff']:g}"),
    }
    res.update(_by_dtype(res, rounds, ll - base, naive - base_naive,
                         None if fast is None else np.array(ll_fast) - base_fast, bf16_why, precision_agreement))
    res["cpu_bf16"] = bool(cpu_bf16)
    res["processor_kind"] = processor_kind("cpu")
    dt, why = choose_dtype("auto", "cpu", method="icp")
    res["dtype_chosen"], res["dtype_reason"] = dt, why
    res["precision_check"] = recorded_checks().get(res["processor_kind"], {}).get("methods", {}).get("icp")
    bounds = round_bounds(res)
    res["efficiency_needed_for_3x"] = statistics.median(b["efficiency_needed"] for b in bounds)
    res["speedup_at_matmul_rate"] = statistics.median(b["speedup_at_matmul_rate"] for b in bounds)
    res["speedup"] = res["speedup_vs_reference"]  # the figure notebook 07 plots against its goal
    res["goal_met"] = bool(res["efficiency"] >= GOALS["efficiency"] and res["speedup_vs_reference"] >= GOALS["speedup"]
                           and diff <= GOALS["max_abs_diff"])
    return res
