"""Exercises of notebook 02 (probing meets influence)."""
from __future__ import annotations

from . import exercise


@exercise("02.second_order_term",
          hint="ICP − s·IP = −½ s² (∇ℓ(z)·x_p)² with s = η/N and ∇ℓ(z) = (W₀x_z − y_z) x_z = −y_z x_z at W₀ = 0.")
def _second_order(*, pool, step):
    from icp_influence.theory import second_order_term

    return -second_order_term(pool.cand_x, pool.cand_y, pool.probe_x, step)


@exercise("02.small_step_pearson",
          hint="Build construct_gd_lsa(d, lr / 100, N), recompute icp_matrix on the same pool and take "
               "pearson(icp, inner_product): the second-order term shrinks 100× faster than the first.")
def _small_step(*, pool, lr, n_points=10):
    from icp_influence.stats import pearson
    from icp_influence.theory import construct_gd_lsa, grad_inner_products, icp_matrix

    d = pool.cand_x.shape[1]
    lsa = construct_gd_lsa(d, lr / 100, n_points)
    icp = icp_matrix(lsa.predict, pool.cand_x, pool.cand_y, pool.probe_x, pool.probe_y)
    return pearson(icp, grad_inner_products(pool.cand_x, pool.cand_y, pool.probe_x, pool.probe_y))


@exercise("02.influence_by_hand",
          hint="G_z = (W₀x − y)x per candidate (rows), H = XᵀX / M over the candidates; "
               "influence[m, k] = G_z[m] · solve(H, G_p[k]).")
def _influence(*, pool):
    from icp_influence.theory import influence_linear

    return influence_linear(pool.cand_x, pool.cand_y, pool.probe_x, pool.probe_y, damping=0.0)
