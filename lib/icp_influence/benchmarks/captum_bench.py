"""``captum``: the library's inner-product influence vs captum's ``TracInCP``.

Both compute ``⟨∇ℓ(p), ∇ℓ(z)⟩`` for every (candidate, probe) pair over the same
parameters (the "paper" set: every linear layer of every block, weights and biases) of
the same model on the same examples, with one checkpoint (learning rate 1), so the
scores must be equal. Ours = :class:`~icp_influence.valuators.InnerProduct`
(batched per-example gradients, probe gradients computed once, one matrix product; a fresh gradient
cache each repetition, so nothing is reused across repetitions). captum = ``TracInCP``
with a per-example loss (its default per-example ``autograd.grad`` loop over a batched
forward), sequences padded to a common length. Goal: ``speedup ≥ 3`` at equal scores.
"""
from __future__ import annotations


import numpy as np
import torch

from ..registry import benchmark
from ._common import bench_lm, configure_threads, synthetic_split
from ._timing import median_time


class _LogitsOnly(torch.nn.Module):
    """Wraps a causal LM so ``forward(ids) -> logits`` (what captum expects)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ids):
        return self.lm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def captum_tracin_scores(model, tokenizer, names, cand_encs, probe_encs, batch_size: int = 8) -> np.ndarray:
    """``[n_candidates, n_probes]`` TracInCP scores (one checkpoint, learning rate 1)."""
    from captum.influence import TracInCP

    from ..lm import answer_nll, pad_batch

    wrapped = _LogitsOnly(model)
    mods = sorted({n.rsplit(".", 1)[0] for n in names})
    layers = [f"lm.{m}" for m in mods]
    L = max(len(e.input_ids) for e in list(cand_encs) + list(probe_encs))
    pad = tokenizer.pad_token_id

    def padded(encs):
        ids, _, labels = pad_batch(list(encs), pad)
        ids = torch.nn.functional.pad(ids, (0, L - ids.shape[1]), value=pad)
        labels = torch.nn.functional.pad(labels, (0, L - labels.shape[1]), value=-100)
        return ids, labels

    c_ids, c_lab = padded(cand_encs)
    p_ids, p_lab = padded(probe_encs)
    tracin = TracInCP(wrapped, torch.utils.data.TensorDataset(c_ids, c_lab), checkpoints=["current"],
                      checkpoints_load_func=lambda m, path: 1.0, layers=layers, loss_fn=answer_nll,
                      batch_size=batch_size, sample_wise_grads_per_batch=False)
    scores = tracin.influence((p_ids, p_lab), show_progress=False)  # [n_probes, n_candidates]
    return scores.detach().double().T.numpy()


@benchmark("captum", "inner-product influence: ours (batched gradients, cached probe grads) vs captum TracInCP")
def run(*, smoke: bool = False, seed: int = 0) -> dict:
    from ..encoding import encode_example
    from ..gradients import select_parameters
    from ..valuators import InnerProduct

    env = configure_threads()
    hidden, layers, n_c, n_p, chunk, repeats = (64, 2, 8, 4, 8, 2) if smoke else (128, 4, 32, 8, 16, 3)
    model, tok = bench_lm(hidden, layers, seed=seed)
    cands, probes = synthetic_split(n_c, n_p, seed=seed)
    names = select_parameters(model, "paper")
    c_enc = [encode_example(tok, e, template="paper") for e in cands]
    p_enc = [encode_example(tok, e, template="paper") for e in probes]

    def ours():
        return InnerProduct(model, tok, params="paper", grad_chunk=chunk, chunk_size=len(cands)).score(cands, probes).values

    def theirs():
        return captum_tracin_scores(model, tok, names, c_enc, p_enc, batch_size=chunk)

    t_ours = median_time(ours, repeats=repeats, warmup=1)
    t_cap = median_time(theirs, repeats=repeats, warmup=1)
    a, b = t_ours.result, t_cap.result
    rel = float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    return {
        "model": f"gpt-neox hidden={hidden} layers={layers} (random, seed {seed})",
        "params": "paper",
        "n_candidates": n_c,
        "n_probes": n_p,
        "chunk_size": chunk,
        "repeats": repeats,
        "ours_s": t_ours.median,
        "captum_s": t_cap.median,
        "speedup": t_cap.median / t_ours.median,
        "max_rel_diff": rel,
        "samples": {"ours": t_ours.samples, "captum": t_cap.samples},
        **env,
        "goal": "speedup >= 3 with max_rel_diff <= 1e-4",
        "goal_met": bool(t_cap.median / t_ours.median >= 3 and rel <= 1e-4),
    }
