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


def test_console_script_installed():
    import shutil

    exe = shutil.which("icp-influence", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe is not None
    r = subprocess.run([exe, "run", "nope"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
