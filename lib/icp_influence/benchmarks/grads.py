"""``grads``: per-example gradients by an autograd loop vs the batched ``torch.func`` path.

Loop = the textbook way: for each example, ``loss.backward()`` on the model and copy
``p.grad`` of the selected parameters. Batched =
:meth:`~icp_influence.gradients.Objective.per_example_grads` (``vmap(grad(loss))`` over
length-sorted, right-padded chunks). Same model (a seeded GPT-NeoX, the "paper" parameter
set: every linear layer of every block), same examples. Goal: ``speedup ≥ 3``.
"""
from __future__ import annotations

import torch

from ..registry import benchmark
from ._common import bench_lm, configure_threads, synthetic_split
from ._timing import median_time


def autograd_loop_grads(model, names, encs) -> torch.Tensor:
    """``[n, D]`` per-example gradients of the summed answer NLL, one ``backward()`` each."""
    from ..lm import answer_nll

    params = dict(model.named_parameters())
    sel = [params[n] for n in names]
    rows = []
    for e in encs:
        ids = torch.tensor([list(e.input_ids)])
        labels = torch.tensor(list(e.labels))
        model.zero_grad(set_to_none=True)
        logits = model(input_ids=ids).logits[0]
        answer_nll(logits, labels, "sum").backward()
        rows.append(torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in sel]))
    model.zero_grad(set_to_none=True)
    return torch.stack(rows)


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max_i ‖a_i − b_i‖ / ‖b_i‖`` over rows."""
    return float(((a.double() - b.double()).norm(dim=1) / b.double().norm(dim=1).clamp_min(1e-30)).max())


@benchmark("grads", "per-example gradients: autograd loop vs batched torch.func (vmap)")
def run(*, smoke: bool = False, seed: int = 0) -> dict:
    from ..gradients import encode_examples, lm_objective

    env = configure_threads()
    hidden, layers, n, chunk, repeats = (64, 2, 8, 8, 2) if smoke else (128, 4, 32, 16, 3)
    model, tok = bench_lm(hidden, layers, seed=seed)
    examples, _ = synthetic_split(n, 0, seed=seed)
    encs = encode_examples(tok, examples, template="paper")
    obj = lm_objective(model, tok, params="paper")

    t_loop = median_time(lambda: autograd_loop_grads(model, obj.names, encs), repeats=repeats, warmup=1)
    t_vmap = median_time(lambda: obj.per_example_grads(encs, chunk_size=chunk), repeats=repeats, warmup=1)
    t_floop = median_time(lambda: obj.per_example_grads(encs, chunk_size=chunk, vectorize=False), repeats=repeats, warmup=1)
    # The same vmap path with eager attention: torch has no vmap batching rule for the CPU
    # SDPA kernels (it falls back to a per-example loop inside vmap), eager attention is plain matmuls.
    model.set_attn_implementation("eager")
    try:
        obj_e = lm_objective(model, tok, params="paper")
        t_eager = median_time(lambda: obj_e.per_example_grads(encs, chunk_size=chunk), repeats=repeats, warmup=1)
    finally:
        model.set_attn_implementation("sdpa")
    diff = max_rel_diff(t_vmap.result, t_loop.result)
    tokens = sum(len(e.input_ids) for e in encs)
    return {
        "model": f"gpt-neox hidden={hidden} layers={layers} (random, seed {seed})",
        "params": "paper",
        "grad_dim": obj.dim,
        "n_examples": n,
        "chunk_size": chunk,
        "tokens": tokens,
        "repeats": repeats,
        "loop_s": t_loop.median,
        "batched_s": t_vmap.median,
        "speedup": t_loop.median / t_vmap.median,
        "max_rel_diff": diff,
        "batched_eager_attention_s": t_eager.median,
        "speedup_eager_attention": t_loop.median / t_eager.median,
        "max_rel_diff_eager_attention": max_rel_diff(t_eager.result, t_loop.result),
        "func_loop_s": t_floop.median,
        "speedup_vs_func_loop": t_floop.median / t_vmap.median,
        "samples": {"loop": t_loop.samples, "batched": t_vmap.samples, "func_loop": t_floop.samples,
                    "batched_eager_attention": t_eager.samples},
        **env,
        "goal": "speedup >= 3",
        "goal_met": bool(t_loop.median / t_vmap.median >= 3),
    }
