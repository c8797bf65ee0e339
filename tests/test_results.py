"""The committed results are what the code would compute: each records the configuration the
code uses now (hash) and its code version; each summary follows from its cached matrices;
and every claim the notebooks' text makes about them still holds."""
from __future__ import annotations

import json

import numpy as np
import pytest

from icp_influence.experiments import ground_truth as GT
from icp_influence.experiments import llm_agreement as A
from icp_influence.paths import results_dir
from icp_influence.utils import config_hash

pytestmark = pytest.mark.slow


def _committed(name: str) -> dict:
    path = results_dir() / name
    assert path.exists(), f"{path} is missing: run `python -m icp_influence run ...` and commit the result"
    return json.loads(path.read_text(encoding="utf-8"))


# the instruction run is always committed; the synthetic one (the data ablation) when it was run
COMMITTED_DATA = ["instructions"] + (["synthetic"] if (results_dir() / "synthetic-agreement-full.json").exists() else [])


@pytest.mark.parametrize("data", COMMITTED_DATA)
def test_agreement_result_matches_the_configuration_and_its_matrices(data):
    run = A.load("full", data)
    cfg = A.AgreementConfig.for_mode("full", data)
    summary = run["summary"]
    assert summary["config"] == json.loads(json.dumps(cfg.to_dict())), "the committed run used another configuration"
    assert summary["config_hash"] == config_hash(cfg.to_dict())
    assert summary["code_version"]["version"] and summary["code_version"]["commit"]
    # the summary follows from the cached matrices (the analysis is deterministic)
    again = A.summarise(cfg, {k: v for k, v in run["mats"].items() if not k.startswith("gt_")}, run["info"])
    for key in ("reliability", "agreement"):
        for name, entry in summary[key].items():
            for field in ("value", "spearman", "disattenuated", "ci"):
                if field in entry:
                    assert np.allclose(np.asarray(entry[field], float), np.asarray(again[key][name][field], float),
                                       equal_nan=True), (key, name, field)
    # a valuator this run skipped has no matrix, unless the confounds run scored it as a whole-pool ablation
    # (in the same folder, on the same candidates and probes) and says so
    later = set()
    if data == "instructions" and (results_dir() / "confounds-full.json").exists():
        later = {r["ablation"] for r in json.loads((results_dir() / "confounds-full.json").read_text())
                 .get("ablations", [])}
    assert (set(summary.get("skipped", [])) - later).isdisjoint(run["mats"]), "a skipped valuator has a matrix"
    for name in later & set(run["mats"]):
        m = run["mats"][name]
        assert m.candidate_ids == run["mats"]["icp"].candidate_ids and m.probe_ids == run["mats"]["icp"].probe_ids
    rows = {r["name"]: r for r in again["ablations"]}
    for r in summary["ablations"]:
        if r["group"] != "data":
            assert r["spearman"] == pytest.approx(rows[r["name"]]["spearman"]), r["name"]
    # every matrix carries the configuration hash of the valuator the specs build now
    specs = A.valuator_specs(cfg, None)
    for name, sm in run["mats"].items():
        if name in specs:
            assert sm.meta["config_hash"], name
            want = {k: v for k, v in specs[name]["settings"].items() if k != "cache_dir"}
            for k, v in want.items():
                if k in sm.meta["settings"]:
                    assert sm.meta["settings"][k] == v, (name, k)


def test_agreement_matrices_hash_equals_the_valuators_the_code_builds():
    """Rebuild every (unfitted) valuator from the specs with the embedded model: same configuration hash,
    so a changed template, parameter subset or setting can never reuse a stale matrix."""
    from icp_influence.models import load_model
    from icp_influence.valuators import make

    cfg = A.AgreementConfig.for_mode("full")
    run = A.load("full")
    model, tok = load_model(cfg.model, device="cpu")
    checked = 0
    for name, spec in A.valuator_specs(cfg, None).items():
        if name not in run["mats"]:
            continue
        v = make(spec["valuator"], model, tok, template=spec.get("template", cfg.template), seed=cfg.seed,
                 model_name=cfg.model, **spec["settings"])
        if v.needs_fit:
            continue  # the hash of a fitted valuator includes its training set (checked by the store's tests)
        assert A._hash_of(v) == run["mats"][name].meta["config_hash"], name
        checked += 1
    assert checked >= 3


