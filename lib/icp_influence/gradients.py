"""Per-example gradients of the answer-only loss, parameter selection, random projection
and an on-disk gradient cache (docs/design.md).

The central object is :class:`Objective`: a model, a subset of its parameters (the ones
influence is computed for; every other parameter is frozen) and a per-example loss, in
``torch.func`` form. From it:

* :meth:`Objective.per_example_grads` — over length-sorted chunks of padded examples,
  flattened to ``[n, D]`` (or projected to ``[n, k]``): for linear layers one batched
  forward/backward with per-example weight gradients ``Σ_t δ_t a_tᵀ`` from module hooks
  (the fast path), otherwise ``vmap(grad(loss))``;
* :meth:`Objective.hvp` — Hessian-vector products of the mean loss (double backward);
* :meth:`Objective.hessian` — the explicit ``[D, D]`` Hessian (``torch.func.hessian``),
  for small ``D`` only.

:func:`lm_objective` builds the objective of a causal LM on Examples: the loss of one
example is the **sum** of the answer tokens' negative log-likelihoods (``reduction="sum"``,
the default, so that ``ℓ(p) = −ll(p)`` with ICP's summed log-likelihood; ``"mean"`` divides
by the number of answer tokens). Sequences are right-padded; with causal attention the
padding cannot influence the real tokens, so no attention mask is needed inside ``vmap``.

Parameter selections (:func:`select_parameters`): ``"all"``; ``"paper"`` — every parameter
(weight and bias) of the linear layers (``nn.Linear`` or GPT-2's ``Conv1D``) inside the
transformer blocks, i.e. attention and MLP projections, as in the authors' code; ``"lora"``
— names containing ``lora_``; ``"last:k"`` — all parameters of the last ``k`` blocks;
``"regex:PATTERN"`` — names matching a regular expression.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .errors import ConfigError
from .lm import answer_nll

SELECTIONS = ("all", "paper", "lora", "last:k", "regex:PATTERN")


# ------------------------------------------------------------------ parameter selection

def find_blocks(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """The transformer blocks: the ``nn.ModuleList`` holding the most parameters.

    Returns ``(qualified name of the list, its children)`` — e.g. ``"gpt_neox.layers"``,
    ``"model.layers"`` (llama) or ``"transformer.h"`` (gpt2).
    """
    best, best_n = None, -1
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            n = sum(p.numel() for p in mod.parameters())
            if n > best_n:
                best, best_n = (name, list(mod)), n
    if best is None:
        raise ConfigError(
            f"{type(model).__name__} has no nn.ModuleList of blocks, so 'paper' / 'last:k' selections "
            "do not apply; use params='all' or 'regex:...'."
        )
    return best


def _is_linear(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or type(mod).__name__ == "Conv1D"


def _linear_owners(model: nn.Module, names: Sequence[str]) -> dict[str, tuple[str, nn.Module, str, bool]] | None:
    """``{name: (module name, module, "weight" | "bias", is Conv1D)}`` when every parameter in
    ``names`` is the weight or bias of an ``nn.Linear`` / ``Conv1D`` and is not shared (tied)
    with another module; else ``None`` (the hooks gradient path does not apply)."""
    mods = dict(model.named_modules())
    users: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        users[id(p)] = users.get(id(p), 0) + 1
    owners = {}
    for n in names:
        mname, _, pname = n.rpartition(".")
        mod = mods.get(mname)
        if mod is None or not _is_linear(mod) or pname not in ("weight", "bias"):
            return None
        if users.get(id(getattr(mod, pname)), 0) != 1:
            return None
        owners[n] = (mname, mod, pname, not isinstance(mod, nn.Linear))
    return owners


def select_parameters(model: nn.Module, selection: str | Sequence[str] = "all") -> list[str]:
    """Names of the parameters influence is computed for (in ``named_parameters`` order).

    ``selection``: ``"all"``, ``"paper"``, ``"lora"``, ``"last:k"``, ``"regex:PATTERN"`` or an
    explicit list of names. Raises :class:`ConfigError` when nothing matches.
    """
    all_names = [n for n, _ in model.named_parameters()]
    if not isinstance(selection, str):
        unknown = [n for n in selection if n not in all_names]
        if unknown:
            raise ConfigError(f"Unknown parameter name(s) {unknown[:3]}; see model.named_parameters().")
        chosen = set(selection)
    elif selection == "all":
        chosen = set(all_names)
    elif selection == "lora":
        chosen = {n for n in all_names if "lora_" in n}
        if not chosen:
            raise ConfigError("params='lora' but the model has no parameter named 'lora_*'; wrap it with peft first or use 'paper'.")
    elif selection == "paper":
        prefix, blocks = find_blocks(model)
        chosen = set()
        for i, block in enumerate(blocks):
            for mname, mod in block.named_modules():
                if _is_linear(mod):
                    for pname, _ in mod.named_parameters(recurse=False):
                        chosen.add(f"{prefix}.{i}.{mname}.{pname}" if mname else f"{prefix}.{i}.{pname}")
        chosen &= set(all_names)
    elif selection.startswith("last:"):
        try:
            k = int(selection.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"Bad selection {selection!r}: write 'last:K' with an integer K ≥ 1.") from None
        prefix, blocks = find_blocks(model)
        if not 1 <= k <= len(blocks):
            raise ConfigError(f"params='last:{k}' but the model has {len(blocks)} blocks; use 1 ≤ k ≤ {len(blocks)}.")
        heads = tuple(f"{prefix}.{i}." for i in range(len(blocks) - k, len(blocks)))
        chosen = {n for n in all_names if n.startswith(heads)}
    elif selection.startswith("regex:"):
        pat = re.compile(selection.split(":", 1)[1])
        chosen = {n for n in all_names if pat.search(n)}
    else:
        raise ConfigError(f"Unknown parameter selection {selection!r}; choose from {', '.join(SELECTIONS)}.")
    names = [n for n in all_names if n in chosen]
    if not names:
        raise ConfigError(f"Parameter selection {selection!r} matched no parameters of {type(model).__name__}.")
    return names


# ------------------------------------------------------------------ random projection

PROJECTIONS = ("gaussian", "rademacher", "countsketch")



#: Under bf16 autocast, keep the per-example weight-gradient sums of the hooks path in float32.
BF16_WEIGHT_GRADS_FP32 = True


class _HooksUnsupported(ConfigError):
    """The hooks path cannot split this forward pass into per-item rows (``auto`` falls back to vmap)."""

class Projector:
    """Seeded random projection ``R^D -> R^k``, generated block by block.

    ``kind="gaussian"``: ``P`` has i.i.d. entries ``N(0, 1/k)``; ``"rademacher"``: ``±1/sqrt(k)``.
    Projecting costs ``2·D·k`` FLOPs per example (one matrix product per block).

    ``kind="countsketch"``: each coordinate ``i`` of the gradient goes to one bucket
    ``h(i) ∈ [0, k)`` with a sign ``s(i) = ±1`` (``(Pa)_j = Σ_{h(i)=j} s(i) a_i``: one nonzero
    per coordinate). Projecting costs ``O(D)`` per example — one scatter-add of
    every coordinate — instead of ``O(D·k)``. Bucket and sign are drawn together, uniformly,
    as one integer ``r ∈ [0, 2k)`` per coordinate (``h = r mod k``, ``s = +1`` if ``r < k``):
    the rows are accumulated into ``[B, 2k]`` and the second half subtracted from the first.

    For every kind ``E⟨Pa, Pb⟩ = ⟨a, b⟩`` (for countsketch: the cross terms ``s(i)s(j)`` with
    ``i ≠ j`` vanish in expectation, and ``s(i)² = 1``). ``P`` is never materialised: the
    part belonging to parameter tensor ``t``, sub-block ``j`` is regenerated from the seed
    ``(seed, t, j)`` whenever needed (``block_rows × k`` Gaussian numbers, or ``max_block_elems``
    bucket indices, at a time), so memory stays bounded for any ``D``. The same (seed,
    tensor sizes, k, kind, device type) always gives the same ``P`` — candidates and probes
    are projected identically, whether the gradient comes flat or tensor by tensor.
    """

    def __init__(self, sizes: Sequence[int], k: int, *, seed: int = 0, kind: str = "gaussian",
                 max_block_elems: int = 1 << 22):
        if k < 1:
            raise ConfigError(f"projection dimension must be ≥ 1, got {k}.")
        if kind not in PROJECTIONS:
            raise ConfigError(f"Unknown projection kind {kind!r}; use one of {', '.join(PROJECTIONS)}.")
        self.sizes, self.k, self.seed, self.kind = [int(s) for s in sizes], int(k), int(seed), kind
        # rows of P generated at once: dense kinds keep block_rows × k numbers, countsketch block_rows indices
        self.block_rows = max(1, max_block_elems // self.k) if kind != "countsketch" else max(1, int(max_block_elems))

    def _generator(self, t: int, j: int, device) -> tuple[torch.Generator, str]:
        gen_device = "cuda" if torch.device(device).type == "cuda" else "cpu"
        g = torch.Generator(device=gen_device)
        g.manual_seed((self.seed * 1_000_003 + t * 65_537 + j) % (2**63 - 1))
        return g, gen_device

    def _block(self, t: int, j: int, rows: int, device, dtype) -> torch.Tensor:
        """Rows ``[rows, k]`` of a dense ``P`` (gaussian / rademacher)."""
        g, gen_device = self._generator(t, j, device)
        if self.kind == "gaussian":
            P = torch.randn(rows, self.k, generator=g, device=gen_device, dtype=torch.float32)
        else:
            P = torch.randint(0, 2, (rows, self.k), generator=g, device=gen_device).float().mul_(2).sub_(1)
        return P.to(device=device, dtype=dtype).mul_(1.0 / np.sqrt(self.k))

    def _buckets(self, t: int, j: int, rows: int, device) -> torch.Tensor:
        """Signed buckets ``r ∈ [0, 2k)`` (int64) of ``rows`` coordinates (countsketch)."""
        g, gen_device = self._generator(t, j, device)
        r = torch.empty(rows, dtype=torch.int64, device=gen_device).random_(0, 2 * self.k, generator=g)
        return r.to(device)

    def project_part(self, t: int, g: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Add the projection of tensor ``t``'s part ``g`` ``[B, sizes[t]]`` of the gradients to
        ``out`` ``[B, k]`` (a new zero matrix when ``None``) and return it."""
        if g.shape[1] != self.sizes[t]:
            raise ConfigError(f"Projector: part {t} has {g.shape[1]} coordinates, expected {self.sizes[t]}; "
                              "build the projector from the same parameter selection (objective.sizes).")
        B = g.shape[0]
        if out is None:
            out = torch.zeros(B, self.k, device=g.device, dtype=g.dtype)
        if self.kind == "countsketch":
            acc = torch.zeros(B, 2 * self.k, device=g.device, dtype=g.dtype)
            for j, r0 in enumerate(range(0, g.shape[1], self.block_rows)):
                r1 = min(r0 + self.block_rows, g.shape[1])
                acc.index_add_(1, self._buckets(t, j, r1 - r0, g.device), g[:, r0:r1])
            out += acc[:, :self.k] - acc[:, self.k:]
            return out
        for j, r0 in enumerate(range(0, g.shape[1], self.block_rows)):
            r1 = min(r0 + self.block_rows, g.shape[1])
            out += g[:, r0:r1] @ self._block(t, j, r1 - r0, g.device, g.dtype)
        return out

    def project_parts(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """``parts[t]``: ``[B, sizes[t]]`` (flattened gradient of tensor ``t``) -> ``[B, k]``."""
        if len(parts) != len(self.sizes):
            raise ConfigError(f"Projector: got {len(parts)} parts for {len(self.sizes)} parameter tensors.")
        out = None
        for t, g in enumerate(parts):
            out = self.project_part(t, g, out)
        return out

    def project(self, flat: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` -> ``[B, k]`` (``D = sum(sizes)``)."""
        if flat.shape[1] != sum(self.sizes):
            raise ConfigError(f"Projector: gradients have {flat.shape[1]} coordinates, expected {sum(self.sizes)}.")
        parts, o = [], 0
        for s in self.sizes:
            parts.append(flat[:, o:o + s])
            o += s
        return self.project_parts(parts)


# ------------------------------------------------------------------ the objective

def _math_attention():
    """Second-order AD needs the differentiable 'math' SDPA kernel (flash/efficient lack double backward)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def stack_collate(rows: Sequence[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.stack(col) for col in zip(*rows))


def length_batches(lengths: Sequence[int], max_batch: int, *, overhead_tokens: float = 32.0) -> list[list[int]]:
    """Split items into batches of similar length: lists of positions into ``lengths``.

    Items are sorted by length and cut into consecutive batches of at most ``max_batch``
    that minimise ``Σ_batches (size × longest + overhead_tokens)`` — the padded tokens a
    right-padded batch runs, plus a per-batch cost (dispatch, the per-batch parts of the
    backward) in token equivalents — exactly, by dynamic programming over the sorted
    lengths (``O(n · max_batch)``). Few long examples among many short ones get batches of
    their own instead of padding a whole batch to their length.
    """
    n = len(lengths)
    order = sorted(range(n), key=lambda i: (lengths[i], i))
    L = [int(lengths[i]) for i in order]
    INF = float("inf")
    best = [0.0] + [INF] * n
    cut = [0] * (n + 1)
    for i in range(1, n + 1):
        for j in range(max(0, i - max_batch), i):
            c = best[j] + (i - j) * L[i - 1] + overhead_tokens
            if c < best[i]:
                best[i], cut[i] = c, j
    out, i = [], n
    while i > 0:
        out.append(order[cut[i]:i])
        i = cut[i]
    return out[::-1]


class TensorItems(Sequence):
    """A dataset of aligned tensors (``X[i], y[i]``) usable as Objective items."""

    def __init__(self, *tensors: torch.Tensor):
        if not tensors or any(len(t) != len(tensors[0]) for t in tensors):
            raise ConfigError("TensorItems needs tensors with the same first dimension.")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return TensorItems(*(t[i] for t in self.tensors))
        return tuple(t[i] for t in self.tensors)


LossFn = Callable[..., torch.Tensor]  # (forward, *example tensors, unbatched) -> scalar


class Objective:
    """A per-example loss over a selection of a model's parameters, in functional form.

    Args:
        model: any ``nn.Module`` (kept in its current mode; use ``eval()``).
        names: parameter names to differentiate (see :func:`select_parameters`).
        loss_fn: ``loss_fn(forward, *example) -> scalar`` where ``forward(*args, **kw)``
            runs the model with the current parameters and ``example`` is one item's tensors
            without a batch dimension.
        collate: list of items -> tuple of batched tensors (default: stack each field).
        sort_key: optional item -> length; chunks are formed from length-sorted items so
            padding stays small (results are returned in the original order).
        token_view: optional ``(model, batch) -> (logits [N, C], labels [N])``: the summed
            loss of a batch as a cross-entropy (what EK-FAC through kronfluence needs).
        batch_loss: optional ``(model, *batch) -> [B]``: the loss of every item of a collated
            batch in one batched forward, where item ``b``'s loss depends on row ``b`` only
            (right padding, causal attention). With it, per-example gradients of parameters
            that all belong to linear layers take the ``"hooks"`` path (see
            :meth:`per_example_grads`).
    """

    def __init__(self, model: nn.Module, names: Sequence[str], loss_fn: LossFn, *,
                 collate: Callable[[Sequence[Any]], tuple[torch.Tensor, ...]] = stack_collate,
                 sort_key: Callable[[Any], int] | None = None,
                 token_view: Callable[[nn.Module, Any], tuple[torch.Tensor, torch.Tensor]] | None = None,
                 batch_loss: Callable[..., torch.Tensor] | None = None):
        self.model, self.names, self.loss_fn = model, list(names), loss_fn
        self.collate, self.sort_key, self.token_view = collate, sort_key, token_view
        self.batch_loss = batch_loss
        named = dict(model.named_parameters())
        missing = [n for n in self.names if n not in named]
        if missing:
            raise ConfigError(f"Unknown parameter(s) {missing[:3]} for {type(model).__name__}.")
        self.params = {n: named[n].detach() for n in self.names}
        self.frozen = {n: p.detach() for n, p in named.items() if n not in self.params}
        self.frozen.update({n: b for n, b in model.named_buffers()})
        self.shapes = [tuple(self.params[n].shape) for n in self.names]
        self.sizes = [int(np.prod(s)) if s else 1 for s in self.shapes]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(int).tolist()
        self._owners = _linear_owners(model, self.names)

    # -- basics
    @property
    def dim(self) -> int:
        return int(self.offsets[-1])

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    def forward_with(self, params: dict[str, torch.Tensor]) -> Callable[..., Any]:
        return lambda *a, **kw: functional_call(self.model, (params, self.frozen), a, kw)

    def example_loss(self, params: dict[str, torch.Tensor], *example: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.forward_with(params), *example)

    def flat_params(self) -> torch.Tensor:
        return torch.cat([self.params[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: flat[self.offsets[i]:self.offsets[i + 1]].view(self.shapes[i]) for i, n in enumerate(self.names)}

    def _to_device(self, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(b.to(self.device) for b in batch)

    def _order(self, items: Sequence[Any]) -> list[int]:
        if self.sort_key is None:
            return list(range(len(items)))
        return sorted(range(len(items)), key=lambda i: self.sort_key(items[i]))

    def _grad_batches(self, items: Sequence[Any], chunk_size: int) -> list[list[int]]:
        """The batches of per-example gradients: length buckets of ≤ ``chunk_size`` items
        (:func:`length_batches`) when items have a ``sort_key``, else consecutive chunks."""
        if self.sort_key is None:
            return [list(range(s, min(s + chunk_size, len(items)))) for s in range(0, len(items), chunk_size)]
        return length_batches([self.sort_key(x) for x in items], chunk_size)

    # -- per-example gradients
    @property
    def grad_methods(self) -> list[str]:
        """The per-example gradient paths available for this objective (fastest first)."""
        return (["hooks"] if self.batch_loss is not None and self._owners is not None else []) + ["vmap", "loop"]

    def per_example_grads(self, items: Sequence[Any], *, chunk_size: int = 8, projector: Projector | None = None,
                          method: str = "auto", vectorize: bool = True, progress: bool = False,
                          desc: str = "gradients", out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Gradients of each item's loss, ``[len(items), D]`` (or ``[len(items), k]`` projected), on CPU.

        Items are processed in batches of at most ``chunk_size``; with a ``sort_key`` (LM
        objectives) the batches are length buckets that minimise padding plus a per-batch
        cost (:func:`length_batches`). Rows come back in the original order. ``method``:

        * ``"hooks"`` (the default when available, see :attr:`grad_methods`): one batched
          forward and one backward per chunk. Forward hooks keep each selected linear
          layer's input ``a`` ``[B, T, in]``; ``autograd.grad`` of the summed loss with
          respect to the layers' outputs gives ``δ = ∂ℓ/∂(output)`` ``[B, T, out]``, row ``b``
          being item ``b``'s own (its loss depends on its row only); then per item
          ``∂ℓ_b/∂W = Σ_t δ_{b,t} a_{b,t}ᵀ`` (one batched matrix product, ``∂ℓ_b/∂bias = Σ_t δ_{b,t}``).
          Padded positions have ``δ = 0`` exactly, so padding adds work but no error. No
          weight gradient of the whole batch is ever formed, and only the layers downstream
          of the first selected parameter are differentiated. Needs ``batch_loss`` and
          parameters that are all weights/biases of ``nn.Linear`` (or GPT-2 ``Conv1D``)
          layers used once per forward.
        * ``"vmap"``: ``vmap(grad(loss))`` over the padded chunk (any parameters; torch has
          no batching rule for the CPU flash-attention kernel and falls back to a loop
          there, with a warning).
        * ``"loop"`` (or ``vectorize=False``): ``grad(loss)`` item by item.

        All three give the same numbers (up to float rounding; tested against a plain
        ``loss.backward()`` per item).
        """
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be ≥ 1, got {chunk_size}.")
        self._hooks_fallback = method == "auto"
        if method == "auto":
            method = self.grad_methods[0] if vectorize else "loop"
        if method not in self.grad_methods:
            why = ("it needs batch_loss (lm_objective sets it) and parameters that all belong to nn.Linear/Conv1D "
                   "layers used once per forward") if method == "hooks" else "choose 'auto', 'hooks', 'vmap' or 'loop'"
            raise ConfigError(f"Gradient method {method!r} is not available for this objective: {why}. "
                              f"Available: {', '.join(self.grad_methods)}.")
        n = len(items)
        width = projector.k if projector is not None else self.dim
        out = torch.empty(n, width, dtype=out_dtype)  # every row is written below (no zero-fill of n × D)
        g_fn = grad(self.example_loss)
        auto_hooks = method == "hooks" and self._hooks_fallback
        it = self._grad_batches(items, chunk_size)
        if progress:
            from tqdm.auto import tqdm

            it = tqdm(it, desc=desc, unit="batch")
        for idx in it:
            batch = self._to_device(self.collate([items[i] for i in idx]))
            if method == "hooks":
                rows_at = torch.tensor(idx, dtype=torch.long)
                acc = None
                try:
                    for t, g in self._hooks_parts(batch):
                        if projector is not None:
                            acc = projector.project_part(t, g, acc)
                        else:
                            o0, o1 = self.offsets[t], self.offsets[t + 1]
                            g = g.to("cpu", out_dtype)
                            for j, r in enumerate(idx):  # contiguous row copies (faster than an index_put)
                                out[r, o0:o1].copy_(g[j])
                        del g
                except _HooksUnsupported as e:
                    if not auto_hooks:
                        raise ConfigError(str(e)) from None
                    method = "vmap"  # this model/selection cannot take the hooks path: vmap from here on
                else:
                    if acc is not None:
                        out[rows_at] = acc.to("cpu", out_dtype)
                    continue
            with torch.no_grad():
                if method == "vmap":
                    gd = vmap(g_fn, in_dims=(None,) + (0,) * len(batch), randomness="different")(self.params, *batch)
                else:
                    per = [g_fn(self.params, *(b[j] for b in batch)) for j in range(len(idx))]
                    gd = {k: torch.stack([p[k] for p in per]) for k in self.names}
                parts = [gd[k].reshape(len(idx), -1) for k in self.names]
                rows = projector.project_parts(parts) if projector is not None else torch.cat(parts, dim=1)
            out[idx] = rows.to("cpu", out_dtype)
        return out

    def _hooks_parts(self, batch: tuple[torch.Tensor, ...]):
        """Per-example gradients of one batch by the hooks path: yields ``(t, [B, sizes[t]])``."""
        assert self._owners is not None and self.batch_loss is not None
        model = self.model
        modules = {m: mod for m, mod, _, _ in self._owners.values()}
        acts: dict[str, torch.Tensor] = {}
        outs: dict[str, torch.Tensor] = {}
        calls: dict[str, int] = {}

        def hook_for(mname: str):
            def hook(mod, inp, output):
                calls[mname] = calls.get(mname, 0) + 1
                acts[mname] = inp[0].detach()
                outs[mname] = output
            return hook

        handles = [mod.register_forward_hook(hook_for(m)) for m, mod in modules.items()]
        selected = {id(named) for named in (dict(model.named_parameters())[n] for n in self.names)}
        flags = [(p, p.requires_grad) for p in model.parameters()]
        try:
            for p, _ in flags:
                p.requires_grad_(id(p) in selected)
            with torch.enable_grad():
                losses = self.batch_loss(model, *batch)
                if any(c != 1 for c in calls.values()) or set(calls) != set(modules):
                    raise _HooksUnsupported("The hooks gradient path needs every selected linear layer to run exactly "
                                            "once per forward; use per_example_grads(..., method='vmap').")
                B = batch[0].shape[0]
                if any(a.ndim < 2 or a.shape[0] != B for a in acts.values()):
                    # e.g. an LM head applied to the answer positions of the whole batch at once
                    # ([N_answer, hidden]): rows no longer belong to one item each.
                    raise _HooksUnsupported("The hooks gradient path needs each selected layer's input to be "
                                            "[batch, ..., features]; use per_example_grads(..., method='vmap').")
                names = list(modules)
                used = [outs[m] for m in names if outs[m].requires_grad]
                deltas = dict(zip([m for m in names if outs[m].requires_grad],
                                  torch.autograd.grad(losses.sum(), used, allow_unused=True) if used else []))
        finally:
            for h in handles:
                h.remove()
            for p, flag in flags:
                p.requires_grad_(flag)
        outs.clear()
        B = batch[0].shape[0]
        # Under bf16 autocast (the "bf16" precision) the per-example weight gradients Σ_t δ_t a_tᵀ are still
        # summed over tokens in float32 (an autocast bmm would round every one of them to bf16).
        fp32_sums = BF16_WEIGHT_GRADS_FP32 and torch.is_autocast_enabled(self.device.type)
        with torch.no_grad(), (torch.autocast(self.device.type, enabled=False) if fp32_sums
                               else contextlib.nullcontext()):
            for t, n in enumerate(self.names):
                mname, _, pname, conv = self._owners[n]
                d = deltas.get(mname)
                if d is None:  # the loss does not depend on this layer
                    yield t, torch.zeros(B, self.sizes[t], device=self.device, dtype=self.dtype)
                    continue
                d = d.reshape(B, -1, d.shape[-1])
                if fp32_sums:
                    d = d.to(self.dtype)
                if pname == "bias":
                    g = d.sum(dim=1)
                else:
                    a = acts[mname].reshape(B, -1, acts[mname].shape[-1])
                    if fp32_sums:
                        a = a.to(self.dtype)
                    g = torch.bmm(a.transpose(1, 2), d) if conv else torch.bmm(d.transpose(1, 2), a)
                yield t, g.reshape(B, -1)

    # -- second order
    def mean_loss(self, params: dict[str, torch.Tensor], batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        losses = vmap(self.example_loss, in_dims=(None,) + (0,) * len(batch), randomness="different")(params, *batch)
        return losses.mean()

    def _batches(self, items: Sequence[Any], batch_size: int | None):
        order = self._order(items)
        bs = batch_size or len(items)
        for s in range(0, len(items), bs):
            idx = order[s:s + bs]
            yield len(idx), self._to_device(self.collate([items[i] for i in idx]))

    def hvp(self, items: Sequence[Any], v: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
        """``H v`` with ``H`` the Hessian of the mean loss over ``items``; ``v``: ``[D]``."""
        v = v.to(self.device, self.dtype)
        vd = self.unflatten(v)
        total = torch.zeros_like(v)
        n = len(items)
        with _math_attention():
            for m, batch in self._batches(items, batch_size):
                total += self._hvp_batch(batch, vd) * (m / n)
        return total

    def _hvp_batch(self, batch, vd) -> torch.Tensor:
        params = {k: p.detach().clone().requires_grad_(True) for k, p in self.params.items()}
        leaves = [params[k] for k in self.names]
        loss = self.mean_loss(params, batch)
        gs = torch.autograd.grad(loss, leaves, create_graph=True)
        dot = sum((g * vd[k]).sum() for g, k in zip(gs, self.names))
        hv = torch.autograd.grad(dot, leaves, allow_unused=True)
        return torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1)
                          for h, p in zip(hv, leaves)]).detach()

    def hessian(self, items: Sequence[Any], *, batch_size: int | None = None, max_dim: int = 4096) -> torch.Tensor:
        """The explicit Hessian ``[D, D]`` of the mean loss (``torch.func.hessian``); ``D ≤ max_dim``."""
        if self.dim > max_dim:
            raise ConfigError(
                f"The exact Hessian over {self.dim} parameters would be {self.dim}×{self.dim}; the limit is "
                f"{max_dim}. Select fewer parameters (params='last:1' or 'regex:...'), or use method 'cg' / 'lissa' / 'ekfac'."
            )
        theta = self.flat_params()
        H = torch.zeros(self.dim, self.dim, dtype=self.dtype, device=self.device)
        n = len(items)
        try:
            with _math_attention(), warnings.catch_warnings():
                # the first forward-mode pass makes torch register its JVP decompositions with
                # torch.jit.script, which warns that it is deprecated: torch's own doing, not ours
                warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
                for m, batch in self._batches(items, batch_size):
                    def f(flat, batch=batch):
                        return self.mean_loss(self.unflatten(flat), batch)

                    H += torch.func.hessian(f)(theta).detach() * (m / n)
        except (RuntimeError, NotImplementedError):  # forward-mode AD unsupported here: columns by HVP
            eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
            H = torch.stack([self.hvp(items, e, batch_size=batch_size) for e in eye], dim=1)
            H = (H + H.T) / 2
        return H


# ------------------------------------------------------------------ LM objective

def lm_loss_fn(reduction: str = "sum") -> LossFn:
    """Per-example answer-only loss of a causal LM: ``(forward, ids [T], labels [T]) -> scalar``."""
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"Unknown loss reduction {reduction!r}; use 'sum' or 'mean'.")

    def loss(forward, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # An all-ones mask that is not vmapped: right padding + causal attention needs no mask,
        # and passing one skips transformers' data-dependent padding checks (vmap-safe).
        mask = torch.ones(1, ids.shape[-1], dtype=torch.long, device=ids.device)
        logits = forward(input_ids=ids.unsqueeze(0), attention_mask=mask).logits[0]
        return answer_nll(logits, labels, reduction)

    return loss


def lm_batch_loss(reduction: str = "sum"):
    """Per-example answer-only losses of a right-padded batch: ``(model, ids [B, T], labels [B, T]) -> [B]``
    (:func:`~icp_influence.lm.batch_answer_nll`; the LM head runs at the answer positions only)."""
    from .lm import batch_answer_nll

    if reduction not in ("sum", "mean"):
        raise ConfigError(f"Unknown loss reduction {reduction!r}; use 'sum' or 'mean'.")

    def loss(model, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return batch_answer_nll(model, ids, labels, reduction)

    return loss


def encoded_collate(pad_id: int):
    """Right-pad a list of ``Encoded`` into ``(input_ids, labels)`` ``[B, T]``."""
    from .lm import pad_batch

    def collate(encs):
        ids, _, labels = pad_batch(list(encs), pad_id)
        return ids, labels

    return collate


def lm_objective(model, tokenizer, *, params: str | Sequence[str] = "paper", reduction: str = "sum") -> Objective:
    """The :class:`Objective` of a causal LM whose items are :class:`~icp_influence.encoding.Encoded`."""
    from .lm import answer_token_view

    names = select_parameters(model, params)
    return Objective(model, names, lm_loss_fn(reduction), collate=encoded_collate(tokenizer.pad_token_id),
                     sort_key=len, token_view=answer_token_view, batch_loss=lm_batch_loss(reduction))


def encode_examples(tokenizer, examples: Sequence[Any], *, template: str = "paper", max_length: int | None = None):
    """``encode_example`` for each example (the example alone: the loss used for gradients)."""
    from .encoding import encode_example

    return [encode_example(tokenizer, ex, template=template, max_length=max_length) for ex in examples]


# ------------------------------------------------------------------ gradient cache

class GradientCache:
    """Per-example gradients on disk, keyed by a configuration hash; never recomputed.

    Files live in ``root/grads-<hash>/part-<ids digest>.safetensors``; each holds a
    ``[n, width]`` float32 matrix and the ids of its rows (in the file's metadata). A
    lookup reads only the headers to find which ids are stored; the missing ones are
    computed (once) and written atomically as a new part, so several processes (shards)
    can share one cache. ``computed`` / ``loaded`` count rows for tests and logs.
    """

    def __init__(self, root: str | Path, key: dict[str, Any]):
        from .utils import atomic_write_json, config_hash

        self.key = key
        self.dir = Path(root) / f"grads-{config_hash(key)}"
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "key.json").exists():
            atomic_write_json(self.dir / "key.json", key)
        self.computed = 0
        self.loaded = 0

    def _index(self) -> dict[str, tuple[Path, int]]:
        from safetensors import safe_open

        index: dict[str, tuple[Path, int]] = {}
        for f in sorted(self.dir.glob("part-*.safetensors")):
            try:
                with safe_open(str(f), framework="pt") as fh:
                    ids = json.loads(fh.metadata()["ids"])
            except Exception:  # noqa: BLE001 - an unreadable part is ignored (recomputed)
                continue
            for r, i in enumerate(ids):
                index.setdefault(i, (f, r))
        return index

    def get(self, ids: Sequence[str], compute: Callable[[list[int]], torch.Tensor]) -> torch.Tensor:
        """Rows for ``ids`` (``[len(ids), width]``); ``compute(indices into ids)`` fills the missing."""
        from safetensors import safe_open
        from safetensors.torch import save_file

        from .utils import atomic_path

        ids = [str(i) for i in ids]
        index = self._index()
        missing = [j for j, i in enumerate(ids) if i not in index]
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            rows = compute(missing).to("cpu", torch.float32).contiguous()
            new_ids = [ids[j] for j in missing]
            digest = hashlib.sha256("\x1f".join(new_ids).encode()).hexdigest()[:16]
            with atomic_path(self.dir / f"part-{digest}.safetensors") as tmp:
                save_file({"grads": rows}, str(tmp), metadata={"ids": json.dumps(new_ids)})
            fresh = {i: rows[r] for r, i in enumerate(new_ids)}
            self.computed += len(missing)
        out_rows: list[torch.Tensor | None] = [fresh.get(i) for i in ids]
        by_file: dict[Path, list[tuple[int, int]]] = {}
        for j, i in enumerate(ids):
            if out_rows[j] is None:
                f, r = index[i]
                by_file.setdefault(f, []).append((j, r))
        for f, pairs in by_file.items():
            with safe_open(str(f), framework="pt") as fh:
                t = fh.get_tensor("grads")
            for j, r in pairs:
                out_rows[j] = t[r]
            self.loaded += len(pairs)
        if not out_rows:
            return torch.zeros(0, 0)
        return torch.stack(out_rows)  # type: ignore[arg-type]
