"""The bf16-vs-fp32 accuracy check behind the ``auto`` precision (:mod:`icp_influence.precision`).

``python -m icp_influence.benchmarks.precision_check [--record]`` scores 16 instruction-set
candidates of varied answer length × 8 probes with ICP and the inner product in fp32 and in bf16
on SmolLM2, prints the agreement of the two (pair level, every aggregate, each candidate's
difference in probe-bootstrap standard errors) and, with ``--record``, writes it where
:func:`~icp_influence.precision.choose_precision` reads it. The policy module holds no model or
data code; this one runs them.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np

from ..errors import ConfigError
from ..precision import (CHECK_FILE, choose_precision, environment, hardware_bf16, precision_agreement,
                         processor_kind, record_check)

#: The inner product's parameters in the recorded check (as in the grad-throughput benchmark).
CHECK_IP_PARAMS = r"regex:^model\.layers\.\d+\.self_attn\.(q_proj|v_proj)\.weight$"


def check_examples(pool: Sequence[Any], tokenizer, *, n_candidates: int = 16, n_probes: int = 8,
                   seed: int = 0) -> tuple[list[Any], list[Any]]:
    """Candidates of varied length (evenly spaced quantiles of the answer's token count) and
    seeded random probes from the rest of ``pool``."""
    pool = list(pool)
    lens = np.array([len(tokenizer(e.output, add_special_tokens=False).input_ids) for e in pool])
    order = np.argsort(lens, kind="stable")
    picks = [int(order[q]) for q in np.linspace(0, len(pool) - 1, n_candidates).round().astype(int)]
    rest = [i for i in range(len(pool)) if i not in set(picks)]
    probes = sorted(np.random.default_rng(seed).choice(rest, n_probes, replace=False).tolist())
    return [pool[i] for i in picks], [pool[i] for i in probes]


def run_check(model, tokenizer, candidates: Sequence[Any], probes: Sequence[Any], *,
              methods: Sequence[str] = ("icp", "inner_product"), params: str = CHECK_IP_PARAMS) -> dict[str, Any]:
    """Score ``candidates × probes`` in fp32 and in bf16 with each method; ``{method: agreement + seconds}``.

    ICP is scored with ``score="delta"`` (the matrix holds Δ; the aggregates checked are mean Δ
    and win-rate), the inner product over ``params``.
    """
    import time

    from ..valuators import Icp, InnerProduct

    out: dict[str, Any] = {}
    for m in methods:
        if m == "icp":
            make = lambda p: Icp(model, tokenizer, score="delta", precision=p)  # noqa: E731
        elif m == "inner_product":
            make = lambda p: InnerProduct(model, tokenizer, params=params, precision=p)  # noqa: E731
        else:
            raise ConfigError(f"No precision check for {m!r}; choose from icp, inner_product.")
        secs = {}
        sms = {}
        for p in ("fp32", "bf16"):
            t0 = time.perf_counter()
            sms[p] = make(p).score(list(candidates), list(probes))
            secs[p] = time.perf_counter() - t0
        aggs = ("mean", "win_rate") if m == "icp" else ("mean",)
        out[m] = {**precision_agreement(sms["bf16"], sms["fp32"], aggregates=aggs),
                  "seconds_fp32": secs["fp32"], "seconds_bf16": secs["bf16"],
                  "speedup_bf16": secs["fp32"] / secs["bf16"]}
        if m == "inner_product":
            out[m]["params"] = params
    return out


def _main(argv: Sequence[str] | None = None) -> None:  # python -m icp_influence.benchmarks.precision_check [--record]
    import argparse

    ap = argparse.ArgumentParser(prog="python -m icp_influence.benchmarks.precision_check",
                                 description="bf16 vs fp32 accuracy check on SmolLM2 and the instruction set")
    ap.add_argument("--record", action="store_true", help=f"record the result in benchmarks/results/{CHECK_FILE}")
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--methods", default="icp,inner_product")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from ..instructions import load_instructions
    from ..models import load_model

    ok, why = hardware_bf16("cpu")
    print(f"processor: {processor_kind('cpu')} ({why})", flush=True)
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    cands, probes = check_examples(load_instructions(), tok, n_candidates=args.candidates, n_probes=args.probes,
                                   seed=args.seed)
    res = run_check(model, tok, cands, probes, methods=args.methods.split(","))
    print(json.dumps(res, indent=1, default=float))
    if args.record:
        kind = processor_kind("cpu")
        for m, r in res.items():
            path = record_check(kind, m, r, model="smollm2-135m-instruct", data="instruction set",
                                n_candidates=len(cands), n_probes=len(probes), seed=args.seed,
                                load_avg_1min=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                                **environment())
        print(f"recorded in {path}; 'auto' now chooses: "
              + ", ".join(f"{m}: {choose_precision('auto', 'cpu', method=m)}" for m in res))




if __name__ == "__main__":
    _main()