HAVE_GT = (results_dir() / "ground-truth-full.json").exists()


def test_the_claims_notebook_05_makes_hold():
    summary = A.load("full")["summary"]
    gt = GT.load("full") if HAVE_GT else None
    c = A.claims(summary, gt)
    # the verdict paragraph is built from these claims; the notebook's static text makes none about the numbers
    if gt is not None:
        assert c["first_order_holds"] == (gt["first_order"]["pair_spearman_ip"] >= 0.99)
    assert c["biggest_mover"] == summary["biggest_mover"]
    assert summary["n_candidates"] >= 300 and summary["n_probes"] >= 64, "the full run is at least 300 × 64"
    text = A.verdict(summary, gt)
    assert c["mean_delta_vs_ip"] in text and c["win_rate_vs_ip"] in text


@pytest.mark.skipif(not HAVE_GT, reason="no ground-truth result committed (notebook 05 says so when it runs)")
def test_ground_truth_result_matches_its_configuration_and_the_first_order_identity_holds():
    from dataclasses import replace

    res = _committed("ground-truth-full.json")
    base = GT.GroundTruthConfig.for_mode("full")
    overrides = {k: res["config"][k] for k in ("n_candidates", "n_candidates_per", "n_first_order", "pools", "valuators",
                                              "valuators_per_pool", "ablation_only") if k in res["config"]}
    cfg = replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    assert res["config"] == json.loads(json.dumps(cfg.to_dict())), "the committed run used other settings"
    assert res["first_order"]["pair_spearman_ip"] >= 0.99
    if "synthetic" in cfg.pools:
        assert res["first_order_synthetic"]["pair_spearman_ip"] >= 0.99
    levels = {(r["valuator"], r["ground_truth"], r["level"], r["pool"]) for r in res["table"]}
    for pool in cfg.pools:
        for gt in ("gt_sgd_small", "gt_sgd_all", "gt_adam_sign"):
            for v in ("icp_mean_delta", "icp_win_rate", "ip"):
                for level in ("pair", "candidate"):
                    assert (v, gt, level, pool) in levels
    # the first-order number and every table row follow from the matrices, pool by pool
    from icp_influence import stats as S
    from icp_influence.models import load_model

    for pool_name in cfg.pools:
        mats = A.load("full", pool_name)["mats"]
        small = mats["gt_sgd_small"]
        fo = S.pair_agreement(small.values, mats["ip"].subset(small.candidate_ids).values, n_boot=cfg.n_boot,
                              seed=cfg.seed)
        key = "first_order" if pool_name == "instructions" else f"first_order_{pool_name}"
        assert fo.value == pytest.approx(res[key]["pair_spearman_ip"], abs=1e-12)
        acfg = A.AgreementConfig.for_mode("full", pool_name)
        _, pool = A.build_pool(acfg)
        _, tok = load_model(acfg.model, device="cpu")
        n_tokens = GT.answer_tokens(tok, pool, mats["gt_sgd_all"].candidate_ids, acfg.template)
        again = GT.summarise(cfg, GT.cached_valuator_mats(cfg, mats, pool_name),
                             {g: mats[g] for g in ("gt_sgd_small", "gt_sgd_all", "gt_adam_sign")}, pool_name, n_tokens)
        assert again["length"] == res["length"][pool_name]
        assert [(r["valuator"], r["ground_truth"], r["level"], round(r["spearman"], 10)) for r in again["rows"]] == \
            [(r["valuator"], r["ground_truth"], r["level"], round(r["spearman"], 10)) for r in res["table"]
             if r["pool"] == pool_name]


