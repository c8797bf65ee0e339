"""Influence functions: ``∇ℓ(p)ᵀ (H + λI)⁻¹ ∇ℓ(z)`` with ``H`` the Hessian (or, for EK-FAC,
the Fisher) of the mean training loss and damping ``λ > 0``.

Koh & Liang's ``I_up,loss = −∇ℓ(p)ᵀ H⁻¹ ∇ℓ(z)`` is the *change* of the probe loss when
``z`` is upweighted; these valuators report its negation, so positive = the candidate
helps the probe, like every other valuator. Removing ``z`` from ``n`` training points
changes the probe loss by about ``−score / n`` (notebook 03's leave-one-out check).

:meth:`fit` takes the training examples that define ``H`` (a seeded subset of
``hessian_examples`` of them); the inverse-Hessian-vector products are applied to the
probe gradients once, so each candidate costs one gradient and one dot product.

* ``exact`` — the explicit Hessian (small parameter selections only) and a linear solve;
* ``cg`` — conjugate gradient on Hessian-vector products;
* ``lissa`` — the LiSSA Neumann series (Agarwal et al. 2017) as used by Koh & Liang;
* ``ekfac`` — eigenvalue-corrected K-FAC through ``kronfluence`` (``nn.Linear`` layers).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..gradient_scores import inner_product_scores
from ..ihvp import EkfacFactors, check_damping, ihvp_cg, ihvp_exact, ihvp_lissa
from .base import register
from .gradient import GradientValuator


class InfluenceFunction(GradientValuator):
    """Shared machinery: the Hessian's training subset and the probe-side iHVP."""

    needs_fit = True
    projectable = False

    def __init__(self, model: Any = None, tokenizer: Any = None, *, damping: float | None = None,
                 hessian_examples: int | None = 64, hessian_batch_size: int | None = 8, **kw: Any):
        super().__init__(model, tokenizer, **kw)
        self.damping = check_damping(damping)
        if hessian_examples is not None and hessian_examples < 1:
            raise ConfigError(f"hessian_examples must be ≥ 1 or None (all), got {hessian_examples}.")
        self.hessian_examples = hessian_examples
        self.hessian_batch_size = hessian_batch_size

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "damping": self.damping, "hessian_examples": self.hessian_examples}

    def _fit(self, train: list[Any]) -> None:
        n = self.hessian_examples
        if n is not None and n < len(train):
            rng = np.random.default_rng(self.seed)
            train = [train[i] for i in sorted(rng.choice(len(train), size=n, replace=False).tolist())]
        self._hess_items = self._items(train)
        self._after_fit()

    def _after_fit(self) -> None:
        """Work that depends only on the training data (the explicit Hessian, EK-FAC factors)."""

    def _hvp(self, v: torch.Tensor) -> torch.Tensor:
        obj = self.objective
        return obj.hvp(self._hess_items, v.to(obj.dtype), batch_size=self.hessian_batch_size).to(v.dtype).cpu()

    def _probe_side(self, probes):
        self._S = self._solve(self._Gp.to(torch.float64)).to(self._Gp.dtype)

    def _solve(self, V: torch.Tensor) -> torch.Tensor:
        """``(H + λI)⁻¹ v`` for each row of ``V`` ``[m, D]``."""
        raise NotImplementedError

    def _kernel(self, Gc, candidates):
        return inner_product_scores(Gc, self._S)


@register
class ExactInfluence(InfluenceFunction):
    """The explicit Hessian (``torch.func.hessian``) and a linear solve; ``D ≤ max_dim``."""

    name = "exact"

    def __init__(self, model: Any = None, tokenizer: Any = None, *, max_dim: int = 4096, **kw: Any):
        super().__init__(model, tokenizer, **kw)
        self.max_dim = int(max_dim)

    def _after_fit(self):
        self._H = self.objective.hessian(self._hess_items, batch_size=self.hessian_batch_size, max_dim=self.max_dim)

    def _solve(self, V):
        return ihvp_exact(self._H, V, self.damping)


@register
class CgInfluence(InfluenceFunction):
    """Conjugate gradient on ``(H + λI) x = ∇ℓ(p)`` (Hessian-vector products only)."""

    name = "cg"

    def __init__(self, model: Any = None, tokenizer: Any = None, *, max_iter: int = 100, tol: float = 1e-6, **kw: Any):
        super().__init__(model, tokenizer, **kw)
        self.max_iter, self.tol = int(max_iter), float(tol)

    def settings(self):
        return {**super().settings(), "max_iter": self.max_iter, "tol": self.tol}

    def _solve(self, V):
        return ihvp_cg(self._hvp, V, self.damping, max_iter=self.max_iter, tol=self.tol)


@register
class LissaInfluence(InfluenceFunction):
    """The LiSSA series ``h_j = v + (I − (H + λI)/s) h_{j−1}``; ``(H + λI)⁻¹v ≈ h_J / s``."""

    name = "lissa"

    def __init__(self, model: Any = None, tokenizer: Any = None, *, depth: int = 200, scale: float | None = None,
                 tol: float = 1e-10, **kw: Any):
        super().__init__(model, tokenizer, **kw)
        self.depth, self.scale, self.tol = int(depth), scale, float(tol)

    def settings(self):
        return {**super().settings(), "depth": self.depth, "scale": self.scale, "tol": self.tol}

    def _solve(self, V):
        return ihvp_lissa(self._hvp, V, self.damping, depth=self.depth, scale=self.scale, tol=self.tol, seed=self.seed)


@register
class EkfacInfluence(InfluenceFunction):
    """EK-FAC influence through ``kronfluence``: factors fitted once in :meth:`fit`."""

    name = "ekfac"

    def __init__(self, model: Any = None, tokenizer: Any = None, *, empirical_fisher: bool = False,
                 batch_size: int = 16, **kw: Any):
        super().__init__(model, tokenizer, **kw)
        self.empirical_fisher, self.batch_size = bool(empirical_fisher), int(batch_size)

    def settings(self):
        return {**super().settings(), "empirical_fisher": self.empirical_fisher}

    def _after_fit(self):
        self._factors = EkfacFactors(self.objective, self._hess_items, damping=self.damping, batch_size=self.batch_size,
                                     seed=self.seed, empirical_fisher=self.empirical_fisher)

    def _prepare(self, probes):
        self._probe_items = self._items(probes)

    def _score_rows(self, candidates):
        return self._factors.scores(self._items(candidates), self._probe_items)

    def _extra_meta(self):
        return {"n_parameters": self.objective.dim}
