"""Gradient scores: every candidate's gradient against every probe's, ``[n_c, n_p]``.

Sign convention (every method): **positive = the candidate helps the probe**, i.e.
training on ``z`` lowers the probe's loss.

* inner product ``⟨∇ℓ(p), ∇ℓ(z)⟩`` — one SGD step on ``z`` changes ``ℓ(p)`` by ``−η⟨·,·⟩``;
  TracIn ``Σ_k η_k ⟨∇ℓ_k(p), ∇ℓ_k(z)⟩`` sums it over checkpoints ``k``;
* cosine ``⟨∇ℓ(p), ∇ℓ(z)⟩ / (‖∇ℓ(p)‖‖∇ℓ(z)‖)`` (a zero gradient raises ConfigError);
* ``paper_signed_log``: the authors' released "IP" transform — every gradient element's
  magnitude clamped to ``[1e-4, 1]`` (sign kept, zeros stay zero), then per parameter
  tensor ``s = ⟨g_p, g_z⟩`` mapped to ``sign(s)·log|s|`` (NaN/inf → 0), summed over tensors,
  rounded to fp16. Not an inner product; offered only for reproduction.

Influence functions precondition the probe gradients first (:mod:`icp_influence.ihvp`);
the valuators built on both live in :mod:`icp_influence.valuators`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .errors import ConfigError

def inner_product_scores(Gc: torch.Tensor, Gp: torch.Tensor, *, block: int = 1 << 20) -> np.ndarray:
    """``[n_c, D] × [n_p, D] -> [n_c, n_p]`` float64.

    Up to ``block`` coordinates: one float64 matrix product. Beyond, the products are taken
    ``block`` coordinates at a time in the gradients' precision (at least float32) and the partial sums
    accumulated in float64 — never float64 copies of the whole matrices (13 M coordinates ×
    100 probes would be 10 GB, and converting them for every chunk of candidates cost more
    than the gradients). With float32 gradients the result differs from an all-float64
    product by about 1e-6 of the largest score (a float32 sum over at most ``block`` terms),
    far below the float32 gradients' own rounding.
    """
    D = Gc.shape[1]
    if D <= block:
        return (Gc.double() @ Gp.double().T).numpy()
    dt = torch.promote_types(torch.promote_types(Gc.dtype, Gp.dtype), torch.float32)  # never 16-bit products
    out = torch.zeros(Gc.shape[0], Gp.shape[0], dtype=torch.float64)
    for c0 in range(0, D, block):
        c1 = min(c0 + block, D)
        out += (Gc[:, c0:c1].to(dt) @ Gp[:, c0:c1].to(dt).T).double()
    return out.numpy()


def cosine_scores(Gc: torch.Tensor, Gp: torch.Tensor, candidate_ids: Sequence[str] | None = None,
                  probe_ids: Sequence[str] | None = None) -> np.ndarray:
    """Cosine similarity of gradients; a zero-norm gradient raises :class:`ConfigError`."""
    # float64 accuracy without float64 copies of the gradients: norms accumulate in float64, and the
    # products run over blocks of coordinates (a [P, D] float64 copy of 64 probes × 13 M numbers is 7 GB)
    nc = torch.linalg.vector_norm(Gc, dim=1, dtype=torch.float64)
    np_ = torch.linalg.vector_norm(Gp, dim=1, dtype=torch.float64)
    for norms, ids, what in ((nc, candidate_ids, "candidate"), (np_, probe_ids, "probe")):
        bad = torch.nonzero(norms == 0).flatten().tolist()
        if bad:
            names = [ids[i] for i in bad[:5]] if ids is not None else bad[:5]
            raise ConfigError(
                f"cosine is undefined: {len(bad)} {what}(s) have a zero gradient ({names}). Their loss is flat in the "
                "selected parameters (e.g. answers fully masked, or parameters that do not affect the loss); "
                "use method='inner_product' or another parameter selection."
            )
    dots = torch.zeros(Gc.shape[0], Gp.shape[0], dtype=torch.float64)
    block = 1 << 20
    for a in range(0, Gc.shape[1], block):
        dots += Gc[:, a:a + block].double() @ Gp[:, a:a + block].double().T
    return (dots / nc[:, None] / np_[None, :]).numpy()


def paper_signed_log_scores(Gc: torch.Tensor, Gp: torch.Tensor, offsets: Sequence[int]) -> np.ndarray:
    """The authors' transform (module docstring). ``offsets``: parameter-tensor boundaries in D."""
    def clamp(g: torch.Tensor) -> torch.Tensor:
        return g.sign() * g.abs().clamp(1e-4, 1.0)

    Gc, Gp = clamp(Gc.float()), clamp(Gp.float())
    total = torch.zeros(Gc.shape[0], Gp.shape[0], dtype=torch.float32)
    for a, b in zip(offsets[:-1], offsets[1:]):
        s = Gc[:, a:b] @ Gp[:, a:b].T
        v = s.sign() * torch.log(s.abs())
        total += torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
    return total.half().double().numpy()
