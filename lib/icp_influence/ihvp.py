"""Inverse-Hessian-vector products for influence functions: exact, conjugate gradients,
LiSSA, and the EK-FAC adapter to ``kronfluence``.

The influence function ``∇ℓ(p)ᵀ (H + λI)⁻¹ ∇ℓ(z)`` takes ``H``, the Hessian of the
**mean** training loss, and damping ``λ > 0``. Koh & Liang's ``I_up,loss = −∇ℓ(p)ᵀ H⁻¹ ∇ℓ(z)``
is the *change* of the probe loss when ``z`` is upweighted; we report its negation so that
positive means helpful (the sign convention of :mod:`icp_influence.gradient_scores`).
Removing ``z`` from ``n`` training points changes the probe loss by about ``score / n``
(the leave-one-out check of notebook 03).

The iHVP is applied to the probe gradients (there are few probes), so candidate
gradients are computed once per chunk (optionally cached on disk, see
:class:`~icp_influence.gradients.GradientCache`) and scored with one matrix product.
"""
from __future__ import annotations

import copy
import logging
import math
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import ConfigError, NonFiniteScoreError
from .gradients import Objective
from .lm import target_logprobs


def check_damping(damping: float | None) -> float:
    if damping is None or not math.isfinite(float(damping)) or float(damping) <= 0:
        raise ConfigError(
            f"damping λ must be a finite number > 0 for influence functions, got {damping!r}: (H + λI) must be "
            "invertible. Try 1e-3 (convex models) to 1e-1 (language models)."
        )
    return float(damping)


# ------------------------------------------------------------------ inverse-Hessian-vector products

HVP = Callable[[torch.Tensor], torch.Tensor]


def ihvp_exact(H: torch.Tensor, V: torch.Tensor, damping: float) -> torch.Tensor:
    """``(H + λI)⁻¹ Vᵀ`` for rows of ``V`` ``[m, D]``; returns ``[m, D]``."""
    damping = check_damping(damping)
    A = H.double() + damping * torch.eye(H.shape[0], dtype=torch.float64, device=H.device)
    return torch.linalg.solve(A, V.double().to(H.device).T).T.to(V.dtype).cpu()


def ihvp_cg(hvp: HVP, V: torch.Tensor, damping: float, *, max_iter: int = 200, tol: float = 1e-10) -> torch.Tensor:
    """Conjugate gradient on ``(H + λI) x = v`` for each row of ``V``.

    Needs ``H + λI`` positive definite; a direction of non-positive curvature raises
    :class:`ConfigError` (raise the damping). ``tol`` is on ``‖r‖ / ‖v‖``.
    """
    damping = check_damping(damping)
    out = torch.zeros_like(V)
    for i in range(V.shape[0]):
        b = V[i]
        x = torch.zeros_like(b)
        r = b.clone()
        p = r.clone()
        rs = r.dot(r)
        bnorm = b.norm().clamp_min(1e-300)
        for _ in range(max_iter):
            if rs.sqrt() / bnorm < tol:
                break
            Ap = hvp(p).to(b.dtype) + damping * p
            curv = p.dot(Ap)
            if curv <= 0:
                raise ConfigError(
                    f"CG met non-positive curvature (pᵀ(H+λI)p = {float(curv):.3g}): H + λI is not positive definite "
                    f"at λ = {damping}. Increase the damping, or use method='lissa'/'ekfac'."
                )
            alpha = rs / curv
            x += alpha * p
            r -= alpha * Ap
            rs_new = r.dot(r)
            p = r + (rs_new / rs) * p
            rs = rs_new
        out[i] = x
    return out


