"""icp_influence.theory / theory_transformer: LSA = GD, dual form, ICP vs influence, CIs."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from icp_influence import stats as S
from icp_influence import theory as T
from icp_influence import theory_transformer as TT
from icp_influence.errors import ConfigError, CorruptFileError, ModelFilesError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ------------------------------------------------------------------ construction

def test_constructed_lsa_is_one_gd_step_over_1000_tasks():
    diff = T.construction_max_abs_diff(n_tasks=1000, d=10, n_points=10, seed=0)
    assert diff <= 1e-5
    assert diff < 1e-12  # float64: it is exact up to rounding


def test_gd_step_matches_hand_formula_and_autograd():
    t = T.sample_tasks(50, 10, 10, seed=3)
    lr = 2.5
    hand = lr / 10 * torch.einsum("tn,tnd,td->t", t.ys, t.xs, t.xq)  # (η/N) Σ y_i x_iᵀ x_q
    assert torch.allclose(T.gd_predict(t.xs, t.ys, t.xq, lr), hand, atol=1e-13)
    # the step really is −η ∇L(0) with L computed by autograd
    W = torch.zeros(50, 10, dtype=torch.float64, requires_grad=True)
    L = 0.5 * ((torch.einsum("tnd,td->tn", t.xs, W) - t.ys) ** 2).mean(1).sum()
    (g,) = torch.autograd.grad(L, W)
    assert torch.allclose(T.gd_weights(t.xs, t.ys, lr), -lr * g, atol=1e-13)


def test_two_constructed_layers_are_two_gd_steps():
    t = T.sample_tasks(200, 10, 10, seed=4)
    lsa = T.construct_gd_lsa(10, 3.0, 10, n_layers=2)
    with torch.no_grad():
        diff = (lsa.predict(t.xs, t.ys, t.xq) - T.gd_predict(t.xs, t.ys, t.xq, 3.0, steps=2)).abs().max()
        one = (lsa.predict(t.xs, t.ys, t.xq) - T.gd_predict(t.xs, t.ys, t.xq, 3.0, steps=1)).abs().max()
    assert float(diff) < 1e-12 and float(one) > 1e-3


def test_dual_form_is_exact_and_equals_the_gd_update():
    t = T.sample_tasks(100, 10, 10, seed=5)
    r = T.dual_form_check(T.construct_gd_lsa(10, 4.0, 10), t)
    assert r["max_abs_diff_forward"] < 1e-12 and r["max_abs_diff_gd_update"] < 1e-12
    # the forward identity holds for any (random) layer too
    rnd = T.LinearSelfAttention(10, 10, init_scale=0.3, seed=1)
    assert T.dual_form_check(rnd, t)["max_abs_diff_forward"] < 1e-12


def test_optimal_lr_is_the_argmin_and_matches_the_closed_form():
    t = T.sample_tasks(20_000, 10, 10, seed=6)
    eta = T.optimal_gd_lr(t)
    lrs = np.linspace(eta - 1, eta + 1, 201)
    losses = T.gd_loss_curve(t, lrs)
    assert abs(lrs[np.argmin(losses)] - eta) <= 0.01 + 1e-9
    assert T.expected_optimal_lr_uniform(10, 10) == pytest.approx(6.0606060606, rel=1e-9)
    assert eta == pytest.approx(T.expected_optimal_lr_uniform(10, 10), rel=0.03)
    # zero loss = ½ E[(wᵀx)²] = ½ d/12
    assert T.half_mse(torch.zeros_like(t.yq), t.yq) == pytest.approx(10 / 24, rel=0.03)


def test_trained_lsa_short_run_lands_on_gd():
    """Short version of the acceptance run (full: 5000 steps × 1024 tasks, see `run lsa-gd`)."""
    model, hist = T.train_lsa(10, 10, steps=600, batch_size=512, seed=0)
    ev = T.sample_tasks(5000, 10, 10, seed=99)
    eta = T.optimal_gd_lr(T.sample_tasks(10_000, 10, 10, seed=98))
    r = T.compare_with_gd(model, ev, eta)
    assert hist.loss[0] > 0.35 > hist.loss[-1]  # it learned something
    assert r["lsa_loss"] <= 1.03 * r["gd_loss"]  # the acceptance bounds already after 600 steps
    assert r["sensitivity_cosine"] >= 0.99
    assert r["prediction_abs_diff"] < 0.05
    assert r["zero_loss"] > 1.8 * r["gd_loss"]
    m = model.effective_matrices()
    # learned P·W_V concentrates on the y→y entry, W_KᵀW_Q on the x-block (the construction)
    pv, kq = np.abs(m["P W_V"]), np.abs(m["W_K^T W_Q"])
    assert pv[-1, -1] > 5 * np.delete(pv.ravel(), pv.size - 1).max()
    assert np.diag(kq)[:10].min() > 3 * np.abs(kq[:10, :10] - np.diag(np.diag(kq[:10, :10]))).max()


def test_sensitivities_of_gd_are_analytic():
    t = T.sample_tasks(20, 10, 10, seed=7)
    s = T.sensitivities(lambda xs, ys, xq: T.gd_predict(xs, ys, xq, 2.0), t.xs, t.ys, t.xq)
    assert torch.allclose(s, 2.0 / 10 * torch.einsum("tn,tnd->td", t.ys, t.xs), atol=1e-13)


# ------------------------------------------------------------------ ICP vs influence

@pytest.fixture(scope="module")
def pool():
    return T.sample_pool(40, 15, 10, seed=11)


def test_icp_in_constructed_lsa_is_first_plus_second_order(pool):
    eta = 6.0
    lsa = T.construct_gd_lsa(10, eta, 10)
    r = T.icp_vs_gradients(lsa.predict, pool, step=eta / 10)
    assert np.abs(r["icp"] - r["taylor2"]).max() < 1e-12
    # independent: ICP = ½y_p² − ½(ŷ − y_p)² with ŷ = (η/N) y_z x_zᵀx_p
    x, y, px, py = (a.numpy() for a in (pool.cand_x, pool.cand_y, pool.probe_x, pool.probe_y))
    yhat = eta / 10 * y[:, None] * (x @ px.T)
    assert np.allclose(r["icp"], 0.5 * py**2 - 0.5 * (yhat - py) ** 2, atol=1e-12)
    assert np.allclose(r["inner_product"], (y[:, None] * py[None]) * (x @ px.T), atol=1e-13)
    p = S.pearson(r["icp"], r["inner_product"])
    assert 0.9 < p < 0.999  # the second-order term keeps it below 0.999 at η* …
    small = T.icp_vs_gradients(T.construct_gd_lsa(10, eta / 100, 10).predict, pool)
    assert S.pearson(small["icp"], small["inner_product"]) > 0.99999  # … and vanishes as η → 0


def test_icp_with_base_context_matches_the_mixed_expansion(pool):
    eta, N = 5.0, 10
    lsa = T.construct_gd_lsa(10, eta, N)
    g = torch.Generator().manual_seed(2)
    bx = torch.rand(4, 10, generator=g, dtype=torch.float64) - 0.5
    by = bx @ pool.w
    icp = T.icp_matrix(lsa.predict, pool.cand_x, pool.cand_y, pool.probe_x, pool.probe_y, base_x=bx, base_y=by)
    W_C = eta / N * (by @ bx)  # one GD step on the base context (normaliser N)
    s = eta / N
    expect = s * (T.linear_grads(pool.cand_x, pool.cand_y).numpy() @ T.linear_grads(pool.probe_x, pool.probe_y, W_C).numpy().T) \
        - T.second_order_term(pool.cand_x, pool.cand_y, pool.probe_x, s)
    assert np.allclose(icp, expect, atol=1e-12)


def test_influence_linear_equals_the_derivative_of_retraining():
    """Independent check: at the ridge optimum, d/dε of −ℓ_p(θ_ε) with θ_ε = argmin L + λ/2‖θ‖² + ε ℓ_z."""
    p = T.sample_pool(30, 5, 4, noise=0.3, seed=12)
    X, y = p.cand_x.numpy(), p.cand_y.numpy()
    lam, M = 0.1, len(X)
    H = X.T @ X / M + lam * np.eye(4)
    W = np.linalg.solve(H, X.T @ y / M)
    inf = T.influence_linear(p.cand_x, p.cand_y, p.probe_x, p.probe_y, torch.from_numpy(W), damping=lam)

    def probe_losses(eps, m):
        A = H + eps * np.outer(X[m], X[m])
        Wm = np.linalg.solve(A, X.T @ y / M + eps * y[m] * X[m])
        return 0.5 * (p.probe_x.numpy() @ Wm - p.probe_y.numpy()) ** 2

    e = 1e-6
    fd = np.array([-(probe_losses(e, m) - probe_losses(-e, m)) / (2 * e) for m in range(M)])
    assert np.allclose(inf, fd, rtol=1e-5, atol=1e-8)


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(ConfigError):
        T.sample_tasks(0)
    with pytest.raises(ConfigError):
        T.sample_tasks(5, noise=-1)
    with pytest.raises(ConfigError):
        T.sample_tasks(5, x_dist="cauchy")
    with pytest.raises(ConfigError):
        T.influence_linear(torch.zeros(3, 2), torch.zeros(3), torch.zeros(1, 2), torch.zeros(1), damping=-1)
    with pytest.raises(ConfigError):
        TT.domain_candidates("elsewhere", torch.ones(3), 4)
    with pytest.raises(ConfigError):
        TT.domain_candidates("other_task", torch.ones(3), 4, distance=2.5)
    with pytest.raises(ConfigError):
        TT.RegressionTransformerConfig(n_embd=30, n_head=4)


# ------------------------------------------------------------------ transformer

def test_domain_candidates_have_the_stated_distance():
    w = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    x, y = TT.domain_candidates("in_domain", w, 100, seed=0)
    assert torch.allclose(y, x @ w)
    for dist in (0.3, 1.0, 1.9):
        x, y = TT.domain_candidates("other_task", w, 50, dist, seed=1)
        w2 = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
        assert float((w2 - w).norm() / w.norm()) == pytest.approx(dist, abs=1e-9)
        assert float(w2.norm()) == pytest.approx(float(w.norm()), abs=1e-9)
    x, y = TT.domain_candidates("shifted_inputs", w, 20_000, 2.0, seed=2)
    assert float(x.mean(0).norm()) == pytest.approx(2.0, abs=0.05) and torch.allclose(y, x @ w)
    x, y = TT.domain_candidates("noisy_labels", w, 20_000, 0.5, seed=3)
    assert float((y - x @ w).std()) == pytest.approx(0.5 * float(w.norm()), rel=0.03)


def test_transformer_interleave_causality_and_roundtrip(tmp_path):
    cfg = TT.RegressionTransformerConfig(d=3, n_points=4, n_embd=16, n_layer=1, n_head=2)
    m = TT.RegressionTransformer(cfg).eval()
    xs, ys = torch.randn(2, 4, 3), torch.randn(2, 4)
    z = TT.RegressionTransformer.interleave(xs, ys)
    assert torch.equal(z[:, 2], xs[:, 1]) and torch.equal(z[:, 3, 0], ys[:, 1]) and not z[:, 3, 1:].any()
    with torch.no_grad():
        a = m(xs, ys)
        xs2, ys2 = xs.clone(), ys.clone()
        xs2[:, 3] += 1.0
        ys2[:, 2:] += 1.0
        b = m(xs2, ys2)
        assert torch.allclose(a[:, :3], b[:, :3], atol=1e-6) and not torch.allclose(a[:, 3], b[:, 3])
        # predict() = forward on context + query
        assert torch.allclose(m.predict(xs[:, :2], ys[:, :2], xs[:, 2]).float(), a[:, 2], atol=1e-6)
        with pytest.raises(ConfigError):
            m(torch.randn(1, 5, 3), torch.randn(1, 5))
    TT.save_regression_transformer(m, tmp_path / "rt")
    m2 = TT.load_regression_transformer(tmp_path / "rt")
    with torch.no_grad():
        assert torch.equal(m2(xs, ys), a)
    assert json.loads((tmp_path / "rt" / "config.json").read_text())["n_embd"] == 16
    with pytest.raises(ModelFilesError):
        TT.load_regression_transformer(tmp_path / "missing")
    (tmp_path / "rt" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CorruptFileError):
        TT.load_regression_transformer(tmp_path / "rt")


STORED = TT.default_transformer_dir()


@pytest.mark.skipif(not (STORED / "model.safetensors").is_file(), reason="run scripts/train_regression_transformer.py")
def test_stored_transformer_learned_in_context_regression():
    cfg = json.loads((STORED / "config.json").read_text())
    assert (STORED / "model.safetensors").stat().st_size <= 10 * 2**20
    m = TT.load_regression_transformer()
    err = TT.evaluate_by_position(m, 1000, seed=5)
    ls = TT.least_squares_by_position(m.cfg.d, m.cfg.n_points, 1000, seed=5)
    assert err[0] == pytest.approx(1.0, abs=0.15)  # no demonstrations: predict ≈ 0
    k = m.cfg.d + 2  # past d demonstrations least squares is exact; the transformer must be far below 0-prediction
    assert err[k] < 0.35, err
    assert err[1] < 0.95 * err[0] and err[1] == pytest.approx(ls[1], abs=0.15)
    assert cfg["extra"]["steps_done"] > 0


def test_domain_agreement_constructed_lsa_is_domain_independent_to_first_order():
    """For an exact GD learner the first-order term holds for any demonstration; only the
    second-order term (large steps: big labels/inputs) changes."""
    lsa = T.construct_gd_lsa(5, 0.5, 10)
    res = TT.domain_agreement(lsa.predict, distances=(1.0,), n_tasks=3, n_candidates=20, n_probes=10, d=5, seed=0)
    assert set(res) == {("in_domain", 0.0), ("other_task", 1.0), ("noisy_labels", 1.0), ("shifted_inputs", 1.0)}
    for r in res.values():
        assert r["icp"].shape == (60, 10)
        assert S.pearson(r["icp"], r["inner_product"]) > 0.95


# ------------------------------------------------------------------ from pairs to candidates

def test_tie_matched_and_sign_flips_against_hand_answers():
    # sorted by value: items 1, 2 | 0, 3 (like has two groups of two)
    assert T.tie_matched([0.3, 0.1, 0.2, 0.9], [5, 5, 7, 7]).tolist() == [1.0, 0.0, 0.0, 1.0]
    # groups of sizes 1, 3 (ascending in `like`)
    assert T.tie_matched([4.0, 1.0, 3.0, 2.0], [0.2, 0.5, 0.5, 0.5]).tolist() == [1.0, 0.0, 1.0, 1.0]
    v = np.random.default_rng(0).normal(size=50)
    assert S.spearman(T.tie_matched(v, v), v) == pytest.approx(1.0)  # no ties: nothing lost
    assert S.spearman(T.tie_matched(v, np.repeat([0, 1], 25)), v) == pytest.approx(
        S.pearson(np.repeat([0, 1], 25), np.arange(50)), abs=1e-12)  # a median split of the ranks
    with pytest.raises(ConfigError):
        T.tie_matched([1.0, 2.0], [1.0])
    icp = np.array([[1.0, -1.0, 2.0], [-0.5, 0.0, 0.3]])
    ip = np.array([[1.0, 0.1, -3.0], [-2.0, 4.0, 0.2]])
    # |IP| sorted: 0.1 (flip), 0.2 (no), 1 (no), 2 (no), 3 (flip), 4 (flip: ICP = 0 is not > 0)
    f = T.sign_flips_by_magnitude(icp, ip, n_bins=3)
    assert f["rate"].tolist() == [0.5, 0.0, 1.0] and f["count"].tolist() == [2, 2, 2]
    assert float(f["overall"]) == pytest.approx(0.5) and f["edges"].tolist() == [0.1, 0.2, 2.0, 4.0]


def test_win_rate_is_blind_to_gradient_norms_the_mean_is_not(pool):
    """IP(z, p) = y_z y_p x_zᵀx_p: scaling a candidate's label by c > 0 scales its row by c;
    the win-rate (a sign count) cannot see it, the mean follows it exactly."""
    ip = T.grad_inner_products(pool.cand_x, pool.cand_y, pool.probe_x, pool.probe_y)
    c = torch.linspace(0.5, 3.0, len(pool.cand_y), dtype=torch.float64)
    ip2 = T.grad_inner_products(pool.cand_x, c * pool.cand_y, pool.probe_x, pool.probe_y)
    assert np.array_equal(S.aggregate(ip2, "win_rate"), S.aggregate(ip, "win_rate"))
    assert np.allclose(S.aggregate(ip2, "mean"), c.numpy() * S.aggregate(ip, "mean"), rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------ network weights θ (the bridge)

@pytest.fixture(scope="module")
def tiny_tf():
    cfg = TT.RegressionTransformerConfig(d=3, n_points=4, n_embd=16, n_layer=2, n_head=2, seed=1)
    return TT.as_float64(TT.RegressionTransformer(cfg))


@pytest.fixture(scope="module")
def tiny_pairs():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return r(7, 3), r(7), r(5, 3), r(5)


class _LinearPredictor(torch.nn.Module):
    """ŷ = wᵀx_q whatever the context: its zero-shot loss gradient is the linear model's."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w.clone())

    def predict(self, xs, ys, xq):
        return xq @ self.w


