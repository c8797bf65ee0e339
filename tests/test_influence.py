"""Gradient influence: per-example gradients, projections, influence functions, EK-FAC, CLI."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from icp_influence.errors import ConfigError, MethodError
from icp_influence.lm import answer_nll
from icp_influence.gradients import (GradientCache, Projector, encode_examples, lm_objective,
                                     select_parameters)
from icp_influence.gradient_scores import cosine_scores, paper_signed_log_scores
from icp_influence.ihvp import check_damping, ihvp_cg, ihvp_exact, ihvp_lissa
from icp_influence.loo_models import lab_scores, logreg_lab, mlp_lab
from icp_influence.valuators import ExactInfluence, InnerProduct, TracIn, make
from icp_influence.stats import pearson, spearman
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


@pytest.mark.parametrize("method", ["hooks", "vmap"])
@pytest.mark.parametrize("spec", ["tiny-gpt-neox", "tiny-llama", "tiny-gpt2"])
def test_per_example_grads_equal_autograd_loop(tiny_models, spec, method):
    model, tok = tiny_models[spec]
    pool = make_synthetic_pool(5, seed=1)
    obj = lm_objective(model, tok, params="paper")
    assert obj.grad_methods[0] == "hooks"  # the default for linear layers with lm_objective
    encs = encode_examples(tok, list(pool))
    flags = [p.requires_grad for p in model.parameters()]
    G = obj.per_example_grads(encs, chunk_size=3, method=method).double()
    assert [p.requires_grad for p in model.parameters()] == flags and all(p.grad is None for p in model.parameters())
    ref = _loop_grads(model, tok, encs, obj.names)
    np.testing.assert_allclose(G.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    ip, ip_ref = (G @ G.T).numpy(), (ref @ ref.T).numpy()
    np.testing.assert_allclose(ip, ip_ref, rtol=1e-4)


def test_hooks_grads_mean_reduction_and_attention_selection(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    encs = encode_examples(tok, list(make_synthetic_pool(4, seed=5)))
    obj = lm_objective(model, tok, params=r"regex:self_attn\.(q_proj|v_proj)\.weight$", reduction="mean")
    G = obj.per_example_grads(encs, chunk_size=4, method="hooks").double()
    params = dict(model.named_parameters())
    rows = []
    for e in encs:  # independent reference: a plain forward and backward of the mean answer loss
        model.zero_grad()
        ids, mask, labels = pad_batch([e], tok.pad_token_id)
        answer_nll(model(input_ids=ids, attention_mask=mask).logits[0], labels[0], "mean").backward()
        rows.append(torch.cat([params[n].grad.reshape(-1) for n in obj.names]).double())
    model.zero_grad()
    ref = torch.stack(rows)
    np.testing.assert_allclose(G.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    # LayerNorm weights are not linear layers: no hooks path, a ConfigError that says what to use
    last = lm_objective(model, tok, params="last:1")
    assert last.grad_methods == ["vmap", "loop"]
    with pytest.raises(ConfigError, match="vmap"):
        last.per_example_grads(encs, method="hooks")


def test_lm_head_selection_falls_back_from_hooks_to_vmap(tiny_models):
    """The LM head runs on the batch's answer positions flattened together, so its input rows are not
    one per item: ``auto`` must fall back to vmap (still equal to autograd), an explicit ``hooks`` must refuse."""
    model, tok = tiny_models["tiny-gpt-neox"]
    encs = encode_examples(tok, list(make_synthetic_pool(4, seed=3)))
    obj = lm_objective(model, tok, params=r"regex:^lm_head\.")
    assert obj.grad_methods[0] == "hooks"
    G = obj.per_example_grads(encs, chunk_size=4).double()
    ref = _loop_grads(model, tok, encs, obj.names)
    np.testing.assert_allclose(G.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    with pytest.raises(ConfigError, match="vmap"):
        obj.per_example_grads(encs, chunk_size=4, method="hooks")


def test_inner_products_equal_captum_tracincp(neox, tmp_path):
    from captum.influence import TracInCP

    model, tok = neox
    pool = make_synthetic_pool(6, seed=2)
    probes = make_synthetic_pool(3, seed=9)
    sm = InnerProduct(model, tok, params="all").score(list(pool), list(probes))

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


@pytest.fixture(scope="module")
def paper_grads(neox):
    """Per-example gradients over the paper's parameters of 24 synthetic examples: 20 candidates, 4 probes."""
    model, tok = neox
    obj = lm_objective(model, tok, params="paper")
    encs = encode_examples(tok, list(make_synthetic_pool(24, seed=3)))
    G = obj.per_example_grads(encs, chunk_size=8)
    return obj, encs, G[:20], G[20:]


