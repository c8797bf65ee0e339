"""Chunked, resumable, shardable runs — and the faults a run of hours must survive:
corrupted chunks, a second process, a full disk, Ctrl-C."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from icp_influence.errors import (ConfigError, CorruptFileError, DiskFullError, EmptyPoolError, IcpError,
                                  ResumeMismatchError, RunLockedError)
from icp_influence.scores import ScoreMatrix
from icp_influence.store import CorruptChunkWarning, _chunk_path, merge_run, read_chunk, run_chunked, run_lock

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


# ------------------------------------------------------------------ faults
def _counting(calls):
    def f(idx):
        calls.append(list(idx))
        return compute(idx)
    return f


def _flip_a_value_byte(path):
    """Change one byte inside the ``values`` tensor, keeping the file's size and header valid."""
    b = bytearray(path.read_bytes())
    n = int.from_bytes(b[:8], "little")
    start = json.loads(b[8:8 + n])["values"]["data_offsets"][0] + 8 + n
    b[start + 3] ^= 0xFF
    path.write_bytes(bytes(b))


def _leftover_temporaries(root):
    return sorted(p.name for p in root.rglob("*.tmp"))


def test_corrupted_chunks_are_never_merged_and_resume_recomputes_them(tmp_path):
    """(1) Resume verifies every existing chunk against its checksum instead of trusting
    that the file exists; merge_run refuses a bad chunk and names it."""
    calls = []
    full = run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, _counting(calls), chunk_size=3, progress=False)
    for suffix in (".json", ".safetensors"):
        (tmp_path / ("scores" + suffix)).unlink()
    truncated, flipped = _chunk_path(tmp_path, 1), _chunk_path(tmp_path, 2)
    truncated.write_bytes(truncated.read_bytes()[:-7])
    _flip_a_value_byte(flipped)  # loads fine; only the checksum can tell

    with pytest.raises(CorruptFileError, match=r"chunk-000001.*chunk-000002.*corrupted or truncated; nothing was merged") as e:
        merge_run(tmp_path)
    assert "checksum mismatch" in str(e.value)
    assert not (tmp_path / "scores.json").exists()

    calls.clear()
    with pytest.warns(CorruptChunkWarning) as caught:
        again = run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, _counting(calls), chunk_size=3, progress=False)
    assert sorted(str(w.message).split()[2] for w in caught) == [str(truncated), str(flipped)]
    assert calls == [[3, 4, 5], [6, 7, 8]]  # exactly the two bad chunks, nothing else
    assert np.array_equal(again.values, full.values)
    assert np.array_equal(ScoreMatrix.load(tmp_path / "scores").values, full.values)


_WORKER = textwrap.dedent("""
    import sys, time
    import numpy as np
    from icp_influence.store import run_chunked

    out, rank, world, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

    def compute(idx):
        time.sleep(delay)
        return np.array([[np.sin(i * 10 + j) for j in range(3)] for i in idx])

    run_chunked(out, {"m": 1}, [f"c{i}" for i in range(10)], ["p0", "p1", "p2"], compute,
                chunk_size=1, shard=(rank, world), progress=False)
""")


