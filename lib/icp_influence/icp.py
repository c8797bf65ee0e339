"""In-context probing (ICP): value a candidate by how much it helps a model answer probes.

For candidate ``z`` and probe ``p = (x_p, y_p)``::

    ll(p | z) = Σ_t log P(y_p,t | context(z), x_p, y_p,<t)      (answer tokens only)
    ll(p)     = the same without a demonstration                 (zero-shot baseline)
    Δ(z, p)   = ll(p | z) − ll(p)                                 (positive = z helps p)

Scores per candidate: **win-rate** ``mean_p 1[Δ > 0]`` (strict ``>``, the paper's),
**mean delta** ``mean_p Δ`` and **per-token delta** ``mean_p Δ / |y_p|``.

Efficiency. Every sequence is ``prefix(z) + query(p) + answer(p)`` with the prefix
tokenised on its own (:func:`~icp_influence.encoding.encode_pair`), so the demonstration
is a token-level prefix shared by all probes. :class:`IcpScorer` runs the prefix once,
keeps its key/value cache (``past_key_values``), replicates it across a batch of
right-padded probe suffixes and scores only the suffix tokens — with explicit
``attention_mask`` (prefix + suffix) and ``position_ids`` (``len(prefix) + t``). The
zero-shot baseline is computed once per probe (it is shared by all candidates).
Log-probabilities are taken in float64 on the answer positions only. The result equals
the naive per-pair forward pass (:func:`naive_loglik_matrix`) within 1e-4 nats (tests).
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from .data import Example
from .encoding import Encoded, check_template, encode_pair
from .errors import ConfigError, DataFormatError, EmptyPoolError, MethodError
from .lm import answer_logprobs, model_device
from .models import context_length
from .scores import ScoreMatrix

METHODS = ("win_rate", "delta", "per_token")


# --------------------------------------------------------------------------- KV-cache core
def _supports_logits_to_keep(model) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


def _cache_kwarg(model) -> str:
    """``cache`` in transformers ≥ 5.2x, ``past_key_values`` before."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _cache_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The (keys, values) of a plain full-attention ``DynamicCache``, else ``None``."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # pragma: no cover
        return None
    layers = getattr(cache, "layers", None)
    if not layers:
        return None
    out = []
    for layer in layers:
        if type(layer) is not DynamicLayer or getattr(layer, "keys", None) is None:
            return None  # sliding-window / linear-attention layers: use the naive path
        out.append((layer.keys, layer.values))
    return out


def _expanded_cache(model, kv: list[tuple[torch.Tensor, torch.Tensor]], batch: int):
    """A fresh ``DynamicCache`` holding the prefix keys/values repeated ``batch`` times."""
    from transformers import DynamicCache

    data = [(k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:])) for k, v in kv]
    return DynamicCache(data)


@dataclass
class ForwardCounter:
    """Counts forward passes of the scorer (tests use it to check the baseline runs once)."""

    prefix: int = 0
    suffix: int = 0
    full: int = 0
    tokens: int = 0  # token positions run through the model (padding included)

    @property
    def total(self) -> int:
        return self.prefix + self.suffix + self.full


