"""In-context probing (ICP): value a candidate by how much it helps a model answer probes.

For candidate ``z`` and probe ``p = (x_p, y_p)``::

    ll(p | z) = Σ_t log P(y_p,t | context(z), x_p, y_p,<t)      (answer tokens only)
    ll(p)     = the same without a demonstration                 (zero-shot baseline)
    Δ(z, p)   = ll(p | z) − ll(p)                                 (positive = z helps p)

Scores per candidate: **win-rate** ``mean_p 1[Δ > 0]`` (strict ``>``, the paper's),
**mean delta** ``mean_p Δ`` and **per-token delta** ``mean_p Δ / |y_p|``. With
``baseline_demo`` the baseline is ``ll(p | baseline_demo)`` (a neutral demonstration)
instead of zero-shot.

One scoring path. A ScoreMatrix of ICP scores comes from the valuator, ``valuators.make("icp",
model, tok, score=...).score(candidates, probes)`` (``valuators/icp.py``), which drives
:class:`IcpScorer` and records the configuration hash, seed and sign. This module holds the
engine (:class:`IcpScorer`), the raw log-likelihoods (:func:`loglik_matrix`, and the naive
reference :func:`naive_loglik_matrix` it is tested against) and the aggregates of an ICP
matrix (:func:`icp_win_rate`, :func:`icp_mean_delta`, :func:`icp_per_token_delta`).

Engine: :mod:`icp_influence.icp_engine` — every sequence is ``prefix(z) + query(p) +
answer(p)``, each segment tokenised on its own (:class:`~icp_influence.encoding.PairEncoder`);
the demonstration prefix runs once per candidate and the probe suffixes are packed after it,
without padding. :attr:`IcpScorer.engine` says whether the packed path or the Hugging Face
KV-cache fallback is in use.

Exactness. The engine equals the naive per-pair forward pass (:func:`naive_loglik_matrix`)
up to float32 rounding, about 1e-5 nats per answer token (the float32 logits and body; not
padding or the attention kernel). So the tests check 1e-4 nats per probe for answers up to
100 tokens and 1e-6 nats per answer token beyond, and, in float64, agreement to 1e-9 on short
and long sequences, every template, three architectures.

Speed and precision, measured (why the previous engine was slow, the packed engine's
speed-up and efficiency, the bf16 variants and why ``"auto"`` keeps ICP in float32 on
this CPU, the exactness measurements behind the tolerances): ``benchmarks/README.md``,
section "The ICP engine: measurements".
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .data import Example
from .encoding import Encoded, PairEncoder, check_template, encode_pair
from .errors import ConfigError, EmptyPoolError, MethodError
from .icp_engine import DEFAULT_TOKEN_BUDGET, ForwardCounter, packed_supported, prefix_answer_logprobs
from .lm import answer_logprobs, model_device
from .models import context_length
from .precision import PrecisionChoice, choose_precision
from .scores import ScoreMatrix, aggregate

METHODS = ("win_rate", "delta", "per_token")


# --------------------------------------------------------------------------- scorer
class IcpScorer:
    """Scores candidates against a fixed probe set (packed engine, see the module docstring).

    The baseline ``ll(p)`` of every probe is computed once (lazily, on first use) and
    shared by every candidate. ``loglik(candidates)`` returns the ``[C, P]`` matrix of
    ``ll(p | z)``; ``deltas(candidates)`` subtracts the baseline.

    Args:
        model, tokenizer: a causal LM and its tokenizer (pad token set; see ``load_model``).
        probes: the probe examples (columns).
        template: ``"paper"``, ``"plain"`` or ``"chat"`` (see :mod:`icp_influence.encoding`).
        batch_size: at most this many probe suffixes per forward pass (``None``: the token
            budget alone decides).
        max_length: context limit for truncation (default: the model's context length).
        truncation: ``"left"`` (cut the demonstration first) or ``"error"``.
        token_budget: at most this many token positions per suffix pass (a longer suffix
            runs alone).
        baseline_demo: when given, the baseline is ``ll(p | baseline_demo)`` — a neutral,
            irrelevant demonstration — instead of the zero-shot ``ll(p)``.
        engine: ``"auto"``, ``"packed"`` or ``"hf-cache"`` (see :func:`prefix_answer_logprobs`).
        precision: ``"fp32"`` (default; the exact path), ``"bf16"`` (bf16 matrix products, float32
            head and sums) or ``"auto"`` (:func:`~icp_influence.precision.choose_precision` for
            ``icp`` on the model's device); :attr:`precision` holds the choice and its reason.
    """

    def __init__(self, model, tokenizer, probes: Sequence[Example], *, template: str = "paper",
                 batch_size: int | None = None, max_length: int | None = None, truncation: str = "left",
                 token_budget: int = DEFAULT_TOKEN_BUDGET, baseline_demo: Example | None = None,
                 engine: str = "auto", precision: str | PrecisionChoice = "fp32"):
        check_template(template)
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}.")
        if token_budget < 1:
            raise ConfigError(f"token_budget must be ≥ 1, got {token_budget}.")
        if engine not in ("auto", "packed", "hf-cache"):
            raise ConfigError(f"Unknown ICP engine {engine!r}; choose 'auto', 'packed' or 'hf-cache'.")
        self.probes = list(probes)
        if not self.probes:
            raise EmptyPoolError("No probes to score against: the probe set is empty.")
        self.model, self.tokenizer = model, tokenizer
        self.template, self.truncation = template, truncation
        self.batch_size = int(batch_size) if batch_size is not None else None
        self.token_budget = int(token_budget)
        self.baseline_demo = baseline_demo
        self.precision = precision if isinstance(precision, PrecisionChoice) else choose_precision(
            precision, model_device(model), method="icp")
        self.max_length = int(max_length) if max_length is not None else context_length(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.encoder = PairEncoder(tokenizer, template=template, max_length=self.max_length,
                                   truncation=truncation)  # type: ignore[arg-type]
        self.counter = ForwardCounter()
        self.baseline_calls = 0
        self._base_encs = [self.encode(p, baseline_demo) for p in self.probes]  # tokenises every probe once
        self.n_answer_tokens = np.array([len(e.answer_ids) for e in self._base_encs], dtype=np.int64)
        self._baseline: np.ndarray | None = None
        self._baseline_tokens: list[np.ndarray] | None = None
        self._engine_choice = engine
        _ = self.engine  # resolve now: the packed engine's one-time self-check runs here, not mid-scoring

    @property
    def probe_ids(self) -> list[str]:
        return [p.id for p in self.probes]

    @property
    def engine(self) -> str:
        """``"packed"`` or ``"hf-cache"``: the engine this scorer's model runs on."""
        if self._engine_choice == "auto":
            self._engine_choice = "packed" if packed_supported(self.model) else "hf-cache"
        return self._engine_choice

    def encode(self, probe: Example, demo: Example | None) -> Encoded:
        """The pair's token segments (equal to :func:`~icp_influence.encoding.encode_pair`)."""
        return self.encoder.pair(probe, demo)

    def _score_encs(self, encs: Sequence[Encoded]) -> list[np.ndarray]:
        """Per-token answer log-probs of encoded pairs, one prefix pass per distinct prefix."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, e in enumerate(encs):
            groups.setdefault(e.prefix_ids, []).append(i)
        out: list[np.ndarray | None] = [None] * len(encs)
        for prefix, idx in groups.items():
            lps = prefix_answer_logprobs(self.model, prefix, [(encs[i].query_ids, encs[i].answer_ids) for i in idx],
                                         pad_id=self.pad_id, batch_size=self.batch_size,
                                         token_budget=self.token_budget, counter=self.counter, engine=self.engine,
                                         precision=self.precision.precision)
            for i, lp in zip(idx, lps):
                out[i] = lp
        return out  # type: ignore[return-value]

    # ---- baseline (once per probe)
    def baseline_token_logprobs(self) -> list[np.ndarray]:
        if self._baseline_tokens is None:
            self.baseline_calls += 1
            self._baseline_tokens = self._score_encs(self._base_encs)
            self._baseline = np.array([lp.sum() for lp in self._baseline_tokens], dtype=np.float64)
        return self._baseline_tokens

    @property
    def baseline(self) -> np.ndarray:
        """``ll(p)`` (or ``ll(p | baseline_demo)``) for every probe, shape ``[P]`` (computed once)."""
        self.baseline_token_logprobs()
        assert self._baseline is not None
        return self._baseline

    # ---- candidates
    def answer_token_logprobs(self, demo: Example | None) -> list[np.ndarray]:
        """Per-token answer log-probs of every probe after ``demo``."""
        return self._score_encs([self.encode(p, demo) for p in self.probes])

    def loglik_one(self, demo: Example) -> np.ndarray:
        """``ll(p | demo)`` for every probe, shape ``[P]`` float64."""
        return np.array([lp.sum() for lp in self.answer_token_logprobs(demo)], dtype=np.float64)

    def loglik(self, candidates: Sequence[Example], *, progress: bool = False, desc: str = "ICP") -> np.ndarray:
        """``ll(p | z)`` matrix, shape ``[len(candidates), P]`` float64."""
        cands = list(candidates)
        out = np.empty((len(cands), len(self.probes)), dtype=np.float64)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cands), desc=desc, unit="cand")
        for i, z in enumerate(cands):
            out[i] = self.loglik_one(z)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        return out

    def deltas(self, candidates: Sequence[Example], *, progress: bool = False) -> np.ndarray:
        """``ll(p | z) − ll(p)``, shape ``[len(candidates), P]``."""
        base = self.baseline
        return self.loglik(candidates, progress=progress) - base[None, :]

    def values(self, candidates: Sequence[Example], method: str = "win_rate", *, progress: bool = False) -> np.ndarray:
        """The stored per-probe values for ``method``: deltas, or per-token deltas."""
        check_method(method)
        d = self.deltas(candidates, progress=progress)
        return per_token(d, self.n_answer_tokens) if method == "per_token" else d


def baseline_meta(baseline_demo: Example | None) -> dict[str, Any]:
    """How the baseline was computed: ``zero_shot``, or after a neutral demonstration."""
    if baseline_demo is None:
        return {"baseline_kind": "zero_shot"}
    return {"baseline_kind": "neutral_demo", "baseline_demo": baseline_demo.id}


def check_method(method: str) -> str:
    if method not in METHODS:
        raise MethodError(f"Unknown ICP method {method!r}; choose one of {', '.join(METHODS)}.")
    return method


# --------------------------------------------------------------------------- public functions
@dataclass
class LoglikMatrix:
    """Raw ICP log-likelihoods: what the engine computes, before any score is taken.

    For a ScoreMatrix of ICP scores use the ``"icp"`` valuator (one scoring path).

    Attributes:
        ll: ``ll(p | z)``, shape ``[C, P]`` float64 (nats).
        baseline: ``ll(p)``, shape ``[P]``.
        n_answer_tokens: answer length of each probe, shape ``[P]``.
    """

    ll: np.ndarray
    baseline: np.ndarray
    n_answer_tokens: np.ndarray
    candidate_ids: list[str]
    probe_ids: list[str]
    template: str = "paper"
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def delta(self) -> np.ndarray:
        return self.ll - self.baseline[None, :]

    @property
    def per_token_delta(self) -> np.ndarray:
        return per_token(self.delta, self.n_answer_tokens)


def loglik_matrix(model, tokenizer, candidates: Sequence[Example], probes: Sequence[Example], *,
                  template: str = "paper", batch_size: int | None = None, progress: bool = False,
                  max_length: int | None = None, token_budget: int = DEFAULT_TOKEN_BUDGET,
                  baseline_demo: Example | None = None, engine: str = "auto") -> LoglikMatrix:
    """``ll(p | z)`` for every (candidate, probe) pair plus the baseline ``ll(p)`` (packed engine).

    ``baseline_demo``: a neutral demonstration for the baseline ``ll(p | baseline_demo)``
    (default: zero-shot). See :class:`IcpScorer` for the other arguments.
    """
    cands = list(candidates)
    if not cands:
        raise EmptyPoolError("No candidates to score: the pool is empty.")
    t0 = time.perf_counter()
    scorer = IcpScorer(model, tokenizer, probes, template=template, batch_size=batch_size, max_length=max_length,
                       token_budget=token_budget, baseline_demo=baseline_demo, engine=engine)
    base = scorer.baseline
    ll = scorer.loglik(cands, progress=progress)
    return LoglikMatrix(ll, base, scorer.n_answer_tokens, [c.id for c in cands], scorer.probe_ids, template,
                        time.perf_counter() - t0, meta={"token_budget": scorer.token_budget, "engine": scorer.engine,
                                                        **baseline_meta(baseline_demo)})


def naive_loglik_matrix(model, tokenizer, candidates: Sequence[Example], probes: Sequence[Example], *,
                        template: str = "paper", batch_size: int = 8, max_length: int | None = None,
                        progress: bool = False, baseline_demo: Example | None = None) -> LoglikMatrix:
    """Reference implementation: one full forward pass per (candidate, probe) sequence, no cache.

    ``batch_size`` sequences are right-padded into one forward (``batch_size=1``: one
    unpadded sequence per forward, the strictest reference).
    """
    t0 = time.perf_counter()
    cands, probes = list(candidates), list(probes)
    max_length = max_length if max_length is not None else context_length(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def enc(p, z):
        return encode_pair(tokenizer, p, z, template=template, max_length=max_length)

    base_encs = [enc(p, baseline_demo) for p in probes]
    base = np.array([lp.sum() for lp in answer_logprobs(model, base_encs, pad_id=pad, batch_size=batch_size)])
    ll = np.empty((len(cands), len(probes)), dtype=np.float64)
    it = cands
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(cands, desc="ICP (naive)", unit="cand")
    for i, z in enumerate(it):
        lps = answer_logprobs(model, [enc(p, z) for p in probes], pad_id=pad, batch_size=batch_size)
        ll[i] = [lp.sum() for lp in lps]
    return LoglikMatrix(ll, base, np.array([len(e.answer_ids) for e in base_encs]), [c.id for c in cands],
                        [p.id for p in probes], template, time.perf_counter() - t0,
                        meta=baseline_meta(baseline_demo))


def per_token(deltas: Any, n_answer_tokens: Any) -> np.ndarray:
    """ICP's per-token Δ: each probe's ``Δ(z, p)`` divided by its answer tokens ``|y_p|``.

    The one definition (the valuator's stored values, the aggregates, the agreement views and
    the widgets all call it). ``deltas`` ``[..., P]``, ``n_answer_tokens`` ``[P]`` (≥ 1).
    """
    d = np.asarray(deltas, dtype=np.float64)
    n = np.asarray(n_answer_tokens, dtype=np.float64)
    if n.ndim != 1 or d.shape[-1:] != n.shape:
        raise ConfigError(f"per_token: {n.shape} answer-token counts for deltas of shape {d.shape}; need one per probe.")
    if n.size and n.min() < 1:
        raise ConfigError("per_token: every probe needs at least one answer token.")
    return d / n


def _answer_tokens_of(sm: ScoreMatrix) -> np.ndarray:
    n = np.asarray(sm.meta.get("n_answer_tokens"), dtype=np.float64)
    if n.shape != (sm.shape[1],):
        raise ConfigError("This ICP matrix has no 'n_answer_tokens' in its meta; score it with the 'icp' valuator.")
    return n


def delta_values(sm: ScoreMatrix) -> np.ndarray:
    """The per-probe Δ ``[C, P]`` of an ICP matrix (whatever form it was stored in)."""
    if sm.meta.get("values") == "per_token_delta":
        return sm.values * _answer_tokens_of(sm)[None, :]
    return sm.values


def per_token_values(sm: ScoreMatrix) -> np.ndarray:
    """The per-probe per-token Δ ``[C, P]`` of an ICP matrix (whatever form it was stored in)."""
    if sm.meta.get("values") == "per_token_delta":
        return sm.values
    return per_token(sm.values, _answer_tokens_of(sm))


def icp_win_rate(sm: ScoreMatrix) -> np.ndarray:
    """Fraction of probes with ``ll(p|z) > ll(p)`` (strict; ties lose), shape ``[C]``."""
    return aggregate(sm.values, "win_rate")


def icp_mean_delta(sm: ScoreMatrix) -> np.ndarray:
    """Mean over probes of ``ll(p|z) − ll(p)`` in nats, shape ``[C]``."""
    return delta_values(sm).mean(axis=1)


def icp_per_token_delta(sm: ScoreMatrix) -> np.ndarray:
    """Mean over probes of ``(ll(p|z) − ll(p)) / |y_p|`` in nats per token, shape ``[C]``."""
    return aggregate(per_token_values(sm), "mean")


# --------------------------------------------------------------------------- token level
@dataclass
class TokenView:
    """How one demonstration changes each answer token's log-probability."""

    tokens: list[str]
    with_demo: np.ndarray      # [n_answer_tokens] log p(y_t | z, x, y_<t)
    without_demo: np.ndarray   # [n_answer_tokens] log p(y_t | x, y_<t)
    candidate_id: str
    probe_id: str

    @property
    def delta(self) -> np.ndarray:
        return self.with_demo - self.without_demo

    @property
    def total_delta(self) -> float:
        return float(self.delta.sum())


def token_logprobs(model, tokenizer, probe: Example, demo: Example | None, *, template: str = "paper",
                   max_length: int | None = None) -> TokenView:
    """Per-token answer log-probabilities of ``probe`` with and without ``demo`` (naive forward)."""
    max_length = max_length if max_length is not None else context_length(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with_enc = encode_pair(tokenizer, probe, demo, template=template, max_length=max_length)
    base_enc = encode_pair(tokenizer, probe, None, template=template, max_length=max_length)
    w, b = answer_logprobs(model, [with_enc, base_enc], pad_id=pad, batch_size=2)
    tokens = [tokenizer.decode([t]) for t in base_enc.answer_ids]
    return TokenView(tokens, w, b, demo.id if demo is not None else "", probe.id)
