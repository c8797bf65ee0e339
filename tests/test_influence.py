"""Gradient influence: per-example gradients, projections, influence functions, EK-FAC, CLI."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from icp_influence.errors import ConfigError, MethodError
from icp_influence.gradients import (GradientCache, Projector, answer_nll, encode_examples, lm_objective,
                                     select_parameters)
from icp_influence.influence import (GradientInfluence, InfluenceConfig, check_damping, cosine_scores,
                                     ihvp_cg, ihvp_exact, ihvp_lissa, influence_scores, paper_signed_log_scores)
from icp_influence.influence_lab import logreg_lab, mlp_lab, pearson, spearman
from icp_influence.lm import pad_batch
from icp_influence.synthetic import make_synthetic_pool

warnings.filterwarnings("ignore")


@pytest.fixture(scope="module")
def neox():
    from icp_influence.models import load_model

    return load_model("tiny-gpt-neox", device="cpu")


@pytest.fixture(scope="module")
def lab():
    return logreg_lab(100, 5, n_probes=5, l2=0.01, seed=0)


def _loop_grads(model, tok, encs, names):
    """Independent reference: one plain forward + loss.backward() per example."""
    params = dict(model.named_parameters())
    rows = []
    for e in encs:
        model.zero_grad()
        ids, mask, labels = pad_batch([e], tok.pad_token_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[0]
        answer_nll(logits, labels[0]).backward()
        rows.append(torch.cat([params[n].grad.reshape(-1) for n in names]).double())
    model.zero_grad()
    return torch.stack(rows)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("spec", ["tiny-gpt-neox", "tiny-llama", "tiny-gpt2"])
def test_vmap_grads_equal_autograd_loop(tiny_models, spec):
    model, tok = tiny_models[spec]
    pool = make_synthetic_pool(5, seed=1)
    obj = lm_objective(model, tok, params="paper")
    encs = encode_examples(tok, list(pool))
    G = obj.per_example_grads(encs, chunk_size=3).double()
    ref = _loop_grads(model, tok, encs, obj.names)
    np.testing.assert_allclose(G.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    ip, ip_ref = (G @ G.T).numpy(), (ref @ ref.T).numpy()
    np.testing.assert_allclose(ip, ip_ref, rtol=1e-4)


def test_inner_products_equal_captum_tracincp(neox, tmp_path):
    from captum.influence import TracInCP

    model, tok = neox
    pool = make_synthetic_pool(6, seed=2)
    probes = make_synthetic_pool(3, seed=9)
    gi = GradientInfluence(model, tok, InfluenceConfig(method="inner_product", params="all"), cache_dir=tmp_path / "c")
    sm = gi.score(list(pool), list(probes))

    encs_c = encode_examples(tok, list(pool))
    encs_p = encode_examples(tok, list(probes))
    L = max(len(e) for e in encs_c + encs_p)
    pad = lambda encs: pad_batch(encs + [], tok.pad_token_id)  # noqa: E731
    ids_c, _, lab_c = pad(encs_c)
    ids_p, _, lab_p = pad(encs_p)
    # same right padding length for everything (padding after the answer cannot change causal logits)
    ids_c = torch.nn.functional.pad(ids_c, (0, L - ids_c.shape[1]), value=tok.pad_token_id)
    lab_c = torch.nn.functional.pad(lab_c, (0, L - lab_c.shape[1]), value=-100)
    ids_p = torch.nn.functional.pad(ids_p, (0, L - ids_p.shape[1]), value=tok.pad_token_id)
    lab_p = torch.nn.functional.pad(lab_p, (0, L - lab_p.shape[1]), value=-100)

    class Wrapped(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, ids):
            return self.lm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits

    def loss_fn(logits, labels):  # per-example summed answer NLL, shape [B]
        return torch.stack([answer_nll(logits[i], labels[i]) for i in range(len(labels))])

    wrapped = Wrapped(model)
    ckpt = tmp_path / "ckpt.pt"
    torch.save(wrapped.state_dict(), ckpt)

    def load(m, path):
        m.load_state_dict(torch.load(path, weights_only=True))
        return 1.0

    tracin = TracInCP(wrapped, torch.utils.data.TensorDataset(ids_c, lab_c), checkpoints=[str(ckpt)],
                      checkpoints_load_func=load, loss_fn=loss_fn, batch_size=len(pool), sample_wise_grads_per_batch=False)
    captum_scores = tracin.influence((ids_p, lab_p)).detach().double().numpy().T  # [candidates, probes]
    np.testing.assert_allclose(sm.values, captum_scores, rtol=1e-4)
    print(f"\ncaptum TracInCP vs ours: max rel diff {np.max(np.abs(sm.values - captum_scores) / np.abs(captum_scores)):.2e}")


def test_parameter_selections(tiny_models):
    for spec, (model, _) in tiny_models.items():
        paper = select_parameters(model, "paper")
        mods = dict(model.named_modules())
        for n in paper:
            owner = mods[n.rsplit(".", 1)[0]]
            assert type(owner).__name__ in ("Linear", "Conv1D"), (spec, n)
        assert any("weight" in n for n in paper) and not any("embed" in n or "wte" in n for n in paper)
        last = select_parameters(model, "last:1")
        assert last and all((".1." in n) for n in last)
        assert set(select_parameters(model, "all")) >= set(paper) | set(last)
        with pytest.raises(ConfigError):
            select_parameters(model, "lora")
        with pytest.raises(ConfigError):
            select_parameters(model, "last:9")
        with pytest.raises(ConfigError):
            select_parameters(model, "bogus")


def test_projection_k4096_spearman(neox):
    model, tok = neox
    obj = lm_objective(model, tok, params="paper")
    encs = encode_examples(tok, list(make_synthetic_pool(24, seed=3)))
    G = obj.per_example_grads(encs, chunk_size=8)
    Gc, Gp = G[:20], G[20:]
    proj = Projector(obj.sizes, 4096, seed=0)
    Pc, Pp = proj.project(Gc), proj.project(Gp)
    exact = (Gc.double() @ Gp.double().T).numpy()
    approx = (Pc.double() @ Pp.double().T).numpy()
    rho = spearman(exact, approx)
    print(f"\nprojection k=4096 (D={obj.dim}): Spearman with exact inner products = {rho:.4f}")
    assert rho >= 0.95
    # deterministic, and the same projection whether done on the flat vector or per tensor
    per_tensor = obj.per_example_grads(encs[:3], chunk_size=8, projector=proj)
    np.testing.assert_allclose(per_tensor.numpy(), Pc[:3].numpy(), rtol=1e-4, atol=1e-4 * Pc.abs().max().item())
    np.testing.assert_array_equal(Projector(obj.sizes, 4096, seed=0).project(Gc[:2]).numpy(), Pc[:2].numpy())
    rad = Projector(obj.sizes, 1024, seed=0, kind="rademacher")
    assert spearman(exact, (rad.project(Gc).double() @ rad.project(Gp).double().T).numpy()) >= 0.9


# ---------------------------------------------------------------- influence functions vs ground truth


def test_exact_influence_matches_loo(lab):
    exact = influence_scores(lab.obj, lab.train, lab.train, lab.probes, method="exact", damping=lab.l2)
    r = pearson(exact, lab.loo)
    print(f"\nexact influence vs LOO retraining (logistic regression, n={lab.n}): Pearson = {r:.4f}")
    assert r >= 0.95
    # the Hessian is the closed form (1/n) Σ p(1-p) x̃x̃ᵀ
    A = np.hstack([lab.X, np.ones((lab.n, 1))])
    p = 1 / (1 + np.exp(-A @ lab.theta))
    H_ref = (A * (p * (1 - p))[:, None]).T @ A / lab.n
    H = lab.obj.hessian(lab.train).numpy()
    # parameter order in the objective: weight (d), bias (1) — same as A's columns
    np.testing.assert_allclose(H, H_ref, rtol=1e-8, atol=1e-12)


def test_lissa_and_cg_match_exact(lab):
    kw = dict(damping=lab.l2)
    probes = lab.probes[:2]
    exact = influence_scores(lab.obj, lab.train, lab.train, probes, method="exact", **kw)
    cg = influence_scores(lab.obj, lab.train, lab.train, probes, method="cg", cg_max_iter=200, **kw)
    lissa = influence_scores(lab.obj, lab.train, lab.train, probes, method="lissa", lissa_depth=5000,
                             lissa_tol=1e-8, **kw)
    rel = lambda a: np.abs(a - exact).max() / np.abs(exact).max()  # noqa: E731
    print(f"\nrelative error vs exact: CG {rel(cg):.2e}, LiSSA {rel(lissa):.2e}")
    assert rel(cg) < 1e-3 and rel(lissa) < 1e-3


def test_ekfac_vs_exact_on_mlp():
    ml = mlp_lab()
    exact = influence_scores(ml.obj, ml.train, ml.train, ml.probes, method="exact", damping=0.1)
    ek = influence_scores(ml.obj, ml.train, ml.train, ml.probes, method="ekfac", damping=0.1,
                          ekfac_kwargs={"batch_size": 64})
    rho, r = spearman(ek, exact), pearson(ek, exact)
    print(f"\nEK-FAC (kronfluence) vs exact influence on an MLP ({ml.obj.dim} params): Spearman {rho:.3f}, Pearson {r:.3f}")
    assert r > 0.9  # same sign convention and close magnitudes (K-FAC ignores cross-layer curvature)
    assert rho > 0.5


def test_ekfac_on_logreg_close_to_exact(lab):
    exact = influence_scores(lab.obj, lab.train, lab.train, lab.probes, method="exact", damping=lab.l2)
    ek = influence_scores(lab.obj, lab.train, lab.train, lab.probes, method="ekfac", damping=lab.l2,
                          ekfac_kwargs={"batch_size": 32})
    assert pearson(ek, exact) > 0.95 and pearson(ek, lab.loo) > 0.95


# ---------------------------------------------------------------- sign conventions


def test_sign_inner_product_predicts_sgd_step(neox):
    """Positive score = helps: one SGD step on z changes ℓ(p) by ≈ −η·⟨∇ℓ(p), ∇ℓ(z)⟩."""
    model, tok = neox
    obj = lm_objective(model, tok, params="paper")
    pool = list(make_synthetic_pool(4, seed=5))
    encs = encode_examples(tok, pool)
    G = obj.per_example_grads(encs).double()
    z, p = encs[0], encs[1]
    score = float(G[0] @ G[1])
    eta = 1e-5 / max(1.0, float(G[0].norm()))
    theta = obj.flat_params().double()
    new = obj.unflatten((theta - eta * G[0]).float())
    with torch.no_grad():
        ids, labels = obj.collate([p])
        before = obj.example_loss(obj.params, ids[0], labels[0]).item()
        after = obj.example_loss(new, ids[0], labels[0]).item()
    assert np.sign(before - after) == np.sign(score)
    assert abs((before - after) - eta * score) < 0.05 * abs(eta * score)


def test_sign_influence_and_self_influence(lab):
    exact = influence_scores(lab.obj, lab.train, lab.train, lab.probes, method="exact", damping=lab.l2)
    # agreement in sign with LOO wherever the LOO effect is not tiny
    big = np.abs(lab.loo) > 0.1 * np.abs(lab.loo).max()
    assert (np.sign(exact[big]) == np.sign(lab.loo[big])).mean() > 0.95
    # self-influence ∇ℓ(z)ᵀ(H+λI)⁻¹∇ℓ(z) > 0: training on z always helps z
    self_inf = np.diag(influence_scores(lab.obj, lab.train, lab.train, lab.train, method="exact", damping=lab.l2))
    assert (self_inf > 0).all()


# ---------------------------------------------------------------- errors, transforms, TracIn


def test_damping_must_be_positive(lab):
    for bad in (0, -1.0, float("nan"), None):
        with pytest.raises(ConfigError):
            check_damping(bad)
    with pytest.raises(ConfigError):
        influence_scores(lab.obj, lab.train, lab.train, lab.probes, method="cg", damping=0.0)
    with pytest.raises(ConfigError):
        InfluenceConfig(method="exact", damping=-0.1).validate()
    V = torch.ones(1, 3, dtype=torch.float64)
    for fn in (lambda: ihvp_exact(torch.eye(3, dtype=torch.float64), V, 0.0), lambda: ihvp_cg(lambda v: v, V, 0.0),
               lambda: ihvp_lissa(lambda v: v, V, -1.0)):
        with pytest.raises(ConfigError):
            fn()
    with pytest.raises(MethodError):
        InfluenceConfig(method="magic").validate()
    with pytest.raises(ConfigError):
        InfluenceConfig(method="exact", damping=0.1, projection_dim=64).validate()


def test_cosine_zero_norm_raises():
    Gc = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    Gp = torch.tensor([[1.0, 1.0]])
    with pytest.raises(ConfigError, match="zero gradient"):
        cosine_scores(Gc, Gp, ["a", "b"], ["p"])
    np.testing.assert_allclose(cosine_scores(Gc[:1], Gp), [[1 / np.sqrt(2)]])


def test_paper_signed_log_transform():
    Gc = torch.tensor([[2.0, 0.5, 1e-6, -0.3]])
    Gp = torch.tensor([[0.5, -0.2, 0.3, 0.0]])
    # tensors: [0:2] and [2:4]
    c = np.array([1.0, 0.5, 1e-4, -0.3]); p = np.array([0.5, -0.2, 0.3, 0.0])  # clamped |g| in [1e-4, 1]
    s1 = c[0] * p[0] + c[1] * p[1]
    s2 = c[2] * p[2] + c[3] * p[3]
    ref = np.sign(s1) * np.log(abs(s1)) + np.sign(s2) * np.log(abs(s2))
    out = paper_signed_log_scores(Gc, Gp, [0, 2, 4])
    np.testing.assert_allclose(out, [[np.float16(ref)]], rtol=1e-3)
    # a tensor whose product is exactly 0 contributes 0 (log 0 = -inf -> 0)
    assert paper_signed_log_scores(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), [0, 2])[0, 0] == 0.0


def test_tracin_weights_checkpoints(neox, tmp_path):
    model, tok = neox
    pool, probes = list(make_synthetic_pool(4, seed=6)), list(make_synthetic_pool(2, seed=7))
    ip = GradientInfluence(model, tok, InfluenceConfig(method="inner_product"), cache_dir=tmp_path).score(pool, probes)
    cfg = InfluenceConfig(method="tracin", checkpoints=[model, model], learning_rates=[0.1, 0.3])  # type: ignore[list-item]
    tr = GradientInfluence(model, tok, cfg, cache_dir=tmp_path).score(pool, probes)
    np.testing.assert_allclose(tr.values, 0.4 * ip.values, rtol=1e-6)
    with pytest.raises(ConfigError):
        InfluenceConfig(method="tracin", checkpoints=["a"], learning_rates=[]).validate()


# ---------------------------------------------------------------- cache and CLI


def test_candidate_gradients_cached_not_recomputed(neox, tmp_path, monkeypatch):
    model, tok = neox
    pool, probes = list(make_synthetic_pool(6, seed=8)), list(make_synthetic_pool(2, seed=9))
    cfg = InfluenceConfig(method="inner_product", projection_dim=256)
    gi = GradientInfluence(model, tok, cfg, cache_dir=tmp_path)
    first = gi.score(pool, probes)
    cache = gi._states[0]["cache"]
    assert cache.computed == len(pool) + len(probes)
    # a second valuator (new probes batch, same candidates) must only read the cache
    from icp_influence import gradients

    calls = {"n": 0}
    real = gradients.Objective.per_example_grads

    def counting(self, items, **kw):
        calls["n"] += len(items)
        return real(self, items, **kw)

    monkeypatch.setattr(gradients.Objective, "per_example_grads", counting)
    gi2 = GradientInfluence(model, tok, cfg, cache_dir=tmp_path)
    second = gi2.score(pool, probes[:1])
    assert calls["n"] == 0
    assert gi2._states[0]["cache"].loaded == len(pool) + 1
    np.testing.assert_allclose(second.values, first.values[:, :1], rtol=1e-6)
    # changed weights -> different cache key -> recomputed
    assert isinstance(cache, GradientCache) and cache.dir.exists()


def test_cli_score_influence_matches_api(neox, tmp_path):
    from icp_influence.cli import main
    from icp_influence.data import parse_pool_spec
    from icp_influence.scores import ScoreMatrix

    out = tmp_path / "run"
    rc = main(["score-influence", "--model", "tiny-gpt-neox", "--pool", "synthetic:6", "--probes", "synthetic:2:4",
               "--out", str(out), "--chunk-size", "4", "--quiet", "--method", "cosine",
               "--params", json.dumps({"params": "last:1"})])
    assert rc == 0
    sm = ScoreMatrix.load(out / "scores")
    model, tok = neox
    ref = GradientInfluence(model, tok, InfluenceConfig(method="cosine", params="last:1", chunk_size=4),
                            cache_dir=tmp_path / "c").score(list(parse_pool_spec("synthetic:6")), list(parse_pool_spec("synthetic:2:4")))
    np.testing.assert_allclose(sm.values, ref.values, rtol=1e-5)
    assert sm.meta["method"] == "cosine" and np.all(np.abs(sm.values) <= 1 + 1e-9)
    assert main(["score-influence", "--model", "tiny-gpt-neox", "--pool", "synthetic:4", "--probes", "synthetic:2",
                 "--out", str(tmp_path / "bad"), "--method", "exact", "--params", '{"damping": 0}']) == 2


def test_widget_and_plots_recompute():
    import matplotlib

    matplotlib.use("Agg")
    from icp_influence.plots.influence import scatter_vs_loo, sweep_plot
    from icp_influence.widgets.influence import damping_projection_explorer

    small = logreg_lab(30, 3, n_probes=2, l2=0.01, seed=1)
    widget, update = damping_projection_explorer(small)
    at_l2 = update(log10_damping=-2.0, k=4)
    far = update(log10_damping=1.0)
    exact = influence_scores(small.obj, small.train, small.train, small.probes, method="exact", damping=0.01)
    assert at_l2["pearson_exact_vs_loo"] == pytest.approx(pearson(exact, small.loo), rel=1e-9)
    assert far["damping"] == pytest.approx(10.0) and far["pearson_exact_vs_loo"] < at_l2["pearson_exact_vs_loo"]
    k64 = update(k=64)["spearman_projected_vs_full"]
    k1 = update(k=1)["spearman_projected_vs_full"]
    assert k64 > 0.6 and k64 > k1
    fig = scatter_vs_loo(small.loo, {"exact": exact})
    ax = fig.axes[0]
    assert "LOO" in ax.get_xlabel() and "nats" in ax.get_ylabel() and "Pearson" in ax.get_title()
    fig2 = sweep_plot([0.01, 0.1], {"r": [0.9, 0.8]}, xlabel="damping λ", ylabel="Pearson r")
    assert fig2.axes[0].get_xlabel() == "damping λ"


def test_exercise_solutions_match_library():
    from icp_influence.exercises import solution

    small = logreg_lab(30, 3, n_probes=2, l2=0.01, seed=1)
    H = small.obj.hessian(small.train).numpy()
    np.testing.assert_allclose(solution("03.logreg_hessian", X=small.X, theta=small.theta), H, rtol=1e-8)
    exact = influence_scores(small.obj, small.train, small.train, small.probes, method="exact", damping=0.01)
    one = solution("03.influence_one_pair", X=small.X, y=small.y, theta=small.theta, l2=0.01, x_p=small.Xp[1], y_p=small.yp[1], i=3)
    assert one == pytest.approx(exact[3, 1], rel=1e-8)
    self_inf = np.diag(influence_scores(small.obj, small.train, small.train, small.train, method="exact", damping=0.01))
    assert solution("03.most_self_influential", X=small.X, y=small.y, theta=small.theta, l2=0.01) == int(np.argmax(self_inf))
