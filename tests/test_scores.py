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
