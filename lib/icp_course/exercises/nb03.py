"""Exercises of notebook 03 (influence functions)."""
from __future__ import annotations

import numpy as np

from . import exercise


@exercise("03.logreg_hessian",
          hint="For logistic regression H = (1/n) Σ σ(θᵀx̃)(1−σ(θᵀx̃)) x̃x̃ᵀ with x̃ = [x, 1] (bias last).")
def _hessian(*, X, theta):
    A = np.hstack([X, np.ones((len(X), 1))])
    p = 1 / (1 + np.exp(-A @ theta))
    return (A * (p * (1 - p))[:, None]).T @ A / len(X)


@exercise("03.influence_one_pair",
          hint="score = ∇ℓ(p)ᵀ (H + λI)⁻¹ ∇ℓ(z) with ∇ℓ = (σ(θᵀx̃) − y) x̃; solve, don't invert.")
def _one_pair(*, X, y, theta, l2, x_p, y_p, i):
    A = np.hstack([X, np.ones((len(X), 1))])
    p = 1 / (1 + np.exp(-A @ theta))
    H = (A * (p * (1 - p))[:, None]).T @ A / len(X) + l2 * np.eye(A.shape[1])
    g_z = (p[i] - y[i]) * A[i]
    a_p = np.append(x_p, 1.0)
    g_p = (1 / (1 + np.exp(-a_p @ theta)) - y_p) * a_p
    return float(g_p @ np.linalg.solve(H, g_z))


@exercise("03.most_self_influential",
          hint="Self-influence ∇ℓ(z)ᵀ(H+λI)⁻¹∇ℓ(z) is large for points the model finds surprising; take the argmax.")
def _self_inf(*, X, y, theta, l2):
    A = np.hstack([X, np.ones((len(X), 1))])
    p = 1 / (1 + np.exp(-A @ theta))
    H = (A * (p * (1 - p))[:, None]).T @ A / len(X) + l2 * np.eye(A.shape[1])
    G = (p - y)[:, None] * A
    return int(np.argmax(np.einsum("ij,ij->i", G, np.linalg.solve(H, G.T).T)))