def _start_worker(tmp_path, out, rank, world, delay):
    """A separate process scoring (rank, world) slowly; returns once it holds its lock."""
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, str(out), str(rank), str(world), str(delay)],
                            env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    lock = out / "locks" / f"lock-{rank}-of-{world}"
    deadline = time.time() + 120
    while time.time() < deadline:  # the pid is written only once the flock is held
        try:
            if json.loads(lock.read_text() or "{}").get("pid") == proc.pid:
                return proc
        except (OSError, ValueError):
            pass
        if proc.poll() is not None:
            raise AssertionError(f"worker ended early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("worker never took its lock")


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_second_process_on_one_run_is_refused_and_a_killed_runs_lock_does_not_block(tmp_path):
    """(2) Two processes on one directory without sharding: the second is refused with a
    message saying what to do; once the first is SIGKILLed its leftover lock file is harmless."""
    out = tmp_path / "run"
    proc = _start_worker(tmp_path, out, 0, 1, delay=1.0)
    try:
        with pytest.raises(RunLockedError, match=rf"already computing this run in .*pid {proc.pid}.*Wait for it") as e:
            run_chunked(out, {"m": 1}, CANDS, PROBES, compute, chunk_size=1, progress=False)
        assert isinstance(e.value, IcpError)
    finally:
        _kill(proc)
    assert (out / "locks" / "lock-0-of-1").exists()  # the file stays; only a held flock counts
    sm = run_chunked(out, {"m": 1}, CANDS, PROBES, compute, chunk_size=1, progress=False)
    assert np.array_equal(sm.values, compute(range(10)))
    assert _leftover_temporaries(out) == []


def test_shards_run_side_by_side_but_another_world_size_is_refused(tmp_path):
    """(2) Lock per (rank, world): shard 2/2 runs while another process holds shard 1/2; the
    same shard twice, or an unsharded run, is refused while shard 1/2 is alive."""
    out = tmp_path / "run"
    proc = _start_worker(tmp_path, out, 0, 2, delay=1.0)
    try:
        assert run_chunked(out, {"m": 1}, CANDS, PROBES, compute, chunk_size=1, shard=(1, 2), progress=False) is None
        assert all(_chunk_path(out, k).exists() for k in (1, 3, 5, 7, 9))
        with pytest.raises(RunLockedError, match=r"shard 1/2 of this run"):
            run_chunked(out, {"m": 1}, CANDS, PROBES, compute, chunk_size=1, shard=(0, 2), progress=False)
        with pytest.raises(RunLockedError, match=r"split into 2 shard\(s\).*started with 1"):
            run_chunked(out, {"m": 1}, CANDS, PROBES, compute, chunk_size=1, progress=False)
        with pytest.raises(RunLockedError, match=r"split into 2 shard\(s\).*started with 3"):
            with run_lock(out, 2, 3):
                pass
    finally:
        _kill(proc)
    sm = run_chunked(out, {"m": 1}, CANDS, PROBES, compute, chunk_size=1, progress=False)  # any world resumes
    assert np.array_equal(sm.values, compute(range(10)))


def test_full_disk_fails_with_disk_full_error_and_keeps_finished_chunks(tmp_path, monkeypatch):
    """(3) ENOSPC from the writer (after it wrote part of the file) becomes DiskFullError
    naming the directory; finished chunks stay intact, no temporary file remains, and
    rerunning after freeing space computes only what is missing."""
    import safetensors.numpy

    real_save = safetensors.numpy.save_file
    writes = []

    def filling_up(tensors, filename, *a, **kw):
        writes.append(filename)
        if len(writes) > 2:
            with open(filename, "wb") as fh:
                fh.write(b"\0" * 100)  # a partial write, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, *a, **kw)

    monkeypatch.setattr(safetensors.numpy, "save_file", filling_up)
    with pytest.raises(DiskFullError) as e:
        run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, compute, chunk_size=3, progress=False)
    msg = str(e.value)
    assert str(tmp_path / "chunks") in msg and "Free space" in msg and "run the same command again" in msg
    assert isinstance(e.value, IcpError) and isinstance(e.value, OSError) and e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == ["chunk-000000.safetensors", "chunk-000001.safetensors"]
    for k in (0, 1):
        assert np.array_equal(read_chunk(tmp_path, k, 3, 3), compute(range(3 * k, 3 * k + 3)))
    assert _leftover_temporaries(tmp_path) == []

    monkeypatch.setattr(safetensors.numpy, "save_file", real_save)  # space freed
    calls = []
    sm = run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, _counting(calls), chunk_size=3, progress=False)
    assert calls == [[6, 7, 8], [9]] and np.array_equal(sm.values, compute(range(10)))


