"""Models small enough to retrain, for checking influence functions against leave-one-out
(notebook 03, the ``influence-vs-loo`` experiment, the tests).

* L2-regularised logistic regression, trained to the exact optimum with Newton's method
  (NumPy, float64, independent of the influence code): objective
  ``(1/n) Σ_i ℓ_i(θ) + (λ/2)‖θ‖²`` (bias included in θ). Leave-one-out retraining removes
  one term and keeps the ``1/n`` weights, which is exactly Koh & Liang's ``ε = −1/n``
  upweighting; so ``n·(ℓ_p(θ₋ᵢ) − ℓ_p(θ)) ≈ ∇ℓ(p)ᵀ (H + λI)⁻¹ ∇ℓ(zᵢ)`` where ``H`` is the
  Hessian of the mean *unregularised* loss — the influence score with damping ``λ``.
* a small tanh MLP classifier (float64), trained full-batch with L-BFGS, for EK-FAC.

Both are written as 2-class/C-class cross-entropy models so the same
:class:`~icp_influence.gradients.Objective` and the ``kronfluence`` adapter apply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .gradients import Objective, TensorItems, select_parameters
from .lm import target_logprobs


class BinaryLogits(nn.Module):
    """Logistic regression as a 2-class softmax: logits ``[0, wᵀx + b]``."""

    def __init__(self, d: int):
        super().__init__()
        self.linear = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        return torch.cat([torch.zeros_like(z), z], dim=-1)


def ce_example_loss(forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of one example (``x [d]``, integer ``y``)."""
    logits = forward(x.unsqueeze(0))[0]
    return -target_logprobs(logits, y.reshape(()))


def classifier_token_view(model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, labels) of a classifier batch ``(X, y)`` (the summed loss as a cross-entropy)."""
    X, y = batch
    return model(X), y


def classifier_objective(model: nn.Module, params: str = "all") -> Objective:
    return Objective(model, select_parameters(model, params), ce_example_loss, token_view=classifier_token_view)


# ------------------------------------------------------------------ logistic regression

def make_logreg_data(n: int, d: int = 5, *, n_probes: int = 5, seed: int = 0, noise: float = 1.0):
    """Two overlapping Gaussian classes: ``(X [n,d], y [n], Xp [m,d], yp [m])`` (float64 / int64)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)

    def draw(m):
        X = rng.normal(size=(m, d))
        p = 1 / (1 + np.exp(-(X @ w) / noise))
        return X, (rng.random(m) < p).astype(np.int64)

    X, y = draw(n)
    Xp, yp = draw(n_probes)
    return X, y, Xp, yp


def _aug(X: np.ndarray) -> np.ndarray:
    return np.hstack([X, np.ones((len(X), 1))])


def fit_logreg(X: np.ndarray, y: np.ndarray, l2: float, *, weights: np.ndarray | None = None,
               theta0: np.ndarray | None = None, n_norm: int | None = None, tol: float = 1e-12, max_iter: int = 100) -> np.ndarray:
    """Newton's method on ``(1/n_norm) Σ wᵢ ℓᵢ + (λ/2)‖θ‖²``; returns ``θ = [w, b]``."""
    A = _aug(X)
    n_norm = n_norm or len(X)
    wts = np.ones(len(X)) if weights is None else weights
    th = np.zeros(A.shape[1]) if theta0 is None else theta0.copy()
    for _ in range(max_iter):
        p = 1 / (1 + np.exp(-(A @ th)))
        g = A.T @ (wts * (p - y)) / n_norm + l2 * th
        H = (A * (wts * p * (1 - p))[:, None]).T @ A / n_norm + l2 * np.eye(A.shape[1])
        step = np.linalg.solve(H, g)
        th -= step
        if np.abs(step).max() < tol:
            break
    return th