@torch.no_grad()
def prefix_answer_logprobs(
    model,
    prefix_ids: Sequence[int],
    suffixes: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_id: int,
    batch_size: int = 8,
    counter: ForwardCounter | None = None,
) -> list[np.ndarray]:
    """Answer-token log-probs of ``prefix + query_i + answer_i`` for every suffix ``i``.

    The prefix is run once; its KV cache is replicated over batches of right-padded
    suffixes. Returns one float64 array of length ``len(answer_i)`` per suffix. With an
    empty prefix (a model with no BOS and no demonstration) the suffixes are run as is.

    Args:
        prefix_ids: the shared token prefix (may be empty).
        suffixes: ``(query_ids, answer_ids)`` pairs; answers must be non-empty.
        pad_id: token id used for right padding (masked out).
        batch_size: suffixes per forward pass.
    """
    device = model_device(model)
    prefix = list(prefix_ids)
    sufs = [(list(q), list(a)) for q, a in suffixes]
    if not sufs:
        return []
    if any(not a for _, a in sufs):
        raise DataFormatError("An answer has no tokens; nothing to score.")
    if any(not q for q, _ in sufs):
        # The first answer token is predicted by the last prefix token: move it into the suffix.
        if not prefix:
            raise DataFormatError("A sequence starts with its answer (no prefix and no query): the first "
                                  "answer token has nothing to be predicted from. Give the probe a prompt.")
        sufs = [([prefix[-1], *q], a) for q, a in sufs]
        prefix = prefix[:-1]
    P = len(prefix)
    kv = None
    if P:
        out = model(input_ids=torch.tensor([prefix], device=device), use_cache=True)
        if counter is not None:
            counter.prefix += 1
            counter.tokens += P
        kv = _cache_layers(_output_cache(out))
        if kv is None:  # unsupported cache type: fall back to full sequences (exact, slower)
            encs = [Encoded(tuple(prefix), tuple(q), tuple(a)) for q, a in sufs]
            if counter is not None:
                counter.full += (len(encs) + batch_size - 1) // batch_size
                counter.tokens += sum(len(e) for e in encs)
            return answer_logprobs(model, encs, pad_id=pad_id, batch_size=batch_size)
    keep = _supports_logits_to_keep(model)
    # Longest first: similar lengths share a batch, so little padding.
    order = sorted(range(len(sufs)), key=lambda i: -(len(sufs[i][0]) + len(sufs[i][1])))
    results: list[np.ndarray | None] = [None] * len(sufs)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        B = len(rows)
        L = max(len(sufs[i][0]) + len(sufs[i][1]) for i in rows)
        ids = torch.full((B, L), pad_id, dtype=torch.long)
        mask = torch.zeros((B, P + L), dtype=torch.long)
        mask[:, :P] = 1
        for r, i in enumerate(rows):
            seq = sufs[i][0] + sufs[i][1]
            ids[r, :len(seq)] = torch.tensor(seq)
            mask[r, P:P + len(seq)] = 1
        pos = (P + torch.arange(L)).unsqueeze(0).expand(B, L)
        # Position t of the suffix predicts token t+1; answer j of row r sits at q_r + j.
        lo = min(len(sufs[i][0]) for i in rows) - 1
        hi = max(len(sufs[i][0]) + len(sufs[i][1]) for i in rows) - 1
        kwargs: dict[str, Any] = dict(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      position_ids=pos.to(device))
        if kv is not None:
            kwargs.update({_cache_kwarg(model): _expanded_cache(model, kv, B), "use_cache": True})
        else:
            kwargs.update(use_cache=False)
        if keep:
            kwargs["logits_to_keep"] = torch.arange(lo, hi, device=device)
        logits = model(**kwargs).logits
        if counter is not None:
            counter.suffix += 1
            counter.tokens += B * L
        off = lo if keep else 0
        r_idx, t_idx, tgt, owner = [], [], [], []
        for r, i in enumerate(rows):
            q, a = sufs[i]
            for j, tok in enumerate(a):
                r_idx.append(r)
                t_idx.append(len(q) + j - 1 - off)
                tgt.append(tok)
                owner.append(i)
        sel = logits[torch.tensor(r_idx, device=device), torch.tensor(t_idx, device=device)].double()
        lp = torch.log_softmax(sel, dim=-1).gather(-1, torch.tensor(tgt, device=device).unsqueeze(-1)).squeeze(-1)
        lp = lp.cpu().numpy()
        pos_in = 0
        for i in rows:
            n = len(sufs[i][1])
            results[i] = lp[pos_in:pos_in + n].copy()
            pos_in += n
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- scorer
class IcpScorer:
    """Scores candidates against a fixed probe set, reusing prefix KV caches.

    The zero-shot baseline ``ll(p)`` of every probe is computed once (lazily, on first
    use) and shared by every candidate. ``loglik(candidates)`` returns the ``[C, P]``
    matrix of ``ll(p | z)``; ``deltas(candidates)`` subtracts the baseline.

    Args:
        model, tokenizer: a causal LM and its tokenizer (pad token set; see ``load_model``).
        probes: the probe examples (columns).
        template: ``"paper"``, ``"plain"`` or ``"chat"`` (see :mod:`icp_influence.encoding`).
        batch_size: probes per forward pass.
        max_length: context limit for truncation (default: the model's context length).
        truncation: ``"left"`` (cut the demonstration first) or ``"error"``.
    """

    def __init__(self, model, tokenizer, probes: Sequence[Example], *, template: str = "paper",
                 batch_size: int = 8, max_length: int | None = None, truncation: str = "left"):
        check_template(template)
        if batch_size < 1:
            raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}.")
        self.probes = list(probes)
        if not self.probes:
            raise EmptyPoolError("No probes to score against: the probe set is empty.")
        self.model, self.tokenizer = model, tokenizer
        self.template, self.batch_size, self.truncation = template, int(batch_size), truncation
        self.max_length = int(max_length) if max_length is not None else context_length(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.counter = ForwardCounter()
        self.baseline_calls = 0
        self._base_encs = [self.encode(p, None) for p in self.probes]
        self.n_answer_tokens = np.array([len(e.answer_ids) for e in self._base_encs], dtype=np.int64)
        self._baseline: np.ndarray | None = None
        self._baseline_tokens: list[np.ndarray] | None = None

    @property
    def probe_ids(self) -> list[str]:
        return [p.id for p in self.probes]

    def encode(self, probe: Example, demo: Example | None) -> Encoded:
        return encode_pair(self.tokenizer, probe, demo, template=self.template,
                           max_length=self.max_length, truncation=self.truncation)  # type: ignore[arg-type]

    def _score_encs(self, encs: Sequence[Encoded]) -> list[np.ndarray]:
        """Per-token answer log-probs of encoded pairs, one cached prefix per distinct prefix."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, e in enumerate(encs):
            groups.setdefault(e.prefix_ids, []).append(i)
        out: list[np.ndarray | None] = [None] * len(encs)
        for prefix, idx in groups.items():
            lps = prefix_answer_logprobs(self.model, prefix, [(encs[i].query_ids, encs[i].answer_ids) for i in idx],
                                         pad_id=self.pad_id, batch_size=self.batch_size, counter=self.counter)
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
        """``ll(p)`` for every probe, shape ``[P]`` (computed once)."""
        self.baseline_token_logprobs()
        assert self._baseline is not None
        return self._baseline

    # ---- candidates
    def loglik_one(self, demo: Example) -> np.ndarray:
        """``ll(p | demo)`` for every probe, shape ``[P]`` float64."""
        encs = [self.encode(p, demo) for p in self.probes]
        return np.array([lp.sum() for lp in self._score_encs(encs)], dtype=np.float64)

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
        return d / self.n_answer_tokens[None, :] if method == "per_token" else d

    def meta(self, method: str, model_name: str | None = None) -> dict[str, Any]:
        return icp_meta(method, template=self.template, model_name=model_name or model_label(self.model),
                        batch_size=self.batch_size, baseline=self.baseline, n_answer_tokens=self.n_answer_tokens)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise MethodError(f"Unknown ICP method {method!r}; choose one of {', '.join(METHODS)}.")
    return method


def model_label(model) -> str:
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "_name_or_path", "") or getattr(cfg, "model_type", "?"))


def icp_meta(method: str, *, template: str, model_name: str, batch_size: int | None = None,
             baseline: np.ndarray | None = None, n_answer_tokens: np.ndarray | None = None,
             **extra: Any) -> dict[str, Any]:
    """Metadata of an ICP ScoreMatrix (``values`` = deltas, or per-token deltas)."""
    meta: dict[str, Any] = {
        "method": "icp",
        "score": method,
        "values": "per_token_delta" if method == "per_token" else "delta",
        "default_aggregate": "win_rate" if method == "win_rate" else "mean",
        "model": model_name,
        "template": template,
    }
    if batch_size is not None:
        meta["batch_size"] = int(batch_size)
    if baseline is not None:
        meta["baseline"] = [float(x) for x in baseline]
    if n_answer_tokens is not None:
        meta["n_answer_tokens"] = [int(x) for x in n_answer_tokens]
    meta.update(extra)
    return meta


# --------------------------------------------------------------------------- public functions
@dataclass
class LoglikMatrix:
    """Raw ICP log-likelihoods.

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
        return self.delta / self.n_answer_tokens[None, :]

    def to_score_matrix(self, method: str = "win_rate", model_name: str = "?") -> ScoreMatrix:
        check_method(method)
        values = self.per_token_delta if method == "per_token" else self.delta
        return ScoreMatrix(values, self.candidate_ids, self.probe_ids,
                           icp_meta(method, template=self.template, model_name=model_name, baseline=self.baseline,
                                    n_answer_tokens=self.n_answer_tokens, **self.meta))


def loglik_matrix(model, tokenizer, candidates: Sequence[Example], probes: Sequence[Example], *,
                  template: str = "paper", batch_size: int = 8, progress: bool = False,
                  max_length: int | None = None) -> LoglikMatrix:
    """``ll(p | z)`` for every (candidate, probe) pair plus the baseline ``ll(p)`` (KV-cached)."""
    cands = list(candidates)
    if not cands:
        raise EmptyPoolError("No candidates to score: the pool is empty.")
    t0 = time.perf_counter()
    scorer = IcpScorer(model, tokenizer, probes, template=template, batch_size=batch_size, max_length=max_length)
    base = scorer.baseline
    ll = scorer.loglik(cands, progress=progress)
    return LoglikMatrix(ll, base, scorer.n_answer_tokens, [c.id for c in cands], scorer.probe_ids, template,
                        time.perf_counter() - t0)


def naive_loglik_matrix(model, tokenizer, candidates: Sequence[Example], probes: Sequence[Example], *,
                        template: str = "paper", batch_size: int = 8, max_length: int | None = None,
                        progress: bool = False) -> LoglikMatrix:
    """Reference implementation: one full forward pass per (candidate, probe) sequence, no cache."""
    t0 = time.perf_counter()
    cands, probes = list(candidates), list(probes)
    max_length = max_length if max_length is not None else context_length(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def enc(p, z):
        return encode_pair(tokenizer, p, z, template=template, max_length=max_length)

    base_encs = [enc(p, None) for p in probes]
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
                        [p.id for p in probes], template, time.perf_counter() - t0)


def score_icp(model, tokenizer, candidates: Sequence[Example], probes: Sequence[Example], *,
              template: str = "paper", method: str = "win_rate", batch_size: int = 8, progress: bool = True,
              max_length: int | None = None, model_name: str | None = None) -> ScoreMatrix:
    """ICP scores as a :class:`ScoreMatrix` of per-probe values (positive = helps).

    ``method``: ``"win_rate"`` (values = Δ, default aggregate = win-rate, the paper's
    score), ``"delta"`` (values = Δ, aggregate = mean) or ``"per_token"`` (values =
    Δ / answer tokens, aggregate = mean). ``meta`` records the baseline and answer
    lengths, so :func:`icp_win_rate`, :func:`icp_mean_delta` and :func:`icp_per_token_delta`
    work on any of them.
    """
    check_method(method)
    lm = loglik_matrix(model, tokenizer, candidates, probes, template=template, batch_size=batch_size,
                       progress=progress, max_length=max_length)
    sm = lm.to_score_matrix(method, model_name or model_label(model))
    sm.meta["batch_size"] = int(batch_size)
    return sm.check_finite()


def _deltas_of(sm: ScoreMatrix) -> np.ndarray:
    if sm.meta.get("values") == "per_token_delta":
        n = np.asarray(sm.meta.get("n_answer_tokens"), dtype=np.float64)
        if n.shape != (sm.shape[1],):
            raise ConfigError("This per-token ICP matrix has no 'n_answer_tokens' in its meta; cannot undo the normalisation.")
        return sm.values * n[None, :]
    return sm.values


def icp_win_rate(sm: ScoreMatrix) -> np.ndarray:
    """Fraction of probes with ``ll(p|z) > ll(p)`` (strict; ties lose), shape ``[C]``."""
    return (sm.values > 0).mean(axis=1)


def icp_mean_delta(sm: ScoreMatrix) -> np.ndarray:
    """Mean over probes of ``ll(p|z) − ll(p)`` in nats, shape ``[C]``."""
    return _deltas_of(sm).mean(axis=1)


def icp_per_token_delta(sm: ScoreMatrix) -> np.ndarray:
    """Mean over probes of ``(ll(p|z) − ll(p)) / |y_p|`` in nats per token, shape ``[C]``."""
    if sm.meta.get("values") == "per_token_delta":
        return sm.values.mean(axis=1)
    n = np.asarray(sm.meta.get("n_answer_tokens"), dtype=np.float64)
    if n.shape != (sm.shape[1],):
        raise ConfigError("This ICP matrix has no 'n_answer_tokens' in its meta; re-score with score_icp.")
    return (sm.values / n[None, :]).mean(axis=1)


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
