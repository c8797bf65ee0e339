"""icp_influence.finetune: LoRA / full fine-tuning, evaluation, arms with t-intervals."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from icp_influence import finetune as F
from icp_influence.errors import ConfigError
from icp_influence.models import load_model
from icp_influence.synthetic import make_synthetic_pool, split_pool


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama", seed=0)


@pytest.fixture(scope="module")
def two_families():
    pool = make_synthetic_pool(32, families=["antonym", "plural"], seed=0)
    return split_pool(pool, 4, seed=0)  # 24 train, 8 held out


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_t_interval_matches_formula():
    v = [1.0, 2.0, 4.0]
    lo, hi = F.t_interval(v)
    m, sd = np.mean(v), np.std(v, ddof=1)
    half = 4.302652729911275 * sd / math.sqrt(3)  # t_{0.975, 2}
    assert lo == pytest.approx(m - half) and hi == pytest.approx(m + half)
    assert F.t_interval([1.0]) == (None, None)


def test_exact_match_normalisation():
    assert F.exact_match("  Closed.", "closed")
    assert F.exact_match("cold\nThe opposite of hot is cold", "cold")
    assert not F.exact_match("The opposite of hot is cold", "cold")
    assert F.normalise_answer('"Paris"') == "paris"


def test_lora_targets_per_architecture():
    for spec, want in [("tiny-llama", ["q_proj", "v_proj"]), ("tiny-gpt-neox", ["query_key_value"]),
                       ("tiny-gpt2", ["c_attn"])]:
        m, _ = load_model(spec)
        assert F.lora_target_modules(m) == want


# A random tiny model: full fine-tuning learns the answers (seen: -5.54 -> -2.65 nats/token);
# LoRA on q/v of a random model moves little (seen: -5.54 -> -5.36) -- the meaningful LoRA
# check is the SmolLM2 test below.
@pytest.mark.parametrize("method,lr,min_gain", [("lora", 3e-2, 0.1), ("full", 3e-3, 2.0)])
def test_tiny_run_lowers_heldout_in_domain_loss(tiny, two_families, method, lr, min_gain):
    model, tok = tiny
    train, held = two_families
    before = _params(model)
    base = F.evaluate(model, tok, held, template="paper", exact_match_eval=False)
    cfg = F.FinetuneConfig(method=method, epochs=6, batch_size=4, lr=lr, template="paper")
    tuned, log = F.finetune(model, tok, train, cfg, seed=0, return_log=True)
    after = F.evaluate(tuned, tok, held, template="paper", exact_match_eval=False)
    # the caller's model is untouched
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert log.steps == 6 * 6
    # held-out answer log-likelihood per token rises (random init: ~ -5.5 nats/token)
    gain = after.summary()["answer_loglik_per_token"] - base.summary()["answer_loglik_per_token"]
    assert gain > min_gain, gain
    # the result is a plain model (LoRA merged)
    assert not any("lora" in n for n, _ in tuned.named_parameters())
    if method == "lora":  # same seed -> identical weights
        again = F.finetune(model, tok, train, cfg, seed=0)
        assert all(torch.equal(p, q) for p, q in zip(tuned.parameters(), again.parameters()))


def test_evaluate_per_family_and_exact_match(tiny, two_families):
    model, tok = tiny
    _, held = two_families
    ev = F.evaluate(model, tok, held, template="paper", exact_match_eval=True, max_new_tokens=3)
    fam = ev.by_family()
    assert set(fam) == {"antonym", "plural"} and fam["antonym"]["n"] == 4
    s = ev.summary()
    tot = sum(ev.loglik)
    assert s["answer_loglik"] == pytest.approx(tot / 8)
    assert s["answer_loglik_per_token"] == pytest.approx(tot / sum(ev.n_tokens))
    assert s["exact_match"] == 0.0  # a random tiny model answers nothing right
    assert ev.metric("answer_loglik", ["plural"]) == pytest.approx(fam["plural"]["answer_loglik"])


def test_run_arms_outcome_json(tiny, two_families, tmp_path):
    model, tok = tiny
    train, held = two_families
    pool = train
    cfg = F.FinetuneConfig(method="full", epochs=3, batch_size=4, lr=1e-2, template="paper")
    sels = {"first": pool.ids[:8], "random": lambda s: list(np.random.default_rng(s).choice(pool.ids, 8, replace=False))}
    out = F.run_arms(model, tok, pool, sels, held, seeds=(0, 1, 2), config=cfg, eval_families=["antonym"],
                     exact_match_eval=False)
    d = out.to_dict()
    json.dumps(d)  # serialisable
    assert set(d["arms"]) == {"first", "random"}
    for arm in d["arms"].values():
        assert len(arm["seeds"]) == 3 and arm["n_train"] == 8
        lo, hi = arm["ci"]
        v = np.asarray(arm["seeds"])
        half = 4.302652729911275 * v.std(ddof=1) / np.sqrt(3)  # t_{0.975, 2} = 4.3027
        assert (lo, hi) == pytest.approx((v.mean() - half, v.mean() + half), rel=1e-9)
        assert arm["mean"] == pytest.approx(np.mean(arm["seeds"]))
        assert arm["mean"] > d["base"] + 0.5  # training helps the in-domain held-out loss
    path = out.save(tmp_path / "o.json")
    assert F.Outcome.load(path).arms["first"]["seeds"] == d["arms"]["first"]["seeds"]
    with pytest.raises(ConfigError):
        F.run_arms(model, tok, pool, sels, held, metric="accuracy")
    with pytest.raises(ConfigError):
        F.FinetuneConfig(method="prefix")


@pytest.mark.slow
def test_smollm2_lora_lowers_heldout_loss(two_families):
    """The embedded SmolLM2 (chat template), LoRA, 20 examples of 2 families, 5 steps."""
    model, tok = load_model("smollm2-135m-instruct")
    train, held = two_families
    cfg = F.FinetuneConfig(method="lora", max_steps=5, batch_size=4, lr=1e-3)
    base = F.evaluate(model, tok, held, exact_match_eval=False)
    tuned = F.finetune(model, tok, list(train)[:20], cfg, seed=0)
    after = F.evaluate(tuned, tok, held, exact_match_eval=False)
    b, a = base.summary()["answer_loglik_per_token"], after.summary()["answer_loglik_per_token"]
    assert a > b + 1.0, (b, a)  # seen: about -4.8 -> -0.6 nats/token


def test_numeric_match_reads_the_reference_final_number():
    ref = "Pens: 2 x $1.15 = $2.30.\nTotal: $7.47 + $2.30 = $9.77.\nYou should get $10.23 in change."
    assert F.numeric_match("The change is $10.23.", ref)
    assert F.numeric_match("9.77 ... so 10.230 back", ref)                 # the same number, written otherwise
    assert not F.numeric_match("You should get $9.77 in change.", ref)       # an intermediate number is not the answer
    assert not F.numeric_match("10.23? No: 9.77 is the change.", ref)       # the answer is the last number written
    # a continuation that starts a new example is cut there: numbers after it do not count
    assert not F.numeric_match("It is 7.\n### Instruction: what is 10.23 + 0?", ref)
    assert F.numeric_match("It is 10.23.\nInstruction: add 3 and 4, giving 7", ref)
    assert F.numeric_match("about 1,609.344 m", "5 miles is 1,609.344 m")     # thousands separators
    assert not F.numeric_match("-3", "3")
    assert not F.numeric_match("42", "no number here") and not F.numeric_match("no number", "42")
    assert F.numbers_in("a -2.5 b 1,000 c 7") == [-2.5, 1000.0, 7.0]
