"""The referee: one optimiser step on a candidate, and what it does to every probe's loss.

For candidate ``z``: from the base weights ``θ``, take one step on its answer loss
``ℓ(z)`` (the same :func:`~icp_influence.lm.answer_nll` every valuator uses) over a
parameter selection, giving ``θ′``; then for every probe

    Δ(z, p) = ℓ(p; θ) − ℓ(p; θ′)        (positive = the step on z helps p)

— the quantity ICP and gradient influence both approximate. The weights are restored
after every candidate, so each row starts from the base model. Optimisers:

* ``"sgd"``: ``θ′ = θ − η ∇ℓ(z)``. At a small ``η`` on the inner product's parameters,
  ``Δ ≈ η ⟨∇ℓ(p), ∇ℓ(z)⟩`` to first order — the check that ties the inner product to
  real training (``tests/test_one_step.py``);
* ``"adam_sign"``: one Adam step with ``β₁ = β₂ = 0`` from zero moments (the authors' one-
  step trainer): ``θ′ = θ − η · g / (|g| + ε)``, a sign-like step.

Probe losses are evaluated batched, probes sorted by length (little padding), with the
answer log-probabilities in float64 (:func:`~icp_influence.lm.answer_logprobs`); the base
losses are computed once per probe set.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .base import Valuator, register

OPTIMIZERS = ("sgd", "adam_sign")


@register
class OneStep(Valuator):
    """One-step training ground truth ``Δ(z, p) = ℓ(p; θ) − ℓ(p; θ′)``.

    Args:
        params: the parameters the step changes (see
            :func:`~icp_influence.gradients.select_parameters`; ``"all"`` for every one).
        optimizer: ``"sgd"`` or ``"adam_sign"`` (Adam with β₁ = β₂ = 0).
        lr: the step size ``η``.
        eps: Adam's ε.
        reduction: the loss the step descends: ``"sum"`` (``ℓ(z)`` summed over answer tokens,
            as everywhere) or ``"mean"`` (per token, as fine-tuning does). The probes' Δ is
            always on their summed loss, the scale of ICP's Δ.
        eval_batch_size: probes per forward pass.
    """

    name = "one_step"

    def __init__(self, model: Any = None, tokenizer: Any = None, *, params: Any = "all", optimizer: str = "sgd",
                 lr: float = 1e-4, eps: float = 1e-8, reduction: str = "sum", eval_batch_size: int = 8,
                 chunk_size: int = 8, **common: Any):
        if model is None or tokenizer is None:
            raise ConfigError("one_step needs a model and its tokenizer.")
        super().__init__(model, tokenizer, chunk_size=chunk_size, **common)
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"Unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
        if not (np.isfinite(lr) and lr > 0):
            raise ConfigError(f"lr must be a number > 0, got {lr!r}.")
        if reduction not in ("sum", "mean"):
            raise ConfigError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
        from ..gradients import select_parameters

        self.selection = params if isinstance(params, str) else list(params)
        self.names = select_parameters(model, self.selection)
        self.optimizer, self.lr, self.eps, self.reduction = optimizer, float(lr), float(eps), reduction
        self.eval_batch_size = int(eval_batch_size)

    def settings(self) -> dict[str, Any]:
        return {"params": self.selection, "optimizer": self.optimizer, "lr": self.lr,
                "eps": self.eps if self.optimizer == "adam_sign" else None, "reduction": self.reduction}

    # ---- helpers
    def _encode(self, examples):
        from ..gradients import encode_examples

        return encode_examples(self.tokenizer, list(examples), template=self.template, max_length=self.max_length)

    def _probe_losses(self) -> np.ndarray:
        """``ℓ(p)`` of every probe at the current weights, float64 ``[P]``."""
        from ..lm import answer_logprobs

        lps = answer_logprobs(self.model, [self._probe_encs[i] for i in self._order], pad_id=self._pad,
                              batch_size=self.eval_batch_size)
        out = np.empty(len(self._order))
        for i, lp in zip(self._order, lps):
            out[i] = -lp.sum()
        return out

    def _step_direction(self, enc) -> list[torch.Tensor]:
        """The update ``θ − θ′`` of each selected tensor for one candidate."""
        from ..lm import answer_nll, pad_batch

        params = dict(self.model.named_parameters())
        leaves = [params[n] for n in self.names]
        flags = [p.requires_grad for p in leaves]
        try:
            for p in leaves:
                p.requires_grad_(True)
            ids, mask, labels = pad_batch([enc], self._pad, leaves[0].device)
            with torch.enable_grad():
                logits = self.model(input_ids=ids, attention_mask=mask).logits
                loss = answer_nll(logits, labels, self.reduction).sum()
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        finally:
            for p, f in zip(leaves, flags):
                p.requires_grad_(f)
        out = []
        for g, p in zip(grads, leaves):
            g = torch.zeros_like(p) if g is None else g.detach()
            out.append(self.lr * g if self.optimizer == "sgd" else self.lr * g / (g.abs() + self.eps))
        return out

    # ---- the two steps
    def _prepare(self, probes: list[Any]) -> None:
        self._pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self._probe_encs = self._encode(probes)
        self._order = sorted(range(len(self._probe_encs)), key=lambda i: -len(self._probe_encs[i]))
        self._base = self._probe_losses()

    @torch.no_grad()
    def _score_rows(self, candidates: list[Any]) -> np.ndarray:
        params = dict(self.model.named_parameters())
        leaves = [params[n] for n in self.names]
        saved = [p.detach().clone() for p in leaves]
        rows = []
        try:
            for enc in self._encode(candidates):
                steps = self._step_direction(enc)
                for p, d in zip(leaves, steps):
                    p.sub_(d)
                rows.append(self._base - self._probe_losses())
                for p, s in zip(leaves, saved):
                    p.copy_(s)
        finally:
            for p, s in zip(leaves, saved):
                p.copy_(s)
        return np.stack(rows)

    def _extra_meta(self) -> dict[str, Any]:
        return {"base_losses": [float(x) for x in self._base], "n_parameters_stepped":
                int(sum(dict(self.model.named_parameters())[n].numel() for n in self.names))}
