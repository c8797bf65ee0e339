"""Gradient valuators: inner product (TracIn with one checkpoint), cosine, TracIn over
checkpoints, and the authors' ``paper_signed_log`` transform.

All work on per-example gradients of the answer-only loss
(:func:`~icp_influence.lm.answer_nll`) over a parameter selection:

* ``inner_product``: ``⟨∇ℓ(p), ∇ℓ(z)⟩`` — one SGD step of size η on ``z`` lowers the
  probe loss by ``η⟨·,·⟩`` to first order (positive = helps);
* ``cosine``: the same divided by both gradient norms;
* ``tracin``: ``Σ_k η_k ⟨∇ℓ_k(p), ∇ℓ_k(z)⟩`` over checkpoints ``k``;
* ``paper_signed_log``: not an inner product — the transform behind the authors'
  released "IP" scores (see :func:`~icp_influence.gradient_scores.paper_signed_log_scores`).

Probe gradients are computed once (``_prepare``); candidate gradients are computed one
chunk at a time, scored and dropped (or written to a :class:`GradientCache` when
``cache_dir`` is given, so other valuators on the same parameters reuse them): memory is
bounded by the chunk, not by the pool. A seeded random projection to ``projection_dim``
dimensions (``gaussian``, ``rademacher`` or the O(D) ``countsketch``) keeps huge
parameter selections tractable.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import ConfigError
from ..gradient_scores import cosine_scores, inner_product_scores, paper_signed_log_scores
from .base import Valuator, item_id, model_fingerprint, register


def example_key(ex: Any) -> str:
    """A cache key of one example: its id and a hash of its text."""
    if not all(hasattr(ex, f) for f in ("instruction", "input", "output")):
        return str(getattr(ex, "id", ex))
    blob = "\x1f".join([ex.instruction, ex.input, ex.output])
    return f"{ex.id}#{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


class GradientValuator(Valuator):
    """Shared machinery of the valuators built on per-example gradients.

    Args:
        params: parameter selection (``"paper"``, ``"all"``, ``"lora"``, ``"last:K"``,
            ``"regex:PATTERN"`` or a list of names; see
            :func:`~icp_influence.gradients.select_parameters`).
        reduction: ``"sum"`` (the default: ``ℓ = −ll``, ICP's summed log-likelihood) or ``"mean"``.
        projection_dim, projection: optional seeded projection to ``k`` dimensions.
        grad_chunk: examples per batched gradient computation (one forward/backward on the hooks path,
            one ``vmap(grad(...))`` call otherwise; see :meth:`~icp_influence.gradients.Objective.per_example_grads`).
        cache_dir: keep candidate gradients on disk (a :class:`GradientCache`).
        objective: instead of ``model``/``tokenizer``, any
            :class:`~icp_influence.gradients.Objective`; its items are scored as given.
        precision: ``"fp32"``, ``"bf16"`` (forward and backward matrix products in bf16 under
            autocast, the LM head and log-softmax in float32, per-example gradients stored in
            float32, inner products accumulated in float64) or ``"auto"`` (the policy of
            :mod:`icp_influence.precision` for this valuator's name); ``None`` (default):
            ``"auto"`` for a model loaded with ``load_model(dtype="auto")``, else fp32.
    """

    projectable = True

    def __init__(self, model: Any = None, tokenizer: Any = None, *, objective: Any = None, params: Any = "paper",
                 reduction: str = "sum", projection_dim: int | None = None, projection: str = "gaussian",
                 grad_chunk: int = 8, cache_dir: str | Path | None = None, chunk_size: int = 16,
                 precision: str | None = None, **common: Any):
        if objective is None and (model is None or tokenizer is None):
            raise ConfigError(f"{type(self).__name__} needs a model and its tokenizer, or objective=...")
        if objective is not None and model is None:
            model = objective.model
        super().__init__(model, tokenizer, chunk_size=chunk_size, **common)
        self._init_precision(precision)
        if reduction not in ("sum", "mean"):
            raise ConfigError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
        if projection_dim is not None:
            if int(projection_dim) < 1:
                raise ConfigError(f"projection dimension must be ≥ 1, got {projection_dim}.")
            if not self.projectable:
                raise ConfigError(f"{self.name!r} needs the unprojected gradients (per-parameter structure or the "
                                  "Hessian); drop projection_dim, or use inner_product / cosine / tracin.")
        if grad_chunk < 1:
            raise ConfigError(f"grad_chunk must be ≥ 1, got {grad_chunk}.")
        self.selection = params if isinstance(params, str) else list(params)
        self.reduction, self.projection_dim, self.projection = reduction, projection_dim, projection
        self.grad_chunk = int(grad_chunk)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._given_objective = objective
        self._obj = None
        self._proj = None
        self._cache = None

    # ---- configuration
    def settings(self) -> dict[str, Any]:
        return {"params": self.selection, "reduction": self.reduction, "projection_dim": self.projection_dim,
                "projection": self.projection if self.projection_dim else None, **self._precision_settings()}

    # ---- the objective, projection and cache (built once)
    @property
    def objective(self):
        if self._obj is None:
            if self._given_objective is not None:
                self._obj = self._given_objective
            else:
                from ..gradients import lm_objective

                self._obj = lm_objective(self.model, self.tokenizer, params=self.selection, reduction=self.reduction)
        return self._obj

    @property
    def dim(self) -> int:
        """Length of one gradient vector (after projection)."""
        return int(self.projection_dim) if self.projection_dim else self.objective.dim

    def _projector(self):
        if self.projection_dim and self._proj is None:
            from ..gradients import Projector

            self._proj = Projector(self.objective.sizes, int(self.projection_dim), seed=self.seed, kind=self.projection)
        return self._proj

    def _items(self, examples: Sequence[Any]) -> list[Any]:
        if self.tokenizer is None:
            return list(examples)
        from ..gradients import encode_examples

        return encode_examples(self.tokenizer, list(examples), template=self.template, max_length=self.max_length)

    def _gradient_cache(self):
        if self.cache_dir is not None and self._cache is None:
            from ..gradients import GradientCache

            obj = self.objective
            key = {"model": model_fingerprint(obj.model),
                   "names": hashlib.sha256("|".join(obj.names).encode()).hexdigest()[:16],
                   "template": self.template, "reduction": self.reduction, "max_length": self.max_length,
                   "projection": [self.projection_dim, self.projection, self.seed] if self.projection_dim else None,
                   **self._precision_settings()}
            self._cache = GradientCache(self.cache_dir, key)
        return self._cache

    def gradients(self, examples: Sequence[Any]) -> torch.Tensor:
        """Per-example gradients ``[len(examples), dim]`` (from the cache when there is one)."""
        examples = list(examples)
        items = self._items(examples)
        obj, proj = self.objective, self._projector()

        def compute(idx: list[int]) -> torch.Tensor:
            from ..precision import autocast

            with autocast(self.precision, obj.device):
                return obj.per_example_grads([items[i] for i in idx], chunk_size=self.grad_chunk, projector=proj,
                                             out_dtype=obj.dtype)

        cache = self._gradient_cache()
        if cache is None:
            return compute(list(range(len(items))))
        return cache.get([example_key(ex) for ex in examples], compute).to(obj.dtype)

    # ---- the two steps
    def _prepare(self, probes: list[Any]) -> None:
        self._probe_ids = [item_id(p, i) for i, p in enumerate(probes)]
        self._Gp = self.gradients(probes)
        self._probe_side(probes)

    def _probe_side(self, probes: list[Any]) -> None:
        """Transform the probe gradients once (influence functions apply ``(H + λI)⁻¹``)."""

    def _score_rows(self, candidates: list[Any]) -> np.ndarray:
        return self._kernel(self.gradients(candidates), candidates)

    def _kernel(self, Gc: torch.Tensor, candidates: list[Any]) -> np.ndarray:
        raise NotImplementedError

    def _extra_meta(self) -> dict[str, Any]:
        return {"n_parameters": self.objective.dim, "gradient_dim": self.dim, **self._precision_meta()}


@register
class InnerProduct(GradientValuator):
    """``⟨∇ℓ(p), ∇ℓ(z)⟩`` (TracIn with one checkpoint)."""

    name = "inner_product"

    def _kernel(self, Gc, candidates):
        return inner_product_scores(Gc, self._Gp)


@register
class Cosine(GradientValuator):
    """``⟨∇ℓ(p), ∇ℓ(z)⟩ / (‖∇ℓ(p)‖ ‖∇ℓ(z)‖)``; a zero gradient raises ConfigError."""

    name = "cosine"

    def _kernel(self, Gc, candidates):
        return cosine_scores(Gc, self._Gp, [item_id(c, i) for i, c in enumerate(candidates)], self._probe_ids)


@register
class PaperSignedLog(GradientValuator):
    """The authors' released "IP" transform (clamp, per-tensor signed log, fp16). For reproduction only."""

    name = "paper_signed_log"
    projectable = False

    def _kernel(self, Gc, candidates):
        return paper_signed_log_scores(Gc, self._Gp, self.objective.offsets)


@register
class TracIn(Valuator):
    """TracIn-CP: ``Σ_k η_k ⟨∇ℓ_k(p), ∇ℓ_k(z)⟩`` over checkpoints with their learning rates.

    ``checkpoints``: models sharing ``tokenizer`` (or paths loaded with
    :func:`~icp_influence.models.load_model`), or
    :class:`~icp_influence.gradients.Objective` s of any model; ``learning_rates``: one per
    checkpoint. Each checkpoint is an :class:`InnerProduct` valuator with the same settings.
    """

    name = "tracin"

    def __init__(self, model: Any = None, tokenizer: Any = None, *, checkpoints: Sequence[Any] = (),
                 learning_rates: Sequence[float] = (), params: Any = "paper", reduction: str = "sum",
                 projection_dim: int | None = None, projection: str = "gaussian", grad_chunk: int = 8,
                 chunk_size: int = 16, precision: str | None = None, **common: Any):
        checkpoints = list(checkpoints)
        if not checkpoints:
            raise ConfigError("tracin needs checkpoints=[model or path, ...] and learning_rates=[...].")
        if len(learning_rates) != len(checkpoints):
            raise ConfigError(f"tracin: {len(checkpoints)} checkpoint(s) but {len(learning_rates)} learning rate(s); "
                              "give one per checkpoint.")
        from ..gradients import Objective

        loaded = []
        for c in checkpoints:
            if isinstance(c, (str, Path)):
                from ..models import load_model

                c, _ = load_model(str(c), device=str(next(model.parameters()).device) if model is not None else None)
            loaded.append(c)
        first = loaded[0].model if isinstance(loaded[0], Objective) else loaded[0]
        super().__init__(first, tokenizer, chunk_size=chunk_size, **common)
        self.learning_rates = [float(x) for x in learning_rates]
        kw = dict(params=params, reduction=reduction, projection_dim=projection_dim, projection=projection,
                  grad_chunk=grad_chunk, chunk_size=chunk_size, template=self.template, max_length=self.max_length,
                  seed=self.seed, precision=precision)
        self.parts = [InnerProduct(objective=c, **kw) if isinstance(c, Objective) else InnerProduct(c, tokenizer, **kw)
                      for c in loaded]

    def settings(self) -> dict[str, Any]:
        return {**self.parts[0].settings(), "learning_rates": self.learning_rates,
                "checkpoints": [model_fingerprint(p.model) for p in self.parts]}

    def _prepare(self, probes):
        for p in self.parts:
            p._prepare(probes)

    def _score_rows(self, candidates):
        return sum(lr * p._score_rows(candidates) for lr, p in zip(self.learning_rates, self.parts))
