"""Probe selection by k-means over LM embeddings."""
from __future__ import annotations

import numpy as np
import pytest

from icp_influence.errors import ConfigError
from icp_influence.probes import embed_examples, kmeans_representatives, select_probes_kmeans
from icp_influence.synthetic import make_synthetic_pool


def test_kmeans_picks_one_point_per_well_separated_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], float)
    pts = np.concatenate([c + 0.1 * rng.standard_normal((5, 2)) for c in centres])
    idx = kmeans_representatives(pts, 4, seed=0)
    assert sorted(i // 5 for i in idx) == [0, 1, 2, 3]  # one per cluster
    for i in idx:  # each is the point nearest to its cluster's mean
        block = pts[(i // 5) * 5:(i // 5) * 5 + 5]
        assert i % 5 == int(np.argmin(np.linalg.norm(block - block.mean(0), axis=1)))


def test_k_out_of_range_is_refused():
    with pytest.raises(ConfigError, match="cannot be chosen from 3"):
        kmeans_representatives(np.zeros((3, 2)), 4)


def test_embeddings_are_mean_pooled_and_padding_invariant(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    pool = make_synthetic_pool(6, seed=0)
    batched = embed_examples(model, tok, list(pool), batch_size=6)
    single = np.concatenate([embed_examples(model, tok, [ex], batch_size=1) for ex in pool])
    assert batched.shape == (6, model.config.hidden_size)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def test_select_probes_is_deterministic(tiny_models):
    model, tok = tiny_models["tiny-gpt-neox"]
    pool = make_synthetic_pool(40, seed=0)
    a = select_probes_kmeans(model, tok, pool, 5, seed=0)
    b = select_probes_kmeans(model, tok, pool, 5, seed=0)
    assert a.ids == b.ids and len(set(a.ids)) == 5


def test_kmeans_probes_respect_a_cap_per_group():
    import numpy as np
    import pytest

    from icp_influence.errors import ConfigError
    from icp_influence.probes import composition, kmeans_representatives

    rng = np.random.default_rng(0)
    # one big group of 200 points and four small groups of 8: unconstrained k-means
    # representatives come mostly from the big group
    X = np.vstack([rng.normal(0, 1.0, size=(200, 2))] + [rng.normal(10 * (i + 1), 0.5, size=(8, 2)) for i in range(4)])
    groups = ["big"] * 200 + [f"g{i}" for i in range(4) for _ in range(8)]
    free = kmeans_representatives(X, 16, seed=0)
    capped = kmeans_representatives(X, 16, seed=0, groups=groups, max_per_group=4)
    assert sum(groups[i] == "big" for i in free) > 4
    assert len(set(capped)) == 16
    counts = {}
    for i in capped:
        counts[groups[i]] = counts.get(groups[i], 0) + 1
    assert max(counts.values()) <= 4 and len(counts) == 5
    with pytest.raises(ConfigError, match="impossible"):
        kmeans_representatives(X, 16, groups=groups, max_per_group=3)

    class P:
        def __init__(self, t):
            self.task = t
    assert composition([P("a"), P("b"), P("a")]) == {"a": 2, "b": 1}
