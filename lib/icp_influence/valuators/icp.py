"""In-context probing as a valuator: the ScoreMatrix of per-probe deltas
``Δ(z, p) = ll(p | z) − ll(p)`` (or per-token deltas), from the KV-cached engine
:class:`~icp_influence.icp.IcpScorer`.

``score`` names the paper's candidate score the matrix aggregates to by default:
``"win_rate"`` (fraction of probes with Δ > 0, strict), ``"delta"`` (mean Δ) or
``"per_token"`` (values are Δ divided by the probe's answer length; mean). The matrix
always holds the per-probe values, so every aggregate can be taken afterwards.
``baseline_demo``: compare with ``ll(p | neutral demonstration)`` instead of the
zero-shot ``ll(p)`` — this removes what any demonstration does to the output format.
``precision``: ``"fp32"``, ``"bf16"`` (the body's matrix products in bf16; the LM head,
log-softmax and sums in float32/float64) or ``"auto"`` (the policy of
:mod:`icp_influence.precision`); ``None`` (default): ``"auto"`` for a model loaded with
``load_model(dtype="auto")``, else fp32. A bf16 run's configuration says so.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..icp import IcpScorer, baseline_meta, check_method
from .base import Valuator, register
from .gradient import example_key


@register
class Icp(Valuator):
    """In-context probing: positive = the demonstration raises the probe's answer likelihood."""

    name = "icp"
    default_aggregate = "win_rate"

    def __init__(self, model: Any = None, tokenizer: Any = None, *, score: str = "win_rate", baseline_demo: Any = None,
                 batch_size: int | None = None, truncation: str = "left", chunk_size: int = 16,
                 precision: str | None = None, **common: Any):
        super().__init__(model, tokenizer, chunk_size=chunk_size, **common)
        self._init_precision(precision)
        self.score_kind = check_method(score)
        self.default_aggregate = "win_rate" if score == "win_rate" else "mean"  # type: ignore[misc]
        self.baseline_demo = baseline_demo
        self.batch_size, self.truncation = (int(batch_size) if batch_size else None), truncation
        self._scorer: IcpScorer | None = None

    def settings(self) -> dict[str, Any]:
        return {"score": self.score_kind, "truncation": self.truncation,
                "baseline_demo": example_key(self.baseline_demo) if self.baseline_demo is not None else None,
                **self._precision_settings()}

    def _prepare(self, probes: list[Any]) -> None:
        kw: dict[str, Any] = {}
        if self.baseline_demo is not None:
            kw["baseline_demo"] = self.baseline_demo
        self._scorer = IcpScorer(self.model, self.tokenizer, probes, template=self.template, batch_size=self.batch_size,
                                 max_length=self.max_length, truncation=self.truncation, precision=self.precision,
                                 **kw)

    def _score_rows(self, candidates: list[Any]) -> np.ndarray:
        assert self._scorer is not None
        return self._scorer.values(candidates, self.score_kind)

    def _extra_meta(self) -> dict[str, Any]:
        assert self._scorer is not None
        return {"score": self.score_kind,
                "values": "per_token_delta" if self.score_kind == "per_token" else "delta",
                "baseline": [float(x) for x in self._scorer.baseline],
                "n_answer_tokens": [int(x) for x in self._scorer.n_answer_tokens],
                **baseline_meta(self.baseline_demo), **self._precision_meta()}