def test_projection_k4096_spearman(paper_grads):
    obj, encs, Gc, Gp = paper_grads
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
    # deterministic: the same computation repeated gives the same bits (a fresh projector, same seed)
    np.testing.assert_array_equal(Projector(obj.sizes, 4096, seed=0).project(Gc).numpy(), Pc.numpy())
    rad = Projector(obj.sizes, 1024, seed=0, kind="rademacher")
    assert spearman(exact, (rad.project(Gc).double() @ rad.project(Gp).double().T).numpy()) >= 0.9


def test_countsketch_projection(paper_grads):
    obj, encs, Gc, Gp = paper_grads
    exact = (Gc.double() @ Gp.double().T).numpy()
    cs = Projector(obj.sizes, 4096, seed=0, kind="countsketch")  # the k at which the Gaussian one reaches 0.95
    Pc, Pp = cs.project(Gc), cs.project(Gp)
    rho = spearman(exact, (Pc.double() @ Pp.double().T).numpy())
    print(f"\ncountsketch k=4096 (D={obj.dim}): Spearman with exact inner products = {rho:.4f}")
    assert rho >= 0.95
    # deterministic: the same computation repeated gives the same bits (a fresh projector, same seed)
    np.testing.assert_array_equal(Projector(obj.sizes, 4096, seed=0, kind="countsketch").project(Gc).numpy(), Pc.numpy())
    # per tensor (inside per_example_grads, tensor by tensor) = on the flat vector
    for method in obj.grad_methods[:2]:
        per_tensor = obj.per_example_grads(encs[:3], chunk_size=8, projector=cs, method=method)
        np.testing.assert_allclose(per_tensor.numpy(), Pc[:3].numpy(), rtol=1e-4, atol=1e-5 * Pc.abs().max().item())
    # each coordinate lands in exactly one bucket with a sign ±1 (P has one nonzero ±1 per coordinate), even
    # across the blocks in which the buckets are generated
    small = Projector([5, 7], 4, seed=1, kind="countsketch", max_block_elems=3)
    P = small.project(torch.eye(12, dtype=torch.float64))
    assert torch.equal((P != 0).sum(dim=1), torch.ones(12, dtype=torch.long)) and set(P.abs().sum(dim=1).tolist()) == {1.0}
    assert torch.equal(small.project_parts([torch.eye(12)[:, :5], torch.eye(12)[:, 5:]]), P.float())