def test_finetune_equivalence_result_follows_from_its_runs_and_the_pilot_fixed_the_margin():
    from dataclasses import replace

    from icp_influence.experiments import finetune_equivalence as FE

    res = _committed("finetune-equivalence-full.json")
    cfg = replace(FE.EquivalenceConfig.for_mode("full"), pools=tuple(res["config"]["pools"]))
    assert res["config"] == json.loads(json.dumps(cfg.to_dict())), "the committed run used other settings"
    assert res["config_hash"] == config_hash(cfg.to_dict())
    assert len(cfg.seeds) >= 5 and len(cfg.budgets) >= 2 and "instructions" in cfg.pools
    runs = FE._runs(results_dir() / "finetune-equivalence-full" / "runs.jsonl")
    # the margin: half the gap between the base model and the best arm of the pilot (its own seed)
    for pool in cfg.pools:
        pilot = [r["answer_loglik_per_token"] for k, r in runs.items() if k[0] == pool and r.get("pilot")]
        assert len(pilot) == len(FE.ARMS) and cfg.pilot_seed not in cfg.seeds
        base = runs[(pool, 0, "base", -1)]["answer_loglik_per_token"]
        assert res["margin"][pool] == pytest.approx(max(abs(max(pilot) - base) / 2, 1e-6), rel=1e-12)
    # every number of the summary follows from runs.jsonl
    again = FE.summarise(cfg, runs, res["margin"], {p: {"base": res["base"][p], "exact": p == "synthetic"}
                                                     for p in cfg.pools})
    assert again["n_models"] == res["n_models"] == len(cfg.pools) * len(FE.ARMS) * (1 + len(cfg.budgets) * len(cfg.seeds))
    for pool in cfg.pools:
        for b, arms in res["arms"][pool].items():
            for arm, v in arms.items():
                assert v["mean"] == pytest.approx(again["arms"][pool][b][arm]["mean"], abs=1e-12)
                assert np.allclose(v["ci"], again["arms"][pool][b][arm]["ci"])
                assert v.get("exact_match") == again["arms"][pool][b][arm].get("exact_match")   # synthetic: checkable answers
    assert [(e["a"], e["b"], e["budget"], e["verdict"]) for e in res["equivalence"]] == \
        [(e["a"], e["b"], e["budget"], e["verdict"]) for e in again["equivalence"]]
    # the verdict paragraph notebook 06 displays states each icp-top comparison's verdict
    text = FE.verdict(res)
    for e in res["equivalence"]:
        if "icp-top" in (e["a"], e["b"]):
            assert f"{e['a']} vs {e['b']}: difference {e['diff']:+.4f}" in text and e["verdict"] in text