_TMPFS_SCRIPT = textwrap.dedent("""
    import json, subprocess, sys
    from pathlib import Path
    import numpy as np
    from icp_influence.errors import DiskFullError
    from icp_influence.store import read_chunk, run_chunked

    disk = Path(sys.argv[1]); out = disk / "run"
    cands, probes = [f"c{i}" for i in range(16)], [f"p{j}" for j in range(1000)]
    f = lambda idx: np.array([[np.sin(i * 1000 + j) for j in range(1000)] for i in idx])  # 32 kB per chunk
    res = {}
    try:
        run_chunked(out, {"m": 1}, cands, probes, f, chunk_size=4, progress=False)
        res["error"] = None
    except DiskFullError as e:
        res["error"], res["message"] = "DiskFullError", str(e)
    res["chunks"] = sorted(p.name for p in (out / "chunks").glob("chunk-*"))
    res["chunks_ok"] = all(np.array_equal(read_chunk(out, int(n[6:12]), 4, 1000), f(range(4 * int(n[6:12]), 4 * int(n[6:12]) + 4)))
                           for n in res["chunks"])
    res["tmp"] = sorted(p.name for p in out.rglob("*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)  # free space
    sm = run_chunked(out, {"m": 1}, cands, probes, f, chunk_size=4, progress=False)
    res["resumed_equal"] = bool(np.array_equal(sm.values, f(range(16))))
    print("RESULT " + json.dumps(res))
""")


def test_full_disk_on_a_real_tiny_tmpfs(tmp_path):
    """(3) The same on a real 100 kB tmpfs (root only, in a private mount namespace; skipped
    where mounting is not permitted): safetensors reports ENOSPC without an errno."""
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("mount"):
        pytest.skip("needs root, unshare and mount to create a tiny tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(_TMPFS_SCRIPT)
    shell = f"mount -t tmpfs -o size=100k tmpfs '{disk}' || exit 97; exec '{sys.executable}' '{script}' '{disk}'"
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell],
                       capture_output=True, text=True, timeout=120, env=os.environ.copy())
    if r.returncode == 97 or ("RESULT" not in r.stdout and ("not permitted" in r.stderr or "denied" in r.stderr)):
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.split("RESULT ", 1)[1])
    assert res["error"] == "DiskFullError", res
    assert str(disk / "run" / "chunks") in res["message"] and "Free space" in res["message"]
    assert 1 <= len(res["chunks"]) < 4 and res["chunks_ok"] and res["tmp"] == []
    assert res["resumed_equal"]


def test_sigint_stops_at_a_chunk_boundary_and_the_same_call_resumes(tmp_path):
    """(4) A SIGINT during chunk 1: that chunk is finished and written, the run stops with
    KeyboardInterrupt saying what is kept, the previous handler is back, and calling again
    computes only the rest."""
    before = signal.getsignal(signal.SIGINT)
    calls = []

    def interrupted(idx):
        calls.append(list(idx))
        if idx[0] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C / a notebook's interrupt, mid-chunk
        return compute(idx)

    with pytest.raises(KeyboardInterrupt, match=r"chunk boundary: 2 of 4 chunks are complete and kept.*again to resume"):
        run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, interrupted, chunk_size=3, progress=False)
    assert calls == [[0, 1, 2], [3, 4, 5]]
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == ["chunk-000000.safetensors", "chunk-000001.safetensors"]
    assert signal.getsignal(signal.SIGINT) is before
    calls.clear()
    sm = run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, _counting(calls), chunk_size=3, progress=False)
    assert calls == [[6, 7, 8], [9]] and np.array_equal(sm.values, compute(range(10)))


def test_second_sigint_aborts_at_once_and_discards_the_chunk_in_flight(tmp_path):
    before = signal.getsignal(signal.SIGINT)

    def impatient(idx):
        if idx[0] == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return compute(idx)

    with pytest.raises(KeyboardInterrupt, match="Interrupted twice"):
        run_chunked(tmp_path, {"m": 1}, CANDS, PROBES, impatient, chunk_size=3, progress=False)
    assert sorted(p.name for p in (tmp_path / "chunks").iterdir()) == ["chunk-000000.safetensors"]
    assert signal.getsignal(signal.SIGINT) is before
    assert _leftover_temporaries(tmp_path) == []
