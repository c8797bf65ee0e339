"""A small GPT-2-style *softmax* transformer that learns linear regression in context
(Garg et al., NeurIPS 2022), and the in-domain / out-of-domain demonstrations used to
test "ICP ≈ inner-product influence" beyond linear attention.

Prompt encoding (Garg et al.): the sequence ``x_1, y_1, x_2, y_2, …, x_n, y_n`` of
``2n`` tokens, each a ``d``-vector (``y_i`` becomes ``(y_i, 0, …, 0)``), mapped by a
linear read-in to ``n_embd`` and fed to ``transformers.GPT2Model`` as ``inputs_embeds``;
a linear read-out at every ``x_i`` position predicts ``y_i`` from the pairs before it.
Training: ``w ~ N(0, I_d)``, ``x ~ N(0, I_d)``, ``y = wᵀx``, squared error averaged over
all positions (so the model also predicts with 0 demonstrations — the ICP baseline).

Weights live in ``data/regression_transformer/`` (``model.safetensors`` + ``config.json``),
written by ``scripts/train_regression_transformer.py``.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigError, CorruptFileError, ModelFilesError
from .utils import atomic_path, atomic_write_json

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DOMAIN_KINDS = ("in_domain", "other_task", "noisy_labels", "shifted_inputs")


@dataclass
class RegressionTransformerConfig:
    """Architecture and training settings (saved as JSON beside the weights)."""

    d: int = 5
    n_points: int = 11  # longest prompt: n_points (x, y) pairs, i.e. 2·n_points tokens
    n_embd: int = 32
    n_layer: int = 3
    n_head: int = 2
    steps: int = 8000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 200
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # training outcome (loss, seconds, ...)

    def __post_init__(self) -> None:
        for name in ("d", "n_points", "n_embd", "n_layer", "n_head", "steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"RegressionTransformerConfig.{name} must be a positive int, got {v!r}.")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}).")

    @classmethod
    def smoke(cls, seed: int = 0) -> "RegressionTransformerConfig":
        """A tiny model that trains in a few seconds (for smoke runs without stored weights)."""
        return cls(d=5, n_points=6, n_embd=32, n_layer=2, n_head=2, steps=300, batch_size=64, lr=2e-3, warmup=30, seed=seed)


class RegressionTransformer(nn.Module):
    """Read-in → ``GPT2Model(inputs_embeds=…)`` → read-out (Garg et al. 2022)."""

    def __init__(self, cfg: RegressionTransformerConfig) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.cfg = cfg
        conf = GPT2Config(
            vocab_size=1, n_positions=2 * cfg.n_points, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, bos_token_id=0, eos_token_id=0,
        )
        torch.manual_seed(cfg.seed)
        self.read_in = nn.Linear(cfg.d, cfg.n_embd)
        self.backbone = GPT2Model(conf)
        self.read_out = nn.Linear(cfg.n_embd, 1)

    @staticmethod
    def interleave(xs: Tensor, ys: Tensor) -> Tensor:
        """``xs [B, n, d]``, ``ys [B, n]`` → tokens ``[B, 2n, d]`` = x_1, (y_1,0..), x_2, …"""
        B, n, d = xs.shape
        ys_wide = torch.cat([ys.unsqueeze(-1), torch.zeros(B, n, d - 1, dtype=xs.dtype, device=xs.device)], dim=-1)
        return torch.stack([xs, ys_wide], dim=2).reshape(B, 2 * n, d)

    def forward(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Predictions ``[B, n]``: ``ŷ_i`` from ``x_1, y_1, …, x_i`` (causal attention)."""
        if xs.shape[1] > self.cfg.n_points:
            raise ConfigError(f"Prompt of {xs.shape[1]} points exceeds the model's n_points={self.cfg.n_points}.")
        p = next(self.parameters())
        z = self.interleave(xs.to(p.dtype), ys.to(p.dtype))
        h = self.backbone(inputs_embeds=self.read_in(z)).last_hidden_state
        return self.read_out(h[:, ::2]).squeeze(-1)

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
        """:data:`~icp_influence.theory.Predictor` interface: context ``[B, n, d]`` + query → ``ŷ [B]``."""
        xs_all = torch.cat([xs, xq.unsqueeze(1)], dim=1)
        ys_all = torch.cat([ys, torch.zeros_like(ys[:, :1]) if ys.shape[1] else torch.zeros(xs.shape[0], 1, dtype=ys.dtype)], dim=1)
        out = []
        for s in range(0, xs_all.shape[0], 8192):
            out.append(self.forward(xs_all[s:s + 8192], ys_all[s:s + 8192])[:, -1])
        return torch.cat(out).to(torch.float64)