def test_network_gradients_match_autograd_and_the_linear_model(tiny_tf, tiny_pairs):
    cx, cy, px, py = tiny_pairs
    obj = TT.regression_objective(tiny_tf)
    Gv, Ga = TT.network_grads(obj, cx, cy), TT.zero_context_grads(tiny_tf, cx, cy)
    assert Gv.shape == (7, obj.dim) and obj.dim == sum(p.numel() for p in tiny_tf.parameters())
    assert float(Ga.abs().max()) > 0.1 and torch.allclose(Gv, Ga, rtol=0, atol=1e-12)
    ip = TT.network_inner_products(obj, cx, cy, px, py)
    assert np.allclose(ip, (Ga @ TT.zero_context_grads(tiny_tf, px, py).T).numpy(), rtol=0, atol=1e-11)
    # exact answer: for ŷ = wᵀx the zero-shot gradient is (wᵀx − y) x
    w = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(TT.zero_context_grads(_LinearPredictor(w), cx, cy), T.linear_grads(cx, cy, w), atol=1e-14)


def test_lsa_network_weights_cannot_see_a_zero_shot_pair():
    x, y = T.sample_x(6, 5, generator=torch.Generator().manual_seed(3)), torch.linspace(-2, 2, 6, dtype=torch.float64)
    for lsa in (T.construct_gd_lsa(5, 3.0, 10), T.LinearSelfAttention(5, 10, init_scale=0.3, seed=2)):
        G = TT.zero_context_grads(lsa, x, y)
        assert G.shape == (6, 4 * 36) and float(G.abs().max()) == 0.0


