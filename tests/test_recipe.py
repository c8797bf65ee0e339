"""The paper-scale recipe: config, overrides, commands, and an end-to-end run with a tiny model."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from icp_influence.recipe import (apply_overrides, config_path, launch_prefix, load_config, prepare,
                                           stage_commands)
from icp_influence.errors import ConfigError

FIXTURE = Path(__file__).parent / "fixtures" / "alpaca50.json"
ROOT = Path(__file__).resolve().parent.parent


def test_fixture_is_fifty_varied_alpaca_records():
    from icp_influence.data import load_alpaca

    pool = load_alpaca(FIXTURE)
    assert len(pool) == 50 and len(set(pool.ids)) == 50
    assert len({ex.instruction for ex in pool}) == 50
    with_input = sum(1 for ex in pool if ex.input)
    assert 15 <= with_input <= 35  # both kinds of Alpaca record


def test_packaged_paper_config():
    cfg = load_config("paper_alpaca_pythia1b")
    assert cfg["model"] == "EleutherAI/pythia-1b-deduped"
    assert cfg["n_probes"] == 100 and cfg["probe_selection"] == "kmeans"
    assert cfg["template"] == "paper" and cfg["influence"]["params"] == "paper"
    assert cfg["pool"] == "hub:tatsu-lab/alpaca"
    assert config_path("paper-alpaca-pythia1b") == config_path("paper_alpaca_pythia1b")
    cmds = stage_commands(cfg)
    icp = cmds["icp"]
    assert icp[:6] == ["accelerate", "launch", "--multi_gpu", "--num_processes", "8", "-m"]
    assert icp[icp.index("score") + 1] == "icp" and cmds["influence"][cmds["influence"].index("score") + 1] == "inner_product"
    inf = cmds["influence"]
    assert json.loads(inf[inf.index("--settings") + 1]) == {"params": "paper", "reduction": "sum", "projection_dim": 8192,
                                                            "projection": "countsketch"}
    assert json.loads(icp[icp.index("--settings") + 1]) == {"score": "win_rate", "batch_size": 32}


def test_overrides():
    cfg = load_config("paper_alpaca_pythia1b")
    new = apply_overrides(cfg, ["model=tiny-gpt-neox", "n_probes=5", "icp.batch_size=4",
                                "influence.projection_dim=null", "launcher=torchrun"])
    assert new["model"] == "tiny-gpt-neox" and new["n_probes"] == 5 and new["icp"]["batch_size"] == 4
    assert new["influence"]["projection_dim"] is None and cfg["n_probes"] == 100  # original untouched
    assert launch_prefix({**new, "num_processes": 2})[:4] == ["torchrun", "--standalone", "--nproc_per_node", "2"]
    assert launch_prefix({**new, "launcher": "none"})[1:] == ["-m", "icp_influence"]
    for bad in (["nokey"], ["unknown_key=1"], ["icp.nope=1"], ["model.x=1"]):
        with pytest.raises(ConfigError):
            apply_overrides(cfg, bad)
    with pytest.raises(ConfigError):
        load_config("paper_alpaca_pythia1b", ["launcher=slurm"])
    with pytest.raises(ConfigError):
        config_path("no_such_recipe")


def test_prepare_picks_kmeans_probes_and_resumes(tmp_path):
    from icp_influence.data import load_alpaca
    from icp_influence.models import load_model
    from icp_influence.probes import select_probes_kmeans

    cfg = load_config("paper_alpaca_pythia1b", [f"pool={FIXTURE}", "model=tiny-gpt-neox", "n_probes=5",
                                                f"run_dir={tmp_path / 'run'}"])
    model, tok = load_model("tiny-gpt-neox", device="cpu")
    out = prepare(cfg, model=model, tokenizer=tok, progress=False)
    assert not out["reused"] and out["n_pool"] == 50 and out["n_probes"] == 5
    probes = load_alpaca(out["probes"])
    expected = select_probes_kmeans(model, tok, load_alpaca(FIXTURE), 5, seed=0)
    assert probes.ids == expected.ids
    assert load_alpaca(out["pool"]).ids == load_alpaca(FIXTURE).ids
    again = prepare(cfg, model=model, tokenizer=tok, progress=False)
    assert again["reused"]


def _has_command(name: str) -> bool:
    from icp_influence.cli import build_parser

    sub = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"][0]
    return name in sub.choices


@pytest.mark.slow
def test_recipe_end_to_end_sharded(tmp_path):
    """The paper config, overridden to a tiny model, the 50-record fixture and 5 probes, with 2 processes."""
    assert _has_command("score") and _has_command("merge") and _has_command("recipe")
    launcher = "torchrun" if shutil.which("torchrun") or (Path(sys.executable).parent / "torchrun").exists() else "none"
    run = tmp_path / "run"
    args = [sys.executable, "-m", "icp_influence", "recipe", "paper_alpaca_pythia1b",
            "-o", "model=tiny-gpt-neox", "-o", f"pool={FIXTURE}", "-o", "n_probes=5", "-o", f"run_dir={run}",
            "-o", f"launcher={launcher}", "-o", "num_processes=2", "-o", "influence.projection_dim=null",
            "-o", "icp.chunk_size=8", "-o", "compare.n_boot=50", "--json"]
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["merge"]["icp"]["shape"] == [50, 5] and result["merge"]["influence"]["shape"] == [50, 5]
    cmp_ = json.loads((run / "compare.json").read_text())["summary"]
    assert cmp_["n"] == 50 and cmp_["n_probes"] == 5 and cmp_["two_way"] and -1 <= cmp_["spearman"] <= 1

    # the sharded, chunked matrices equal a direct in-process computation
    from icp_influence.data import load_alpaca
    from icp_influence.icp import loglik_matrix
    from icp_influence.valuators import InnerProduct
    from icp_influence.models import load_model
    from icp_influence.scores import ScoreMatrix

    pool, probes = load_alpaca(run / "pool.jsonl"), load_alpaca(run / "probes.jsonl")
    model, tok = load_model("tiny-gpt-neox", device="cpu")
    icp = ScoreMatrix.load(run / "icp" / "scores")
    ref = loglik_matrix(model, tok, list(pool), list(probes), template="paper")
    np.testing.assert_allclose(icp.values, ref.delta, atol=1e-4)
    inf = ScoreMatrix.load(run / "influence" / "scores")
    from icp_influence.compare import agreement

    again = agreement((icp, "win_rate"), (inf, "mean"), n_boot=50)
    assert cmp_["spearman"] == pytest.approx(again.spearman) and cmp_["ci"] == pytest.approx(list(again.ci))
    ip = InnerProduct(model, tok, params="paper")
    np.testing.assert_allclose(inf.values, ip.score(list(pool), list(probes)).values, rtol=1e-4,
                               atol=1e-6 * np.abs(inf.values).max())
    assert len(list((run / "icp" / "chunks").glob("chunk-*.safetensors"))) == 7  # ceil(50 / 8)

    # resumable: running again recomputes nothing and gives the same matrix
    mtimes = {p: p.stat().st_mtime_ns for p in (run / "icp" / "chunks").glob("*")}
    proc2 = subprocess.run([*args, "--steps", "icp"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in (run / "icp" / "chunks").glob("*")} == mtimes
