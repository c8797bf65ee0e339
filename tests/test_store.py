"""Chunked, resumable, shardable runs."""
from __future__ import annotations

import numpy as np
import pytest

from icp_influence.errors import ConfigError, CorruptFileError, EmptyPoolError, ResumeMismatchError
from icp_influence.scores import ScoreMatrix
from icp_influence.store import _chunk_path, merge_run, run_chunked

CANDS = [f"c{i}" for i in range(10)]
PROBES = ["p0", "p1", "p2"]


def compute(idx):
    return np.array([[np.sin(i * 10 + j) for j in range(3)] for i in idx])


def test_single_run_equals_direct(tmp_path):
    sm = run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, compute, chunk_size=3, progress=False)
    assert np.array_equal(sm.values, compute(range(10))) and sm.candidate_ids == CANDS
    again = ScoreMatrix.load(tmp_path / "scores")
    assert np.array_equal(again.values, sm.values) and again.meta["config_hash"] == sm.meta["config_hash"]


def test_shards_merge_to_the_single_run(tmp_path):
    single = run_chunked(tmp_path / "a", {"m": 1}, CANDS, PROBES, compute, chunk_size=3, progress=False)
    assert run_chunked(tmp_path / "b", {"m": 1}, CANDS, PROBES, compute, chunk_size=3, shard=(0, 3), progress=False) is None
    assert run_chunked(tmp_path / "b", {"m": 1}, CANDS, PROBES, compute, chunk_size=3, shard=(2, 3), progress=False) is None
    with pytest.raises(CorruptFileError, match="missing"):
        merge_run(tmp_path / "b")
    run_chunked(tmp_path / "b", {"m": 1}, CANDS, PROBES, compute, chunk_size=3, shard=(1, 3), progress=False)
    assert np.array_equal(merge_run(tmp_path / "b").values, single.values)


def test_resume_recomputes_only_missing_chunks(tmp_path):
    calls = []

    def counting(idx):
        calls.append(list(idx))
        return compute(idx)

    full = run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, counting, chunk_size=4, progress=False)
    _chunk_path(tmp_path, 1).unlink()
    calls.clear()
    again = run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, counting, chunk_size=4, progress=False)
    assert calls == [[4, 5, 6, 7]] and np.array_equal(again.values, full.values)


def test_interrupted_chunk_leaves_nothing_half_written(tmp_path):
    def boom(idx):
        if 6 in idx:
            raise KeyboardInterrupt
        return compute(idx)

    with pytest.raises(KeyboardInterrupt):
        run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, boom, chunk_size=3, progress=False)
    files = sorted(p.name for p in (tmp_path / "chunks").iterdir())
    assert files == ["chunk-000000.safetensors", "chunk-000001.safetensors"]
    sm = run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, compute, chunk_size=3, progress=False)
    assert np.array_equal(sm.values, compute(range(10)))


def test_resume_with_other_arguments_is_refused(tmp_path):
    run_chunked(tmp_path, {"m": 1, "template": "paper"}, CANDS, PROBES, compute, chunk_size=3, progress=False)
    with pytest.raises(ResumeMismatchError, match=r"template: 'paper' -> 'chat'"):
        run_chunked(tmp_path, {"m": 1, "template": "chat"}, CANDS, PROBES, compute, chunk_size=3, progress=False)
    with pytest.raises(ResumeMismatchError, match="chunk_size"):
        run_chunked(tmp_path, {"m": 1, "template": "paper"}, CANDS, PROBES, compute, chunk_size=5, progress=False)


def test_corrupted_chunk_is_detected(tmp_path):
    run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, compute, chunk_size=3, progress=False)
    p = _chunk_path(tmp_path, 2)
    p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(CorruptFileError, match="chunk-000002"):
        merge_run(tmp_path)


def test_bad_arguments(tmp_path):
    with pytest.raises(EmptyPoolError):
        run_chunked(tmp_path, {}, [], PROBES, compute, progress=False)
    with pytest.raises(ConfigError):
        run_chunked(tmp_path, {}, CANDS, PROBES, compute, chunk_size=0, progress=False)
    with pytest.raises(ConfigError, match="shape"):
        run_chunked(tmp_path / "x", {}, CANDS, PROBES, lambda idx: np.zeros((1, 1)), progress=False)


def test_score_matrix_nonfinite_names_ids():
    from icp_influence.errors import NonFiniteScoreError

    sm = ScoreMatrix(np.array([[1.0, np.nan], [0.0, np.inf]]), ["a", "b"], ["p", "q"], {"method": "x"})
    with pytest.raises(NonFiniteScoreError, match=r"\(a, q\), \(b, q\)"):
        sm.check_finite()
    ok = ScoreMatrix(np.array([[1.0, -2.0], [0.5, 0.0]]), ["a", "b"], ["p", "q"])
    assert ok.aggregate("win_rate").tolist() == [0.5, 0.5]
    assert ok.aggregate("mean").tolist() == [-0.5, 0.25]


def test_subset_and_aligned_of_52002_candidates():
    """Alpaca-sized id lookups go through dicts (with ``list.index`` this is ~1.4e9 compares)."""
    n = 52_002
    ids = [f"alpaca-{i}" for i in range(n)]
    values = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    sm = ScoreMatrix(values, ids, ["p0", "p1"], {"method": "x"})
    rev = sm.subset(ids[::-1], ["p1", "p0"])
    assert rev.candidate_ids == ids[::-1] and rev.probe_ids == ["p1", "p0"]
    assert np.array_equal(rev.values, values[::-1, ::-1])
    back = rev.aligned(sm)
    assert back.candidate_ids == ids and np.array_equal(back.values, values)
    with pytest.raises(ConfigError, match=r"1 candidate id\(s\) are not in this ScoreMatrix.*'nope'"):
        sm.subset(["alpaca-3", "nope"])