def test_the_grid_so_far_follows_from_its_runs_and_the_claims_notebook_06_makes_about_it_hold():
    """The fine-tuning grid (design 2), read while it runs: its committed rows belong to the
    configuration the code uses, the pilot alone fixed the margin, each complete budget's
    summary follows from the rows (independently recomputed TOST), and notebook 06's text holds."""
    from scipy import stats as st

    from icp_influence import stats
    from icp_influence.experiments import finetune_equivalence as FE
    from icp_influence.experiments import finetune_grid as FG

    gcfg = FG.GridConfig.for_mode("full")
    out = FG.grid_dir("full")
    assert json.loads((out / "config.json").read_text())["config_hash"] == config_hash(gcfg.to_dict())
    runs = FE._runs(out / "runs.jsonl")
    grid = FG.grid_so_far("full")
    assert grid is not None, "no budget of the grid is complete: notebook 06's grid section has nothing to show"
    assert "instructions" in grid["budgets_done"]
    for pool in grid["budgets_done"]:   # every pool with a complete budget (notebook 06 shows each)
        bmax = max(gcfg.pool_budgets(pool))
        gaps = [runs[(pool, bmax, "icp-top", s)]["answer_loglik_per_token"]
                - runs[(pool, bmax, "icp-bottom", s)]["answer_loglik_per_token"] for s in gcfg.pilot_seeds]
        assert not set(gcfg.pilot_seeds) & set(gcfg.seeds)
        assert grid["margin"][pool] == pytest.approx(max(abs(np.mean(gaps)) / 3, 1e-6), rel=1e-12)
        assert grid["margin_rule"] == FG.margin_rule(gcfg) and f"{pool} {bmax}" in grid["margin_rule"]
        if pool == "instructions":   # "budgets of about 10%, 20% and 40% of the pool"
            n_pool = len(json.loads((results_dir() / "instruction-agreement-full" / "data.json").read_text())["pool"])
            assert n_pool >= 300 and [round(10 * b / n_pool) * 10 for b in gcfg.pool_budgets(pool)] == [10, 20, 40]
        for b in grid["budgets_done"][pool]:
            vals = {a: [runs[(pool, b, a, s)]["answer_loglik_per_token"] for s in gcfg.seeds] for a in gcfg.arms}
            for a, v in vals.items():
                assert grid["loglik"][pool][str(b)][a]["mean"] == pytest.approx(np.mean(v), abs=1e-12)
            for e in (e for e in grid["equivalence"] if e["pool"] == pool and e["budget"] == b):
                d = np.subtract(vals[e["a"]], vals[e["b"]])
                se = d.std(ddof=1) / np.sqrt(d.size)
                p = max(st.t.sf((d.mean() + grid["margin"][pool]) / se, d.size - 1),
                        st.t.cdf((d.mean() - grid["margin"][pool]) / se, d.size - 1))
                assert e["p_tost"] == pytest.approx(p, rel=1e-9) and e["diff"] == pytest.approx(d.mean(), abs=1e-12)
                assert e["verdict"] == stats.tost_paired(vals[e["a"]], vals[e["b"]], grid["margin"][pool]).verdict
        text = FG.grid_verdict(grid, pool)
        mdd = grid["min_detectable_difference"][pool]
        for c in (c for c in grid["positive_controls"] if c["pool"] == pool):
            assert f"{c['a']} vs {c['b']} {c['diff']:+.4f}" in text and f"**{c['verdict']}**" in text
            # "not for lack of power": the control's 95% t-interval, recomputed from the rows, lies inside ±MDD
            d = np.subtract(*([runs[(pool, c["budget"], a, s)]["answer_loglik_per_token"] for s in gcfg.seeds]
                              for a in (c["a"], c["b"])))
            half = st.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
            if "Not for lack of power" in text and f"Why `{c['a']}` vs `{c['b']}`" in text:
                assert not c["passed"] and -mdd < d.mean() - half and d.mean() + half < mdd
        # "the gain follows the answer length selected": Spearman over the arms, from the rows' own lengths
        for b, rho in FG.length_spearman(grid, pool).items():
            arms = [a for a in gcfg.arms if a != "corrupted"]
            tokens = [np.mean([runs[(pool, int(b), a, s)]["selected_answer_tokens"] for s in gcfg.seeds]) for a in arms]
            gain = [np.mean([runs[(pool, int(b), a, s)]["answer_loglik_per_token"] for s in gcfg.seeds]) for a in arms]
            assert rho == pytest.approx(st.spearmanr(tokens, gain).statistic, abs=1e-12)
            assert f"{b}: {rho:+.2f}" in text
    pool = "instructions"
    # notebook 06: "with a margin of half of what any fine-tuning gains, icp-bottom comes out equivalent to the best arms"
    res = _committed("finetune-equivalence-full.json")
    for b in res["budgets"]:
        best = sorted(res["arms"][pool][str(b)], key=lambda a: -res["arms"][pool][str(b)][a]["mean"])[:2]
        for e in res["equivalence"]:
            if e["pool"] == pool and e["budget"] == b and {e["a"], e["b"]} in ({"icp-bottom", x} for x in best):
                assert e["verdict"] == "equivalent"