def test_countsketch_is_unbiased():
    """E⟨Pa, Pb⟩ = ⟨a, b⟩: the mean over 400 seeds is within 4 standard errors of the exact value."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 300, generator=g, dtype=torch.float64)
    b = a[1] + 0.5 * torch.randn(300, generator=g, dtype=torch.float64)  # correlated with a[1]
    AB = torch.stack([a[0], a[1], b])
    exact = float(AB[1] @ AB[2])
    est = []
    for seed in range(400):
        P = Projector([100, 200], 16, seed=seed, kind="countsketch").project(AB)
        est.append(float(P[1] @ P[2]))
    est = np.array(est)
    se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - exact) < 4 * se
    # its variance is the sketch's: about (‖a‖²‖b‖² + ⟨a,b⟩²)/k
    var = (float(AB[1] @ AB[1]) * float(AB[2] @ AB[2]) + exact**2) / 16
    assert 0.6 < est.var(ddof=1) / var < 1.5
    with pytest.raises(ConfigError, match="countsketch"):
        Projector([3], 2, kind="sparse")


# ---------------------------------------------------------------- influence functions vs ground truth


def test_exact_influence_matches_loo(lab):
    exact = lab_scores(lab.obj, lab.train, lab.train, lab.probes, "exact", damping=lab.l2)
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
    exact = lab_scores(lab.obj, lab.train, lab.train, probes, "exact", **kw)
    cg = lab_scores(lab.obj, lab.train, lab.train, probes, "cg", max_iter=200, **kw)
    lissa = lab_scores(lab.obj, lab.train, lab.train, probes, "lissa", depth=5000,
                             tol=1e-8, **kw)
    rel = lambda a: np.abs(a - exact).max() / np.abs(exact).max()  # noqa: E731
    print(f"\nrelative error vs exact: CG {rel(cg):.2e}, LiSSA {rel(lissa):.2e}")
    assert rel(cg) < 1e-3 and rel(lissa) < 1e-3


def test_ekfac_vs_exact_on_mlp():
    ml = mlp_lab()
    exact = lab_scores(ml.obj, ml.train, ml.train, ml.probes, "exact", damping=0.1)
    ek = lab_scores(ml.obj, ml.train, ml.train, ml.probes, "ekfac", damping=0.1,
                          batch_size=64)
    rho, r = spearman(ek, exact), pearson(ek, exact)
    print(f"\nEK-FAC (kronfluence) vs exact influence on an MLP ({ml.obj.dim} params): Spearman {rho:.3f}, Pearson {r:.3f}")
    assert r > 0.9  # same sign convention and close magnitudes (K-FAC ignores cross-layer curvature)
    assert rho > 0.5


def test_ekfac_on_logreg_close_to_exact(lab):
    exact = lab_scores(lab.obj, lab.train, lab.train, lab.probes, "exact", damping=lab.l2)
    ek = lab_scores(lab.obj, lab.train, lab.train, lab.probes, "ekfac", damping=lab.l2,
                          batch_size=32)
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
    exact = lab_scores(lab.obj, lab.train, lab.train, lab.probes, "exact", damping=lab.l2)
    # agreement in sign with LOO wherever the LOO effect is not tiny
    big = np.abs(lab.loo) > 0.1 * np.abs(lab.loo).max()
    assert (np.sign(exact[big]) == np.sign(lab.loo[big])).mean() > 0.95
    # self-influence ∇ℓ(z)ᵀ(H+λI)⁻¹∇ℓ(z) > 0: training on z always helps z
    self_inf = np.diag(lab_scores(lab.obj, lab.train, lab.train, lab.train, "exact", damping=lab.l2))
    assert (self_inf > 0).all()


# ---------------------------------------------------------------- errors, transforms, TracIn


def test_damping_must_be_positive(lab):
    for bad in (0, -1.0, float("nan"), None):
        with pytest.raises(ConfigError):
            check_damping(bad)
    with pytest.raises(ConfigError):
        lab_scores(lab.obj, lab.train, lab.train, lab.probes, "cg", damping=0.0)
    with pytest.raises(ConfigError):
        ExactInfluence(objective=lab.obj, damping=-0.1)
    V = torch.ones(1, 3, dtype=torch.float64)
    for fn in (lambda: ihvp_exact(torch.eye(3, dtype=torch.float64), V, 0.0), lambda: ihvp_cg(lambda v: v, V, 0.0),
               lambda: ihvp_lissa(lambda v: v, V, -1.0)):
        with pytest.raises(ConfigError):
            fn()
    with pytest.raises(MethodError):
        make("magic", objective=lab.obj)
    with pytest.raises(ConfigError, match="unprojected"):
        ExactInfluence(objective=lab.obj, damping=0.1, projection_dim=64)
    with pytest.raises(ConfigError, match="fit"):  # influence functions need the training data
        ExactInfluence(objective=lab.obj, damping=0.1).score(lab.train, lab.probes)


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
    import copy

    ip = InnerProduct(model, tok).score(pool, probes)
    tr = TracIn(model, tok, checkpoints=[model, model], learning_rates=[0.1, 0.3]).score(pool, probes)
    np.testing.assert_allclose(tr.values, 0.4 * ip.values, rtol=1e-6)
    # a second checkpoint with other weights contributes its own inner products
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(1.1)
    ip2 = InnerProduct(other, tok).score(pool, probes)
    tr2 = TracIn(model, tok, checkpoints=[model, other], learning_rates=[0.1, 0.3]).score(pool, probes)
    np.testing.assert_allclose(tr2.values, 0.1 * ip.values + 0.3 * ip2.values, rtol=1e-6)
    assert not np.allclose(ip2.values, ip.values)
    with pytest.raises(ConfigError):
        TracIn(model, tok, checkpoints=[model], learning_rates=[])


# ---------------------------------------------------------------- cache and CLI


def test_inner_product_streams_candidates_chunk_by_chunk(neox, monkeypatch):
    """Memory bounded by the chunk, structurally: score() never asks for more than chunk_size
    candidate gradients at once, and each chunk's gradients are gone before the next is computed."""
    import weakref

    from icp_influence import gradients

    model, tok = neox
    pool, probes = list(make_synthetic_pool(11, seed=4)), list(make_synthetic_pool(2, seed=5))
    real = gradients.Objective.per_example_grads
    calls: list[int] = []
    alive: list[weakref.ref] = []

    def spying(self, items, **kw):
        # every gradient matrix handed out before (probes excepted) must have been freed by now
        assert all(r() is None for r in alive[1:]), "an earlier chunk's candidate gradients are still referenced"
        calls.append(len(items))
        G = real(self, items, **kw)
        alive.append(weakref.ref(G))
        return G

    monkeypatch.setattr(gradients.Objective, "per_example_grads", spying)
    sm = InnerProduct(model, tok, params="paper", chunk_size=3).score(pool, probes)
    assert calls == [2, 3, 3, 3, 2]  # the probes once, then the candidates in chunks of ≤ 3
    monkeypatch.setattr(gradients.Objective, "per_example_grads", real)
    full = InnerProduct(model, tok, params="paper", chunk_size=len(pool)).score(pool, probes)
    np.testing.assert_allclose(sm.values, full.values, rtol=1e-5, atol=1e-6 * np.abs(full.values).max())