def sample_prompts(batch: int, n_points: int, d: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Garg et al. prompts: ``x ~ N(0, I)``, ``w ~ N(0, I)``, ``y = wᵀx`` → ``xs [B, n, d]``, ``ys [B, n]``."""
    xs = torch.randn(batch, n_points, d, generator=generator)
    w = torch.randn(batch, d, generator=generator)
    return xs, torch.einsum("bnd,bd->bn", xs, w)


def train_regression_transformer(cfg: RegressionTransformerConfig, *, progress: bool = False,
                                 max_seconds: float | None = None) -> tuple[RegressionTransformer, list[float]]:
    """Train with AdamW (linear warm-up, cosine decay) on fresh prompts every step.

    Loss = mean squared error over all positions, divided by ``d`` (Garg's normalisation:
    predicting 0 scores 1.0). Stops early after ``max_seconds``. Returns the model (eval
    mode) and the loss per step; ``cfg.extra`` records the outcome.
    """
    model = RegressionTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    t0 = time.perf_counter()

    def schedule(s: int) -> float:
        # progress = the larger of the step and the time fractions, so a time-capped run still anneals
        frac = s / cfg.steps
        if max_seconds:
            frac = max(frac, (time.perf_counter() - t0) / max_seconds)
        return min(1.0, (s + 1) / max(1, cfg.warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    losses: list[float] = []
    it: Any = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="train transformer", leave=False)
    model.train()
    for _ in it:
        xs, ys = sample_prompts(cfg.batch_size, cfg.n_points, cfg.d, g)
        loss = ((model(xs, ys) - ys) ** 2).mean() / cfg.d
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
    model.eval()
    cfg.extra.update({"steps_done": len(losses), "train_seconds": round(time.perf_counter() - t0, 1),
                      "final_loss_avg100": float(np.mean(losses[-100:]))})
    return model, losses


def evaluate_by_position(model: RegressionTransformer, n_prompts: int = 2000, seed: int = 123) -> np.ndarray:
    """Mean squared error / d at every position (0 … n_points−1 demonstrations), ``[n_points]``."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = sample_prompts(n_prompts, model.cfg.n_points, model.cfg.d, g)
    with torch.no_grad():
        return (((model(xs, ys) - ys) ** 2).mean(0) / model.cfg.d).numpy()


def least_squares_by_position(d: int, n_points: int, n_prompts: int = 2000, seed: int = 123) -> np.ndarray:
    """The Bayes-optimal reference (min-norm least squares on the preceding pairs) per position."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = sample_prompts(n_prompts, n_points, d, g)
    xs, ys = xs.double(), ys.double()
    err = np.zeros(n_points)
    for i in range(n_points):
        if i == 0:
            pred = torch.zeros(n_prompts, dtype=torch.float64)
        else:
            w = torch.linalg.pinv(xs[:, :i]) @ ys[:, :i, None]
            pred = (xs[:, i:i + 1] @ w)[:, 0, 0]
        err[i] = float(((pred - ys[:, i]) ** 2).mean() / d)
    return err


# ------------------------------------------------------------------ files

def default_transformer_dir() -> Path:
    """``<data_dir>/regression_transformer`` (see :func:`icp_influence.paths.data_dir`)."""
    from .paths import data_dir

    return data_dir() / "regression_transformer"


def save_regression_transformer(model: RegressionTransformer, directory: str | os.PathLike | None = None) -> Path:
    """Write ``model.safetensors`` (float32) and ``config.json`` atomically; returns the directory."""
    from safetensors.torch import save_file

    out = Path(directory) if directory is not None else default_transformer_dir()
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(out / CONFIG_FILE, asdict(model.cfg))
    for f in (WEIGHTS_FILE, CONFIG_FILE):
        os.chmod(out / f, 0o644)  # mkstemp creates 0600; these are data files for everyone
    return out


def load_regression_transformer(directory: str | os.PathLike | None = None) -> RegressionTransformer:
    """Load a model written by :func:`save_regression_transformer` (eval mode, float32)."""
    from safetensors.torch import load_file

    d = Path(directory) if directory is not None else default_transformer_dir()
    wf, cf = d / WEIGHTS_FILE, d / CONFIG_FILE
    if not wf.is_file() or not cf.is_file():
        raise ModelFilesError(
            f"No regression transformer in {d} (need {WEIGHTS_FILE} and {CONFIG_FILE}). "
            "Create it with `python scripts/train_regression_transformer.py`.")
    try:
        cfg = RegressionTransformerConfig(**json.loads(cf.read_text()))
        state = load_file(str(wf))
    except Exception as e:  # safetensors raises its own SafetensorError on a damaged header
        raise CorruptFileError(f"Could not read the regression transformer in {d}: {e}. Re-run the training script.") from e
    model = RegressionTransformer(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CorruptFileError(f"{wf} does not match {cf}: {e}. Re-run the training script.") from e
    return model.eval()


def get_regression_transformer(*, smoke: bool = False, directory: str | os.PathLike | None = None,
                               seed: int = 0) -> tuple[RegressionTransformer, str]:
    """The stored model when present; otherwise train one (tiny in smoke mode, else the
    script's default — minutes). Returns ``(model, "loaded" | "trained")``."""
    try:
        return load_regression_transformer(directory), "loaded"
    except ModelFilesError:
        cfg = RegressionTransformerConfig.smoke(seed) if smoke else RegressionTransformerConfig(seed=seed)
        model, _ = train_regression_transformer(cfg, progress=not smoke, max_seconds=None if smoke else 480.0)
        return model, "trained"


# ------------------------------------------------------------------ in- and out-of-domain demonstrations

def domain_candidates(kind: str, w: Tensor, n: int, distance: float = 1.0, *, x_dist: str = "normal",
                      seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` demonstrations ``(x [n, d], y [n])`` relative to the probe's task ``w [d]``.

    Kinds, each with a dimensionless ``distance`` (0 = in-domain):

    * ``in_domain``: ``x ~ N(0, I)`` (or ``U(−½, ½)^d`` with ``x_dist="uniform"``), ``y = wᵀx``
      (``distance`` ignored);
    * ``other_task``: ``y = w'ᵀx`` with ``‖w' − w‖ = distance·‖w‖`` (``‖w'‖ = ‖w‖``; 0 ≤ distance ≤ 2);
    * ``noisy_labels``: ``y = wᵀx + ε``, ``ε ~ N(0, (distance·σ_x‖w‖)²)`` (noise std in units of std(y|w));
    * ``shifted_inputs``: ``x + distance·σ_x·u`` for a random unit vector ``u`` (``σ_x`` = the
      per-coordinate std of x), ``y = wᵀx``.
    """
    from .theory import sample_x

    if kind not in DOMAIN_KINDS:
        raise ConfigError(f"Unknown domain kind {kind!r}; use one of {', '.join(DOMAIN_KINDS)}.")
    if distance < 0 or (kind == "other_task" and distance > 2):
        raise ConfigError(f"distance must be >= 0 (and <= 2 for other_task), got {distance}.")
    g = torch.Generator().manual_seed(int(seed))
    w = w.to(torch.float64)
    d = w.shape[0]
    x = sample_x(n, d, dist=x_dist, generator=g)
    if kind == "shifted_inputs":
        u = torch.randn(d, generator=g, dtype=torch.float64)
        sx = 1.0 if x_dist == "normal" else 1 / math.sqrt(12)
        x = x + distance * sx * u / u.norm()
    if kind == "other_task":
        v = torch.randn(d, generator=g, dtype=torch.float64)
        v = v - (v @ w) / (w @ w) * w
        v = v / v.norm() * w.norm()
        theta = 2 * math.asin(distance / 2)
        w = math.cos(theta) * w + math.sin(theta) * v
    y = x @ w
    if kind == "noisy_labels":
        sx = 1.0 if x_dist == "normal" else 1 / math.sqrt(12)
        y = y + distance * sx * w.norm() * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def domain_agreement(predict: Any, *, kinds: tuple[str, ...] = DOMAIN_KINDS, distances: tuple[float, ...] = (1.0,),
                     n_tasks: int = 10, n_candidates: int = 60, n_probes: int = 30, d: int = 5,
                     x_dist: str = "normal", seed: int = 0) -> dict[tuple[str, float], dict[str, np.ndarray]]:
    """ICP and gradient inner product (linear model at ``W₀ = 0``) for every ``(kind, distance)``.

    Probes: ``n_probes`` in-domain pairs of each of ``n_tasks`` tasks; candidates: drawn by
    :func:`domain_candidates`. Returns ``{(kind, distance): {"icp": [T·M, K], "inner_product": [T·M, K],
    "normalised_ip": [T·M, K]}}`` (rows of all tasks stacked; each task's candidates only meet that
    task's probes); ``normalised_ip`` is the inner product divided by ``‖x_z‖²``
    (:func:`~icp_influence.theory.normalised_inner_products`: a least-squares step instead of a GD step).
    ``other_task`` skips distances above 2 (its maximum: ``w' = −w``).
    """
    from .theory import grad_inner_products, icp_matrix, normalised_inner_products

    acc: dict[tuple[str, float], dict[str, list]] = {}
    for key, _t, cx, cy, px, py in _domain_pools(kinds, distances, n_tasks, n_candidates, n_probes, d, x_dist, seed):
        a = acc.setdefault(key, {"icp": [], "inner_product": [], "normalised_ip": []})
        a["icp"].append(icp_matrix(predict, cx, cy, px, py))
        a["inner_product"].append(grad_inner_products(cx, cy, px, py))
        a["normalised_ip"].append(normalised_inner_products(cx, cy, px, py))
    return {k: {m: np.concatenate(v) for m, v in a.items()} for k, a in acc.items()}


def normalisation_comparison(res: dict[tuple[str, float], dict[str, np.ndarray]], keys: Any, *, n_boot: int = 100,
                             level: float = 0.95, seed: int = 0) -> list[dict[str, Any]]:
    """Does ICP follow a *least-squares* step (normalised by ``‖x_z‖²``) rather than a GD step?

    For each ``(kind, distance)`` in ``keys`` (entries of :func:`domain_agreement`'s result):
    the pair-level Spearman of ICP with the raw inner product (``rho_raw``) and with the
    normalised one (``rho_normalised``), and their difference ``normalised − raw``
    (``difference``: an :class:`~icp_influence.stats.Interval` with a two-way bootstrap,
    :func:`~icp_influence.stats.pair_agreement_difference`). A least-squares-like learner
    shows as a difference clearly above 0.
    """
    from .stats import pair_agreement_difference, spearman

    rows = []
    for key in keys:
        if key not in res:
            raise ConfigError(f"normalisation_comparison: {key!r} is not in the result; it has {sorted(res)}.")
        r = res[key]
        rows.append({"kind": key[0], "distance": float(key[1]),
                     "rho_raw": spearman(r["icp"], r["inner_product"]),
                     "rho_normalised": spearman(r["icp"], r["normalised_ip"]),
                     "difference": pair_agreement_difference(r["icp"], r["inner_product"], r["normalised_ip"],
                                                             n_boot=n_boot, level=level, seed=seed)})
    return rows


# ------------------------------------------------------------------ network weights θ: the bridge
#
# ICP moves the *implicit* regression weights W (a demonstration in the prompt acts like one
# GD step on W); gradient influence in notebooks 03–06 is taken over the *network's* weights θ.
# For the regression transformer both are computable: the network's loss on one pair
# (x, y) is its squared error when it sees that pair as a prompt with no demonstrations,
# ``ℓ(z; θ) = ½(f_θ(x_z) − y_z)²`` (Garg's training loss of a one-pair prompt, up to 1/d, and
# the loss of ICP's zero-demonstration baseline). From it: the inner product over θ, and the
# referee — one SGD step on θ on ℓ(z), then the change of every probe's loss.

def pair_loss(forward: Any, x: Tensor, y: Tensor) -> Tensor:
    """``½(f_θ(x) − y)²`` for one pair (``x [d]``, scalar ``y``); ``forward(xs, ys)`` is the
    model's forward (a one-pair prompt: ``xs [1, 1, d]``, ``ys [1, 1]``; the label is not seen)."""
    yhat = forward(x.reshape(1, 1, -1), torch.zeros(1, 1, dtype=x.dtype, device=x.device))[0, 0]
    return 0.5 * (yhat - y) ** 2


def _output(forward: Any, x: Tensor, y: Tensor) -> Tensor:
    return forward(x.reshape(1, 1, -1), torch.zeros(1, 1, dtype=x.dtype, device=x.device))[0, 0]


def as_float64(model: RegressionTransformer) -> RegressionTransformer:
    """A float64 copy (eval mode) — the network-weight computations below are checked in float64."""
    import copy

    return copy.deepcopy(model).to(torch.float64).eval()


def regression_objective(model: RegressionTransformer, params: Any = "all", *, output: bool = False) -> Any:
    """The :class:`~icp_influence.gradients.Objective` of :func:`pair_loss` over the network's
    weights θ (``params``: a selection for :func:`~icp_influence.gradients.select_parameters`).
    Items are ``(x [d], y)`` tuples (:class:`~icp_influence.gradients.TensorItems`).
    ``output=True``: the objective is the prediction ``f_θ(x)`` itself (for the kernel)."""
    from .gradients import Objective, select_parameters

    return Objective(model, select_parameters(model, params), _output if output else pair_loss)


def _items(x: Tensor, y: Tensor | None = None) -> Any:
    from .gradients import TensorItems

    x = x.to(torch.float64)
    return TensorItems(x, torch.zeros(len(x), dtype=x.dtype) if y is None else y.to(torch.float64))


def _quiet_vmap():
    """vmap through SDPA on CPU warns about a missing batching rule (harmless); the math
    kernel is differentiable to any order."""
    import contextlib
    import warnings

    from .gradients import _math_attention

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.filterwarnings("ignore", message=".*performance drop.*")
    stack.enter_context(_math_attention())
    return stack


def network_grads(objective: Any, x: Tensor, y: Tensor | None = None, *, chunk_size: int = 64) -> Tensor:
    """Per-example gradients over θ, ``[n, D]`` float64 (``vmap(grad)`` of the objective)."""
    with _quiet_vmap():
        return objective.per_example_grads(_items(x, y), chunk_size=chunk_size, out_dtype=torch.float64)


def zero_context_grads(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """``∇_θ ½(ŷ(x) − y)²`` of any model with a ``predict(xs, ys, xq)`` method, the prediction
    made with **no** demonstrations, by plain autograd one example at a time: ``[n, D]`` over
    ``model.parameters()`` in ``named_parameters`` order (an unused parameter contributes zeros).

    For an LSA this is identically 0: with an empty context the layer adds nothing to the
    query token, so no weight of the network can change a zero-shot prediction.
    """
    params = [p for _, p in model.named_parameters()]
    dt = params[0].dtype
    x, y = x.to(dt), y.to(dt)
    rows = []
    for i in range(len(x)):
        with torch.enable_grad():
            pred = model.predict(x[i:i + 1, None, :][:, :0], y[i:i + 1, None][:, :0], x[i:i + 1])
            loss = 0.5 * ((pred.to(dt) - y[i]) ** 2).sum()
            gs = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, params)]))
    return torch.stack(rows).detach()


def network_inner_products(objective: Any, cand_x: Tensor, cand_y: Tensor, probe_x: Tensor, probe_y: Tensor) -> np.ndarray:
    """``⟨∇_θ ℓ(p), ∇_θ ℓ(z)⟩`` over the network's weights, ``[M, K]`` — the course's
    ``inner_product`` valuator run on :func:`regression_objective` (positive = helps)."""
    from .valuators.gradient import InnerProduct

    v = InnerProduct(objective=objective, grad_chunk=64, chunk_size=max(1, len(cand_x)))
    with _quiet_vmap():
        return v.score(list(_items(cand_x, cand_y)), list(_items(probe_x, probe_y))).values


def output_kernel(objective: Any, xa: Tensor, xb: Tensor) -> np.ndarray:
    """``⟨∇_θ f(x_a), ∇_θ f(x_b)⟩`` ``[A, B]`` (``objective`` built with ``output=True``): the
    network's tangent kernel of zero-shot predictions. Since ``∇_θ ℓ(z) = (f(x_z) − y_z) ∇_θ f(x_z)``,
    the network inner product is ``(f(x_z) − y_z)(f(x_p) − y_p) K(x_z, x_p)``; the implicit-weight
    one at ``W₀ = 0`` is ``y_z y_p x_zᵀx_p`` — the linear kernel in place of ``K``."""
    return (network_grads(objective, xa) @ network_grads(objective, xb).T).numpy()


def one_step_referee(objective: Any, cand_x: Tensor, cand_y: Tensor, probe_x: Tensor, probe_y: Tensor, lr: float, *,
                     cand_grads: Tensor | None = None, chunk: int = 32) -> np.ndarray:
    """The ground truth over network weights: ``Δ(z, p) = ℓ(p; θ) − ℓ(p; θ − lr ∇_θ ℓ(z; θ))``.

    One plain SGD step on the demonstration's loss :func:`pair_loss` (from the model's
    weights, restored for every candidate), then the change of each probe's loss; ``[M, K]``,
    positive = the step on ``z`` helps ``p``. To first order in ``lr`` it equals
    ``lr · ⟨∇_θ ℓ(p), ∇_θ ℓ(z)⟩`` (:func:`network_inner_products`). Vectorised: the ``M``
    stepped weight vectors are evaluated with ``vmap`` over ``chunk`` candidates at a time.
    ``cand_grads``: the candidates' gradients when already computed (:func:`network_grads`).
    """
    from torch.func import functional_call, vmap

    if not (np.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a number > 0, got {lr!r}.")
    G = network_grads(objective, cand_x, cand_y) if cand_grads is None else cand_grads.to(torch.float64)
    theta = objective.flat_params().to(torch.float64)
    px, py = probe_x.to(theta.dtype), probe_y.to(theta.dtype)
    zeros = torch.zeros(len(px), 1, dtype=theta.dtype)

    def probe_losses(flat: Tensor) -> Tensor:
        out = functional_call(objective.model, (objective.unflatten(flat), objective.frozen), (px[:, None, :], zeros))
        return 0.5 * (out[:, 0] - py) ** 2

    rows = []
    with torch.no_grad(), _quiet_vmap():
        base = probe_losses(theta)
        for s in range(0, len(G), chunk):
            rows.append(base[None] - vmap(probe_losses)(theta[None] - lr * G[s:s + chunk]))
    return torch.cat(rows).numpy()


def _domain_pools(kinds: tuple[str, ...], distances: tuple[float, ...], n_tasks: int, n_candidates: int, n_probes: int,
                  d: int, x_dist: str, seed: int):
    """Yield ``((kind, distance), task, cand_x, cand_y, probe_x, probe_y)``: the pools of
    :func:`domain_agreement` (same seeds, so every function sees the same pairs)."""
    from .theory import sample_x

    g = torch.Generator().manual_seed(int(seed))
    ws = torch.randn(n_tasks, d, generator=g, dtype=torch.float64)
    pxs = sample_x((n_tasks, n_probes), d, dist=x_dist, generator=g)
    for kind in kinds:
        grid = (0.0,) if kind == "in_domain" else tuple(x for x in distances if kind != "other_task" or x <= 2)
        for dist in grid:
            for t in range(n_tasks):
                cx, cy = domain_candidates(kind, ws[t], n_candidates, dist, x_dist=x_dist, seed=seed * 7919 + 31 * t + 1)
                yield (kind, float(dist)), t, cx, cy, pxs[t], pxs[t] @ ws[t]


@dataclass
class WeightSpaceScores:
    """Output of :func:`weight_space_scores`.

    ``scores[(kind, distance)]`` holds ``[n_tasks·M, K]`` matrices ``icp``, ``implicit_ip``
    (the linear model's inner product at ``W₀ = 0``), ``network_ip`` (over θ) and
    ``one_step`` (the referee at ``lr``); ``sweep[factor]`` the in-domain referee at
    ``factor · lr``; ``lr`` the step; ``n_parameters`` the size of θ.
    """

    scores: dict[tuple[str, float], dict[str, np.ndarray]]
    lr: float
    sweep: dict[float, np.ndarray]
    n_parameters: int


def weight_space_scores(model: RegressionTransformer, *, kinds: tuple[str, ...] = DOMAIN_KINDS,
                        distance: float = 2.0, n_tasks: int = 10, n_candidates: int = 60, n_probes: int = 30,
                        lr: float | None = None, lr_factors: tuple[float, ...] = (), params: Any = "all",
                        seed: int = 0) -> WeightSpaceScores:
    """ICP, the implicit-weight inner product, the network-weight inner product and the
    one-step referee on the pools of :func:`domain_agreement` (Gaussian inputs, one
    ``distance`` for the out-of-domain kinds), all in float64.

    ``lr=None`` sets the referee's step so that its first-order prediction has ICP's size:
    ``lr = median|ICP| / median|network IP|`` over the in-domain pairs (over all pairs when
    ``in_domain`` is not among ``kinds``). ``lr_factors``: extra in-domain referee runs at
    ``factor · lr``.
    """
    from .theory import grad_inner_products, icp_matrix

    m64 = as_float64(model)
    obj = regression_objective(m64, params)
    acc: dict[tuple[str, float], dict[str, list]] = {}
    for key, _t, cx, cy, px, py in _domain_pools(kinds, (float(distance),), n_tasks, n_candidates, n_probes,
                                                 m64.cfg.d, "normal", seed):
        a = acc.setdefault(key, {"icp": [], "implicit_ip": [], "network_ip": [], "grads": [], "probes": []})
        with torch.no_grad():
            a["icp"].append(icp_matrix(m64.predict, cx, cy, px, py))
        a["implicit_ip"].append(grad_inner_products(cx, cy, px, py))
        Gc, Gp = network_grads(obj, cx, cy), network_grads(obj, px, py)
        a["network_ip"].append((Gc @ Gp.T).numpy())
        a["grads"].append((cx, cy, Gc))
        a["probes"].append((px, py))
    cal = acc.get(("in_domain", 0.0)) or {k: sum((v[k] for v in acc.values()), []) for k in ("icp", "network_ip")}
    if lr is None:
        lr = float(np.median(np.abs(np.concatenate(cal["icp"]))) / np.median(np.abs(np.concatenate(cal["network_ip"]))))

    def referee(a: dict, step: float) -> np.ndarray:
        return np.concatenate([one_step_referee(obj, cx, cy, px, py, step, cand_grads=Gc)
                               for (cx, cy, Gc), (px, py) in zip(a["grads"], a["probes"])])

    scores = {key: {"icp": np.concatenate(a["icp"]), "implicit_ip": np.concatenate(a["implicit_ip"]),
                    "network_ip": np.concatenate(a["network_ip"]), "one_step": referee(a, lr)} for key, a in acc.items()}
    sweep = {}
    if lr_factors and ("in_domain", 0.0) in acc:
        sweep = {float(f): referee(acc[("in_domain", 0.0)], lr * f) for f in lr_factors}
    return WeightSpaceScores(scores, float(lr), sweep, obj.dim)