@pytest.mark.parametrize("pool", ["instructions", "synthetic"])
def test_the_grid_referee_covers_its_pool_and_keeps_the_ground_truth_runs_rows(pool):
    """The one-step referee behind ``gt-top``, scored on every candidate of the pool in steps
    (``pool_referee``): the run's whole pool and probes, the ground-truth run's configuration, and
    on the candidates that run scored, its very rows."""
    from icp_influence.experiments import finetune_grid as FG
    from icp_influence.scores import ScoreMatrix

    path = FG.referee_path("full", pool)
    if not path.with_suffix(".json").exists():
        pytest.skip(f"no referee committed for the {pool} pool yet")
    ref = ScoreMatrix.load(path)
    run_dir = A.run_dir("full", pool)
    data = json.loads((run_dir / "data.json").read_text())
    assert sorted(ref.candidate_ids) == sorted(data["pool"])
    gt = ScoreMatrix.load(run_dir / "gt_sgd_all")
    assert ref.probe_ids == gt.probe_ids and ref.meta["config_hash"] == gt.meta["config_hash"]
    np.testing.assert_allclose(ref.subset(gt.candidate_ids).values, gt.values, rtol=0, atol=0)
    assert np.isfinite(ref.values).all() and np.abs(ref.values).max() > 0


HAVE_CONFOUNDS = (results_dir() / "confounds-full.json").exists()


@pytest.mark.skipif(not HAVE_CONFOUNDS, reason="no confounds result committed (notebook 05 says so when it runs)")
def test_the_claims_notebook_05_makes_about_what_drives_agreement_hold():
    from icp_influence.experiments import confounds as C, confounds_report as R

    res = C.load("full")
    summary = A.load("full")["summary"]
    assert res["agreement_config_hash"] == summary["config_hash"], "the confounds analysis is of another agreement run"
    assert res["n_candidates"] == summary["n_candidates"] and res["n_probes"] == summary["n_probes"]
    c = R.claims(res, summary)
    # one number for one comparison: the raw agreement is section 2's, and the analysis's own raw point agrees with it
    for key, f in c["raw"].items():
        assert f["strength"] == A.strength(f["spearman"])
        assert f["excludes_zero"] == (f["ci"][0] > 0 or f["ci"][1] < 0)
        if key in summary["agreement"] and key in res.get("length_controlled", {}):
            assert res["length_controlled"][key]["raw"]["spearman"] == pytest.approx(f["spearman"], abs=1e-9), key
    # the null model closest to each valuator is the one with the largest |ρ|
    for v, e in c["closest_null"].items():
        best = max((abs(res["null_models"][n]["spearman_vs"][v]["spearman"]), n) for n in res["null_models"]
                   if v in res["null_models"][n]["spearman_vs"])
        assert e["null"] == best[1]
    # section 3's premise: the inner product (summed loss) grows with answer length
    assert c["length_correlation"]["ip"]["spearman"] > 0
    text = R.verdict(res, summary)
    md = c["raw"]["icp_mean_delta vs ip"]
    assert f"{md['spearman']:.2f} [{md['ci'][0]:.2f}, {md['ci'][1]:.2f}]" in text and f"**{md['strength']}ly**" in text
    assert ("more closely than it follows ICP" in text) == c["ip_follows_length_more_than_icp"]
    if "best_null" in md and not md["no_better_than_null"]:
        # a null model's agreement with both is compared with the pair's by interval, not by point alone
        lo, hi = md["best_null_ci"]
        assert md["best_null_overlaps"] == (lo <= md["ci"][1] and md["ci"][0] <= hi)
        assert ("with overlapping intervals" in text) == md["best_null_overlaps"]
        g = md.get("given_best_null")
        if md["best_null_overlaps"] and g:
            # overlap is not a test: the verdict partials the null model out and reads that interval
            assert f"the pair agrees at {g['spearman']:.2f} [{g['ci'][0]:.2f}, {g['ci'][1]:.2f}]" in text
            assert ("they share something beyond it" in text) == g["excludes_zero"]
    if c["length_controlled"] != R.PENDING:
        row = c["length_controlled"]["icp_mean_delta vs ip"]
        for m in ("partial", "stratified", "per_token"):
            e = row[m]
            assert f"{e['spearman']:.2f} [{e['ci'][0]:.2f}, {e['ci'][1]:.2f}] ({e['strength']};" in text, m
        all_below = all(row[f"{m}_below_raw"] for m in ("partial", "stratified", "per_token"))
        assert ("Every control that was run lowers the point estimate" in text) == all_below
        if all_below:
            overl = all(row[f"{m}_overlaps_raw"] for m in ("partial", "stratified", "per_token"))
            assert ("every interval still overlaps the raw one" in text) == overl
    for stage in ("intervention", "prediction"):
        assert (c[stage] == R.PENDING) == (stage in res["pending"] or stage not in res)
    if c["intervention"] == R.PENDING:
        assert "**The intervention** (the same instructions with short and long correct answers) is pending" in text
    else:
        for v, e in c["intervention"].items():
            lo, hi = e["rank_ci"]
            assert e["direction"] == ("longer ranks higher" if lo > 0 else "longer ranks lower" if hi < 0
                                      else "no detectable effect")
    if c["prediction"] != R.PENDING and c["prediction"].get("raw"):
        p = c["prediction"]["raw"]
        assert f"lies {p['paper_relative_to_ci']} that interval" in text
    # the Summary's bullets are computed from the same claims
    assert f"{md['spearman']:.2f} [{md['ci'][0]:.2f}, {md['ci'][1]:.2f}]" in R.summary(res, summary)