def test_network_ip_factorises_into_residuals_and_the_output_kernel(tiny_tf, tiny_pairs):
    cx, cy, px, py = tiny_pairs
    K = TT.output_kernel(TT.regression_objective(tiny_tf, output=True), cx, px)
    # independent: the Jacobian ∇_θ f by plain autograd, one input at a time
    params = list(tiny_tf.parameters())

    def jac(x):
        rows = []
        for i in range(len(x)):
            f = tiny_tf.predict(x[i:i + 1, None][:, :0], torch.zeros(1, 0, dtype=torch.float64), x[i:i + 1]).sum()
            gs = torch.autograd.grad(f, params, allow_unused=True)
            rows.append(torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, params)]))
        return torch.stack(rows)

    with torch.enable_grad():
        assert np.allclose(K, (jac(cx) @ jac(px).T).numpy(), rtol=0, atol=1e-11)
    with torch.no_grad():
        e = torch.zeros(len(cx), 0, 3, dtype=torch.float64)
        rz = tiny_tf.predict(e, e[..., 0], cx) - cy
        rp = tiny_tf.predict(e[:5], e[:5, :, 0], px) - py
    ip = TT.network_inner_products(TT.regression_objective(tiny_tf), cx, cy, px, py)
    assert np.allclose(ip, rz.numpy()[:, None] * rp.numpy()[None] * K, rtol=1e-10, atol=1e-12)


