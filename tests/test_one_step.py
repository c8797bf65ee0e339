"""The one-step ground truth: Δ(z, p) = ℓ(p; θ) − ℓ(p; θ′) after one real optimiser step on z,
checked against torch's own optimisers and, at small η, against η·⟨∇ℓ(p), ∇ℓ(z)⟩."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from icp_influence.encoding import encode_example
from icp_influence.errors import ConfigError
from icp_influence.lm import answer_nll, pad_batch
from icp_influence.models import load_model
from icp_influence.stats import spearman
from icp_influence.synthetic import make_synthetic_pool
from icp_influence.valuators import InnerProduct, OneStep

QV = r"regex:\.(q_proj|v_proj)\.weight$"


@pytest.fixture(scope="module")
def llama64():
    model, tok = load_model("tiny-llama", device="cpu")
    return model.double(), tok


@pytest.fixture(scope="module")
def data():
    pool = list(make_synthetic_pool(12, seed=4))
    return pool[:6], pool[6:]


def _loss(model, tok, ex):
    ids, mask, labels = pad_batch([encode_example(tok, ex)], tok.pad_token_id)
    with torch.no_grad():
        return float(answer_nll(model(input_ids=ids, attention_mask=mask).logits, labels).sum())


def _reference(model, tok, z, probes, make_opt, names):
    """Independent reference: a deep copy, torch's optimiser, one step, every probe's loss."""
    work = copy.deepcopy(model)
    params = dict(work.named_parameters())
    for n, p in params.items():
        p.requires_grad_(n in names)
    opt = make_opt([params[n] for n in names])
    ids, mask, labels = pad_batch([encode_example(tok, z)], tok.pad_token_id)
    opt.zero_grad()
    answer_nll(work(input_ids=ids, attention_mask=mask).logits, labels).sum().backward()
    opt.step()
    return np.array([_loss(model, tok, p) - _loss(work, tok, p) for p in probes])


def test_sgd_step_equals_torch_sgd_and_weights_are_restored(llama64, data):
    model, tok = llama64
    cands, probes = data
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    v = OneStep(model, tok, params="all", optimizer="sgd", lr=1e-3)
    sm = v.score(cands, probes)
    names = [n for n, _ in model.named_parameters()]
    for i, z in enumerate(cands[:3]):
        ref = _reference(model, tok, z, probes, lambda ps: torch.optim.SGD(ps, lr=1e-3), names)
        np.testing.assert_allclose(sm.values[i], ref, rtol=1e-8, atol=1e-10)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert np.abs(sm.values).max() > 1e-3  # the step really changed the probe losses
    assert sm.meta["method"] == "one_step" and sm.meta["settings"]["optimizer"] == "sgd"


def test_adam_with_zero_betas_is_the_sign_like_step(llama64, data):
    model, tok = llama64
    cands, probes = data
    v = OneStep(model, tok, params=QV, optimizer="adam_sign", lr=1e-3, eps=1e-8)
    sm = v.score(cands[:2], probes)
    names = v.names
    for i, z in enumerate(cands[:2]):
        ref = _reference(model, tok, z, probes,
                         lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.0, 0.0), eps=1e-8), names)
        np.testing.assert_allclose(sm.values[i], ref, rtol=1e-6, atol=1e-9)


def test_small_sgd_step_is_the_inner_product_to_first_order(llama64, data):
    """Δ(z, p) / η → ⟨∇ℓ(p), ∇ℓ(z)⟩ on the same parameters as η → 0 (tiny model in float64).

    η is small but not tiny: transformers' llama keeps RMSNorm and rotary embeddings in
    float32 even in a float64 model, so losses carry ~1e-7 relative noise; at η·|IP| ≈ 1e-4
    nats the first-order term dominates both that noise and the second-order term."""
    model, tok = llama64
    cands, probes = data
    ip = InnerProduct(model, tok, params=QV).score(cands, probes).values
    eta = 1e-4 / np.median(np.abs(ip))
    gt = OneStep(model, tok, params=QV, optimizer="sgd", lr=eta).score(cands, probes).values
    rel = np.abs(gt / eta - ip).max() / np.abs(ip).max()
    print(f"\nmax |Δ/η − IP| / max|IP| = {rel:.2e}; pair-level Spearman = {spearman(gt, ip):.6f}")
    assert rel < 1e-3
    assert spearman(gt, ip) > 0.999
    # a large step leaves the first-order regime: the second-order term shows
    big = OneStep(model, tok, params=QV, optimizer="sgd", lr=1e3 * eta).score(cands, probes).values
    assert np.abs(big / (1e3 * eta) - ip).max() / np.abs(ip).max() > 10 * rel


def test_bad_settings():
    model, tok = load_model("tiny-gpt2", device="cpu")
    with pytest.raises(ConfigError):
        OneStep(model, tok, optimizer="adamw")
    with pytest.raises(ConfigError):
        OneStep(model, tok, lr=0)
    with pytest.raises(ConfigError):
        OneStep(model, None)