def logreg_losses(theta: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = _aug(X) @ theta
    return np.logaddexp(0, z) - y * z


def loo_effects(X, y, Xp, yp, l2: float, theta: np.ndarray | None = None) -> np.ndarray:
    """Leave-one-out ground truth ``[n, m]``: ``n·(ℓ_p(θ₋ᵢ) − ℓ_p(θ))`` (positive = zᵢ helped p)."""
    n = len(X)
    theta = fit_logreg(X, y, l2) if theta is None else theta
    base = logreg_losses(theta, Xp, yp)
    out = np.zeros((n, len(Xp)))
    for i in range(n):
        w = np.ones(n)
        w[i] = 0.0
        th_i = fit_logreg(X, y, l2, weights=w, theta0=theta, n_norm=n)
        out[i] = n * (logreg_losses(th_i, Xp, yp) - base)
    return out


def logreg_model(theta: np.ndarray) -> BinaryLogits:
    d = len(theta) - 1
    m = BinaryLogits(d).double()
    with torch.no_grad():
        m.linear.weight.copy_(torch.tensor(theta[:d]).view(1, d))
        m.linear.bias.copy_(torch.tensor(theta[d:]))
    return m.eval()


@dataclass
class LogRegLab:
    """A trained L2 logistic regression with its data, objective and LOO ground truth."""

    X: np.ndarray
    y: np.ndarray
    Xp: np.ndarray
    yp: np.ndarray
    l2: float
    theta: np.ndarray
    model: nn.Module
    obj: Objective
    train: TensorItems
    probes: TensorItems
    loo: np.ndarray | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.X)


def logreg_lab(n: int = 100, d: int = 5, *, n_probes: int = 5, l2: float = 0.01, seed: int = 0, with_loo: bool = True) -> LogRegLab:
    X, y, Xp, yp = make_logreg_data(n, d, n_probes=n_probes, seed=seed)
    theta = fit_logreg(X, y, l2)
    model = logreg_model(theta)
    obj = classifier_objective(model)
    train = TensorItems(torch.tensor(X), torch.tensor(y))
    probes = TensorItems(torch.tensor(Xp), torch.tensor(yp))
    loo = loo_effects(X, y, Xp, yp, l2, theta) if with_loo else None
    return LogRegLab(X, y, Xp, yp, l2, theta, model, obj, train, probes, loo)


# ------------------------------------------------------------------ small MLP

class MLP(nn.Module):
    def __init__(self, d: int, hidden: int, classes: int):
        super().__init__()
        self.fc1 = nn.Linear(d, hidden)
        self.fc2 = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def make_blobs(n: int, d: int = 4, classes: int = 3, *, n_probes: int = 8, seed: int = 0, spread: float = 1.5):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(classes, d))

    def draw(m):
        y = rng.integers(classes, size=m)
        return centers[y] + rng.normal(size=(m, d)), y.astype(np.int64)

    X, y = draw(n)
    Xp, yp = draw(n_probes)
    return X, y, Xp, yp


def train_mlp(X, y, *, hidden: int = 8, classes: int | None = None, l2: float = 1e-2, seed: int = 0,
              steps: int = 300, model: MLP | None = None) -> MLP:
    """Full-batch L-BFGS on mean cross-entropy + (λ/2)‖θ‖² (float64)."""
    classes = classes or int(y.max()) + 1
    if model is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MLP(X.shape[1], hidden, classes).double()
    Xt, yt = torch.tensor(X), torch.tensor(y)
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=steps, tolerance_grad=1e-10,
                            tolerance_change=1e-14, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(Xt), yt) + 0.5 * l2 * sum((p ** 2).sum() for p in model.parameters())
        loss.backward()
        return loss

    opt.step(closure)
    return model.eval()


@dataclass
class MLPLab:
    X: np.ndarray
    y: np.ndarray
    Xp: np.ndarray
    yp: np.ndarray
    l2: float
    model: MLP
    obj: Objective
    train: TensorItems
    probes: TensorItems


def mlp_lab(n: int = 200, d: int = 4, classes: int = 3, *, hidden: int = 8, n_probes: int = 8, l2: float = 1e-2,
            spread: float = 3.0, seed: int = 0) -> MLPLab:
    X, y, Xp, yp = make_blobs(n, d, classes, n_probes=n_probes, seed=seed, spread=spread)
    model = train_mlp(X, y, hidden=hidden, classes=classes, l2=l2, seed=seed)
    obj = classifier_objective(model)
    return MLPLab(X, y, Xp, yp, l2, model, obj, TensorItems(torch.tensor(X), torch.tensor(y)),
                  TensorItems(torch.tensor(Xp), torch.tensor(yp)))


# ------------------------------------------------------------------ scores of any method

#: Solver settings for these small, well-conditioned labs (tighter than the LLM defaults).
LAB_SETTINGS: dict[str, dict[str, Any]] = {
    "cg": {"max_iter": 500, "tol": 1e-10},
    "lissa": {"depth": 5000, "tol": 1e-9},
    "ekfac": {"batch_size": 32},
}