def test_one_step_referee_is_one_sgd_step_and_first_order_the_inner_product(tiny_tf, tiny_pairs):
    import copy

    cx, cy, px, py = tiny_pairs
    obj = TT.regression_objective(tiny_tf)
    lr = 0.05
    r = TT.one_step_referee(obj, cx, cy, px, py, lr, chunk=3)
    # independent: a copy of the model stepped in place by autograd, probes by predict()
    e = torch.zeros(len(px), 0, 3, dtype=torch.float64)
    ref = np.zeros((len(cx), len(px)))
    for i in range(len(cx)):
        m = copy.deepcopy(tiny_tf)
        ps = list(m.parameters())
        with torch.enable_grad():
            loss = 0.5 * ((m.predict(e[:1], e[:1, :, 0], cx[i:i + 1]) - cy[i]) ** 2).sum()
            gs = torch.autograd.grad(loss, ps, allow_unused=True)
        with torch.no_grad():
            base = 0.5 * (m.predict(e, e[..., 0], px) - py) ** 2
            for p, g in zip(ps, gs):
                if g is not None:
                    p.sub_(lr * g)
            ref[i] = (base - 0.5 * (m.predict(e, e[..., 0], px) - py) ** 2).numpy()
    assert np.abs(r).max() > 0.01 and np.allclose(r, ref, rtol=0, atol=1e-12)
    # Δ(η)/η → ⟨∇ℓ(p), ∇ℓ(z)⟩ with an error linear in η
    ip = TT.network_inner_products(obj, cx, cy, px, py)
    errs = [np.abs(TT.one_step_referee(obj, cx, cy, px, py, h) / h - ip).max() / np.abs(ip).max() for h in (1e-3, 1e-4)]
    assert errs[1] < 2e-3 and 8 < errs[0] / errs[1] < 12
    with pytest.raises(ConfigError):
        TT.one_step_referee(obj, cx, cy, px, py, 0.0)


