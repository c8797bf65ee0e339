"""The confounds experiment: its analysis functions on simulated matrices with a known
answer, and the whole run end to end on a random tiny model (the same code as the committed run)."""
from __future__ import annotations

import numpy as np
import pytest

from icp_influence.experiments import confounds as C


def _variant_design(n_inst: int, rng):
    versions = np.array(["short", "middle", "long"] * n_inst)
    groups = np.repeat([f"i{k}" for k in range(n_inst)], 3)
    base = rng.normal(3.5, 0.5, size=n_inst)
    log_tokens = np.repeat(base, 3) + np.tile([-1.6, 0.0, 1.6], n_inst) + rng.normal(scale=0.1, size=3 * n_inst)
    return versions, groups, log_tokens


def test_intervention_effect_recovers_a_planted_length_effect_and_its_absence():
    rng = np.random.default_rng(0)
    versions, groups, log_tokens = _variant_design(60, rng)
    P = 12
    content = np.repeat(rng.normal(size=60), 3)
    # "a" grows with length by exactly 0.5 per unit of log tokens, "b" only has content
    Va = (content + 0.5 * log_tokens)[:, None] + rng.normal(scale=0.5, size=(180, P))
    Vb = content[:, None] + rng.normal(scale=0.5, size=(180, P))
    eff = C.intervention_effects({"a": (Va, "mean"), "b": (Vb, "mean")}, versions, groups, n_boot=300, seed=0)
    li, si = versions == "long", versions == "short"
    want = 0.5 * (log_tokens[li] - log_tokens[si]).mean()
    assert eff["a"]["ci"][0] < want < eff["a"]["ci"][1]
    assert eff["a"]["effect"] == pytest.approx((Va.mean(axis=1)[li] - Va.mean(axis=1)[si]).mean())
    assert eff["a"]["rank_effect"] > 30 and eff["a"]["fraction_long_higher"] > 0.9
    assert eff["b"]["ci"][0] < 0 < eff["b"]["ci"][1] and eff["b"]["rank_ci"][0] < 0 < eff["b"]["rank_ci"][1]
    assert eff["a"]["n_instructions"] == 60


def test_dose_response_raw_agreement_grows_with_spread_when_length_is_the_only_shared_cause():
    rng = np.random.default_rng(1)
    versions, groups, log_tokens = _variant_design(150, rng)
    P = 16
    Va = log_tokens[:, None] + rng.normal(scale=1.0, size=(450, 1)) + rng.normal(scale=1.0, size=(450, P))
    Vb = log_tokens[:, None] + rng.normal(scale=1.0, size=(450, 1)) + rng.normal(scale=1.0, size=(450, P))
    table, pred = C.dose_response({"icp_mean_delta": (Va, "mean"), "ip": (Vb, "mean")}, log_tokens, versions,
                                  groups, [0.0, 0.5, 1.0], n_draws=60, seed=0)
    sds = [r["log_token_sd"] for r in table]
    raws = [r["raw"]["spearman"] for r in table]
    assert sds == sorted(sds) and sds[-1] > 1.4
    assert raws[-1] > raws[0] + 0.3, raws
    for r in table:      # nothing is shared beyond length: controlled for it, no agreement
        assert r["partial"]["ci"][0] < 0.05 and abs(r["partial"]["spearman"]) < 0.12
    assert pred["raw"]["spearman"] > raws[0] and pred["extrapolates_by"] == pytest.approx(max(0.0, 1.5 - sds[-1]))
    assert pred["raw"]["ci"][0] <= pred["raw"]["spearman"] <= pred["raw"]["ci"][1]


def test_pair_level_and_length_controlled_tables_on_simulated_views():
    rng = np.random.default_rng(2)
    Cn, P = 120, 10
    length = rng.integers(5, 400, size=Cn).astype(float)
    D = np.log(length)[:, None] * 0.2 + rng.normal(size=(Cn, P))
    IP = length[:, None] * (1 + rng.normal(scale=0.3, size=(Cn, P)))
    v = {"icp_mean_delta": (D, "mean"), "icp_win_rate": (D, "win_rate"), "ip": (IP, "mean"),
         "icp_per_token": (D / 7.0, "mean"), "ip_per_token_loss": (IP / length[:, None] / 7.0, "mean"),
         "ip_per_candidate_token": (IP / length[:, None], "mean")}
    table = C.length_controlled_table(v, length, n_boot=100, n_strata=5, seed=0)
    row = table["icp_mean_delta vs ip"]
    assert set(row) >= {"raw", "partial", "stratified", "per_token", "ip_per_candidate_token"}
    assert row["raw"]["spearman"] > row["partial"]["spearman"]
    assert row["partial"]["ci"][0] < 0 < row["partial"]["ci"][1]
    pl = C.pair_level(v, length)
    assert pl["raw"]["n_probes"] == P and len(pl["raw"]["values"]) == P
    assert pl["raw"]["q25"] <= pl["raw"]["median"] <= pl["raw"]["q75"]


@pytest.mark.slow
def test_confounds_runs_end_to_end_on_a_tiny_model(tmp_path, monkeypatch):
    monkeypatch.setenv("ICP_RESULTS_DIR", str(tmp_path))
    res = C.run("tiny", progress=False, log=lambda s: None)
    assert res["pending"] == []
    nulls = res["null_models"]
    assert set(nulls) == set(C.NULL_NAMES)
    # answer length and the summed model loss: the same ordering up to a few ties on a tiny model
    assert nulls["answer_length"]["spearman_vs"]["candidate_nll"]["spearman"] > 0.9
    for pair in ("icp_mean_delta vs ip", "icp_win_rate vs ip"):
        assert set(res["length_controlled"][pair]) >= {"raw", "partial", "stratified", "per_token"}
    assert set(res["intervention"]) >= {"icp_mean_delta", "ip", "answer_length"}
    # the answer-length null model sees exactly the planted intervention
    al = res["intervention"]["answer_length"]
    assert al["fraction_long_higher"] == 1.0 and al["effect"] > 150
    assert len(res["dose_response"]) == len(C.ConfoundsConfig.for_mode("tiny").dose_levels)
    assert (tmp_path / "confounds-tiny.json").exists()
    rows = {r["ablation"]: r for r in res["ablations"]}
    assert set(rows) == set(C.ConfoundsConfig.for_mode("tiny").ablations)
    for r in rows.values():
        assert r["ci"][0] <= r["spearman"] <= r["ci"][1] and "spearman" in r["partial"]
    # the per-token loss derived from the summed one is what the valuator computes itself
    from icp_influence.experiments import llm_agreement as A
    from icp_influence.valuators import make

    acfg, model, tok, d, out = A.open_run("tiny")
    mats = C._score_nulls(acfg, d, model, tok, out, None, log=lambda s: None)
    own = make("candidate_nll", model, tok, reduction="mean").score(list(d["pool"]), list(d["probes"]))
    assert np.allclose(mats["candidate_nll_per_token"].values, own.values, rtol=1e-9)
    assert mats["candidate_nll_per_token"].meta["config_hash"] == A._hash_of(make("candidate_nll", model, tok,
                                                                                   reduction="mean",
                                                                                   model_name=acfg.model))
    again = C.run("tiny", progress=False, stages=("null_models", "length_controlled"), log=lambda s: None)
    assert again["null_models"] == res["null_models"], "cached matrices give the same analysis"
    assert again["pending"] == ["intervention", "dose_response", "prediction", "ablations"]