def test_notebook_05s_explanations_of_its_odd_rows_hold():
    """The corrected value above 1 is explained as correlated errors of two scores from one matrix;
    the ablation rows share one candidate subset; a single random probe subset is one draw."""
    from icp_influence.experiments import confounds as C

    run = A.load("full")
    summary, mats, info = run["summary"], run["mats"], run["info"]
    over = [k for k, v in summary["agreement"].items() if v["disattenuated"] is not None and v["disattenuated"] > 1]
    assert all(all(x.startswith("icp_") for x in k.split(" vs ")) for k in over), over
    rows = summary["ablations"]
    assert all(r["n_candidates"] == summary["n_ablation_candidates"] for r in rows
               if r["group"] not in ("data", "domain")), "every ablation row is on the same candidates"
    assert summary["n_ablation_candidates"] < summary["n_candidates"]
    ids = mats["icp"].candidate_ids
    abl = [c for c in info["ablation_ids"] if c in set(ids)]
    ks = [r["n_probes"] for r in rows if r["group"] == "number of probes"]
    spread = C.probe_count_spread(mats["icp"].subset(abl).values, mats["ip"].subset(abl).values, ks, n_draws=300,
                                  seed=0)
    for s, r in zip(spread, [r for r in rows if r["group"] == "number of probes"]):
        lo, hi = s["range95"]
        assert lo <= r["spearman"] <= hi, (s["k"], r["spearman"], s["range95"])   # within what one draw gives
        assert s["mean"] <= rows[0]["spearman"] + 0.05, "fewer probes do not raise the mean agreement"


HAVE_CONFOUNDS = (results_dir() / "confounds-full.json").exists()


