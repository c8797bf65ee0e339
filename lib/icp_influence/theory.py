"""The theory behind the course: in-context learning as implicit gradient descent, and why
that makes in-context probing (ICP) look like inner-product influence (docs/design.md).

Setup (von Oswald et al., ICML 2023). A *task* is a weight vector ``w ~ N(0, I_d)``; a
prompt holds ``N`` context pairs ``(x_i, y_i = wᵀx_i [+ noise])`` with
``x ~ U(-0.5, 0.5)^d`` and a query ``x_q``. Tokens are ``e_i = (x_i, y_i) ∈ R^{d+1}`` and
the query token is ``(x_q, 0)``.

A **linear self-attention** (LSA) layer updates every token ``e_j`` with

``e_j ← e_j + P · (1/N) Σ_{i ≤ N} (W_V e_i) (W_K e_i)ᵀ (W_Q e_j)``

(keys and values come from the context tokens only; ``N`` is the *nominal* context length,
a fixed normaliser, so a prompt with fewer tokens is a partial sum). The prediction is read
from the query token as ``ŷ = −[e_q]_y`` (von Oswald's sign, which makes stacked layers
equal stacked gradient steps).

With ``W_Q = W_K = [[I_d, 0], [0, 0]]``, ``W_V = [[0, 0], [0, −η]]``, ``P = I`` the layer
computes exactly one gradient-descent step from ``W₀ = 0`` on
``L(W) = 1/(2N) Σ (W x_i − y_i)²``: ``ŷ = (η/N) Σ y_i x_iᵀ x_q`` (:func:`construct_gd_lsa`).

Loss convention: ``ℓ(ŷ, y) = ½ (ŷ − y)²`` (mean over tasks), i.e. the Gaussian negative
log-likelihood up to a constant, so ``ll(p|z) − ll(p) = ℓ(p) − ℓ(p|z)``.

Shapes: ``xs [T, N, d]``, ``ys [T, N]``, ``xq [T, d]``, ``yq [T]``, ``w [T, d]``. Everything
that must be exact runs in ``float64``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigError

DTYPE = torch.float64

#: ``predict(xs [B, n, d], ys [B, n], xq [B, d]) -> ŷ [B]`` — any in-context regressor.
Predictor = Callable[[Tensor, Tensor, Tensor], Tensor]


# ------------------------------------------------------------------ tasks

@dataclass
class RegressionTasks:
    """A batch of in-context linear-regression prompts (see module docstring for shapes)."""

    xs: Tensor
    ys: Tensor
    xq: Tensor
    yq: Tensor
    w: Tensor

    def __len__(self) -> int:
        return int(self.xs.shape[0])

    @property
    def d(self) -> int:
        return int(self.xs.shape[-1])

    @property
    def n_points(self) -> int:
        return int(self.xs.shape[1])


def _check_positive(**values: float) -> None:
    for name, v in values.items():
        if not (isinstance(v, (int, float)) and v > 0):
            raise ConfigError(f"{name} must be a positive number, got {v!r}.")


def sample_x(n: int | tuple[int, ...], d: int, *, dist: str = "uniform", generator: torch.Generator,
             dtype: torch.dtype = DTYPE) -> Tensor:
    """Inputs: ``"uniform"`` = U(−0.5, 0.5)^d (von Oswald), ``"normal"`` = N(0, I_d) (Garg)."""
    shape = (n, d) if isinstance(n, int) else (*n, d)
    if dist == "uniform":
        return torch.rand(shape, generator=generator, dtype=dtype) - 0.5
    if dist == "normal":
        return torch.randn(shape, generator=generator, dtype=dtype)
    raise ConfigError(f"Unknown input distribution {dist!r}; use 'uniform' or 'normal'.")


def sample_tasks(n_tasks: int, n_points: int = 10, d: int = 10, *, noise: float = 0.0, x_dist: str = "uniform",
                 seed: int = 0, dtype: torch.dtype = DTYPE) -> RegressionTasks:
    """``n_tasks`` prompts with ``n_points`` context pairs each; ``w ~ N(0, I_d)``.

    ``noise`` is the standard deviation of Gaussian label noise added to context *and*
    query labels (0 = the noiseless von Oswald setup).
    """
    _check_positive(n_tasks=n_tasks, d=d)
    if n_points < 0 or noise < 0:
        raise ConfigError(f"n_points and noise must be >= 0, got {n_points}, {noise}.")
    g = torch.Generator().manual_seed(int(seed))
    w = torch.randn(n_tasks, d, generator=g, dtype=dtype)
    xs = sample_x((n_tasks, n_points), d, dist=x_dist, generator=g, dtype=dtype)
    xq = sample_x(n_tasks, d, dist=x_dist, generator=g, dtype=dtype)
    ys = torch.einsum("tnd,td->tn", xs, w)
    yq = torch.einsum("td,td->t", xq, w)
    if noise > 0:
        ys = ys + noise * torch.randn(ys.shape, generator=g, dtype=dtype)
        yq = yq + noise * torch.randn(yq.shape, generator=g, dtype=dtype)
    return RegressionTasks(xs, ys, xq, yq, w)


def make_tokens(xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
    """Stack context tokens ``(x_i, y_i)`` and the query token ``(x_q, 0)``: ``[B, n+1, d+1]``."""
    ctx = torch.cat([xs, ys.unsqueeze(-1)], dim=-1)
    q = torch.cat([xq, torch.zeros_like(xq[:, :1])], dim=-1).unsqueeze(1)
    return torch.cat([ctx, q], dim=1)


def half_mse(pred: Tensor, target: Tensor) -> float:
    """``mean ½ (ŷ − y)²`` as a Python float."""
    return float(0.5 * ((pred - target) ** 2).mean())


# ------------------------------------------------------------------ gradient descent

def gd_weights(xs: Tensor, ys: Tensor, lr: float, *, steps: int = 1, W0: Tensor | None = None) -> Tensor:
    """Weights after ``steps`` full-batch GD steps on ``L(W) = 1/(2N) Σ (W x_i − y_i)²``.

    ``xs [T, N, d]``, ``ys [T, N]``, ``W0 [T, d]`` or ``[d]`` (default 0) → ``W [T, d]``.
    ``N`` is ``xs.shape[1]``.
    """
    T, N, d = xs.shape
    W = torch.zeros(T, d, dtype=xs.dtype) if W0 is None else W0.to(xs.dtype).expand(T, d).clone()
    for _ in range(steps):
        resid = torch.einsum("tnd,td->tn", xs, W) - ys
        W = W - lr / N * torch.einsum("tn,tnd->td", resid, xs)
    return W


def gd_predict(xs: Tensor, ys: Tensor, xq: Tensor, lr: float, *, steps: int = 1, W0: Tensor | None = None,
               n_norm: int | None = None) -> Tensor:
    """Prediction ``W_k x_q`` of ``steps`` GD steps (``n_norm`` overrides the 1/N normaliser)."""
    if n_norm is not None and xs.shape[1] != n_norm:
        lr = lr * xs.shape[1] / n_norm  # same per-example step as with the nominal N
    return torch.einsum("td,td->t", gd_weights(xs, ys, lr, steps=steps, W0=W0), xq)


def optimal_gd_lr(tasks: RegressionTasks) -> float:
    """Exact line search for the one-step GD learning rate from ``W₀ = 0``.

    The one-step prediction is linear in η: ``ŷ = η·u`` with ``u`` the prediction at η = 1,
    so ``mean ½(ηu − y)²`` is a parabola with minimum at ``η* = Σ u y / Σ u²``.
    """
    u = gd_predict(tasks.xs, tasks.ys, tasks.xq, 1.0)
    return float((u * tasks.yq).sum() / (u * u).sum())


def gd_loss_curve(tasks: RegressionTasks, lrs: Sequence[float]) -> np.ndarray:
    """One-step GD loss ``mean ½(ŷ − y)²`` for each learning rate in ``lrs`` (for plots)."""
    u = gd_predict(tasks.xs, tasks.ys, tasks.xq, 1.0)
    return np.array([half_mse(lr * u, tasks.yq) for lr in lrs])


def expected_optimal_lr_uniform(d: int, n_points: int, half_width: float = 0.5) -> float:
    """Closed form of ``η* = tr E[S] / tr E[S²]`` for ``x ~ U(−a, a)^d``, ``S = (1/N)Σ x_i x_iᵀ``.

    With ``σ² = a²/3`` and ``μ₄ = a⁴/5``: ``E[S]_kk = σ²`` and
    ``E[S²]_kk = σ⁴ + (μ₄ + (d−1)σ⁴ − σ⁴)/N`` (derived in notebook 01's exercises).
    """
    s2, m4 = half_width**2 / 3, half_width**4 / 5
    es2 = s2**2 + (m4 + (d - 1) * s2**2 - s2**2) / n_points
    return s2 / es2


# ------------------------------------------------------------------ linear self-attention

class LSALayer(nn.Module):
    """One linear self-attention layer on tokens of width ``D = d + 1`` (see module doc)."""

    def __init__(self, dim: int, n_norm: int, init_scale: float = 0.0, generator: torch.Generator | None = None,
                 dtype: torch.dtype = DTYPE) -> None:
        super().__init__()
        self.n_norm = int(n_norm)

        def init() -> nn.Parameter:
            return nn.Parameter(init_scale * torch.randn(dim, dim, generator=generator, dtype=dtype))

        self.W_Q, self.W_K, self.W_V, self.P = init(), init(), init(), init()

    def forward(self, tokens: Tensor, n_ctx: int, last_only: bool = False) -> Tensor:
        """``tokens [B, L, D]`` whose first ``n_ctx`` are the context → updated tokens ``[B, L, D]``
        (``last_only``: update and return only the last token, ``[B, 1, D]`` — faster)."""
        ctx = tokens[:, :n_ctx]
        if last_only:
            tokens = tokens[:, -1:]
        q = tokens @ self.W_Q.T
        k = ctx @ self.W_K.T
        v = ctx @ self.W_V.T
        upd = (q @ k.transpose(1, 2)) @ v / self.n_norm
        return tokens + upd @ self.P.T

    def delta_W(self, ctx: Tensor) -> Tensor:
        """Dual form (Dai et al. 2023): ``ΔW = P (1/N) Σ_i (W_V e_i)(W_K e_i)ᵀ`` ``[B, D, D]``.

        The layer then maps every token as ``e ↦ e + ΔW (W_Q e)``: a linear layer (the
        identity, i.e. the zero-shot weights) plus a sum of outer products over the context
        — the "meta-gradient" update that in-context examples apply.
        """
        v = ctx @ self.W_V.T
        k = ctx @ self.W_K.T
        return self.P @ (v.transpose(1, 2) @ k) / self.n_norm


class LinearSelfAttention(nn.Module):
    """A stack of :class:`LSALayer` s; ``predict`` reads ``ŷ = −[e_q]_y`` from the last token."""

    def __init__(self, d: int, n_points: int, n_layers: int = 1, init_scale: float = 0.0, seed: int = 0,
                 dtype: torch.dtype = DTYPE) -> None:
        super().__init__()
        _check_positive(d=d, n_points=n_points, n_layers=n_layers)
        g = torch.Generator().manual_seed(int(seed))
        self.d, self.n_points = int(d), int(n_points)
        self.layers = nn.ModuleList(LSALayer(d + 1, n_points, init_scale, g, dtype) for _ in range(n_layers))

    def forward(self, tokens: Tensor, n_ctx: int, last_only: bool = False) -> Tensor:
        """All layers; with ``last_only`` the final layer updates only the query token."""
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            tokens = layer(tokens, n_ctx, last_only=last_only and i == n - 1)
        return tokens

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
        """``xs [B, n, d]``, ``ys [B, n]``, ``xq [B, d]`` → ``ŷ [B]`` (any ``n``, incl. 0)."""
        dt = self.layers[0].P.dtype
        tokens = make_tokens(xs.to(dt), ys.to(dt), xq.to(dt))
        return -self.forward(tokens, xs.shape[1], last_only=True)[:, -1, -1]


    def effective_matrices(self, layer: int = 0) -> dict[str, np.ndarray]:
        """``W_KᵀW_Q`` and ``P W_V`` — the products that determine the layer (the factors
        themselves are not identifiable)."""
        L = self.layers[layer]
        with torch.no_grad():
            return {"W_K^T W_Q": (L.W_K.T @ L.W_Q).cpu().numpy(), "P W_V": (L.P @ L.W_V).cpu().numpy()}


def construct_gd_lsa(d: int, lr: float, n_points: int, n_layers: int = 1, dtype: torch.dtype = DTYPE) -> LinearSelfAttention:
    """The von Oswald construction: every layer performs one GD step with learning rate ``lr``.

    ``W_Q = W_K = [[I_d, 0], [0, 0]]``, ``W_V = [[0, 0], [0, −lr]]``, ``P = I``. After layer 1
    the context labels hold the residuals ``y_i − W₁x_i`` and the query holds ``−W₁x_q``, so
    ``n_layers`` layers = ``n_layers`` GD steps from ``W₀ = 0``.
    """
    model = LinearSelfAttention(d, n_points, n_layers=n_layers, dtype=dtype)
    D = d + 1
    with torch.no_grad():
        for L in model.layers:
            proj = torch.zeros(D, D, dtype=dtype)
            proj[:d, :d] = torch.eye(d, dtype=dtype)
            L.W_Q.copy_(proj)
            L.W_K.copy_(proj)
            L.W_V.zero_()
            L.W_V[d, d] = -lr
            L.P.copy_(torch.eye(D, dtype=dtype))
    return model


def construction_max_abs_diff(n_tasks: int = 1000, d: int = 10, n_points: int = 10, lr: float | None = None,
                              seed: int = 0) -> float:
    """``max |ŷ_LSA − ŷ_GD|`` of the constructed layer over ``n_tasks`` fresh tasks (float64)."""
    tasks = sample_tasks(n_tasks, n_points, d, seed=seed)
    lr = optimal_gd_lr(tasks) if lr is None else lr
    lsa = construct_gd_lsa(d, lr, n_points)
    with torch.no_grad():
        diff = lsa.predict(tasks.xs, tasks.ys, tasks.xq) - gd_predict(tasks.xs, tasks.ys, tasks.xq, lr)
    return float(diff.abs().max())


@dataclass
class TrainHistory:
    steps: list[int]
    loss: list[float]  # mean ½(ŷ − y)² of the training batch at that step


def train_lsa(d: int = 10, n_points: int = 10, *, steps: int = 5000, batch_size: int = 2048, lr: float = 1e-3,
              init_scale: float = 0.05, n_layers: int = 1, noise: float = 0.0, seed: int = 0, log_every: int = 50,
              progress: bool = False, dtype: torch.dtype = DTYPE) -> tuple[LinearSelfAttention, TrainHistory]:
    """Train an LSA from a small random init (``N(0, init_scale²)`` entries) with Adam on
    fresh tasks every step (von Oswald: Adam, lr 1e-3). Returns the model and the loss curve."""
    _check_positive(steps=steps, batch_size=batch_size, lr=lr)
    torch.manual_seed(seed)
    model = LinearSelfAttention(d, n_points, n_layers=n_layers, init_scale=init_scale, seed=seed, dtype=dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist = TrainHistory([], [])
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="train LSA", leave=False)
    for step in it:
        t = sample_tasks(batch_size, n_points, d, noise=noise, seed=10_000_019 * (seed + 1) + step, dtype=dtype)
        loss = 0.5 * ((model.predict(t.xs, t.ys, t.xq) - t.yq) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            hist.steps.append(step)
            hist.loss.append(float(loss.detach()))
    model.eval()
    return model, hist


def sensitivities(predict: Predictor, xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
    """``∂ŷ/∂x_q`` for every prompt, ``[B, d]`` (autograd; each ŷ depends on its own x_q only)."""
    xq = xq.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        y = predict(xs, ys, xq)
        (g,) = torch.autograd.grad(y.sum(), xq)
    return g.detach()


def cosine_rows(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cosine similarity ``[B]``."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)


def compare_with_gd(model: LinearSelfAttention, tasks: RegressionTasks, gd_lr: float) -> dict[str, float]:
    """Evaluation of an LSA against one GD step with ``gd_lr`` on the same tasks.

    Returns ``lsa_loss``, ``gd_loss``, ``zero_loss`` (predict 0), ``sensitivity_cosine`` (mean
    over tasks of cos(∂ŷ_LSA/∂x_q, ∂ŷ_GD/∂x_q)), ``prediction_abs_diff`` (mean |ŷ_LSA − ŷ_GD|).
    """
    def gd(xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
        return gd_predict(xs, ys, xq, gd_lr)

    with torch.no_grad():
        y_lsa = model.predict(tasks.xs, tasks.ys, tasks.xq)
        y_gd = gd(tasks.xs, tasks.ys, tasks.xq)
    s_lsa = sensitivities(model.predict, tasks.xs, tasks.ys, tasks.xq)
    s_gd = sensitivities(gd, tasks.xs, tasks.ys, tasks.xq)
    return {
        "lsa_loss": half_mse(y_lsa, tasks.yq),
        "gd_loss": half_mse(y_gd, tasks.yq),
        "zero_loss": half_mse(torch.zeros_like(tasks.yq), tasks.yq),
        "sensitivity_cosine": float(cosine_rows(s_lsa, s_gd).mean()),
        "prediction_abs_diff": float((y_lsa - y_gd).abs().mean()),
    }


def dual_form_check(model: LinearSelfAttention, tasks: RegressionTasks) -> dict[str, float]:
    """Check the dual form numerically on the first layer.

    ``out_q = e_q + ΔW (W_Q e_q)`` with ``ΔW`` from :meth:`LSALayer.delta_W`; and, for the
    constructed layer, the y-row of ``ΔW`` on the x-block equals ``−η ∇L(W₀=0)`` (the GD
    update). Returns ``max_abs_diff_forward`` and ``max_abs_diff_gd_update``.
    """
    L = model.layers[0]
    with torch.no_grad():
        tokens = make_tokens(tasks.xs, tasks.ys, tasks.xq)
        out = L(tokens, tasks.n_points)
        dW = L.delta_W(tokens[:, : tasks.n_points])
        via_dual = tokens + torch.einsum("bij,blj->bli", dW, tokens @ L.W_Q.T)
        # GD update −η∇L(0) = (η/N) Σ y_i x_i ; the layer writes −ŷ, so compare with −ΔW's y-row.
        eta = -float(L.W_V[-1, -1]) if model.d + 1 == L.W_V.shape[0] else float("nan")
        upd = gd_weights(tasks.xs, tasks.ys, eta)
        dual_upd = -dW[:, -1, : model.d]
    return {
        "max_abs_diff_forward": float((via_dual - out).abs().max()),
        "max_abs_diff_gd_update": float((dual_upd - upd).abs().max()),
    }


# ------------------------------------------------------------------ ICP vs influence

def icp_matrix(predict: Predictor, cand_x: Tensor, cand_y: Tensor, probe_x: Tensor, probe_y: Tensor, *,
               base_x: Tensor | None = None, base_y: Tensor | None = None, batch: int = 65536) -> np.ndarray:
    """ICP of every candidate for every probe: ``ℓ(p | C) − ℓ(p | C ∪ {z})`` ``[M, K]``.

    ``ℓ = ½(ŷ − y)²``; ``C`` is the base context (``base_x [n, d]``, default empty) and ``z``
    is appended after it, right before the query. Positive = ``z`` helps the probe, i.e. the
    mean-delta ICP score ``ll(p|z) − ll(p)`` with a Gaussian likelihood.
    """
    M, K, d = cand_x.shape[0], probe_x.shape[0], probe_x.shape[1]
    dt = DTYPE
    bx = torch.zeros(0, d, dtype=dt) if base_x is None else base_x.to(dt)
    by = torch.zeros(0, dtype=dt) if base_y is None else base_y.to(dt)
    px, py = probe_x.to(dt), probe_y.to(dt)
    with torch.no_grad():
        base_pred = predict(bx.expand(K, *bx.shape), by.expand(K, *by.shape), px).to(dt)
        base_loss = 0.5 * (base_pred - py) ** 2
        out = np.empty((M, K))
        per = max(1, batch // K)
        for s in range(0, M, per):
            zx, zy = cand_x[s:s + per].to(dt), cand_y[s:s + per].to(dt)
            m = zx.shape[0]
            xs = torch.cat([bx.expand(m, K, *bx.shape), zx[:, None, None, :].expand(m, K, 1, d)], dim=2)
            ys = torch.cat([by.expand(m, K, *by.shape), zy[:, None, None].expand(m, K, 1)], dim=2)
            pred = predict(xs.reshape(m * K, -1, d), ys.reshape(m * K, -1), px.repeat(m, 1)).to(dt).reshape(m, K)
            out[s:s + m] = (base_loss[None, :] - 0.5 * (pred - py[None, :]) ** 2).numpy()
    return out


def linear_grads(x: Tensor, y: Tensor, W: Tensor | None = None) -> Tensor:
    """Per-example gradients of ``ℓ = ½(Wx − y)²`` w.r.t. ``W``: ``(Wx − y) x`` ``[n, d]``."""
    x = x.to(DTYPE)
    W = torch.zeros(x.shape[-1], dtype=DTYPE) if W is None else W.to(DTYPE)
    return ((x @ W) - y.to(DTYPE))[:, None] * x


def grad_inner_products(cand_x: Tensor, cand_y: Tensor, probe_x: Tensor, probe_y: Tensor,
                        W: Tensor | None = None) -> np.ndarray:
    """``⟨∇ℓ(z), ∇ℓ(p)⟩`` of the linear model at ``W`` (default ``W₀ = 0``), ``[M, K]``."""
    return (linear_grads(cand_x, cand_y, W) @ linear_grads(probe_x, probe_y, W).T).numpy()


def normalised_inner_products(cand_x: Tensor, cand_y: Tensor, probe_x: Tensor, probe_y: Tensor) -> np.ndarray:
    """``⟨∇ℓ(z), ∇ℓ(p)⟩ / ‖x_z‖²`` at ``W₀ = 0``, i.e. ``y_z y_p x_zᵀx_p / ‖x_z‖²`` ``[M, K]``.

    The first-order ICP of a learner that takes a *least-squares* step on one demonstration
    (``ŷ = y_z x_zᵀx_p / ‖x_z‖²``, the min-norm interpolant of ``z``) instead of a plain gradient
    step (``ŷ = s y_z x_zᵀx_p``): each candidate's row of the inner product divided by ``‖x_z‖²``.
    """
    sq = (cand_x.to(DTYPE) ** 2).sum(dim=1).numpy()
    if np.any(sq == 0):
        raise ConfigError("normalised_inner_products: a candidate has x_z = 0; its normalised step is undefined.")
    return grad_inner_products(cand_x, cand_y, probe_x, probe_y) / sq[:, None]


def influence_linear(cand_x: Tensor, cand_y: Tensor, probe_x: Tensor, probe_y: Tensor, W: Tensor | None = None, *,
                     damping: float = 0.0, hessian_x: Tensor | None = None) -> np.ndarray:
    """``∇_W ℓ(p)ᵀ (H + λI)⁻¹ ∇_W ℓ(z)`` of the linear model at ``W``, sign "positive = helps": ``[M, K]``.

    ``H = (1/n) Σ x xᵀ`` over the candidate pool (or ``hessian_x``); for squared loss ``H``
    does not depend on ``W``. This is Koh & Liang's (2017) influence function — the decrease
    of the probe loss per unit up-weighting of ``z`` — only when ``W`` is the optimum of the
    (damped) training loss. At the default ``W₀ = 0`` it is a **Newton-preconditioned inner
    product at initialisation**; at the optimum of a noiseless pool every gradient, hence
    the influence, is 0 (notebook 02).
    """
    if damping < 0:
        raise ConfigError(f"damping must be >= 0, got {damping}.")
    hx = (cand_x if hessian_x is None else hessian_x).to(DTYPE)
    H = hx.T @ hx / hx.shape[0] + damping * torch.eye(hx.shape[1], dtype=DTYPE)
    gz, gp = linear_grads(cand_x, cand_y, W), linear_grads(probe_x, probe_y, W)
    return (gz @ torch.linalg.solve(H, gp.T)).numpy()


def second_order_term(cand_x: Tensor, cand_y: Tensor, probe_x: Tensor, step: float, W: Tensor | None = None) -> np.ndarray:
    """``½ step² (∇ℓ(z)·x_p)²`` ``[M, K]``: the curvature term of the exact expansion

    ``ℓ(p) − ℓ(p | θ − s∇ℓ(z)) = s ⟨∇ℓ(p), ∇ℓ(z)⟩ − ½ s² ∇ℓ(z)ᵀ H_p ∇ℓ(z)``, ``H_p = x_p x_pᵀ``
    (squared loss is quadratic, so there is nothing beyond second order). ``step = η/N``.
    """
    gz = linear_grads(cand_x, cand_y, W)
    return (0.5 * step**2 * (gz @ probe_x.to(DTYPE).T) ** 2).numpy()


# ------------------------------------------------------------------ from pairs to candidates

def tie_matched(values: Any, like: Any) -> np.ndarray:
    """``values`` coarsened to the tie structure of ``like`` (both ``[n]``).

    Sort the items by ``values`` and cut them into consecutive groups whose sizes are those of
    ``like``'s groups of equal values, in ascending order of ``like``; every item gets its
    group's index (0, 1, …). ``spearman(tie_matched(v, like), v)`` is the best rank agreement
    with ``v`` that a score with ``like``'s ties can reach — what the ties alone cost (e.g.
    a win-rate over ``P`` probes takes at most ``P + 1`` values).
    """
    v, lk = np.asarray(values, dtype=np.float64).ravel(), np.asarray(like).ravel()
    if v.shape != lk.shape:
        raise ConfigError(f"tie_matched: {v.size} values but {lk.size} in `like`; give one per item in each.")
    _, counts = np.unique(lk, return_counts=True)
    out = np.empty(v.size)
    out[np.argsort(v, kind="stable")] = np.repeat(np.arange(counts.size, dtype=np.float64), counts)
    return out


def sign_flips_by_magnitude(icp: Any, ip: Any, n_bins: int = 10) -> dict[str, np.ndarray]:
    """How often ICP and the inner product disagree in sign, by the size of the inner product.

    A pair *flips* when ``(ICP > 0) != (IP > 0)`` (strict, as the win-rate counts). Pairs are
    cut into ``n_bins`` bins of equal count by ``|IP|`` (bin 0 = closest to 0). Returns
    ``edges`` ``[n_bins + 1]`` (of |IP|), ``rate`` (fraction of flips per bin), ``count``
    (pairs per bin) and ``overall`` (fraction of all pairs, a 0-d array).
    """
    a, b = np.asarray(icp, dtype=np.float64).ravel(), np.asarray(ip, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ConfigError(f"sign_flips_by_magnitude: shapes differ ({a.size} vs {b.size} values).")
    if n_bins < 1 or a.size < n_bins:
        raise ConfigError(f"Need 1 ≤ n_bins ≤ number of pairs, got n_bins={n_bins} for {a.size} pairs.")
    flip = (a > 0) != (b > 0)
    order = np.argsort(np.abs(b), kind="stable")
    groups = np.array_split(order, n_bins)
    mag = np.abs(b)
    edges = np.array([mag[groups[0]].min()] + [mag[g].max() for g in groups])
    return {"edges": edges, "rate": np.array([flip[g].mean() for g in groups]),
            "count": np.array([len(g) for g in groups]), "overall": np.asarray(flip.mean())}


# ------------------------------------------------------------------ a pool for the linear setting

@dataclass
class LinearPool:
    """Candidates and probes of one regression task (``w [d]``) for ICP-vs-influence."""

    cand_x: Tensor
    cand_y: Tensor
    probe_x: Tensor
    probe_y: Tensor
    w: Tensor


def sample_pool(n_candidates: int, n_probes: int, d: int = 10, *, x_dist: str = "uniform", noise: float = 0.0,
                w: Tensor | None = None, seed: int = 0) -> LinearPool:
    """Candidates and probes drawn from one task ``w`` (noiseless probes; ``noise`` on candidates)."""
    _check_positive(n_candidates=n_candidates, n_probes=n_probes, d=d)
    g = torch.Generator().manual_seed(int(seed))
    w = torch.randn(d, generator=g, dtype=DTYPE) if w is None else w.to(DTYPE)
    cx = sample_x(n_candidates, d, dist=x_dist, generator=g)
    px = sample_x(n_probes, d, dist=x_dist, generator=g)
    cy = cx @ w + noise * torch.randn(n_candidates, generator=g, dtype=DTYPE)
    return LinearPool(cx, cy, px, px @ w, w)


def icp_vs_gradients(predict: Predictor, pool: LinearPool, *, step: float | None = None, damping: float = 1e-3
                     ) -> dict[str, np.ndarray]:
    """ICP, gradient inner product (W₀ = 0), the Newton-preconditioned inner product at W₀ = 0
    (key ``influence``: :func:`influence_linear`) and — when ``step = η/N`` is given — the exact
    second-order prediction ``step·IP − ½step²(∇ℓ(z)·x_p)²``; all ``[M, K]``."""
    out = {
        "icp": icp_matrix(predict, pool.cand_x, pool.cand_y, pool.probe_x, pool.probe_y),
        "inner_product": grad_inner_products(pool.cand_x, pool.cand_y, pool.probe_x, pool.probe_y),
        "influence": influence_linear(pool.cand_x, pool.cand_y, pool.probe_x, pool.probe_y, damping=damping),
    }
    if step is not None:
        out["second_order"] = second_order_term(pool.cand_x, pool.cand_y, pool.probe_x, step)
        out["taylor2"] = step * out["inner_product"] - out["second_order"]
    return out
