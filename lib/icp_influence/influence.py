"""Gradient-based influence on the answer-only loss (DESIGN.md §2): inner product, cosine,
TracIn, influence functions (exact / LiSSA / CG / EK-FAC via ``kronfluence``) and the
authors' ``paper_signed_log`` transform.

Sign convention (every method): **positive = the candidate helps the probe**, i.e.
training on ``z`` lowers the probe's loss.

* inner product ``⟨∇ℓ(p), ∇ℓ(z)⟩`` — one SGD step on ``z`` changes ``ℓ(p)`` by ``−η⟨·,·⟩``;
* cosine ``⟨∇ℓ(p), ∇ℓ(z)⟩ / (‖∇ℓ(p)‖‖∇ℓ(z)‖)`` (a zero gradient raises ConfigError);
* TracIn ``Σ_k η_k ⟨∇ℓ_k(p), ∇ℓ_k(z)⟩`` over checkpoints ``k`` with learning rates ``η_k``;
* influence function ``∇ℓ(p)ᵀ (H + λI)⁻¹ ∇ℓ(z)`` with ``H`` the Hessian of the **mean**
  training loss and damping ``λ > 0``. Koh & Liang's ``I_up,loss = −∇ℓ(p)ᵀ H⁻¹ ∇ℓ(z)`` is
  the *change* of the probe loss when ``z`` is upweighted; we report its negation so that
  positive means helpful. Removing ``z`` from ``n`` training points changes the probe loss
  by about ``score / n`` (the leave-one-out check of notebook 03).
* ``paper_signed_log``: the authors' released "IP" transform — every gradient element's
  magnitude clamped to ``[1e-4, 1]`` (sign kept, zeros stay zero), then per parameter
  tensor ``s = ⟨g_p, g_z⟩`` mapped to ``sign(s)·log|s|`` (NaN/inf → 0), summed over tensors,
  rounded to fp16. Not an inner product; offered only for reproduction.

The iHVP is applied to the probe gradients (there are few probes), so candidate
gradients are computed once (and cached on disk, see
:class:`~icp_influence.gradients.GradientCache`) and scored with one matrix product.
"""
from __future__ import annotations

import copy
import hashlib
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .errors import ConfigError, MethodError, NonFiniteScoreError
from .gradients import GradientCache, Objective, Projector, encode_examples, lm_objective

METHODS = ("inner_product", "cosine", "tracin", "exact", "lissa", "cg", "ekfac", "paper_signed_log")
IF_METHODS = ("exact", "lissa", "cg", "ekfac")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise MethodError(f"Unknown influence method {method!r}; choose one of {', '.join(METHODS)}.")
    return method


def check_damping(damping: float | None) -> float:
    if damping is None or not math.isfinite(float(damping)) or float(damping) <= 0:
        raise ConfigError(
            f"damping λ must be a finite number > 0 for influence functions, got {damping!r}: (H + λI) must be "
            "invertible. Try 1e-3 (convex models) to 1e-1 (language models)."
        )
    return float(damping)


# ------------------------------------------------------------------ score kernels

def inner_product_scores(Gc: torch.Tensor, Gp: torch.Tensor) -> np.ndarray:
    """``[n_c, D] × [n_p, D] -> [n_c, n_p]`` float64."""
    return (Gc.double() @ Gp.double().T).numpy()


def cosine_scores(Gc: torch.Tensor, Gp: torch.Tensor, candidate_ids: Sequence[str] | None = None,
                  probe_ids: Sequence[str] | None = None) -> np.ndarray:
    """Cosine similarity of gradients; a zero-norm gradient raises :class:`ConfigError`."""
    Gc, Gp = Gc.double(), Gp.double()
    nc, np_ = Gc.norm(dim=1), Gp.norm(dim=1)
    for norms, ids, what in ((nc, candidate_ids, "candidate"), (np_, probe_ids, "probe")):
        bad = torch.nonzero(norms == 0).flatten().tolist()
        if bad:
            names = [ids[i] for i in bad[:5]] if ids is not None else bad[:5]
            raise ConfigError(
                f"cosine is undefined: {len(bad)} {what}(s) have a zero gradient ({names}). Their loss is flat in the "
                "selected parameters (e.g. answers fully masked, or parameters that do not affect the loss); "
                "use method='inner_product' or another parameter selection."
            )
    return ((Gc / nc[:, None]) @ (Gp / np_[:, None]).T).numpy()