def top_eigenvalue(hvp: HVP, dim: int, *, iters: int = 30, seed: int = 0, dtype=torch.float64) -> float:
    """Largest-magnitude eigenvalue of ``H`` by power iteration (``iters`` HVPs)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g, dtype=dtype)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        w = hvp(v).to(dtype)
        lam = float(v.dot(w))
        n = w.norm()
        if n == 0:
            return 0.0
        v = w / n
    return abs(lam)


def ihvp_lissa(hvp: HVP, V: torch.Tensor, damping: float, *, depth: int = 1000, scale: float | None = None,
               tol: float = 1e-10, seed: int = 0) -> torch.Tensor:
    """LiSSA (Agarwal et al. 2017) as used by Koh & Liang: the Neumann series
    ``h_j = v + (I − (H + λI)/s) h_{j−1}``, ``(H + λI)⁻¹ v ≈ h_J / s``.

    ``scale`` ``s`` must exceed the largest eigenvalue of ``H + λI`` (default: 1.1 × a
    power-iteration estimate). With a full-batch ``hvp`` the recursion is deterministic and
    converges to the exact iHVP; stops early when ``‖h_j − h_{j−1}‖ ≤ tol‖h_j‖``.
    """
    damping = check_damping(damping)
    if scale is None:
        scale = 1.1 * (top_eigenvalue(hvp, V.shape[1], seed=seed, dtype=V.dtype) + damping)
    if scale <= 0:
        raise ConfigError(f"LiSSA scale must be > 0, got {scale}.")
    out = torch.zeros_like(V)
    for i in range(V.shape[0]):
        v = V[i]
        h = v.clone()
        for _ in range(depth):
            h_new = v + h - (hvp(h).to(v.dtype) + damping * h) / scale
            if not torch.isfinite(h_new).all():
                raise NonFiniteScoreError(
                    f"LiSSA diverged (scale {scale:.3g}, λ = {damping}): H + λI has eigenvalues outside (0, scale). "
                    "Increase the damping or the scale, or use method='cg'/'exact'."
                )
            delta = (h_new - h).norm()
            h = h_new
            if delta <= tol * h.norm():
                break
        out[i] = h / scale
    return out



# ------------------------------------------------------------------ EK-FAC through kronfluence

def _make_task(token_view, tracked: list[str] | None):
    from kronfluence.task import Task

    def summed_ce(logits, labels):   # the answer loss of the token view (labels −100: not scored)
        keep = labels != -100
        return -target_logprobs(logits[keep], labels[keep]).sum()

    class SummedLossTask(Task):
        """The summed loss as training loss (labels sampled from the model for the true Fisher)
        and as the measurement."""

        def compute_train_loss(self, batch, model, sample: bool = False):
            logits, labels = token_view(model, batch)
            if sample:
                with torch.no_grad():
                    probs = torch.softmax(logits.detach().float(), dim=-1)
                    sampled = torch.multinomial(probs, 1).flatten()
                    labels = torch.where(labels == -100, labels, sampled)
            return summed_ce(logits, labels)

        def compute_measurement(self, batch, model):
            return summed_ce(*token_view(model, batch))

        def get_influence_tracked_modules(self):
            return tracked

    return SummedLossTask()


class _ItemDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = list(items)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def tracked_linear_modules(model: torch.nn.Module, names: Sequence[str]) -> list[str]:
    """The ``nn.Linear`` modules whose weight is among ``names`` (what EK-FAC can handle)."""
    chosen = set(names)
    out, unsupported = [], []
    for mname, mod in model.named_modules():
        own = [f"{mname}.{p}" if mname else p for p, _ in mod.named_parameters(recurse=False)]
        if not any(n in chosen for n in own):
            continue
        if isinstance(mod, torch.nn.Linear):
            out.append(mname)
        else:
            unsupported.append(mname or type(mod).__name__)
    if not out:
        raise ConfigError(
            "EK-FAC (kronfluence) handles nn.Linear layers only, and none of the selected parameters belong to one "
            f"(found {unsupported[:3]}; GPT-2's Conv1D is not supported). Use params='paper' on gpt_neox/llama, or "
            "the 'cg' / 'lissa' valuators."
        )
    return out


@contextmanager
def _quiet_kronfluence():
    """kronfluence 1.0 builds ``torch.cuda.amp.GradScaler(...)`` (disabled, on CPU too), which torch
    warns is deprecated: silence exactly that FutureWarning while kronfluence runs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.cuda\.amp\.GradScaler\(args\.\.\.\)` is deprecated",
                                category=FutureWarning)
        yield


class EkfacFactors:
    """EK-FAC influence through ``kronfluence`` (an adapter, not a re-implementation).

    The factors of the (true, or with ``empirical_fisher`` the empirical) Fisher of the
    mean training loss on ``train_items`` are fitted **once**, at construction;
    :meth:`scores` then returns ``∇f(p)ᵀ (F + λI)⁻¹ ∇ℓ(z)`` ``[n_candidates, n_probes]``
    for any chunk of candidates, ``f`` the probe loss — already our "positive = helps"
    sign (checked against the exact influence in the tests). Only the ``nn.Linear``
    layers among ``obj.names`` are tracked.

    kronfluence iterates over the candidates once per group of preconditioned probe
    gradients it holds; by default that group is one batch of probes, so every candidate's
    gradient would be recomputed ``P / batch_size`` times. :meth:`scores` accumulates as many
    probe batches as ``query_memory_gb`` holds (``4·D`` bytes per probe) before the pass over
    the candidates — one pass for every probe set that fits.
    """

    def __init__(self, obj: Objective, train_items: Sequence[Any], *, damping: float, batch_size: int = 16,
                 seed: int = 0, empirical_fisher: bool = False, output_dir: str | Path | None = None,
                 query_memory_gb: float = 8.0):
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments
        from kronfluence.utils.dataset import DataLoaderKwargs

        self.damping = check_damping(damping)
        self.batch_size, self.seed = int(batch_size), int(seed)
        if not query_memory_gb > 0:
            raise ConfigError(f"query_memory_gb must be > 0, got {query_memory_gb!r}.")
        self.query_memory_gb, self.dim = float(query_memory_gb), int(obj.dim)
        view = obj.token_view
        if view is None:
            raise ConfigError("EK-FAC needs the objective's token_view (logits and labels of a batch); build the "
                              "objective with token_view=... (lm_objective does).")
        model = copy.deepcopy(obj.model).eval()
        task = _make_task(view, tracked_linear_modules(model, obj.names))
        model = prepare_model(model, task)
        self._tmp = tempfile.TemporaryDirectory(prefix="icp-ekfac-") if output_dir is None else None
        out = Path(output_dir) if output_dir is not None else Path(self._tmp.name)
        with torch.random.fork_rng(devices=[]), _quiet_kronfluence():
            torch.manual_seed(self.seed)
            self.analyzer = Analyzer(analysis_name="icp", model=model, task=task, cpu=obj.device.type == "cpu",
                                     disable_tqdm=True, output_dir=str(out), log_level=logging.WARNING)
            self.analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=obj.collate))
            self.analyzer.fit_all_factors("ekfac", dataset=_ItemDataset(train_items), per_device_batch_size=self.batch_size,
                                          factor_args=FactorArguments(strategy="ekfac", use_empirical_fisher=empirical_fisher),
                                          overwrite_output_dir=True)

    def query_accumulation_steps(self, n_probes: int) -> int:
        """Probe batches held at once (all of them when ``query_memory_gb`` allows)."""
        batches = -(-int(n_probes) // self.batch_size)
        fits = int(self.query_memory_gb * 2**30 // (4 * self.dim * self.batch_size))
        return max(1, min(batches, fits))

    def scores(self, candidate_items: Sequence[Any], probe_items: Sequence[Any]) -> np.ndarray:
        """``[len(candidate_items), len(probe_items)]`` float64."""
        from kronfluence.arguments import ScoreArguments

        args = ScoreArguments(damping_factor=self.damping,
                              query_gradient_accumulation_steps=self.query_accumulation_steps(len(probe_items)))
        with torch.random.fork_rng(devices=[]), _quiet_kronfluence():
            torch.manual_seed(self.seed)
            self.analyzer.compute_pairwise_scores(
                "pairwise", factors_name="ekfac", query_dataset=_ItemDataset(probe_items),
                train_dataset=_ItemDataset(candidate_items), per_device_query_batch_size=self.batch_size,
                per_device_train_batch_size=self.batch_size, score_args=args,
                overwrite_output_dir=True)
            scores = self.analyzer.load_pairwise_scores("pairwise")["all_modules"]  # [n_probes, n_candidates]
        return scores.double().T.cpu().numpy()