def test_weight_space_scores_share_the_domain_pools(tiny_tf):
    kw = dict(n_tasks=2, n_candidates=5, n_probes=4, seed=1)
    w = TT.weight_space_scores(tiny_tf, distance=1.0, lr_factors=(1.0, 0.5), **kw)
    da = TT.domain_agreement(tiny_tf.predict, distances=(1.0,), d=3, **kw)
    assert set(w.scores) == set(da) and w.n_parameters == sum(p.numel() for p in tiny_tf.parameters())
    for key, s in w.scores.items():
        assert all(s[m].shape == (10, 4) for m in ("icp", "implicit_ip", "network_ip", "one_step"))
        assert np.array_equal(s["implicit_ip"], da[key]["inner_product"])
        assert np.allclose(s["icp"], da[key]["icp"], rtol=0, atol=1e-12)  # same (float64) model, same pairs
    ind = w.scores[("in_domain", 0.0)]
    assert w.lr == pytest.approx(np.median(np.abs(ind["icp"])) / np.median(np.abs(ind["network_ip"])), rel=1e-12)
    assert np.array_equal(w.sweep[1.0], ind["one_step"]) and set(w.sweep) == {1.0, 0.5}


# ------------------------------------------------------------------ widgets, plots

def test_widgets_recompute_real_numbers():
    from icp_course.widgets.theory import gd_vs_lsa_explorer, icp_scatter_explorer

    trained = T.construct_gd_lsa(10, 6.0, 10)  # stands in for a trained LSA with η = 6
    box, update = gd_vs_lsa_explorer(trained, n_tasks=100)
    r = update(lr=6.0, n_points=10, d=10, noise=0.0)
    assert r["constructed_max_abs_diff"] < 1e-12 and r["trained_mean_abs_diff"] < 1e-12
    r2 = update(lr=12.0)
    assert r2["trained_mean_abs_diff"] > 0.01 and r2["gd_loss"] != r["gd_loss"]
    assert "trained_loss" not in update(d=5)
    with pytest.raises(ConfigError):
        update(speed=3)
    lsa = T.construct_gd_lsa(10, 6.0, 10)
    box, update = icp_scatter_explorer({"constructed LSA": (lsa.predict, 10, "uniform")}, n_tasks=2,
                                       n_candidates=15, n_probes=8)
    a = update(kind="in_domain")
    b = update(kind="shifted_inputs", distance=2.0)
    assert 0.9 < a["pearson"] <= 1 and a["pearson"] != b["pearson"]