def paper_signed_log_scores(Gc: torch.Tensor, Gp: torch.Tensor, offsets: Sequence[int]) -> np.ndarray:
    """The authors' transform (module docstring). ``offsets``: parameter-tensor boundaries in D."""
    def clamp(g: torch.Tensor) -> torch.Tensor:
        return g.sign() * g.abs().clamp(1e-4, 1.0)

    Gc, Gp = clamp(Gc.float()), clamp(Gp.float())
    total = torch.zeros(Gc.shape[0], Gp.shape[0], dtype=torch.float32)
    for a, b in zip(offsets[:-1], offsets[1:]):
        s = Gc[:, a:b] @ Gp[:, a:b].T
        v = s.sign() * torch.log(s.abs())
        total += torch.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
    return total.half().double().numpy()


# ------------------------------------------------------------------ inverse-Hessian-vector products

HVP = Callable[[torch.Tensor], torch.Tensor]


def ihvp_exact(H: torch.Tensor, V: torch.Tensor, damping: float) -> torch.Tensor:
    """``(H + λI)⁻¹ Vᵀ`` for rows of ``V`` ``[m, D]``; returns ``[m, D]``."""
    damping = check_damping(damping)
    A = H.double() + damping * torch.eye(H.shape[0], dtype=torch.float64, device=H.device)
    return torch.linalg.solve(A, V.double().to(H.device).T).T.to(V.dtype).cpu()


def ihvp_cg(hvp: HVP, V: torch.Tensor, damping: float, *, max_iter: int = 200, tol: float = 1e-10) -> torch.Tensor:
    """Conjugate gradient on ``(H + λI) x = v`` for each row of ``V``.

    Needs ``H + λI`` positive definite; a direction of non-positive curvature raises
    :class:`ConfigError` (raise the damping). ``tol`` is on ``‖r‖ / ‖v‖``.
    """
    damping = check_damping(damping)
    out = torch.zeros_like(V)
    for i in range(V.shape[0]):
        b = V[i]
        x = torch.zeros_like(b)
        r = b.clone()
        p = r.clone()
        rs = r.dot(r)
        bnorm = b.norm().clamp_min(1e-300)
        for _ in range(max_iter):
            if rs.sqrt() / bnorm < tol:
                break
            Ap = hvp(p).to(b.dtype) + damping * p
            curv = p.dot(Ap)
            if curv <= 0:
                raise ConfigError(
                    f"CG met non-positive curvature (pᵀ(H+λI)p = {float(curv):.3g}): H + λI is not positive definite "
                    f"at λ = {damping}. Increase the damping, or use method='lissa'/'ekfac'."
                )
            alpha = rs / curv
            x += alpha * p
            r -= alpha * Ap
            rs_new = r.dot(r)
            p = r + (rs_new / rs) * p
            rs = rs_new
        out[i] = x
    return out


