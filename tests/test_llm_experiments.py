"""The agreement and ground-truth experiments end to end on a random tiny model (seconds): what a
run records, that a second run reuses every cached matrix, and that the first-order identity
holds for the small-step ground truth."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from icp_influence.errors import ConfigError
from icp_influence.experiments import ground_truth as GT
from icp_influence.experiments import llm_agreement as A

SKIP = ("icp_chat", "ekfac", "ip_linear")


def _spy_on_score(monkeypatch, cls) -> list[list[str]]:
    """Record the candidate ids of every ``cls.score`` call (the calls still run)."""
    asked: list[list[str]] = []
    real = cls.score

    def spy(self, cands, probes, **k):
        asked.append([c.id for c in cands])
        return real(self, cands, probes, **k)

    monkeypatch.setattr(cls, "score", spy)
    return asked


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("ICP_RESULTS_DIR", str(tmp_path_factory.mktemp("results")))
    summary = A.run("tiny", "instructions", skip=SKIP, progress=False)
    gt = GT.run("tiny", pools=("instructions",), valuators=("icp", "icp_neutral", "ip", "cosine"), progress=False)
    yield summary, gt, mp
    mp.undo()


def test_agreement_run_records_what_it_skipped_and_follows_from_its_matrices(results):
    summary, _, _ = results
    assert summary["skipped"] == sorted(SKIP)
    run = A.load("tiny")
    assert not set(SKIP) & set(run["mats"]), "a skipped valuator was scored"
    assert {"icp", "icp_neutral", "ip", "cosine", "psl", "ip_last2"} <= set(run["mats"])
    again = A.summarise(A.AgreementConfig.for_mode("tiny"),
                        {k: v for k, v in run["mats"].items() if not k.startswith("gt_")}, run["info"])
    for pair, v in summary["agreement"].items():
        assert v["spearman"] == pytest.approx(again["agreement"][pair]["spearman"], abs=1e-12), pair
        assert v["disattenuated"] == pytest.approx(v["spearman"] / np.sqrt(v["rel_a"] * v["rel_b"]), rel=1e-9) \
            or not (v["rel_a"] > 0 and v["rel_b"] > 0)
    # every ablation row's change is against the row it differs from by one change; the neutral
    # baseline (a win-rate) against the zero-shot win-rate row, the rest against the reference
    rows = {r["name"]: r for r in summary["ablations"]}
    ref = summary["ablations"][0]
    for r in summary["ablations"]:
        base = rows[r["compared_with"]] if r["compared_with"] else r
        assert r["change"] == pytest.approx(r["spearman"] - base["spearman"], abs=1e-12), r["name"]
    assert rows["baseline: neutral demonstration (win-rate)"]["compared_with"] == "aggregation: win-rate"
    assert rows["aggregation: win-rate"]["compared_with"] == ref["name"]
    # the biggest mover is a single change (never a probe-count draw or the domain rows), largest |change|
    single = [r for r in summary["ablations"] if r["group"] in A.SINGLE_CHANGE_GROUPS]
    assert summary["biggest_mover"] == max(single, key=lambda r: abs(r["change"]))["name"]
    assert {r["group"] for r in summary["ablations"]} - set(A.SINGLE_CHANGE_GROUPS) >= {"reference", "number of probes"}
    for r in summary["reliability"].values():    # whole probes
        assert isinstance(r["probes_needed_0_8"], int) or r["probes_needed_0_8"] == float("inf")
    # the ICP views are the matrix itself: mean Δ and win-rate recomputed by hand
    icp = run["mats"]["icp"].values
    views = A.icp_views(run["mats"])
    assert np.array_equal(views["icp_mean_delta"][0], icp) and views["icp_win_rate"][1] == "win_rate"


def test_a_second_run_reuses_every_cached_matrix(results, monkeypatch):
    from icp_influence.valuators.base import Valuator
    from icp_influence.valuators.one_step import OneStep

    def refuse(self, *a, **k):
        raise AssertionError(f"{type(self).__name__} was scored again instead of read from the cache")

    monkeypatch.setattr(Valuator, "score", refuse)
    monkeypatch.setattr(OneStep, "score", refuse)
    first, gt, _ = results
    again = A.run("tiny", "instructions", skip=SKIP, progress=False)
    assert again["agreement"] == first["agreement"]
    gt2 = GT.run("tiny", pools=("instructions",), valuators=("icp", "icp_neutral", "ip", "cosine"), progress=False)
    assert json.dumps(gt2["table"]) == json.dumps(gt["table"])  # (NaN ≠ NaN in a dict comparison)


def test_ground_truth_records_its_settings_and_the_first_order_identity_holds(results):
    _, gt, _ = results
    assert list(gt["config"]["pools"]) == ["instructions"] and gt["first_order_synthetic"] is None
    fo = gt["first_order"]
    assert fo["pair_spearman_ip"] >= 0.99 and fo["max_rel_err"] < 0.05
    mats = A.load("tiny")["mats"]
    small = mats["gt_sgd_small"]
    ip = mats["ip"].subset(small.candidate_ids).values
    # Δ ≈ η·IP pair by pair, checked here directly on the matrices
    np.testing.assert_allclose(small.values, fo["eta"] * ip, rtol=0.05, atol=0.05 * np.abs(fo["eta"] * ip).max())
    rows = {(r["valuator"], r["ground_truth"], r["level"]) for r in gt["table"]}
    for g in ("gt_sgd_small", "gt_sgd_all", "gt_adam_sign"):
        for v in ("icp_mean_delta", "icp_win_rate", "ip", "cosine"):
            assert (v, g, "pair") in rows and (v, g, "candidate") in rows


def test_skipping_the_measurement_itself_is_refused(results):
    with pytest.raises(ConfigError, match="icp and ip"):
        A.run("tiny", "instructions", skip=("ip",), progress=False)


def test_a_grown_candidate_list_keeps_the_cached_rows_and_scores_only_the_new_ones(results, monkeypatch):
    """Ground truth on 5 candidates, then on all of them: the first 5 rows are kept bit for bit
    and only the others are scored (the full run extended 16 candidates to 96 this way)."""
    from icp_influence.models import load_model
    from icp_influence.valuators.one_step import OneStep

    acfg = A.AgreementConfig.for_mode("tiny", "instructions")
    model, tok = load_model(acfg.model, device="cpu")
    d = A.build_data(acfg, model, tok)
    out = A.run_dir("tiny", "instructions")
    mats = A.load("tiny")["mats"]
    full = mats["gt_sgd_all"]
    gcfg = GT.GroundTruthConfig.for_mode("tiny")
    out5 = out.parent / "grown"
    out5.mkdir()
    first = GT.score_ground_truth(GT.GroundTruthConfig(**{**gcfg.to_dict(), "n_candidates": 5}), acfg, d, mats,
                                  model, tok, out5, progress=False, only=["gt_sgd_all"])["gt_sgd_all"]
    asked = _spy_on_score(monkeypatch, OneStep)
    grown = GT.score_ground_truth(gcfg, acfg, d, mats, model, tok, out5, progress=False,
                                  only=["gt_sgd_all"])["gt_sgd_all"]
    assert asked == [full.candidate_ids[5:]], "only the new candidates are scored"
    assert grown.candidate_ids == full.candidate_ids
    assert np.array_equal(grown.values[:5], first.values)
    # the new rows are what a run over every candidate at once gives (same model, same probes)
    np.testing.assert_allclose(grown.values, full.values, rtol=1e-6, atol=1e-9)


def test_finetune_equivalence_in_two_shards_pilot_margin_and_paired_tost(results):
    """The fine-tuning equivalence run on the tiny model, as two shards run one after the
    other: rank 0 (pilot + its half) returns nothing, rank 1 completes and summarises.
    The summary is recomputed from runs.jsonl by hand."""
    from icp_influence import selection as S
    from icp_influence import stats
    from icp_influence.experiments import finetune_equivalence as FE

    assert FE.run("tiny", pools=("instructions",), progress=False, shard=(0, 2)) is None
    res = FE.run("tiny", pools=("instructions",), progress=False, shard=(1, 2))
    out = A.run_dir("tiny", "instructions").parent / f"{FE.NAME}-tiny"
    rows = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    ecfg = FE.EquivalenceConfig.for_mode("tiny")
    assert list(res["config"]["pools"]) == ["instructions"]
    # every model trained exactly once: base + pilot (5 arms) + budgets × seeds × arms
    keys = [(r["budget"], r["arm"], r["seed"]) for r in rows]
    assert len(keys) == len(set(keys)) == 1 + len(FE.ARMS) * (1 + len(ecfg.budgets) * len(ecfg.seeds))
    # the margin: half the gap between the base model and the best pilot arm
    base = next(r for r in rows if r["arm"] == "base")["answer_loglik_per_token"]
    pilot = [r["answer_loglik_per_token"] for r in rows if r.get("pilot")]
    assert res["margin"]["instructions"] == pytest.approx(max(abs(max(pilot) - base) / 2, 1e-6), rel=1e-12)
    assert sorted(res["margin_record"]["pilot"]["instructions"].values()) == sorted(pilot)
    by = {(r["budget"], r["arm"], r["seed"]): r["answer_loglik_per_token"] for r in rows if not r.get("pilot")}
    for e in res["equivalence"]:
        a = [by[(e["budget"], e["a"], s)] for s in ecfg.seeds]
        b = [by[(e["budget"], e["b"], s)] for s in ecfg.seeds]
        assert e["diff"] == pytest.approx(float(np.mean(np.subtract(a, b))), abs=1e-12)
        t = stats.tost_paired(a, b, res["margin"]["instructions"], alpha=ecfg.alpha)
        assert e["verdict"] == t.verdict and e["p_tost"] == pytest.approx(t.p_tost)
    # the arms select what their scores say, from the ground-truth candidates
    mats = A.load("tiny")["mats"]
    gt = mats["gt_sgd_all"]
    sels = FE.selections(ecfg, mats, {"gt_sgd_all": gt}, max(ecfg.budgets))
    icp_mean = mats["icp"].subset(gt.candidate_ids).values.mean(axis=1)
    order = np.argsort(-icp_mean, kind="stable")
    assert set(sels["icp-top"]) == {gt.candidate_ids[i] for i in order[: max(ecfg.budgets)]}
    assert not set(sels["icp-top"]) & set(sels["icp-bottom"])
    assert set(sels["random"](0)) <= set(gt.candidate_ids) and sels["random"](0) != sels["random"](1)
    assert S.top_k((gt, "mean"), 2) == sels["gt-top"][:2]


def test_a_deferred_fit_names_its_data_at_once_and_fits_only_when_it_scores(tiny_models, small_pool, monkeypatch):
    """``fit(train, defer=True)`` (what the experiments use, so a cached EK-FAC matrix never pays for its
    factors): the same configuration hash at once, the fit at the first ``score`` only, the same scores."""
    from icp_influence.valuators import make
    from icp_influence.valuators.influence_functions import ExactInfluence

    calls = []
    original = ExactInfluence._after_fit
    monkeypatch.setattr(ExactInfluence, "_after_fit", lambda self: (calls.append(id(self)), original(self))[1])
    model, tok = tiny_models["tiny-llama"]
    items = list(small_pool)
    train, cands, probes = items[:8], items[8:11], items[11:13]
    # a 32-parameter block: the exact Hessian costs one Hessian-vector product per parameter
    kw = dict(params=r"regex:^model\.layers\.0\.input_layernorm\.weight$", damping=1e-2, progress=False)
    eager = make("exact", model, tok, **kw).fit(train)
    lazy = make("exact", model, tok, **kw).fit(train, defer=True)
    assert len(calls) == 1 and lazy.config() == eager.config()      # the hash names the data before any work
    a, b = eager.score(cands, probes), lazy.score(cands, probes)
    assert len(calls) == 2                                           # fitted once, at its first score
    lazy.score(cands, probes)
    assert len(calls) == 2                                           # ... and not again
    np.testing.assert_allclose(b.values, a.values, rtol=1e-10, atol=0)
    assert np.abs(a.values).max() > 0


def test_ablation_only_valuators_score_the_referee_candidates_and_a_cached_superset_is_never_rescored(results,
                                                                                                     monkeypatch):
    """``ablation_only`` (EK-FAC on the instruction set, which the agreement run skipped): scored on the
    ablation candidates only, saved as ``<name>_ablation``, returned under ``<name>`` with the values the
    pool-wide matrix has for those rows; and asking a cached matrix for a subset of its rows scores nothing."""
    from icp_influence.models import load_model
    from icp_influence.valuators.gradient import GradientValuator

    acfg = A.AgreementConfig.for_mode("tiny", "instructions")
    model, tok = load_model(acfg.model, device="cpu")
    d = A.build_data(acfg, model, tok)
    pool_wide = A.load("tiny")["mats"]["cosine"]
    asked = _spy_on_score(monkeypatch, GradientValuator)
    out = A.run_dir("tiny", "instructions").parent / "ablation-only"
    out.mkdir()
    got = A.score_all(acfg, d, model, tok, out, only=["cosine"], progress=False, ablation_only=["cosine"])["cosine"]
    assert asked == [list(d["ablation_ids"])] and got.candidate_ids == list(d["ablation_ids"])
    assert (out / "cosine_ablation.json").exists() and not (out / "cosine.json").exists()
    np.testing.assert_allclose(got.values, pool_wide.subset(got.candidate_ids).values, rtol=1e-5, atol=1e-7)
    # the ground truth's helper finds it under its own name in a loaded run folder
    gcfg = GT.GroundTruthConfig(valuators=("cosine",), ablation_only={"instructions": ["cosine"]})
    assert GT.cached_valuator_mats(gcfg, {"cosine_ablation": got}, "instructions")["cosine"] is got
    # the pool-wide cached matrix serves the ablation rows without scoring (nor fitting) anything
    asked.clear()
    again = A.score_all(acfg, d, model, tok, A.run_dir("tiny", "instructions"), only=["cosine"], progress=False,
                        ablation_only=())
    assert asked == [] and again["cosine"].candidate_ids == pool_wide.candidate_ids
    sub = A.scored_matrix(None, pool_wide.meta["config_hash"], [d["pool"].by_id(i) for i in d["ablation_ids"]],
                          list(d["probes"]), A.run_dir("tiny", "instructions"), "cosine")
    assert asked == [] and sub.candidate_ids == list(d["ablation_ids"])
    np.testing.assert_array_equal(sub.values, pool_wide.subset(sub.candidate_ids).values)


def test_a_run_keeps_the_probes_it_recorded(results):
    """k-means on hidden states is not bit-stable across processors: a run's recorded probes
    (in the matrices' column order) are reused instead of being chosen again."""
    from icp_influence.experiments.llm_agreement import build_data, recorded_data, run_dir

    cfg = A.AgreementConfig.for_mode("tiny")
    rec = recorded_data(run_dir("tiny"))
    mats = A.load("tiny")["mats"]
    assert rec["probe_order"] == mats["icp"].probe_ids
    assert sorted(rec["probe_order"]) == sorted(rec["probes"])
    swapped = dict(rec, probe_order=rec["probe_order"][::-1])
    d = build_data(cfg, None, None, recorded=swapped)       # no model: nothing is chosen again
    assert [p.id for p in d["probes"]] == rec["probe_order"][::-1]
    assert d["ablation_ids"] == rec["ablation_ids"]


def test_a_configuration_read_back_from_its_result_file_builds_the_same_pool():
    """Result files are written with sorted keys; the split's parts must not change order with them."""
    import json

    from icp_influence.experiments import llm_agreement as A

    for data in ("instructions", "synthetic"):
        cfg = A.AgreementConfig.for_mode("full", data=data)
        back = A.AgreementConfig(**json.loads(json.dumps(cfg.to_dict(), sort_keys=True)))
        assert list(back.split) == list(cfg.split) == ["pool", "probe_candidates", "eval"]
        assert [e.id for e in A.build_pool(back)[1]] == [e.id for e in A.build_pool(cfg)[1]]
    # the committed runs' recorded pools are what the configuration builds (read from the checkout: this
    # module points the results folder at a temporary one)
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "data" / "results"
    for data, name in (("instructions", "instruction-agreement-full"), ("synthetic", "synthetic-agreement-full")):
        rec = json.loads((committed / name / "data.json").read_text(encoding="utf-8"))
        cfg = A.AgreementConfig(**json.loads((committed / f"{name}.json").read_text(encoding="utf-8"))["config"])
        assert sorted(e.id for e in A.build_pool(cfg)[1]) == sorted(rec["pool"])


@pytest.mark.parametrize("data", ["instructions", "synthetic"])
def test_the_committed_runs_reuse_their_recorded_probes(data, monkeypatch):
    """The recorded pool is a JSON object written with sorted keys; the synthetic pool's own order is
    not sorted. The run must still recognise its pool and reuse the probes it scored (choosing them
    again by k-means gave 2 of 64 other probes on this processor, and every cached matrix went stale)."""
    from icp_influence.experiments.llm_agreement import build_data, recorded_data, run_dir

    monkeypatch.delenv("ICP_RESULTS_DIR", raising=False)   # the module's fixture points it at a scratch folder
    rec = recorded_data(run_dir("full", data))
    assert rec is not None, f"no committed {data} run"
    cfg = A.AgreementConfig.for_mode("full", data=data)
    d = build_data(cfg, None, None, recorded=rec)     # no model: choosing the probes again would fail
    assert [p.id for p in d["probes"]] == rec["probe_order"]
    assert sorted(e.id for e in d["pool"]) == sorted(rec["pool"])


def test_noise_verdict_reads_the_auc_intervals():
    """Section 7's conclusion follows the intervals: above 0.5, containing 0.5, below 0.5; kinds
    are called separated only where one valuator's per-kind intervals do not overlap."""
    s = {"auc_noise": {"icp_mean_delta": {"any": 0.55, "swap": 0.5, "truncate": 0.6},
                       "ip": {"any": 0.64, "swap": 0.55, "truncate": 0.7},
                       "cosine": {"any": 0.40, "swap": 0.4, "truncate": 0.4}},
         "auc_noise_ci": {"icp_mean_delta": {"any": [0.45, 0.65], "swap": [0.3, 0.7], "truncate": [0.4, 0.8]},
                          "ip": {"any": [0.55, 0.73], "swap": [0.35, 0.75], "truncate": [0.5, 0.9]},
                          "cosine": {"any": [0.31, 0.49], "swap": [0.2, 0.6], "truncate": [0.2, 0.6]}}}
    text = A.noise_verdict(s, {"swap": 10, "truncate": 11})
    assert "Better than chance at flagging any corruption: inner product 0.64 [0.55, 0.73]." in text
    assert "Not distinguishable from chance: ICP mean Δ 0.55 [0.45, 0.65]." in text
    assert "Corrupted candidates valued *higher*: cosine 0.40 [0.31, 0.49]." in text
    assert "ICP's AUCs cannot be told from chance and the gradient scores' can" in text
    assert "though ICP's and the gradient scores' intervals overlap" in text          # [0.45, 0.65] vs [0.55, 0.73]
    assert "21 corrupted candidates: 10 swap, 11 truncate" in text
    assert "By kind (10–11 corrupted candidates each; the per-kind intervals' median half-width is 0.20)" in text
    assert "no valuator's per-kind intervals separate" in text
    assert "(10 corrupted candidates each" in A.noise_verdict(s, {"swap": 10, "truncate": 10})
    s["auc_noise_ci"]["ip"]["truncate"] = [0.8, 0.95]
    s["auc_noise_ci"]["ip"]["swap"] = [0.3, 0.6]
    assert "only inner product separates some kinds" in A.noise_verdict(s, {"swap": 10, "truncate": 11})
    s["auc_noise_ci"]["cosine"]["truncate"] = [0.65, 0.7]
    assert "only inner product and cosine separate some kinds" in A.noise_verdict(s, {"swap": 10, "truncate": 11})
    s["auc_noise_ci"]["icp_mean_delta"]["any"] = [0.52, 0.6]
    assert "ICP flags wrong answers better than chance too" in A.noise_verdict(s, {"swap": 10, "truncate": 11})


def test_finetune_grid_arms_pilot_margin_power_and_controls_in_two_shards(results):
    """The design-2 grid on the tiny model: the referee grown over the whole pool in steps, the
    eight arms select what their rules say, the pilot fixes the margin (a third of its
    icp-top − icp-bottom gap) before the main models, two shards complete the grid, and every
    number of the summary follows from runs.jsonl."""
    from icp_influence import stats
    from icp_influence.experiments import finetune_equivalence as FE
    from icp_influence.experiments import finetune_grid as FG
    from icp_influence.experiments.ground_truth import answer_tokens

    log: list[str] = []
    gt = FG.pool_referee("tiny", step=20, progress=False, log=log.append)
    run = A.load("tiny")
    pool_ids = list(run["info"]["pool"])
    assert sorted(gt.candidate_ids) == sorted(pool_ids)
    kept = run["mats"]["gt_sgd_all"]
    assert np.allclose(gt.subset(kept.candidate_ids).values, kept.values)   # the ground-truth run's rows, unchanged
    assert sum("next" in line for line in log) >= 2                           # grown in steps

    with pytest.raises(ConfigError, match="names a pool or budget"):
        FG.run_grid("tiny", pools=("instructions",), progress=False, now={"instructions": [999]})
    # `now` trains one budget only (rank 0 still trains the base model and the pilot first)
    gcfg0 = FG.GridConfig.for_mode("tiny")
    bmin0, bmax0 = min(gcfg0.budgets), max(gcfg0.budgets)
    assert FG.run_grid("tiny", pools=("instructions",), progress=False, shard=(0, 2), now={"instructions": [bmin0]}) is None
    first = [json.loads(x) for x in (FG.grid_dir("tiny") / "runs.jsonl").read_text().splitlines()]
    assert {r["budget"] for r in first if not r.get("pilot") and r["arm"] != "base"} == {bmin0}
    assert sum(1 for r in first if r.get("pilot") and r["budget"] == bmax0) == 2 * len(gcfg0.pilot_seeds)
    assert FG.run_grid("tiny", pools=("instructions",), progress=False, shard=(0, 2)) is None
    assert FG.grid_so_far("tiny", pools=("instructions",)) is None          # half of every budget: no budget complete yet
    res = FG.run_grid("tiny", pools=("instructions",), progress=False, shard=(1, 2))
    gcfg = FG.GridConfig.for_mode("tiny")
    rows = [json.loads(x) for x in (FG.grid_dir("tiny") / "runs.jsonl").read_text().splitlines()]
    keys = [(r["budget"], r["arm"], r["seed"]) for r in rows]
    n_main = len(gcfg.budgets) * len(FG.GRID_ARMS) * len(gcfg.seeds)
    assert len(keys) == len(set(keys)) == 1 + 2 * len(gcfg.pilot_seeds) + n_main
    # the margin: a third of the pilot's mean icp-top − icp-bottom gap (pilot seeds only)
    by = {(r["budget"], r["arm"], r["seed"]): r for r in rows}
    bmax = max(gcfg.budgets)
    gap = np.mean([by[(bmax, "icp-top", s)]["answer_loglik_per_token"] - by[(bmax, "icp-bottom", s)]["answer_loglik_per_token"]
                   for s in gcfg.pilot_seeds])
    assert not set(gcfg.pilot_seeds) & set(gcfg.seeds)
    assert res["margin"]["instructions"] == pytest.approx(max(abs(gap) / 3, 1e-6), rel=1e-12)
    assert "third" in res["margin_rule"] or "0.3333" in res["margin_rule"]
    # the arms' selections follow their rules
    from icp_influence.experiments import llm_agreement as AA

    acfg, model, tok, d, _ = AA.open_run("tiny", "instructions")
    lengths = answer_tokens(tok, d["pool"], pool_ids, gcfg.template)
    sels = FG.grid_selections(gcfg, d["pool"], run["mats"], gt, lengths, bmax)
    assert set(sels) == set(FG.GRID_ARMS)
    icp = run["mats"]["icp"].subset(pool_ids).values.mean(1)
    assert set(sels["icp-top"]) == {pool_ids[i] for i in np.argsort(-icp, kind="stable")[:bmax]}
    assert min(lengths[i] for i in sels["longest"]) >= max(lengths[i] for i in pool_ids if i not in sels["longest"])
    lm = sels["length_matched_random"](0)
    assert not set(lm) & set(sels["icp-top"]) and len(set(lm)) == bmax
    noisy = {e.id for e in d["pool"] if e.meta.get("noisy")}
    assert len(set(sels["corrupted"](0)) & noisy) == min(bmax, len(noisy))
    # every number of the summary follows from the rows: paired TOST, positive controls, the MDD
    for e in res["equivalence"]:
        a = [by[(e["budget"], e["a"], s)]["answer_loglik_per_token"] for s in gcfg.seeds]
        b = [by[(e["budget"], e["b"], s)]["answer_loglik_per_token"] for s in gcfg.seeds]
        t = stats.tost_paired(a, b, res["margin"]["instructions"], alpha=gcfg.alpha)
        assert e["verdict"] == t.verdict and e["diff"] == pytest.approx(t.diff, abs=1e-12)
    assert {(c["a"], c["b"]) for c in res["positive_controls"]} == set(FG.POSITIVE_CONTROLS)
    for c in res["positive_controls"]:   # passed: "different", with the expected arm the better one
        better = (c["diff"] > 0) == (c["a"] == c["expected_better"])
        assert c["budget"] == bmax and c["passed"] == (c["verdict"] == "different" and better)
    assert res["n_models"] == n_main and res["n_pilot_models"] == 2 * len(gcfg.pilot_seeds)
    diffs = [np.subtract(*[[by[(b, x, s)]["answer_loglik_per_token"] for s in gcfg.seeds] for x in pair])
             for b in gcfg.budgets for pair in itertools.combinations(FG.GRID_ARMS, 2)]
    sd = float(np.sqrt(np.mean([np.var(x, ddof=1) for x in diffs])))
    assert res["min_detectable_difference"]["instructions"] == pytest.approx(
        stats.min_detectable_difference(sd, len(gcfg.seeds)), rel=1e-9)
    assert {"length_matched_random", "longest", "corrupted"} <= set(res["arms"]) and len(res["budgets"]) >= 2
    acc = res["accuracy"]["icp-top"][str(bmax)]
    assert acc["mean"] == pytest.approx(np.mean([by[(bmax, "icp-top", s)]["accuracy"] for s in gcfg.seeds]))
    for e in res["accuracy_differences"]:
        d = np.subtract(*[[by[(e["budget"], x, s)]["accuracy"] for s in gcfg.seeds] for x in (e["a"], e["b"])])
        assert e["diff"] == pytest.approx(d.mean(), abs=1e-12)
        assert e["verdict"] == ("different" if e["ci"][0] > 0 or e["ci"][1] < 0 else "no detectable difference")
    # a second call trains nothing more and gives the same summary
    again = FG.run_grid("tiny", pools=("instructions",), progress=False)
    assert again["equivalence"] == res["equivalence"]
    top = res["loglik"]["instructions"][str(bmax)]
    mv = res["moves_the_model"]["instructions"]
    assert mv["best_arm"] == max(top, key=lambda a: top[a]["mean"])
    assert mv["gain_over_base"] == pytest.approx(top[mv["best_arm"]]["mean"] - res["base"]["instructions"], abs=1e-12)
    text = FG.grid_verdict(res, "instructions")
    for c in res["positive_controls"]:
        assert f"{c['a']} vs {c['b']} {c['diff']:+.4f}" in text and c["verdict"] in text
    e = next(x for x in res["equivalence"] if (x["a"], x["b"], x["budget"]) == ("icp-top", "ip-top", bmax))
    assert f"{bmax}: {e['diff']:+.4f} [{e['ci'][0]:+.4f}, {e['ci'][1]:+.4f}]" in text
    e = next(x for x in res["equivalence"] if {x["a"], x["b"]} == {"icp-top", "length_matched_random"} and x["budget"] == bmax)
    sign = 1 if e["a"] == "icp-top" else -1
    assert "`icp-top` − `length_matched_random`" in text and f"{bmax}: {sign * e['diff']:+.4f}" in text
    assert FG.referee_path("tiny", "instructions").with_suffix(".json").exists()   # one referee file per pool
    # read while running: the summary over the complete budgets only
    path = FG.grid_dir("tiny") / "runs.jsonl"
    so = FG.grid_so_far("tiny", pools=("instructions",))
    assert so["complete"] and so["n_trained"] == so["n_planned"] == n_main and so["equivalence"] == res["equivalence"]
    lines = path.read_text().splitlines()
    gone = next(i for i, x in enumerate(lines) if json.loads(x)["budget"] == bmax and not json.loads(x).get("pilot"))
    path.write_text("\n".join(lines[:gone] + lines[gone + 1:]) + "\n")
    so = FG.grid_so_far("tiny", seed=0, pools=("instructions",))
    bmin = min(gcfg.budgets)
    assert not so["complete"] and so["n_trained"] == n_main - 1 and so["budgets_done"] == {"instructions": [bmin]}
    assert so["equivalence"] == [e for e in res["equivalence"] if e["budget"] == bmin]
    assert [c["budget"] for c in so["positive_controls"]] == [bmin] * len(FG.POSITIVE_CONTROLS)
    # a row scored by an earlier accuracy rule (no greedy answers kept) is trained again, and its new row wins
    old = json.loads(lines[gone])
    FE._append(path, {k: v for k, v in old.items() if k != "predictions"})
    key = (old["pool"], old["budget"], old["arm"], old["seed"])
    assert "predictions" not in FE._runs(path)[key]
    assert FG.grid_so_far("tiny", pools=("instructions",))["accuracy_pending"] == {"instructions": 1}
    base_row = FE._runs(path)[("instructions", 0, "base", -1)]
    FE._append(path, {k: v for k, v in base_row.items() if k != "predictions"})   # the base model's too
    assert FG.grid_so_far("tiny", pools=("instructions",))["base_accuracy"]["instructions"] is None
    again = FG.run_grid("tiny", pools=("instructions",), progress=False)
    new = FE._runs(path)[key]
    assert "predictions" in new and new["answer_loglik_per_token"] == pytest.approx(old["answer_loglik_per_token"], abs=1e-4)
    assert "predictions" in FE._runs(path)[("instructions", 0, "base", -1)]
    assert again["base_accuracy"]["instructions"] == base_row["accuracy"]
    assert len(path.read_text().splitlines()) == len(lines) + 3 and again["n_models"] == n_main
    assert FG.grid_so_far("tiny", pools=("instructions",))["models_by_pool"] == {
        "instructions": {"trained": n_main, "planned": n_main}}
    # a changed configuration, or pilot seeds among the main seeds, is refused before any model
    with pytest.raises(ConfigError, match="another configuration"):
        FG.run_grid("tiny", pools=("instructions",), progress=False, epochs=2)
    with pytest.raises(ConfigError, match="pilot"):
        FG.run_grid("tiny", pools=("instructions",), progress=False, pilot_seeds=[0, 100])
    # a line torn by a killed process is skipped (its model is trained again), and the next row stays whole
    path = FG.grid_dir("tiny") / "runs.jsonl"
    path.write_text(path.read_text() + '{"pool": "instructions", "budg', encoding="utf-8")
    assert len(FE._runs(path)) == len(rows)
    FE._append(path, {"pool": "x", "budget": 1, "arm": "y", "seed": 0})
    assert ("x", 1, "y", 0) in FE._runs(path) and len(FE._runs(path)) == len(rows) + 1


def test_grid_exact_match_differences_resample_the_questions_and_rows_without_hits_wait():
    """The synthetic pool's accuracy in the grid: each model keeps its per-question exact matches
    (``hits``); a paired accuracy difference is the two-way bootstrap over seeds and questions of
    those records (recomputed here from the rows); a row that kept only the mean (an earlier
    rule) leaves its budget without accuracy until it is trained again."""
    from dataclasses import replace

    from icp_influence import stats
    from icp_influence.data import Example
    from icp_influence.experiments import finetune_grid as FG

    held = [Example(id=f"q{i}", instruction="x", input="", output="y") for i in range(6)]
    assert FG.exact_hits(held, [True, False, 1, 0, 0, True]) == {"q0": 1, "q1": 0, "q2": 1, "q3": 0, "q4": 0, "q5": 1}
    with pytest.raises(ValueError):
        FG.exact_hits(held, [True])
    gcfg = replace(FG.GridConfig.for_mode("tiny"), pools=("synthetic",), budgets_per_pool={"synthetic": [4]})
    rng = np.random.default_rng(0)
    done = {("synthetic", 0, "base", -1): {"pool": "synthetic", "budget": 0, "arm": "base", "seed": -1,
                                           "answer_loglik_per_token": -2.0, "accuracy": 0.0, "hits": {}}}
    for a in gcfg.arms:
        for s in gcfg.seeds:
            hits = {e.id: int(rng.random() < 0.5) for e in held}
            done[("synthetic", 4, a, s)] = {"pool": "synthetic", "budget": 4, "arm": a, "seed": s,
                                            "answer_loglik_per_token": -2.0 + rng.normal(0, 0.01),
                                            "accuracy": float(np.mean(list(hits.values()))), "hits": hits,
                                            "selected_answer_tokens": 3.0, "selected_noisy_fraction": 0.0}
    res = FG.summarise_grid(gcfg, done, {"synthetic": 0.01})
    assert res["accuracy_differences"] and all(e["method"] == "two-way bootstrap over seeds and questions"
                                               for e in res["accuracy_differences"])
    for e in res["accuracy_differences"]:
        mat = {x: np.array([[done[("synthetic", 4, x, s)]["hits"][q.id] for q in held] for s in gcfg.seeds])
               for x in (e["a"], e["b"])}
        diff, lo, hi = stats.two_way_difference(mat[e["a"]], mat[e["b"]])
        assert e["diff"] == pytest.approx(diff) and e["ci"] == pytest.approx([lo, hi])
    # one row without its per-question record: no accuracy at that budget until it is trained again
    key = ("synthetic", 4, "random", gcfg.seeds[0])
    assert not FG.scored_by_earlier_rule(done[key], "synthetic")
    done[key] = {k: v for k, v in done[key].items() if k != "hits"}
    assert FG.scored_by_earlier_rule(done[key], "synthetic")
    res = FG.summarise_grid(gcfg, done, {"synthetic": 0.01})
    assert res["accuracy_differences"] == [] and res["accuracy"] == {}
    assert res["loglik"]["synthetic"]["4"]["random"]["mean"] == pytest.approx(
        np.mean([done[("synthetic", 4, "random", s)]["answer_loglik_per_token"] for s in gcfg.seeds]))