def lab_scores(obj: Objective, train: Any, candidates: Any, probes: Any, method: str, *, damping: float | None = None,
               seed: int = 0, **settings: Any) -> np.ndarray:
    """``[len(candidates), len(probes)]`` scores of the valuator ``method`` on a lab objective.

    Influence functions use the Hessian of the mean loss over all of ``train`` (one batch)
    and damping ``damping``; the other valuators ignore both.
    """
    from .valuators import InfluenceFunction, get

    cls = get(method)
    kw: dict[str, Any] = {"objective": obj, "seed": seed, "chunk_size": max(1, len(candidates)),
                          **LAB_SETTINGS.get(method, {}), **settings}
    if issubclass(cls, InfluenceFunction):
        kw.update(damping=damping, hessian_examples=None, hessian_batch_size=None)
    v = cls(**kw)
    if cls.needs_fit:
        v.fit(list(train))
    return v.score(list(candidates), list(probes)).values


def compare_methods(lab: LogRegLab, methods=("exact", "lissa", "cg", "ekfac", "inner_product"), *, damping: float | None = None,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Scores ``[n, m]`` of each method on a logistic-regression lab (damping defaults to its λ)."""
    damping = lab.l2 if damping is None else damping
    return {m: lab_scores(lab.obj, lab.train, lab.train, lab.probes, m, damping=damping, seed=seed) for m in methods}


# ------------------------------------------------------------------ random projection: how large must k be?

#: projection dimensions tried by :func:`projection_dim_needed` (steps of about √2)
PROJECTION_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)


def projection_agreement(G: torch.Tensor, Gp: torch.Tensor, sizes, ks, *, seeds: int = 5,
                         kind: str = "gaussian") -> np.ndarray:
    """For each ``k`` in ``ks``: Spearman between the projected inner products ``⟨Pa, Pb⟩`` and the
    full ones ``⟨a, b⟩`` over every (candidate, probe) pair, averaged over ``seeds`` projections.

    ``G [n, D]`` candidate and ``Gp [m, D]`` probe gradients; ``sizes`` the parameter tensors'
    sizes (``Objective.sizes``); candidates and probes go through the same ``P`` (one seed).
    """
    from .gradients import Projector
    from .gradient_scores import inner_product_scores
    from .stats import spearman

    full = inner_product_scores(G, Gp)
    out = []
    for k in ks:
        rhos = []
        for s in range(int(seeds)):
            P = Projector(sizes, int(k), seed=s, kind=kind)
            rhos.append(spearman(inner_product_scores(P.project(G), P.project(Gp)), full))
        out.append(float(np.mean(rhos)))
    return np.asarray(out)


def first_k_reaching(ks, rho, target: float = 0.95) -> int | None:
    """The smallest ``k`` of the increasing ``ks`` from which on ``rho`` stays ``≥ target`` (at that
    ``k`` and at every larger one); ``None`` when the last ``k`` falls short."""
    ks, rho = [int(k) for k in ks], np.asarray(rho, dtype=float)
    if len(ks) != len(rho) or any(b <= a for a, b in zip(ks, ks[1:])):
        from .errors import ConfigError

        raise ConfigError(f"ks must be increasing and match rho in length, got {len(ks)} ks for {len(rho)} values.")
    k_needed = None
    for k, r in zip(reversed(ks), reversed(rho)):
        if not r >= target:
            break
        k_needed = k
    return k_needed


def projection_dim_needed(G: torch.Tensor, Gp: torch.Tensor, sizes, *, target: float = 0.95, seeds: int = 5,
                          kind: str = "gaussian", ks=PROJECTION_GRID) -> int | None:
    """The smallest projection dimension ``k`` (of ``ks``) from which on the projected inner products
    rank the (candidate, probe) pairs like the full ones with mean Spearman ``≥ target``.

    For a Gaussian projection the error of ``⟨Pa, Pb⟩`` is of order ``‖a‖‖b‖/√k`` whatever ``D``:
    the ``k`` needed is set by how close the inner products lie, not by ``D``, and on a model
    with few parameters it is far above ``D``.
    """
    return first_k_reaching(ks, projection_agreement(G, Gp, sizes, ks, seeds=seeds, kind=kind), target)