def top_eigenvalue(hvp: HVP, dim: int, *, iters: int = 30, seed: int = 0, dtype=torch.float64) -> float:
    """Largest-magnitude eigenvalue of ``H`` by power iteration (``iters`` HVPs)."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(dim, generator=g, dtype=dtype)
    v /= v.norm()
    lam = 0.0
    for _ in range(iters):
        w = hvp(v).to(dtype)
        lam = float(v.dot(w))
        n = w.norm()
        if n == 0:
            return 0.0
        v = w / n
    return abs(lam)


def ihvp_lissa(hvp: HVP, V: torch.Tensor, damping: float, *, depth: int = 1000, scale: float | None = None,
               tol: float = 1e-10, seed: int = 0) -> torch.Tensor:
    """LiSSA (Agarwal et al. 2017) as used by Koh & Liang: the Neumann series
    ``h_j = v + (I − (H + λI)/s) h_{j−1}``, ``(H + λI)⁻¹ v ≈ h_J / s``.

    ``scale`` ``s`` must exceed the largest eigenvalue of ``H + λI`` (default: 1.1 × a
    power-iteration estimate). With a full-batch ``hvp`` the recursion is deterministic and
    converges to the exact iHVP; stops early when ``‖h_j − h_{j−1}‖ ≤ tol‖h_j‖``.
    """
    damping = check_damping(damping)
    if scale is None:
        scale = 1.1 * (top_eigenvalue(hvp, V.shape[1], seed=seed, dtype=V.dtype) + damping)
    if scale <= 0:
        raise ConfigError(f"LiSSA scale must be > 0, got {scale}.")
    out = torch.zeros_like(V)
    for i in range(V.shape[0]):
        v = V[i]
        h = v.clone()
        for _ in range(depth):
            h_new = v + h - (hvp(h).to(v.dtype) + damping * h) / scale
            if not torch.isfinite(h_new).all():
                raise NonFiniteScoreError(
                    f"LiSSA diverged (scale {scale:.3g}, λ = {damping}): H + λI has eigenvalues outside (0, scale). "
                    "Increase the damping or the scale, or use method='cg'/'exact'."
                )
            delta = (h_new - h).norm()
            h = h_new
            if delta <= tol * h.norm():
                break
        out[i] = h / scale
    return out


# ------------------------------------------------------------------ influence on any Objective

def influence_scores(obj: Objective, train_items: Sequence[Any], candidate_items: Sequence[Any],
                     probe_items: Sequence[Any], *, method: str = "exact", damping: float = 1e-3,
                     chunk_size: int = 16, hessian_batch_size: int | None = None, max_exact_dim: int = 4096,
                     lissa_depth: int = 1000, lissa_scale: float | None = None, lissa_tol: float = 1e-10,
                     cg_max_iter: int = 200, cg_tol: float = 1e-10, seed: int = 0,
                     ekfac_kwargs: dict[str, Any] | None = None,
                     candidate_grads: torch.Tensor | None = None, probe_grads: torch.Tensor | None = None) -> np.ndarray:
    """Scores ``[len(candidate_items), len(probe_items)]`` for any :class:`Objective`.

    ``train_items`` define ``H`` (Hessian of their mean loss) for the influence-function
    methods. ``inner_product`` / ``cosine`` / ``paper_signed_log`` ignore them.
    """
    check_method(method)
    if method == "tracin":
        raise MethodError("tracin needs several checkpoints: use tracin_scores(objectives, learning_rates, ...).")
    if method == "ekfac":
        return ekfac_scores(obj, train_items, candidate_items, probe_items, damping=damping,
                            **(ekfac_kwargs or {}))
    Gc = candidate_grads if candidate_grads is not None else obj.per_example_grads(candidate_items, chunk_size=chunk_size, out_dtype=obj.dtype)
    Gp = probe_grads if probe_grads is not None else obj.per_example_grads(probe_items, chunk_size=chunk_size, out_dtype=obj.dtype)
    if method == "inner_product":
        return inner_product_scores(Gc, Gp)
    if method == "cosine":
        return cosine_scores(Gc, Gp)
    if method == "paper_signed_log":
        return paper_signed_log_scores(Gc, Gp, obj.offsets)
    S = inverse_hvp(obj, train_items, Gp, method=method, damping=damping, hessian_batch_size=hessian_batch_size,
                    max_exact_dim=max_exact_dim, lissa_depth=lissa_depth, lissa_scale=lissa_scale, lissa_tol=lissa_tol,
                    cg_max_iter=cg_max_iter, cg_tol=cg_tol, seed=seed)
    return inner_product_scores(Gc, S)


def inverse_hvp(obj: Objective, train_items: Sequence[Any], V: torch.Tensor, *, method: str, damping: float,
                hessian_batch_size: int | None = None, max_exact_dim: int = 4096, lissa_depth: int = 1000,
                lissa_scale: float | None = None, lissa_tol: float = 1e-10, cg_max_iter: int = 200,
                cg_tol: float = 1e-10, seed: int = 0) -> torch.Tensor:
    """``(H + λI)⁻¹ v`` for each row of ``V`` ``[m, D]`` by ``method`` ∈ exact / cg / lissa."""
    damping = check_damping(damping)
    if V.shape[1] != obj.dim:
        raise ConfigError(
            f"Influence functions need unprojected gradients ({obj.dim} dims) but got {V.shape[1]}; "
            "drop --projection-dim for exact/lissa/cg."
        )
    if not len(train_items):
        raise ConfigError("Influence functions need training examples to form the Hessian; none were given.")
    if method == "exact":
        H = obj.hessian(train_items, batch_size=hessian_batch_size, max_dim=max_exact_dim)
        return ihvp_exact(H, V, damping)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        return obj.hvp(train_items, v.to(obj.dtype), batch_size=hessian_batch_size).to(v.dtype).cpu()

    Vd = V.to(torch.float64)
    if method == "cg":
        return ihvp_cg(hvp, Vd, damping, max_iter=cg_max_iter, tol=cg_tol).to(V.dtype)
    if method == "lissa":
        return ihvp_lissa(hvp, Vd, damping, depth=lissa_depth, scale=lissa_scale, tol=lissa_tol, seed=seed).to(V.dtype)
    raise MethodError(f"inverse_hvp supports exact, cg and lissa, not {method!r}.")


def tracin_scores(grads: Sequence[tuple[torch.Tensor, torch.Tensor]], learning_rates: Sequence[float]) -> np.ndarray:
    """TracIn-CP: ``Σ_k η_k ⟨∇ℓ_k(p), ∇ℓ_k(z)⟩`` from per-checkpoint ``(G_candidates, G_probes)``."""
    if len(grads) != len(learning_rates) or not grads:
        raise ConfigError(
            f"TracIn needs one learning rate per checkpoint: got {len(grads)} checkpoint(s) and {len(learning_rates)} rate(s)."
        )
    total = None
    for (Gc, Gp), lr in zip(grads, learning_rates):
        s = float(lr) * inner_product_scores(Gc, Gp)
        total = s if total is None else total + s
    return total


# ------------------------------------------------------------------ EK-FAC through kronfluence

def ce_view_lm(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits ``[N, V]``, labels ``[N]``) of a padded LM batch ``(ids, labels)``: answer tokens only."""
    ids, labels = batch
    mask = torch.ones_like(ids)
    logits = model(input_ids=ids, attention_mask=mask).logits
    return logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1)


