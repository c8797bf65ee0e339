"""The ICP engine: answer log-probabilities of many probe suffixes after one shared
demonstration prefix, fast and exact (what :class:`~icp_influence.icp.IcpScorer` runs).

:func:`prefix_answer_logprobs` runs the prefix once and keeps its keys/values per layer, then
packs the suffixes ``query + answer[:-1]`` back to back into rows sized by a token budget
(:func:`plan_passes`), with a registered attention function (``"icp_packed"``) that lets each
segment attend to the shared context plus its own earlier tokens: no padding, no replicated
cache; the LM head runs only at answer positions, its log-softmax in float64. Architectures the
packed path does not cover (:func:`packed_supported`) use the Hugging Face KV-cache path below.
Measurements: ``benchmarks/README.md``, "The ICP engine: measurements".
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .encoding import Encoded
from .errors import ConfigError, DataFormatError
from .lm import answer_logprobs, model_device, target_logprobs
from .precision import PrecisionChoice, autocast, full_precision

DEFAULT_TOKEN_BUDGET = 2048
HEAD_ROWS = 64  # LM-head rows per chunk: a 64 × 49k float64 block stays small (no page-fault storms)


@dataclass
class ForwardCounter:
    """Counts the scorer's forward passes and token positions.

    ``prefix``: demonstration-prefix passes (one per distinct prefix: once per candidate);
    ``suffix``: passes over packed probe suffixes; ``full``: full-sequence passes (fallback
    paths only); ``tokens``: positions run through the model, ``padding``: how many of
    them were padding (0 for the packed engine).
    """

    prefix: int = 0
    suffix: int = 0
    full: int = 0
    tokens: int = 0
    padding: int = 0

    @property
    def total(self) -> int:
        return self.prefix + self.suffix + self.full


# --------------------------------------------------------------------------- packed attention
_ATTN_NAME = "icp_packed"
_PASS: contextvars.ContextVar["_Pass | None"] = contextvars.ContextVar("icp_packed_pass", default=None)


class _Context:
    """A prefix's keys/values per layer, plus its last hidden state (computed once)."""

    __slots__ = ("kv", "length", "last_hidden")

    def __init__(self, kv: dict[int, tuple[torch.Tensor, torch.Tensor]], length: int, last_hidden: torch.Tensor):
        self.kv, self.length, self.last_hidden = kv, length, last_hidden


@dataclass
class _Pass:
    """One packed forward: segments ``[start, end)`` of the row, each with an optional context."""

    segments: list[tuple[int, int, _Context | None]]
    capture: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
    masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    attention_fp32: bool = False  # under bf16 autocast: scores, softmax and weighted sum in float32

    def mask(self, n_q: int, n_ctx: int, like: torch.Tensor) -> torch.Tensor:
        """Additive mask ``[n_q, n_ctx + n_q]``: the whole context, then causal (shared by layers)."""
        key = (n_q, n_ctx)
        m = self.masks.get(key)
        if m is None:
            allowed = torch.ones(n_q, n_ctx + n_q, dtype=torch.bool, device=like.device).tril(n_ctx)
            m = torch.zeros(allowed.shape, dtype=like.dtype, device=like.device).masked_fill_(~allowed, float("-inf"))
            self.masks[key] = m
        return m


def _packed_attention(module, query, key, value, attention_mask=None, dropout: float = 0.0, scaling=None, **kwargs):
    """Attention over packed segments (query ``[1, H, T, D]``, key/value ``[1, Hkv, T, D]``).

    Each segment attends to all of its context's keys (kept from the prefix pass,
    concatenated in front of the segment's own keys) and causally to its own keys;
    segments never see each other, and no key is padding. Returns ``[1, T, H, D]``.
    """
    plan = _PASS.get()
    if plan is None:  # pragma: no cover - only reachable if the config switch leaks
        raise RuntimeError("icp_packed attention called outside an ICP pass.")
    layer = module.layer_idx
    if plan.capture is not None:
        plan.capture[layer] = (key, value)
    gqa = {"enable_gqa": True} if query.shape[1] != key.shape[1] else {}
    if plan.attention_fp32 and torch.is_autocast_enabled(query.device.type):
        with torch.autocast(query.device.type, enabled=False):
            return _packed_attention(module, query.float(), key.float(), value.float(), attention_mask, dropout,
                                     scaling, **kwargs)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    out = query.new_empty(query.shape[0], query.shape[2], query.shape[1], query.shape[3])
    for s, e, ctx in plan.segments:
        q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
        if ctx is None:
            o = sdpa(q, k, v, is_causal=True, scale=scaling, **gqa)
        else:
            ck, cv = ctx.kv[layer]
            o = sdpa(q, torch.cat((ck, k), 2), torch.cat((cv, v), 2), attn_mask=plan.mask(e - s, ck.shape[2], q),
                     scale=scaling, **gqa)
        out[:, s:e] = o.transpose(1, 2)
    return out, None


