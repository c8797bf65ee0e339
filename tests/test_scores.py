"""The one home of the aggregates (scores.aggregate): every form against a direct formula."""
import numpy as np
import pytest

from icp_influence.errors import ConfigError


def test_one_aggregate_home_weighted_and_plain_agree_with_direct_formulas():
    from icp_influence import stats
    from icp_influence.scores import aggregate

    rng = np.random.default_rng(3)
    V = rng.normal(size=(7, 9))
    V[0, :3] = 0.0                      # ties lose: a zero is not a win
    assert stats.aggregate is aggregate
    np.testing.assert_allclose(aggregate(V, "win_rate"), [(row > 0).sum() / 9 for row in V])
    np.testing.assert_array_equal(aggregate(V, "positive_fraction"), aggregate(V, "win_rate"))
    np.testing.assert_allclose(aggregate(V, "median"), [sorted(row)[4] for row in V])
    np.testing.assert_allclose(aggregate(V, "sum"), V.sum(axis=1))
    w = rng.integers(0, 3, size=(9, 4)).astype(float)
    for b in range(4):
        keep = np.repeat(np.arange(9), w[:, b].astype(int))      # bootstrap counts = repeated probes
        np.testing.assert_allclose(aggregate(V, "mean", w)[:, b], V[:, keep].mean(axis=1))
        np.testing.assert_allclose(aggregate(V, "win_rate", w)[:, b], (V[:, keep] > 0).mean(axis=1))
    with pytest.raises(ConfigError, match="takes no probe weights"):
        aggregate(V, "median", w)
    with pytest.raises(ConfigError, match="Unknown aggregate"):
        aggregate(V, "max")


# ------------------------------------------------------------------ the typed metadata record
def test_score_meta_is_typed_and_reads_version_1_files(tmp_path):
    """A file written before the record was typed (no version) loads; saving writes version 2 with
    the same keys; fields are checked on construction and assignment."""
    import json

    from icp_influence.errors import CorruptFileError
    from icp_influence.icp import icp_per_token_delta, icp_win_rate
    from icp_influence.scores import META_VERSION, ScoreMatrix, ScoreMeta

    old = {"method": "icp", "model": "m", "template": "paper", "seed": 0, "settings": {"score": "delta"},
           "config_hash": "abc", "sign": "positive = helps", "default_aggregate": "mean", "library_version": "0.1.0",
           "score": "delta", "values": "delta", "baseline": [-1, -2.5, -3], "baseline_kind": "zero_shot",
           "n_answer_tokens": [1, 2, 4], "gradient_dim": 12}
    from safetensors.numpy import save_file
    V = np.array([[0.5, -1.0, 2.0], [0.0, 3.0, -4.0]])
    save_file({"values": V}, str(tmp_path / "old.safetensors"))
    (tmp_path / "old.json").write_text(json.dumps({"format": "icp-influence/score-matrix/v1", "shape": [2, 3],
                                                   "candidate_ids": ["a", "b"], "probe_ids": ["x", "y", "z"],
                                                   "meta": old}))
    sm = ScoreMatrix.load(tmp_path / "old")
    assert isinstance(sm.meta, ScoreMeta) and sm.meta.version == META_VERSION == 2
    assert sm.meta.baseline == [-1.0, -2.5, -3.0] and sm.meta.n_answer_tokens == [1, 2, 4]
    assert sm.meta.extra == {"gradient_dim": 12} and sm.meta["gradient_dim"] == 12
    assert dict(sm.meta) == {**old, "baseline": [-1.0, -2.5, -3.0]}        # the mapping view: same keys as v1
    assert sm.meta == old and "precision" not in sm.meta and sm.meta.get("precision") is None
    np.testing.assert_allclose(icp_per_token_delta(sm), (V / [1, 2, 4]).mean(1))
    sm.save(tmp_path / "new")
    written = json.loads((tmp_path / "new.json").read_text())["meta"]
    assert written == {**old, "baseline": [-1.0, -2.5, -3.0], "version": 2}
    assert ScoreMatrix.load(tmp_path / "new").meta == sm.meta

    # subsetting probes keeps the per-probe metadata aligned with the columns
    sub = sm.subset(probe_ids=["z", "x"])
    assert sub.meta.baseline == [-3.0, -1.0] and sub.meta.n_answer_tokens == [4, 1]
    np.testing.assert_allclose(icp_per_token_delta(sub), (V[:, [2, 0]] / [4, 1]).mean(1))
    np.testing.assert_array_equal(icp_win_rate(sub), [1.0, 0.0])
    assert sm.meta.baseline == [-1.0, -2.5, -3.0]                           # the original is untouched

    with pytest.raises(ConfigError, match="wrong type"):
        ScoreMeta(seed=1.5)
    with pytest.raises(ConfigError, match="wrong type"):
        sm.meta["n_answer_tokens"] = [1, 0, 2]
    with pytest.raises(ConfigError, match="default_aggregate"):
        sm.meta["default_aggregate"] = "average"
    with pytest.raises(ConfigError, match="version"):
        sm.meta["version"] = 3
    with pytest.raises(ConfigError, match="3 entries for 2 probes"):
        ScoreMatrix(V[:, :2], ["a", "b"], ["x", "y"], old)
    with pytest.raises(CorruptFileError, match="upgrade"):
        ScoreMeta.from_dict({**old, "version": META_VERSION + 1})
    with pytest.raises(ConfigError, match="wrong type"):
        sm.meta.seed = "0"                                                   # attributes are checked too
    for bad in ("1.2", True):
        with pytest.raises(ConfigError, match="wrong type"):
            sm.meta["seconds"] = bad
    with pytest.raises(ConfigError, match="wrong type"):
        sm.meta["baseline"] = "123"
    assert "version" not in sm.meta and "version" not in dict(sm.meta)       # an attribute, not a key
    sm.meta.update({**old, "version": 1})                                    # updating from a saved record works
    # a stored file with a broken record is a corrupt file, named
    info = json.loads((tmp_path / "new.json").read_text())
    for broken in ({**info["meta"], "version": "2"}, {**info["meta"], "seed": "zero"}):
        (tmp_path / "bad.json").write_text(json.dumps({**info, "meta": broken}))
        (tmp_path / "bad.safetensors").write_bytes((tmp_path / "new.safetensors").read_bytes())
        with pytest.raises(CorruptFileError, match="bad.json"):
            ScoreMatrix.load(tmp_path / "bad")
    sm.meta["precision"] = "bf16"                                            # anything else goes to extra
    del sm.meta["baseline_kind"]
    assert sm.meta.extra["precision"] == "bf16" and "baseline_kind" not in sm.meta and sm.meta.baseline_kind is None