def ce_view_classifier(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a classifier batch ``(X, y)``."""
    X, y = batch
    return model(X), y


def _make_task(ce_view, tracked: list[str] | None):
    from kronfluence.task import Task

    class CrossEntropyTask(Task):
        """Summed cross-entropy (the training loss) and the same summed loss as the measurement."""

        def compute_train_loss(self, batch, model, sample: bool = False):
            logits, labels = ce_view(model, batch)
            if sample:
                with torch.no_grad():
                    probs = torch.softmax(logits.detach().float(), dim=-1)
                    sampled = torch.multinomial(probs, 1).flatten()
                    labels = torch.where(labels == -100, labels, sampled)
            return torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")

        def compute_measurement(self, batch, model):
            logits, labels = ce_view(model, batch)
            return torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")

        def get_influence_tracked_modules(self):
            return tracked

    return CrossEntropyTask()


class _ItemDataset(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def tracked_linear_modules(model: torch.nn.Module, names: Sequence[str]) -> list[str]:
    """The ``nn.Linear`` modules whose weight is among ``names`` (what EK-FAC can handle)."""
    chosen = set(names)
    out, unsupported = [], []
    for mname, mod in model.named_modules():
        own = [f"{mname}.{p}" if mname else p for p, _ in mod.named_parameters(recurse=False)]
        if not any(n in chosen for n in own):
            continue
        if isinstance(mod, torch.nn.Linear):
            out.append(mname)
        else:
            unsupported.append(mname or type(mod).__name__)
    if not out:
        raise ConfigError(
            "EK-FAC (kronfluence) handles nn.Linear layers only, and none of the selected parameters belong to one "
            f"(found {unsupported[:3]}; GPT-2's Conv1D is not supported). Use params='paper' on gpt_neox/llama, or "
            "method='cg'/'lissa'."
        )
    return out


def ekfac_scores(obj: Objective, train_items: Sequence[Any], candidate_items: Sequence[Any], probe_items: Sequence[Any],
                 *, damping: float, ce_view: Callable | None = None, empirical_fisher: bool = False,
                 batch_size: int = 16, output_dir: str | Path | None = None, seed: int = 0,
                 reuse_factors: bool = False) -> np.ndarray:
    """EK-FAC influence ``[n_c, n_p]`` through ``kronfluence`` (an adapter, not a re-implementation).

    ``kronfluence`` fits the EK-FAC factors of the (true, or with ``empirical_fisher`` the
    empirical) Fisher of the mean training loss on ``train_items`` and returns
    ``∇f(p)ᵀ (F + λI)⁻¹ ∇ℓ(z)`` with ``f`` = the probe loss: that is already our
    "positive = helps" sign (checked against the exact influence in the tests).
    Only the ``nn.Linear`` layers among the selected parameters are tracked.
    With ``reuse_factors`` and a persistent ``output_dir``, factors fitted by an earlier call
    (same model, training items and seed) are loaded instead of refitted — the valuator
    fits them once and scores every candidate chunk against them.
    ``ce_view(model, batch) -> (logits [N, C], labels [N])`` expresses the loss as a summed
    cross-entropy (default: :func:`ce_view_lm` for LM objectives, else the classifier view).
    """
    import logging

    from kronfluence.analyzer import Analyzer, prepare_model
    from kronfluence.arguments import FactorArguments, ScoreArguments
    from kronfluence.utils.dataset import DataLoaderKwargs

    damping = check_damping(damping)
    if ce_view is None:
        ce_view = getattr(obj, "ce_view", None) or ce_view_classifier
    model = copy.deepcopy(obj.model).eval()
    tracked = tracked_linear_modules(model, obj.names)
    task = _make_task(ce_view, tracked)
    model = prepare_model(model, task)
    collate = obj.collate
    tmp = tempfile.TemporaryDirectory(prefix="icp-ekfac-") if output_dir is None else None
    out_dir = Path(output_dir) if output_dir is not None else Path(tmp.name)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            analyzer = Analyzer(analysis_name="icp", model=model, task=task, cpu=obj.device.type == "cpu",
                                disable_tqdm=True, output_dir=str(out_dir), log_level=logging.WARNING)
            analyzer.set_dataloader_kwargs(DataLoaderKwargs(collate_fn=collate))
            fargs = FactorArguments(strategy="ekfac", use_empirical_fisher=empirical_fisher)
            analyzer.fit_all_factors("ekfac", dataset=_ItemDataset(list(train_items)), per_device_batch_size=batch_size,
                                     factor_args=fargs, overwrite_output_dir=not reuse_factors)
            sargs = ScoreArguments(damping_factor=damping)
            analyzer.compute_pairwise_scores("pairwise", factors_name="ekfac", query_dataset=_ItemDataset(list(probe_items)),
                                             train_dataset=_ItemDataset(list(candidate_items)),
                                             per_device_query_batch_size=batch_size, per_device_train_batch_size=batch_size,
                                             score_args=sargs, overwrite_output_dir=True)
            scores = analyzer.load_pairwise_scores("pairwise")["all_modules"]  # [n_probes, n_candidates]
    finally:
        if tmp is not None:
            tmp.cleanup()
    return scores.double().T.cpu().numpy()


# ------------------------------------------------------------------ the LM valuator

@dataclass
class InfluenceConfig:
    """Everything that determines an influence ScoreMatrix (hashed into run and cache keys)."""

    method: str = "inner_product"
    params: str = "paper"
    template: str = "paper"
    reduction: str = "sum"
    projection_dim: int | None = None
    projection: str = "gaussian"
    damping: float | None = None
    seed: int = 0
    chunk_size: int = 8
    max_length: int | None = None
    hessian_examples: int | None = 64
    hessian_batch_size: int | None = 8
    max_exact_dim: int = 4096
    lissa_depth: int = 200
    lissa_scale: float | None = None
    cg_max_iter: int = 100
    cg_tol: float = 1e-6
    checkpoints: list[str] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    ekfac_empirical_fisher: bool = False

    KNOWN = ("damping", "params", "reduction", "projection", "max_length", "hessian_examples", "hessian_batch_size",
             "max_exact_dim", "lissa_depth", "lissa_scale", "cg_max_iter", "cg_tol", "checkpoints", "learning_rates",
             "ekfac_empirical_fisher", "projection_dim", "chunk_size", "template", "seed", "method")

    def validate(self) -> "InfluenceConfig":
        check_method(self.method)
        if self.reduction not in ("sum", "mean"):
            raise ConfigError(f"reduction must be 'sum' or 'mean', got {self.reduction!r}.")
        if self.projection_dim is not None:
            if int(self.projection_dim) < 1:
                raise ConfigError(f"projection dimension must be ≥ 1, got {self.projection_dim}.")
            if self.method in ("exact", "lissa", "cg", "ekfac", "paper_signed_log"):
                raise ConfigError(
                    f"method {self.method!r} needs the unprojected gradients (per-parameter structure / Hessian); "
                    "drop the projection dimension or use inner_product / cosine / tracin."
                )
        if self.method in IF_METHODS:
            check_damping(self.damping)
        if self.method == "tracin":
            if not self.checkpoints:
                raise ConfigError("method 'tracin' needs params {\"checkpoints\": [model paths...], \"learning_rates\": [...]}.")
            if len(self.learning_rates) != len(self.checkpoints):
                raise ConfigError(
                    f"tracin: {len(self.checkpoints)} checkpoint(s) but {len(self.learning_rates)} learning rate(s); give one per checkpoint."
                )
        if self.chunk_size < 1:
            raise ConfigError(f"chunk_size must be ≥ 1, got {self.chunk_size}.")
        return self

    @classmethod
    def from_params(cls, method: str, params: dict[str, Any] | None = None, **kw: Any) -> "InfluenceConfig":
        params = dict(params or {})
        unknown = sorted(set(params) - set(cls.KNOWN))
        if unknown:
            raise ConfigError(f"Unknown influence parameter(s) {unknown}; known: {', '.join(sorted(cls.KNOWN))}.")
        merged = {**params, **{k: v for k, v in kw.items() if v is not None}}
        merged["method"] = method
        return cls(**merged).validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _example_key(ex) -> str:
    blob = "\x1f".join([ex.instruction, ex.input, ex.output])
    return f"{ex.id}#{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


class GradientInfluence:
    """Gradient-influence valuator of a causal LM on Examples (returns a ScoreMatrix).

    Usage::

        gi = GradientInfluence(model, tokenizer, InfluenceConfig(method="inner_product"))
        sm = gi.score(pool, probes)              # or, chunked: gi.prepare(probes, pool); gi.score_rows(examples)

    Candidate gradients go through a :class:`GradientCache` (``cache_dir``; default
    ``utils.cache_dir()/gradients``): each is computed once per (model weights, parameter
    selection, template, loss reduction, projection) and reused by every probe set.
    """

    def __init__(self, model, tokenizer, config: InfluenceConfig | None = None, *, cache_dir: str | Path | None = None,
                 model_name: str | None = None, progress: bool = False):
        from .utils import cache_dir as default_cache

        self.config = (config or InfluenceConfig()).validate()
        self.model, self.tokenizer = model, tokenizer
        self.model_name = model_name or getattr(model.config, "_name_or_path", type(model).__name__)
        self.cache_root = Path(cache_dir) if cache_dir is not None else default_cache() / "gradients"
        self.progress = progress
        self._states: list[dict[str, Any]] = []  # one per checkpoint: objective, cache, probe vectors
        self._probes = None

    # -- per-checkpoint state
    def _models(self) -> list[tuple[Any, float]]:
        c = self.config
        if c.method != "tracin":
            return [(self.model, 1.0)]
        from .models import load_model

        out = []
        for ckpt, lr in zip(c.checkpoints, c.learning_rates):
            m, _ = load_model(ckpt, device=str(next(self.model.parameters()).device)) if isinstance(ckpt, str) else (ckpt, None)
            out.append((m, float(lr)))
        return out

    def _objective(self, model) -> Objective:
        obj = lm_objective(model, self.tokenizer, params=self.config.params, reduction=self.config.reduction)
        obj.ce_view = ce_view_lm  # type: ignore[attr-defined]
        return obj

    def _projector(self, obj: Objective) -> Projector | None:
        c = self.config
        return Projector(obj.sizes, int(c.projection_dim), seed=c.seed, kind=c.projection) if c.projection_dim else None

    def _encode(self, examples):
        return encode_examples(self.tokenizer, list(examples), template=self.config.template, max_length=self.config.max_length)

    def _grads(self, state, examples) -> torch.Tensor:
        encs = self._encode(examples)
        keys = [_example_key(ex) for ex in examples]
        obj, proj = state["obj"], state["proj"]
        return state["cache"].get(keys, lambda idx: obj.per_example_grads(
            [encs[i] for i in idx], chunk_size=self.config.chunk_size, projector=proj, progress=self.progress))

    def prepare(self, probes, train=None) -> "GradientInfluence":
        """Compute the probe side once: probe gradients, and for IF methods ``(H + λI)⁻¹∇ℓ(p)``
        with ``H`` from ``train`` (the pool; the first ``hessian_examples`` of a seeded shuffle)."""
        c = self.config
        self._probes = list(probes)
        self._states = []
        for model, lr in self._models():
            obj = self._objective(model)
            proj = self._projector(obj)
            key = {"model": obj.fingerprint(), "names": hashlib.sha256("|".join(obj.names).encode()).hexdigest()[:16],
                   "template": c.template, "reduction": c.reduction, "max_length": c.max_length,
                   "projection": [c.projection_dim, c.projection, c.seed] if c.projection_dim else None}
            state = {"obj": obj, "proj": proj, "lr": lr, "cache": GradientCache(self.cache_root, key)}
            Gp = self._grads(state, self._probes)
            state["probe_grads"] = Gp
            if c.method in ("exact", "lissa", "cg"):
                if train is None:
                    raise ConfigError(f"method {c.method!r} needs training examples for the Hessian: pass train=pool.")
                hess_items = self._encode(self._hessian_subset(train))
                state["probe_vecs"] = inverse_hvp(
                    obj, hess_items, Gp.to(obj.dtype), method=c.method, damping=c.damping,
                    hessian_batch_size=c.hessian_batch_size, max_exact_dim=c.max_exact_dim, lissa_depth=c.lissa_depth,
                    lissa_scale=c.lissa_scale, cg_max_iter=c.cg_max_iter, cg_tol=c.cg_tol, seed=c.seed)
            elif c.method == "ekfac":
                if train is None:
                    raise ConfigError("method 'ekfac' needs training examples for the factors: pass train=pool.")
                state["hess_items"] = self._encode(self._hessian_subset(train))
                # EK-FAC factors are fitted once (first chunk) and reused for every chunk.
                state["ekfac_dir"] = tempfile.TemporaryDirectory(prefix="icp-ekfac-factors-")
            self._states.append(state)
        return self

    def _hessian_subset(self, train):
        train = list(train)
        n = self.config.hessian_examples
        if n is None or n >= len(train):
            return train
        rng = np.random.default_rng(self.config.seed)
        return [train[i] for i in sorted(rng.choice(len(train), size=n, replace=False).tolist())]

    def score_rows(self, examples) -> np.ndarray:
        """Scores ``[len(examples), n_probes]`` of candidate ``examples`` (after :meth:`prepare`)."""
        if self._probes is None:
            raise ConfigError("Call prepare(probes, train) before score_rows().")
        c = self.config
        examples = list(examples)
        total = None
        for state in self._states:
            if c.method == "ekfac":
                vals = ekfac_scores(state["obj"], state["hess_items"], self._encode(examples), self._encode(self._probes),
                                    damping=c.damping, ce_view=ce_view_lm, empirical_fisher=c.ekfac_empirical_fisher,
                                    batch_size=c.chunk_size, seed=c.seed, output_dir=state["ekfac_dir"].name,
                                    reuse_factors=True)
            else:
                Gc = self._grads(state, examples)
                if c.method in ("exact", "lissa", "cg"):
                    vals = inner_product_scores(Gc, state["probe_vecs"])
                elif c.method == "cosine":
                    vals = cosine_scores(Gc, state["probe_grads"], [e.id for e in examples], [p.id for p in self._probes])
                elif c.method == "paper_signed_log":
                    vals = paper_signed_log_scores(Gc, state["probe_grads"], state["obj"].offsets)
                else:  # inner_product, tracin
                    vals = inner_product_scores(Gc, state["probe_grads"])
            vals = state["lr"] * vals
            total = vals if total is None else total + vals
        return total

    def meta(self) -> dict[str, Any]:
        return {"method": self.config.method, "model": self.model_name, "template": self.config.template,
                "params": self.config.to_dict(), "seed": self.config.seed,
                "sign": "positive = the candidate helps the probe (lowers its answer loss)"}

    def score(self, candidates, probes, *, train=None) -> "ScoreMatrix":
        """The full ScoreMatrix ``[candidates × probes]``; ``train`` defaults to ``candidates``."""
        from .scores import ScoreMatrix

        candidates = list(candidates)
        self.prepare(probes, train if train is not None else candidates)
        vals = self.score_rows(candidates)
        return ScoreMatrix(vals, [e.id for e in candidates], [p.id for p in self._probes], self.meta()).check_finite()
