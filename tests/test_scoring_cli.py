"""The `score VALUATOR` command: equals the library, resumes, refuses changed arguments, shards."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from icp_influence.cli import main
from icp_influence.models import load_model
from icp_influence.scores import ScoreMatrix
from icp_influence.synthetic import make_synthetic_pool
from icp_influence.valuators import Icp


def _env():
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def gpt2():
    return load_model("tiny-gpt2", device="cpu")


def test_cli_end_to_end_matches_library(tmp_path, gpt2, capsys):
    out = tmp_path / "run"
    args = ["score", "icp", "--model", "tiny-gpt2", "--pool", "synthetic:9", "--probes", "synthetic:5:1",
            "--out", str(out), "--chunk-size", "4", "--quiet",
            "--settings", json.dumps({"score": "per_token", "batch_size": 2})]
    assert main(args) == 0
    sm = ScoreMatrix.load(out / "scores")
    model, tok = gpt2
    ref = Icp(model, tok, score="per_token", batch_size=2, model_name="tiny-gpt2").score(make_synthetic_pool(9, seed=0),
                                                                                        make_synthetic_pool(5, seed=1))
    np.testing.assert_allclose(sm.values, ref.values, rtol=0, atol=1e-6)
    assert sm.candidate_ids == ref.candidate_ids and sm.probe_ids == ref.probe_ids
    assert sm.meta["default_aggregate"] == "mean" and sm.meta["score"] == "per_token"
    assert sm.meta["config_hash"] == ref.meta["config_hash"]
    assert len(list((out / "chunks").glob("chunk-*.safetensors"))) == 3
    # merge re-assembles the same matrix, keeping the ICP metadata
    assert main(["merge", str(out)]) == 0
    merged = ScoreMatrix.load(out / "scores")
    np.testing.assert_array_equal(merged.values, sm.values)
    assert merged.meta["n_answer_tokens"] == sm.meta["n_answer_tokens"]
    # the same arguments again: nothing to recompute, same result
    assert main(args) == 0
    np.testing.assert_array_equal(ScoreMatrix.load(out / "scores").values, sm.values)
    # different arguments on the same run directory are refused (exit 2, clear message)
    capsys.readouterr()
    assert main([*args, "--template", "plain"]) == 2
    assert "different arguments" in capsys.readouterr().err
    assert main([*args[:-2], "--settings", "{not json"]) == 2
    assert main(["score", "icp", "--model", "tiny-gpt2", "--pool", "synthetic:3", "--probes", "synthetic:2",
                 "--out", str(tmp_path / "x"), "--settings", '{"damping": 1}']) == 2
    assert "allowed:" in capsys.readouterr().err
    assert main(["score", "nope", "--pool", "synthetic:3", "--probes", "synthetic:2", "--out", str(tmp_path / "y")]) == 2
    assert main(["merge", str(tmp_path / "nothing")]) == 2


def test_cli_limit_and_win_rate(tmp_path):
    out = tmp_path / "run"
    assert main(["score", "icp", "--model", "tiny-llama", "--pool", "synthetic:20", "--probes", "synthetic:4:3",
                 "--out", str(out), "--limit", "5", "--chunk-size", "2", "--quiet"]) == 0
    sm = ScoreMatrix.load(out / "scores")
    assert sm.shape == (5, 4) and sm.meta["default_aggregate"] == "win_rate"
    np.testing.assert_array_equal(sm.aggregate(), (sm.values > 0).mean(1))


def test_cli_lists_valuators_and_settings(capsys):
    assert main(["score", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("icp", "inner_product", "cosine", "ekfac", "exact", "cg", "lissa", "tracin", "paper_signed_log"):
        assert any(line.split()[0] == name for line in out.splitlines() if line.strip()), name
    ekfac = [line for line in out.splitlines() if line.startswith("ekfac")][0]
    assert "damping" in ekfac and "params" in ekfac


@pytest.mark.slow
def test_accelerate_two_processes_equal_single(tmp_path):
    """`accelerate launch --num_processes 2 -m icp_influence score icp` + merge == one process.

    accelerate runs ``--cpu --num_processes 2`` as ONE process unless mpirun is set up
    (its multi-CPU path goes through mpirun), so the test launches through the torchrun path
    (``--multi_gpu``), which spawns two CPU processes with RANK / WORLD_SIZE set — the CLI
    never initialises a process group, so no GPU is needed.
    """
    common = ["score", "icp", "--model", "tiny-gpt2", "--pool", "synthetic:11", "--probes", "synthetic:5:1",
              "--chunk-size", "2", "--quiet", "--settings", '{"batch_size": 3}']
    sharded = tmp_path / "sharded"
    accelerate = Path(sys.executable).with_name("accelerate")
    launcher = [str(accelerate), "launch"] if accelerate.exists() else [sys.executable, "-m", "accelerate.commands.launch"]
    cmd = [*launcher, "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(29500 + os.getpid() % 400),
           "-m", "icp_influence", *common, "--out", str(sharded)]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    log = res.stdout + res.stderr  # the launcher may merge the children's streams
    assert "shard 1/2" in log and "shard 2/2" in log, log[-2000:]
    assert main(["merge", str(sharded)]) == 0
    single = tmp_path / "single"
    assert main([*common, "--out", str(single)]) == 0
    a, b = ScoreMatrix.load(sharded / "scores"), ScoreMatrix.load(single / "scores")
    np.testing.assert_array_equal(a.values, b.values)
    assert a.candidate_ids == b.candidate_ids and a.probe_ids == b.probe_ids
    assert a.meta["default_aggregate"] == "win_rate"


def test_show_prints_a_run_as_a_table_csv_or_json_best_first(tmp_path, capsys):
    import csv
    import io

    out = tmp_path / "run"
    assert main(["score", "icp", "--model", "tiny-llama", "--pool", "synthetic:6", "--probes", "synthetic:4:3",
                 "--out", str(out), "--settings", '{"score": "delta"}', "--quiet"]) == 0
    capsys.readouterr()
    sm = ScoreMatrix.load(out / "scores")
    mean, win = sm.aggregate("mean"), sm.aggregate("win_rate")
    assert main(["show", str(out), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["candidate"] for r in rows] == [sm.candidate_ids[i] for i in np.argsort(-mean, kind="stable")]
    for r in rows:
        i = sm.candidate_ids.index(r["candidate"])
        assert r["mean"] == pytest.approx(mean[i]) and r["win_rate"] == pytest.approx(win[i])
    assert [r["rank"] for r in rows] == list(range(1, 7))
    assert main(["show", str(out), "--format", "csv", "--aggregate", "win_rate", "--top", "3"]) == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(table) == 3 and list(table[0]) == ["rank", "candidate", "win_rate", "mean"]
    assert [float(t["win_rate"]) for t in table] == sorted(win, reverse=True)[:3]
    assert main(["show", str(out)]) == 0
    text = capsys.readouterr().out.splitlines()
    assert text[0].startswith("icp: 6 candidates × 4 probes") and text[1].split()[:2] == ["rank", "candidate"]
    assert len(text) == 2 + 6
    assert main(["show", str(tmp_path / "none")]) == 2


def test_score_warns_before_scoring_about_examples_longer_than_the_context(tmp_path, capsys):
    from icp_influence.commands.scoring import overlong
    from icp_influence.data import Example
    from icp_influence.encoding import encode_example
    from icp_influence.models import context_length

    model, tok = load_model("tiny-llama", device="cpu")
    limit = context_length(model, tok)
    pool = make_synthetic_pool(3, seed=0)
    huge = Example(id="huge", instruction="Summarise.", input="word " * (2 * limit), output="ok")
    got = overlong([*pool, huge], tok, limit)
    assert [g[0] for g in got] == ["huge"] and got[0][1] == len(encode_example(tok, huge))
    path = tmp_path / "pool.jsonl"
    path.write_text("\n".join(json.dumps({"instruction": e.instruction, "input": e.input, "output": e.output})
                              for e in [*pool, huge]) + "\n")
    assert main(["score", "answer_length", "--model", "tiny-llama", "--pool", str(path), "--probes", "synthetic:2",
                 "--out", str(tmp_path / "run"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert f"1 of 4 candidates are longer than the model's context of {limit} tokens" in err


def test_an_empty_pool_says_so_in_plain_words():
    from icp_influence.data import Pool
    from icp_influence.errors import EmptyPoolError

    with pytest.raises(EmptyPoolError, match=r"No examples in 'empty': the pool is empty, and a pool needs at least one example"):
        Pool([], name="empty")
