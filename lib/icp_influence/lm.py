"""Language-model primitives shared by the valuators, fine-tuning and the notebooks.

* :func:`answer_logprobs` — log-probability of every answer token of encoded sequences
  (one forward pass per batch, right padding, float64 accumulation).
* :func:`generate_answer` — greedy decoding of a probe's answer.

(The per-token view of one demonstration — each answer token's log-probability with and
without it — is :func:`icp_influence.icp.token_logprobs`.)
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .data import Example
from .encoding import Encoded, encode_pair
from .errors import ConfigError
from .precision import full_precision


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def pad_batch(encs: Sequence[Encoded], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad to ``(input_ids, attention_mask, labels)``, each ``[batch, max_len]``."""
    n = max(len(e) for e in encs)
    ids = torch.full((len(encs), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encs), n), dtype=torch.long)
    labels = torch.full((len(encs), n), -100, dtype=torch.long)
    for i, e in enumerate(encs):
        L = len(e)
        ids[i, :L] = torch.tensor(e.input_ids)
        mask[i, :L] = 1
        labels[i, :L] = torch.tensor(e.labels)
    if device is not None:
        ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    return ids, mask, labels


def shift_answer(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align predictions with targets: position t predicts token t+1.

    ``logits`` ``[..., T, V]``, ``labels`` ``[..., T]`` → ``([..., T-1, V], [..., T-1])``.
    """
    return logits[..., :-1, :], labels[..., 1:]


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, dtype: torch.dtype | None = None,
                    chunk_rows: int | None = None) -> torch.Tensor:
    """``log softmax(logits)[target]`` of every row: the one place the project turns logits into
    token log-probabilities (every answer log-likelihood, loss and ICP score goes through it).

    ``logits`` ``[..., V]``, ``targets`` ``[...]`` (valid token ids). Computed in ``dtype``
    (default: the logits' own, widened to float32 from float16/bfloat16; ICP asks for float64:
    a float32 log-softmax over a 49k vocabulary is biased by about 1e-5 nats per token).
    ``chunk_rows``: for 2-D logits, that many rows at a time (bounds the memory of a wide
    log-softmax).
    """
    if dtype is None:
        dtype = torch.float32 if logits.dtype in (torch.float16, torch.bfloat16) else logits.dtype
    if chunk_rows is None or logits.dim() != 2:
        return torch.log_softmax(logits.to(dtype), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    out = torch.empty(logits.shape[0], dtype=dtype, device=logits.device)
    for s in range(0, logits.shape[0], chunk_rows):
        out[s:s + chunk_rows] = target_logprobs(logits[s:s + chunk_rows], targets[s:s + chunk_rows], dtype=dtype)
    return out


def answer_token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log p(labels[t+1] | ≤ t)`` at every position; 0 where the label is ``-100`` (not scored).

    ``logits``: ``[..., T, V]`` (position t predicts token t+1); ``labels``: ``[..., T]``.
    Returns ``[..., T-1]`` aligned with ``labels[..., 1:]``, in float32 or wider.
    """
    shift_logits, shift_labels = shift_answer(logits, labels)
    out = target_logprobs(shift_logits, shift_labels.clamp_min(0))
    return out.masked_fill(shift_labels == -100, 0.0)


def answer_nll(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """The answer-only negative log-likelihood ``ℓ = −Σ_t log p(y_t | …)`` of each sequence.

    The one loss of the project: gradient influence differentiates it, fine-tuning
    minimises it, the one-step ground truth and EK-FAC use it, and ICP's summed answer
    log-likelihood is ``−ℓ``. ``logits`` ``[..., T, V]``, ``labels`` ``[..., T]`` (−100 =
    not scored); returns one value per sequence (a scalar for one sequence).
    ``reduction="mean"`` divides by the number of answer tokens.
    """
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"Unknown loss reduction {reduction!r}; use 'sum' or 'mean'.")
    tok = answer_token_logprobs(logits, labels)
    nll = -tok.sum(dim=-1)
    if reduction == "mean":
        n = (labels[..., 1:] != -100).sum(dim=-1).clamp_min(1).to(nll.dtype)
        return nll / n
    return nll


#: Model types whose causal-LM logits are exactly ``output_embeddings(base_model(...).last_hidden_state)``
#: (no logit scaling or soft-capping): :func:`batch_answer_nll` runs their head on the answer positions only.
PLAIN_HEAD_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt_neox", "gpt2")


def batch_answer_nll(model, ids: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """:func:`answer_nll` of every row of a right-padded batch, ``[B]``, in one forward.

    For the model types in :data:`PLAIN_HEAD_MODEL_TYPES` the vocabulary projection runs
    only at the positions that predict an answer token (the other logits are never
    needed; with a 49k vocabulary they would cost a quarter of SmolLM2's forward); other
    models compute every logit. No attention mask is passed (an all-ones one): with right
    padding and causal attention the padding cannot reach a real token, so row ``b``'s loss
    depends on row ``b`` only.
    """
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"Unknown loss reduction {reduction!r}; use 'sum' or 'mean'.")
    mask = torch.ones_like(ids)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    base = getattr(model, "base_model", None)
    if (getattr(getattr(model, "config", None), "model_type", None) in PLAIN_HEAD_MODEL_TYPES and head is not None
            and base is not None and base is not model):
        hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
        target = labels[:, 1:]
        keep = target != -100
        with full_precision(hidden):  # under bf16 autocast: the head and log-softmax stay in the weights' dtype
            tok = target_logprobs(head(hidden[:, :-1][keep].to(head.weight.dtype)), target[keep])
        row = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(target)[keep]
        nll = torch.zeros(ids.shape[0], dtype=tok.dtype, device=ids.device).index_add(0, row, -tok)
    else:
        nll = answer_nll(model(input_ids=ids, attention_mask=mask).logits, labels, "sum")
    if reduction == "mean":
        return nll / (labels[:, 1:] != -100).sum(dim=-1).clamp_min(1).to(nll.dtype)
    return nll


def answer_token_view(model, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits ``[N, V]``, labels ``[N]``) of a right-padded batch ``(ids, labels)``: the
    answer loss as a token-level cross-entropy (−100 = not scored), for kronfluence."""
    ids, labels = batch
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    logits, labels = shift_answer(logits, labels)
    return logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1)


@torch.no_grad()
def answer_logprobs(model, encs: Sequence[Encoded], *, pad_id: int, batch_size: int = 8) -> list[np.ndarray]:
    """Per-token answer log-probabilities for each encoded sequence (naive, no cache).

    Returns one ``float64`` array of length ``len(enc.answer_ids)`` per input, in input
    order. Batches are formed from sequences of similar length (sorted by length), so that
    little of each batch is padding.
    """
    device = model_device(model)
    out: list[np.ndarray | None] = [None] * len(encs)
    order = sorted(range(len(encs)), key=lambda j: len(encs[j].input_ids))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        chunk = [encs[j] for j in idx]
        ids, mask, labels = pad_batch(chunk, pad_id, device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        for i, (j, e) in enumerate(zip(idx, chunk)):
            # float64 log-softmax on the answer positions only: a float32 log-softmax over a
            # large vocabulary is biased by ~1e-5 nats per token (SmolLM2: 49k tokens).
            a0, n = e.answer_start, len(e.answer_ids)
            tgt = torch.tensor(e.answer_ids, device=logits.device)
            out[j] = target_logprobs(logits[i, a0 - 1:a0 - 1 + n], tgt, dtype=torch.float64).cpu().numpy().copy()
    return out  # type: ignore[return-value]


def answer_loglik(model, tokenizer, probe: Example, demo: Example | None = None, *, template: str = "paper") -> float:
    """Summed answer log-likelihood ``ll(p | z)`` (or ``ll(p)`` without a demonstration)."""
    enc = encode_pair(tokenizer, probe, demo, template=template)
    return float(answer_logprobs(model, [enc], pad_id=tokenizer.pad_token_id)[0].sum())


@torch.no_grad()
def generate_answer(model, tokenizer, probe: Example, demo: Example | None = None, *,
                    template: str = "chat", max_new_tokens: int = 24, first_line: bool | None = None) -> str:
    """Greedy answer to ``probe`` (optionally after a demonstration), stripped.

    ``first_line``: keep only the first line (default: with every template but ``chat``,
    whose answers end at the end-of-turn token; pass ``False`` for multi-line answers)."""
    enc = encode_pair(tokenizer, probe.with_output(probe.output or "?"), demo, template=template)
    prompt = torch.tensor([[*enc.prefix_ids, *enc.query_ids]], device=model_device(model))
    out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
    if (template != "chat") if first_line is None else first_line:
        text = text.split("\n")[0]
    return text.strip()