def test_figures_have_labelled_axes():
    import matplotlib

    matplotlib.use("Agg")
    from icp_course.plots import theory as P

    figs = [
        P.plot_lr_line_search([1, 2, 3], [0.3, 0.2, 0.25], 2.0, 0.2, zero_loss=0.4),
        P.plot_training_curves([0, 1, 2], [0.4, 0.3, 0.21], gd_loss=0.2, zero_loss=0.4),
        P.plot_prediction_agreement([0.1, -0.2], [0.11, -0.19]),
        P.plot_matrix_comparison({"A": np.eye(3)}, {"A": np.eye(3)}),
        P.plot_icp_scatter(np.arange(10.0), np.arange(10.0) ** 2),
        P.plot_agreement_vs_distance({"shifted_inputs": ([0, 1], [0.9, 0.5], [[0.8, 1.0], [0.4, 0.6]])}, in_domain=0.9),
        P.plot_error_by_position([1, 0.5], [1, 0.4]),
        P.plot_correlation_vs_step([0.01, 0.1], [0.9999, 0.99]),
        P.plot_candidate_aggregation(np.arange(20.0).reshape(5, 4) - 6, np.arange(20.0).reshape(5, 4) - 5,
                                     np.arange(5.0), n_bins=4),
        P.plot_bridge_agreement([{"label": "a vs b", "level": lv, "domain": dm, "value": 0.5, "lo": 0.4, "hi": 0.6}
                                 for lv in ("pair", "candidate") for dm in ("in-domain", "out-of-domain")]),
        P.plot_kernel_vs_linear([0.1, -0.2, 0.3], [1.0, 2.0, 0.5]),
        P.plot_referee_vs_step([1e-3, 1e-2], {"network IP": [1.0, 0.9]}, lr_used=1e-2),
    ]
    import matplotlib.pyplot as plt

    for f in figs:
        for ax in f.axes:
            if ax.get_label() == "<colorbar>":
                continue
            assert ax.get_xlabel() and ax.get_ylabel()
        plt.close(f)


# ------------------------------------------------------------------ command line

@pytest.mark.slow
@pytest.mark.parametrize("name", ["lsa-gd", "icp-vs-influence-linear"])
def test_experiment_smoke_json(name):
    fields = {
        "lsa-gd": ["gd_lr", "gd_loss", "lsa_loss", "zero_loss", "sensitivity_cosine", "prediction_abs_diff",
                   "construction_max_abs_diff", "steps", "eval_tasks"],
        "icp-vs-influence-linear": ["constructed_pearson", "trained_lsa_spearman", "transformer_in_domain_spearman",
                                    "transformer_out_of_domain_spearman"],
    }[name]
    r = subprocess.run([sys.executable, "-m", "icp_influence", "run", name, "--smoke", "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=180, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    for f in fields:
        assert isinstance(out[f], (int, float)) and math.isfinite(out[f]), f
        if name == "icp-vs-influence-linear":
            lo, hi = out[f + "_ci"]
            assert lo <= out[f] <= hi
    if name == "lsa-gd":
        assert out["construction_max_abs_diff"] <= 1e-5
        assert out["zero_loss"] > out["lsa_loss"] and out["sensitivity_cosine"] > 0.95
    else:
        assert out["constructed_pearson"] > 0.9