def _register_attention() -> bool:
    try:
        from transformers import AttentionInterface
    except ImportError:  # pragma: no cover - very old transformers
        return False
    AttentionInterface.register(_ATTN_NAME, _packed_attention)
    return True


_HAVE_INTERFACE = _register_attention()


@contextlib.contextmanager
def _packed_pass(model, plan: _Pass) -> Iterator[None]:
    """Run the model's attention through :func:`_packed_attention` for one forward."""
    config = model.config
    old = config._attn_implementation
    token = _PASS.set(plan)
    config._attn_implementation = _ATTN_NAME
    try:
        yield
    finally:
        config._attn_implementation = old
        _PASS.reset(token)


def _structurally_supported(model) -> bool:
    """Decoder-only models with plain full attention on every layer (no windows, no soft-capping)."""
    if not _HAVE_INTERFACE:
        return False
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    if getattr(model, "base_model", model) is model or model.get_output_embeddings() is None:
        return False
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return False
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return False
    if getattr(cfg, "attn_logit_softcapping", None) or getattr(cfg, "final_logit_softcapping", None):
        return False
    if getattr(cfg, "alibi", False):
        return False
    layers = [m for m in model.modules() if hasattr(m, "layer_idx") and "Attention" in type(m).__name__]
    return bool(layers)


_SELF_CHECK: "weakref.WeakKeyDictionary[torch.nn.Module, bool]" = weakref.WeakKeyDictionary()


def packed_supported(model) -> bool:
    """Whether the packed engine handles ``model``: structural checks, then a self-check.

    The self-check scores a few random sequences both ways (packed vs one full forward
    each) once per model; any failure or a difference above 1e-3 nats (0.1 for 16-bit
    weights) means the model uses the Hugging Face KV-cache path instead.
    """
    ok = _SELF_CHECK.get(model)
    if ok is not None:
        return ok
    ok = _structurally_supported(model)
    if ok:
        try:
            vocab = model.get_input_embeddings().weight.shape[0]
            g = torch.Generator().manual_seed(0)
            ids = torch.randint(0, vocab, (20,), generator=g).tolist()
            prefix, sufs = ids[:6], [(ids[6:9], ids[9:12]), ((), ids[12:14]), (ids[14:15], ids[15:20])]
            got = _packed_answer_logprobs(model, prefix, sufs, token_budget=64, batch_size=None, counter=None)
            ref = answer_logprobs(model, [Encoded(tuple(prefix), tuple(q), tuple(a)) for q, a in sufs], pad_id=0,
                                  batch_size=1)
            tol = 1e-3 if model.get_input_embeddings().weight.element_size() >= 4 else 0.1  # 16-bit: coarse rounding
            ok = all(g_.shape == r.shape and float(np.abs(g_ - r).max()) < tol for g_, r in zip(got, ref))
        except Exception as e:  # noqa: BLE001 - any failure means: not supported
            warnings.warn(f"ICP packed engine unavailable for {type(model).__name__} ({type(e).__name__}: {e}); "
                          "using the slower Hugging Face KV-cache path.", RuntimeWarning, stacklevel=2)
            ok = False
    _SELF_CHECK[model] = ok
    return ok


