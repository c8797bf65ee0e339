"""Exercises of notebook 01 (in-context learning as implicit gradient descent)."""
from __future__ import annotations

import numpy as np

from . import exercise


@exercise("01.gd_from_w0",
          hint="Put −η·(−W₀, 1) in the y-row of W_V so values carry the residuals y_i − W₀x_i, "
               "then read ŷ = W₀x_q − [e_q]_y. It must equal gd_predict(..., W0=W0).")
def _gd_from_w0(*, tasks, W0, lr):
    from icp_influence.theory import gd_predict

    return gd_predict(tasks.xs, tasks.ys, tasks.xq, lr, W0=W0).numpy()


@exercise("01.two_layers",
          hint="Stack two constructed layers (construct_gd_lsa(..., n_layers=2)): after layer 1 the "
               "context labels are residuals, so layer 2 takes a second GD step.")
def _two_layers(*, tasks, lr):
    from icp_influence.theory import gd_predict

    return gd_predict(tasks.xs, tasks.ys, tasks.xq, lr, steps=2).numpy()


@exercise("01.optimal_lr",
          hint="η* = tr E[S] / tr E[S²] with S = (1/N) Σ x_i x_iᵀ; for U(−a, a): σ² = a²/3, μ₄ = a⁴/5, "
               "E[S²]_kk = σ⁴ + (μ₄ + (d−1)σ⁴ − σ⁴)/N.")
def _optimal_lr(*, d, n_points):
    from icp_influence.theory import expected_optimal_lr_uniform

    return float(expected_optimal_lr_uniform(d, n_points))


@_optimal_lr.checker
def _(answer, solution):
    return bool(np.isclose(float(answer), solution, rtol=1e-6))