@pytest.mark.skipif(not HAVE_CONFOUNDS, reason="no confounds result committed")
def test_confounds_result_matches_its_configuration_and_follows_from_the_cached_matrices():
    from icp_influence import stats as S
    from icp_influence.experiments import confounds as C
    from icp_influence.scores import ScoreMatrix

    res = C.load("full")
    cfg = C.ConfoundsConfig.for_mode("full")
    planned = list(cfg.ablations)
    # a run may make a subset of the planned whole-pool ablations; the rest are listed as pending, never dropped
    assert [a for a in planned if a in res["config"]["ablations"]] == res["config"]["ablations"]
    assert sorted(res["ablations_pending"] + [r["ablation"] for r in res.get("ablations", [])]) == sorted(planned)
    cfg.ablations = res["config"]["ablations"]
    assert res["config"] == json.loads(json.dumps(cfg.to_dict())), "the committed run used another configuration"
    assert res["config_hash"] == config_hash(cfg.to_dict())
    assert res["agreement_config_hash"] == config_hash(A.AgreementConfig.for_mode("full").to_dict())
    assert res["code_version"]["commit"]
    assert res["n_candidates"] >= 300 and res["n_probes"] >= 64
    # what is missing is said
    sections = {"length_controlled": ["length_controlled"], "intervention": ["intervention", "dose_response",
                                                                            "prediction"], "ablations": ["ablations"]}
    for stage, keys in sections.items():
        for k in keys:
            assert (k in res) != (k in res["pending"]), (stage, k)
    # the point estimates follow from the cached matrices
    out = A.run_dir("full")
    mats = {n: ScoreMatrix.load(out / n) for n in ("icp", "ip", "cosine", *[m for m in C.NULL_NAMES
                                                                            if m != "candidate_nll_per_token"])}
    ids = mats["icp"].candidate_ids
    length = mats["answer_length"].values[:, 0]
    mats["candidate_nll_per_token"] = ScoreMatrix(mats["candidate_nll"].values / mats["answer_length"].values, ids,
                                                  mats["icp"].probe_ids, {})
    v = C.views(mats, ids)
    for null, row in res["null_models"].items():
        for other, entry in row["spearman_vs"].items():
            want = S.spearman(S.aggregate(*v[null]), S.aggregate(*v[other]))
            assert entry["spearman"] == pytest.approx(want, abs=1e-12), (null, other)
            assert entry["ci"][0] <= entry["spearman"] <= entry["ci"][1]
    if "length_controlled" in res:
        row = res["length_controlled"]["icp_mean_delta vs ip"]
        a, b = S.aggregate(*v["icp_mean_delta"]), S.aggregate(*v["ip"])
        assert row["raw"]["spearman"] == pytest.approx(S.spearman(a, b), abs=1e-12)
        assert row["partial"]["spearman"] == pytest.approx(S.partial_spearman(a, b, length), abs=1e-12)
        assert row["stratified"]["spearman"] == pytest.approx(S.stratified_spearman(a, b, length), abs=1e-12)
        assert len(res["pair_level"]["raw"]["values"]) == res["n_probes"]
    if "intervention" in res:
        # the answer-length null model sees the planted intervention exactly: every long answer is longer
        assert res["intervention"]["answer_length"]["fraction_long_higher"] == 1.0
        assert res["variant_pool"]["n_instructions"] >= 120 and res["variant_pool"]["n_categories"] >= 20
        sds = [r["log_token_sd"] for r in res["dose_response"]]
        assert sds == sorted(sds) and sds[0] < 0.7 and sds[-1] > 1.4
        # the prediction is where the curve was measured (no extrapolation) and its slope intervals hold their points
        assert res["prediction"]["extrapolates_by"] == 0.0
        for k in ("raw", "partial"):
            sl = res["prediction"]["slope"][k]
            assert sl["ci"][0] <= sl["per_unit_sd"] <= sl["ci"][1]
    if "null_controlled" in res:
        a, b = S.aggregate(*v["icp_mean_delta"]), S.aggregate(*v["ip"])
        for null, e in res["null_controlled"]["icp_mean_delta vs ip"].items():
            want = S.partial_spearman(a, b, S.aggregate(*v[null]))
            assert e["spearman"] == pytest.approx(want, abs=1e-12), null
    if "category_structure" in res:
        cats = [json.loads((out / "data.json").read_text())["pool"][i]["category"] for i in ids]
        row = res["category_structure"]["instructions"]["icp_mean_delta vs ip"]
        a, b = S.aggregate(*v["icp_mean_delta"]), S.aggregate(*v["ip"])
        assert row["within_groups"]["spearman"] == pytest.approx(S.within_group_spearman(a, b, cats), abs=1e-12)
        assert row["between_groups"]["spearman"] == pytest.approx(S.between_group_spearman(a, b, cats), abs=1e-12)
    for r in res.get("ablations", []):
        V = ScoreMatrix.load(out / r["ablation"]).subset(ids).values
        a = S.aggregate(*v["icp_mean_delta"])
        if r["ablation"] != "icp_chat":
            assert r["spearman"] == pytest.approx(S.spearman(a, V.mean(axis=1)), abs=1e-12), r["ablation"]
            assert r["difference_from_reference"]["spearman"] == pytest.approx(
                S.spearman(a, V.mean(axis=1)) - S.spearman(a, S.aggregate(*v["ip"])), abs=1e-12)
        assert r["seconds"] > 0 and r["n_candidates"] == len(ids)