# --------------------------------------------------------------------------- packed engine
def plan_passes(lengths: Sequence[int], *, token_budget: int, batch_size: int | None = None) -> list[list[int]]:
    """Split items (in the given order) into contiguous passes: ≤ ``token_budget`` tokens
    (an item longer than the budget gets a pass of its own) and ≤ ``batch_size`` items.

    The number of passes is the greedy minimum; the split then balances the tokens per
    pass (the smallest per-pass limit that still needs no more passes).
    """
    if token_budget < 1:
        raise ConfigError(f"token_budget must be ≥ 1, got {token_budget}.")
    cap = batch_size if batch_size is not None else len(lengths) or 1

    def greedy(limit: int) -> list[list[int]]:
        passes: list[list[int]] = []
        cur: list[int] = []
        used = 0
        for i, n in enumerate(lengths):
            if cur and (used + n > limit or len(cur) >= cap):
                passes.append(cur)
                cur, used = [], 0
            cur.append(i)
            used += n
        if cur:
            passes.append(cur)
        return passes

    best = greedy(token_budget)
    if len(best) <= 1:
        return best
    lo, hi = max(1, min(token_budget, -(-sum(lengths) // len(best)))), token_budget
    while lo < hi:  # the smallest limit needing no more passes: balanced passes
        mid = (lo + hi) // 2
        if len(greedy(mid)) <= len(best):
            hi = mid
        else:
            lo = mid + 1
    return greedy(lo)


def _head_logprobs(model, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``log softmax(head(hidden))[target]`` per row, float64, in chunks of ``HEAD_ROWS`` rows.

    Always in the head's own precision (float32 weights: float32 logits), also under bf16
    autocast: the head and its log-softmax are where the log-probabilities accumulate."""
    head = model.get_output_embeddings()
    out = torch.empty(hidden.shape[0], dtype=torch.float64, device=hidden.device)
    with full_precision(hidden):
        hidden = hidden.to(head.weight.dtype)
        for s in range(0, hidden.shape[0], HEAD_ROWS):
            out[s:s + HEAD_ROWS] = target_logprobs(head(hidden[s:s + HEAD_ROWS]), targets[s:s + HEAD_ROWS],
                                                   dtype=torch.float64)
    return out


#: Under bf16 autocast, run the packed attention (scores, softmax, weighted sum) in float32 too.
#: Off: measured on SmolLM2 (16 × 8 instruction-set pairs) it changed nothing beyond noise
#: (max |Δ| 0.90 vs 0.85 nats, rms 0.35 vs 0.36) and cost time (see the module docstring).
BF16_ATTENTION_FP32 = False


def _run_prefix(model, prefix: Sequence[int], counter: ForwardCounter | None, precision: str = "fp32") -> _Context:
    device = model_device(model)
    plan = _Pass([(0, len(prefix), None)], capture={}, attention_fp32=BF16_ATTENTION_FP32)
    with _packed_pass(model, plan), autocast(precision, device):
        h = model.base_model(input_ids=torch.tensor([list(prefix)], device=device),
                             position_ids=torch.arange(len(prefix), device=device)[None], use_cache=False
                             ).last_hidden_state
    if counter is not None:
        counter.prefix += 1
        counter.tokens += len(prefix)
    assert plan.capture is not None
    return _Context(plan.capture, len(prefix), h[0, -1])


@torch.no_grad()
def _packed_answer_logprobs(model, prefix_ids: Sequence[int], suffixes: Sequence[tuple[Sequence[int], Sequence[int]]],
                            *, token_budget: int, batch_size: int | None,
                            counter: ForwardCounter | None, precision: str = "fp32") -> list[np.ndarray]:
    """Answer log-probs of ``prefix + query_i + answer_i`` with the packed engine (see module doc)."""
    device = model_device(model)
    prefix = list(prefix_ids)
    P = len(prefix)
    ctx = _run_prefix(model, prefix, counter, precision) if P else None
    # Suffix i runs query + answer[:-1]; the logit at suffix position t predicts token t+1. An
    # empty query's first answer token is predicted by the prefix's last position instead.
    sufs = [(list(q), list(a)) for q, a in suffixes]
    inputs = [(q + a)[:-1] for q, a in sufs]
    order = sorted(range(len(sufs)), key=lambda i: -len(inputs[i]))
    order = [i for i in order if inputs[i]]
    results: list[np.ndarray] = [np.empty(len(a)) for _, a in sufs]
    first_rows = [i for i, (q, _) in enumerate(sufs) if not q]
    if first_rows:
        assert ctx is not None
        targets = torch.tensor([sufs[i][1][0] for i in first_rows], device=device)
        lp = _head_logprobs(model, ctx.last_hidden.unsqueeze(0).expand(len(first_rows), -1), targets).cpu().numpy()
        for i, v in zip(first_rows, lp):
            results[i][0] = v
    for rows in plan_passes([len(inputs[i]) for i in order], token_budget=token_budget, batch_size=batch_size):
        members = [order[r] for r in rows]
        ids: list[int] = []
        pos: list[int] = []
        segments: list[tuple[int, int, _Context | None]] = []
        sel: list[int] = []
        tgt: list[int] = []
        for i in members:
            q, a = sufs[i]
            s = len(ids)
            ids += inputs[i]
            pos += range(P, P + len(inputs[i]))
            segments.append((s, len(ids), ctx))
            j0 = 1 if not q else 0           # answer tokens predicted inside this segment
            sel += range(s + len(q) - 1 + j0, s + len(q) - 1 + len(a))
            tgt += a[j0:]
        plan = _Pass(segments, attention_fp32=BF16_ATTENTION_FP32)
        with _packed_pass(model, plan), autocast(precision, device):
            hidden = model.base_model(input_ids=torch.tensor([ids], device=device),
                                      position_ids=torch.tensor([pos], device=device), use_cache=False
                                      ).last_hidden_state[0]
        if counter is not None:
            counter.suffix += 1
            counter.tokens += len(ids)
        lp = _head_logprobs(model, hidden[torch.tensor(sel, device=device)], torch.tensor(tgt, device=device))
        lp = lp.cpu().numpy()
        k = 0
        for i in members:
            q, a = sufs[i]
            j0 = 1 if not q else 0
            n = len(a) - j0
            results[i][j0:] = lp[k:k + n]
            k += n
    return results


# --------------------------------------------------------------------------- Hugging Face KV-cache fallback
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
            return None  # sliding-window / linear-attention layers: use full sequences
        out.append((layer.keys, layer.values))
    return out


def _expanded_cache(model, kv: list[tuple[torch.Tensor, torch.Tensor]], batch: int):
    """A fresh ``DynamicCache`` holding the prefix keys/values repeated ``batch`` times."""
    from transformers import DynamicCache

    data = [(k.expand(batch, *k.shape[1:]), v.expand(batch, *v.shape[1:])) for k, v in kv]
    return DynamicCache(data)


@torch.no_grad()
def _hf_cache_answer_logprobs(model, prefix: list[int], sufs: list[tuple[list[int], list[int]]], *, pad_id: int,
                              batch_size: int, counter: ForwardCounter | None) -> list[np.ndarray]:
    """The previous engine (fallback): the prefix's ``DynamicCache`` replicated over batches of
    right-padded suffixes. Exact but slow on CPU (see the module docstring)."""
    device = model_device(model)
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
            counter.padding += B * L - sum(len(sufs[i][0]) + len(sufs[i][1]) for i in rows)
        off = lo if keep else 0
        r_idx, t_idx, tgt = [], [], []
        for r, i in enumerate(rows):
            q, a = sufs[i]
            for j, tok in enumerate(a):
                r_idx.append(r)
                t_idx.append(len(q) + j - 1 - off)
                tgt.append(tok)
        sel = logits[torch.tensor(r_idx, device=device), torch.tensor(t_idx, device=device)]
        lp = target_logprobs(sel, torch.tensor(tgt, device=device), dtype=torch.float64,
                             chunk_rows=HEAD_ROWS).cpu().numpy()
        pos_in = 0
        for i in rows:
            n = len(sufs[i][1])
            results[i] = lp[pos_in:pos_in + n].copy()
            pos_in += n
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- entry point
def prefix_answer_logprobs(
    model,
    prefix_ids: Sequence[int],
    suffixes: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_id: int = 0,
    batch_size: int | None = None,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    counter: ForwardCounter | None = None,
    engine: str = "auto",
    precision: str = "fp32",
) -> list[np.ndarray]:
    """Answer-token log-probs of ``prefix + query_i + answer_i`` for every suffix ``i``.

    The prefix is run once; the suffixes are packed into passes of at most
    ``token_budget`` tokens (and at most ``batch_size`` suffixes when given). Returns one
    float64 array of length ``len(answer_i)`` per suffix, in the input order.

    Args:
        prefix_ids: the shared token prefix (may be empty).
        suffixes: ``(query_ids, answer_ids)`` pairs; answers must be non-empty.
        pad_id: padding token of the fallback path (the packed engine never pads).
        engine: ``"auto"`` (packed when supported), ``"packed"`` or ``"hf-cache"`` (the
            previous engine: replicated ``DynamicCache`` and right padding).
        precision: ``"fp32"`` or ``"bf16"`` (the body's matrix products under bf16 autocast;
            the LM head, its log-softmax and the sums stay float32/float64; see
            :mod:`icp_influence.precision`).
    """
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size must be ≥ 1, got {batch_size}.")
    prefix = list(prefix_ids)
    sufs = [(list(q), list(a)) for q, a in suffixes]
    if not sufs:
        return []
    if any(not a for _, a in sufs):
        raise DataFormatError("An answer has no tokens; nothing to score.")
    if not prefix and any(not q for q, _ in sufs):
        raise DataFormatError("A sequence starts with its answer (no prefix and no query): the first "
                              "answer token has nothing to be predicted from. Give the probe a prompt.")
    if engine not in ("auto", "packed", "hf-cache"):
        raise ConfigError(f"Unknown ICP engine {engine!r}; choose 'auto', 'packed' or 'hf-cache'.")
    precision = precision.precision if isinstance(precision, PrecisionChoice) else precision
    use_packed = engine == "packed" or (engine == "auto" and packed_supported(model))
    if use_packed:
        return _packed_answer_logprobs(model, prefix, sufs, token_budget=token_budget, batch_size=batch_size,
                                       counter=counter, precision=precision)
    if any(not q for q, _ in sufs):
        # The first answer token is predicted by the last prefix token: move it into the suffix.
        sufs = [([prefix[-1], *q], a) for q, a in sufs]
        prefix = prefix[:-1]
    with autocast(precision, model_device(model)):  # (this fallback's LM head runs under it too)
        return _hf_cache_answer_logprobs(model, prefix, sufs, pad_id=pad_id, batch_size=batch_size or 8,
                                         counter=counter)
