"""The command line: list, run, bench, error handling."""
from __future__ import annotations

import json
import subprocess
import sys

from icp_influence.cli import main


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "icp_influence", *args], capture_output=True, text=True, timeout=300)


def test_list_names_experiments_and_benchmarks():
    r = run_cli("list", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout.strip().splitlines()[-1])
    assert "embedded-model" in data["experiments"]
    assert "experiments (" in r.stdout and "benchmarks (" in r.stdout


def test_unknown_experiment_exits_2_without_traceback():
    r = run_cli("run", "nope")
    assert r.returncode == 2
    assert "Unknown experiment 'nope'" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("bench", "nope")
    assert r.returncode == 2 and "Unknown benchmark 'nope'" in r.stderr


def test_run_json_last_line(capsys):
    rc = main(["run", "embedded-model", "--smoke", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    result = json.loads(out[-1])
    assert "Paris" in result["answer"]
    assert result["ll_with_demo"] > result["ll_zero_shot"] - 50  # finite numbers
    assert result["n_answer_tokens"] >= 1
    assert set(result["code_version"]) >= {"version", "commit"}  # the code that made a saved result


def test_console_script_installed():
    import shutil

    exe = shutil.which("icp-influence", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe is not None
    r = subprocess.run([exe, "run", "nope"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2


def test_run_and_score_fit_torch_threads_and_say_so_on_stderr(capsys, monkeypatch):
    import torch

    from icp_influence import utils

    monkeypatch.delenv("ICP_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(utils, "busy_cores", lambda interval=0.3: 1.0)  # one core busy elsewhere
    monkeypatch.setattr(utils.os, "cpu_count", lambda: 2)
    torch.set_num_threads(2)
    assert main(["score", "--list"]) == 0
    err = capsys.readouterr().err
    assert torch.get_num_threads() == 1 and "torch CPU threads: 1 (2 cores, 1.0 busy" in err
    assert main(["--threads", "2", "score", "--list"]) == 0
    assert torch.get_num_threads() == 2 and "torch CPU threads: 2 (set by the caller" in capsys.readouterr().err
    monkeypatch.setenv("ICP_THREADS", "1")
    assert main(["run", "nope"]) == 2  # fitted before the unknown name fails
    assert torch.get_num_threads() == 1 and "(ICP_THREADS;" in capsys.readouterr().err
    torch.set_num_threads(2)
    assert main(["list"]) == 0 and torch.get_num_threads() == 2  # no torch work: untouched
    assert main(["--threads", "1", "list"]) == 2
    assert "--threads applies to run and score, not 'list'" in capsys.readouterr().err
    assert main(["--threads", "0", "score", "--list"]) == 2
    assert "threads must be ≥ 1" in capsys.readouterr().err
    assert main(["score", "--list", "--threads", "1"]) == 0 and torch.get_num_threads() == 1  # after the command too
    torch.set_num_threads(2)
    assert main(["run", "nope", "--threads", "1"]) == 2 and torch.get_num_threads() == 1
    monkeypatch.setenv("ICP_THREADS", "two")
    assert main(["score", "--list"]) == 2
    err = capsys.readouterr().err
    assert "ICP_THREADS must be a whole number ≥ 1, got 'two'" in err and "Traceback" not in err


def test_code_version_ignores_written_results_but_not_code(tmp_path, monkeypatch):
    """A run that writes a result file must not mark the next run's code as changed; a changed
    source file must."""
    import subprocess

    from icp_influence import utils

    def git(*a):
        subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "data" / "results").mkdir(parents=True)
    (tmp_path / "data" / "results" / "r.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(utils, "repo_root", lambda: tmp_path)
    clean = utils.code_version()["commit"]
    assert clean and not clean.endswith("+dirty")
    (tmp_path / "data" / "results" / "r.json").write_text('{"a": 1}')
    assert utils.code_version()["commit"] == clean
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "b.json").write_text("{}")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "bench")
    clean = utils.code_version()["commit"]
    (tmp_path / "benchmarks" / "results" / "b.json").write_text('{"b": 2}')
    assert utils.code_version()["commit"] == clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert utils.code_version()["commit"] == clean + "+dirty"
