"""Null models: valuators that know one simple thing about a candidate and nothing about the probe.

Before two valuators' agreement means anything, compare it with what these agree with:

=====================  ======================================================  ===============
name                   value (the same for every probe)                         needs
=====================  ======================================================  ===============
``answer_length``      answer tokens of the candidate (under the template)      tokenizer
``candidate_nll``      the model's own loss on the candidate's answer,          model, tokenizer
                       summed (``reduction="sum"``) or per token (``"mean"``)
``gradient_norm``      ``‖∇ℓ(z)‖`` over the same parameters as the inner         model, tokenizer
                       product (the summed answer loss, as there)
``random``             a seeded uniform number per candidate id                  nothing
=====================  ======================================================  ===============

A null model's matrix is constant across probes, so every aggregate of it (mean, win
rate of the centred value) ranks candidates by that one quantity, and it goes through
``compare``, ``stats.agreement`` and the figures like any other valuator. Its sign is the
quantity itself (longer, harder, larger gradient): it is what a paper valuator would
agree with if it tracked that quantity, not a claim that the candidate helps.

A paper valuator that agrees with another no better than a null model does with both
has shown nothing beyond that null model (see :func:`~icp_influence.stats.partial_spearman`
for agreement with a null model partialled out).
"""
from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from .base import Valuator, item_id, register
from .gradient import GradientValuator

__all__ = ["AnswerLength", "CandidateNll", "GradientNorm", "RandomScore", "NULL_MODELS"]

#: The registered null models, in the order tables show them.
NULL_MODELS = ("answer_length", "candidate_nll", "gradient_norm", "random")


class _ProbeFree(Valuator):
    """A valuator whose value has no probe side: the row is repeated for every probe."""

    def _prepare(self, probes: list[Any]) -> None:
        self._n_probes = len(probes)

    def _values(self, candidates: list[Any]) -> np.ndarray:
        raise NotImplementedError

    def _score_rows(self, candidates: list[Any]) -> np.ndarray:
        v = np.asarray(self._values(candidates), dtype=np.float64)
        return np.repeat(v[:, None], self._n_probes, axis=1)

    def _encode(self, candidates: list[Any]):
        from ..gradients import encode_examples

        return encode_examples(self.tokenizer, list(candidates), template=self.template, max_length=self.max_length)


@register
class AnswerLength(_ProbeFree):
    """Answer tokens of the candidate under the template (what a summed loss grows with)."""

    name = "answer_length"

    def __init__(self, model: Any = None, tokenizer: Any = None, **common: Any):
        if tokenizer is None:
            raise ConfigError("answer_length needs the tokenizer: make('answer_length', model, tokenizer).")
        super().__init__(model, tokenizer, **common)

    def _values(self, candidates):
        return [len(e.answer_ids) for e in self._encode(candidates)]


@register
class CandidateNll(_ProbeFree):
    """The model's own negative log-likelihood of the candidate's answer (no demonstration):
    summed over answer tokens (``reduction="sum"``) or per token (``"mean"``)."""

    name = "candidate_nll"

    def __init__(self, model: Any = None, tokenizer: Any = None, *, reduction: str = "sum", batch_size: int = 8,
                 **common: Any):
        if model is None or tokenizer is None:
            raise ConfigError("candidate_nll needs a model and its tokenizer.")
        if reduction not in ("sum", "mean"):
            raise ConfigError(f"reduction must be 'sum' or 'mean', got {reduction!r}.")
        super().__init__(model, tokenizer, **common)
        self.reduction, self.batch_size = reduction, int(batch_size)

    def settings(self) -> dict[str, Any]:
        return {"reduction": self.reduction}

    @torch.no_grad()
    def _values(self, candidates):
        from ..lm import answer_logprobs

        encs = self._encode(candidates)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        lps = answer_logprobs(self.model, encs, pad_id=pad, batch_size=self.batch_size)
        return [-(lp.sum() if self.reduction == "sum" else lp.mean()) for lp in lps]


@register
class GradientNorm(GradientValuator):
    """``‖∇ℓ(z)‖`` of the candidate's summed answer loss over the inner product's parameters
    (the settings of :class:`~icp_influence.valuators.InnerProduct`; its gradient cache is shared)."""

    name = "gradient_norm"

    def _prepare(self, probes: list[Any]) -> None:      # no probe gradients: the value has no probe side
        self._n_probes = len(probes)

    def _score_rows(self, candidates: list[Any]) -> np.ndarray:
        g = self.gradients(candidates).double()
        return np.repeat(torch.linalg.vector_norm(g, dim=1).cpu().numpy()[:, None], self._n_probes, axis=1)

    def _kernel(self, Gc, candidates):  # pragma: no cover - _score_rows is overridden
        raise NotImplementedError


@register
class RandomScore(_ProbeFree):
    """A seeded uniform number in [0, 1) per candidate: the same id and seed give the same
    value whatever else is in the pool (the chance baseline of every agreement)."""

    name = "random"

    def _values(self, candidates):
        out = []
        for i, c in enumerate(candidates):
            h = hashlib.sha256(f"{self.seed}\x1f{item_id(c, i)}".encode()).digest()
            out.append(int.from_bytes(h[:8], "little") / 2.0 ** 64)
        return out