def test_candidate_gradients_cached_not_recomputed(neox, tmp_path, monkeypatch):
    import copy

    from icp_influence import gradients

    model, tok = neox
    pool, probes = list(make_synthetic_pool(6, seed=8)), list(make_synthetic_pool(2, seed=9))
    v = InnerProduct(model, tok, projection_dim=256, cache_dir=tmp_path)
    first = v.score(pool, probes)
    assert v._gradient_cache().computed == len(pool) + len(probes)

    calls = {"n": 0}
    real = gradients.Objective.per_example_grads

    def counting(self, items, **kw):
        calls["n"] += len(items)
        return real(self, items, **kw)

    monkeypatch.setattr(gradients.Objective, "per_example_grads", counting)
    # a second valuator on the same weights and settings (fewer probes) only reads the cache
    v2 = InnerProduct(model, tok, projection_dim=256, cache_dir=tmp_path)
    second = v2.score(pool, probes[:1])
    assert calls["n"] == 0
    assert v2._gradient_cache().loaded == len(pool) + 1
    np.testing.assert_allclose(second.values, first.values[:, :1], rtol=1e-6)
    # changed weights: a different cache key, every gradient is computed again, and the scores change
    tuned = copy.deepcopy(model)
    with torch.no_grad():
        dict(tuned.named_parameters())[v.objective.names[0]].mul_(1.5)
    v3 = InnerProduct(tuned, tok, projection_dim=256, cache_dir=tmp_path)
    third = v3.score(pool, probes)
    assert calls["n"] == len(pool) + len(probes)
    assert v3._gradient_cache().dir != v._gradient_cache().dir
    assert not np.allclose(third.values, first.values, rtol=1e-3)


def test_cli_score_influence_matches_api(neox, tmp_path):
    from icp_influence.cli import main
    from icp_influence.pools import parse_pool_spec
    from icp_influence.scores import ScoreMatrix

    out = tmp_path / "run"
    rc = main(["score", "cosine", "--model", "tiny-gpt-neox", "--pool", "synthetic:6", "--probes", "synthetic:2:4",
               "--out", str(out), "--chunk-size", "4", "--quiet", "--settings", json.dumps({"params": "last:1"})])
    assert rc == 0
    sm = ScoreMatrix.load(out / "scores")
    model, tok = neox
    from icp_influence.valuators import Cosine

    ref = Cosine(model, tok, params="last:1").score(list(parse_pool_spec("synthetic:6")),
                                                    list(parse_pool_spec("synthetic:2:4")))
    np.testing.assert_allclose(sm.values, ref.values, rtol=1e-5)
    assert sm.meta["method"] == "cosine" and np.all(np.abs(sm.values) <= 1 + 1e-9)
    assert main(["score", "exact", "--model", "tiny-gpt-neox", "--pool", "synthetic:4", "--probes", "synthetic:2",
                 "--out", str(tmp_path / "bad"), "--settings", '{"damping": 0}']) == 2
    assert main(["score", "cosine", "--model", "tiny-gpt-neox", "--pool", "synthetic:4", "--probes", "synthetic:2",
                 "--out", str(tmp_path / "bad2"), "--settings", '{"dampng": 0.1}']) == 2


