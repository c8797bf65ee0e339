"""The agreement and ground-truth experiments end to end on a random tiny model (seconds): what a
run records, that a second run reuses every cached matrix, and that the first-order identity
holds for the small-step ground truth."""
from __future__ import annotations

import json

import numpy as np
import pytest

from icp_influence.errors import ConfigError
from icp_influence.experiments import ground_truth as GT
from icp_influence.experiments import llm_agreement as A

SKIP = ("icp_chat", "ekfac", "ip_linear")


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