def test_widget_and_plots_recompute():
    import matplotlib

    matplotlib.use("Agg")
    from icp_course.plots.influence import scatter_vs_loo, sweep_plot
    from icp_course.widgets.influence import damping_projection_explorer

    small = logreg_lab(30, 3, n_probes=2, l2=0.01, seed=1)
    widget, update = damping_projection_explorer(small)
    at_l2 = update(log10_damping=-2.0, k=4)
    far = update(log10_damping=1.0)
    exact = lab_scores(small.obj, small.train, small.train, small.probes, "exact", damping=0.01)
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


def test_inner_product_scores_blocked_equals_float64():
    from icp_influence.gradient_scores import inner_product_scores

    g = torch.Generator().manual_seed(0)
    Gc, Gp = torch.randn(5, 3000, generator=g), torch.randn(4, 3000, generator=g)
    exact = (Gc.double() @ Gp.double().T).numpy()
    np.testing.assert_array_equal(inner_product_scores(Gc, Gp), exact)  # up to `block` coordinates: float64
    blocked = inner_product_scores(Gc, Gp, block=256)  # float32 products of 256 coordinates, float64 sums
    np.testing.assert_allclose(blocked, exact, rtol=0, atol=1e-5 * np.abs(exact).max())
    np.testing.assert_allclose(inner_product_scores(Gc.double(), Gp, block=256), exact, rtol=1e-12)


def test_length_batches_are_optimal_buckets():
    """Every item once, batches ≤ max_batch of consecutive sorted lengths, and the minimum of
    Σ (size × longest + overhead) over all such partitions (brute force on small inputs)."""
    from itertools import combinations

    from icp_influence.gradients import length_batches

    rng = np.random.default_rng(0)
    for _ in range(30):
        n, m, c = int(rng.integers(1, 9)), int(rng.integers(1, 5)), float(rng.integers(0, 50))
        L = rng.integers(5, 300, size=n).tolist()
        got = length_batches(L, m, overhead_tokens=c)
        assert sorted(i for b in got for i in b) == list(range(n)) and all(1 <= len(b) <= m for b in got)
        cost = sum(len(b) * max(L[i] for i in b) + c for b in got)
        srt = sorted(L)
        best = min(sum((e - s) * srt[e - 1] + c for s, e in zip((0, *cuts), (*cuts, n)))
                   for k in range(n) for cuts in combinations(range(1, n), k)
                   if all(e - s <= m for s, e in zip((0, *cuts), (*cuts, n))))
        assert cost == pytest.approx(best)
    assert length_batches([10, 200, 11, 12], 4) == [[0, 2, 3], [1]]  # the long one alone, no padding to 200


def test_ekfac_probe_batches_accumulated_same_scores(neox):
    """Holding every probe batch before the pass over the candidates (one pass instead of one
    per probe batch) gives the same scores."""
    from icp_influence.ihvp import EkfacFactors

    model, tok = neox
    obj = lm_objective(model, tok, params="paper")
    train = encode_examples(tok, list(make_synthetic_pool(6, seed=11)))
    cands = encode_examples(tok, list(make_synthetic_pool(3, seed=12)))
    probes = encode_examples(tok, list(make_synthetic_pool(5, seed=13)))
    ek = EkfacFactors(obj, train, damping=0.1, batch_size=2)
    assert ek.query_accumulation_steps(len(probes)) == 3  # all three probe batches at once
    together = ek.scores(cands, probes)
    ek.query_memory_gb = 1e-12  # room for one probe batch only: a pass over the candidates per batch
    assert ek.query_accumulation_steps(len(probes)) == 1
    apart = ek.scores(cands, probes)
    assert together.shape == (3, 5)
    np.testing.assert_allclose(together, apart, rtol=1e-5, atol=1e-7 * np.abs(apart).max())
