"""How many torch threads a notebook takes: every core other work leaves idle, at least one
(on a busy 2-core machine two threads are several times slower than one)."""
from __future__ import annotations

import os

import pytest
import torch

from icp_influence import utils
from icp_influence.errors import ConfigError


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("busy, cores, want", [(0.0, 2, 2), (0.4, 2, 2), (0.9, 2, 1), (2.0, 2, 1), (3.5, 2, 1),
                                               (1.2, 8, 7), (0.0, 8, 8)])
def test_idle_cores_become_threads(monkeypatch, restore_threads, busy, cores, want):
    monkeypatch.delenv("ICP_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(utils, "busy_cores", lambda interval=0.3: busy)
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    assert utils.fit_threads(verbose=False) == want
    assert torch.get_num_threads() == want


def test_a_fixed_count_wins_and_omp_caps_the_default(monkeypatch, restore_threads, capsys):
    monkeypatch.setattr(utils, "busy_cores", lambda interval=0.3: 0.0)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.delenv("ICP_THREADS", raising=False)
    assert utils.fit_threads() == 2
    assert "torch CPU threads: 2 (4 cores, 0.0 busy" in capsys.readouterr().out
    monkeypatch.setenv("ICP_THREADS", "3")
    assert utils.fit_threads(verbose=False) == 3 and torch.get_num_threads() == 3
    assert utils.fit_threads(1, verbose=False) == 1
    monkeypatch.delenv("ICP_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "3,1")  # OpenMP's nested form: the first level counts
    assert utils.fit_threads(verbose=False) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "auto")  # not a count: torch's default (every core) stands
    assert utils.fit_threads(verbose=False) == 4
    with pytest.raises(ConfigError, match="threads must be"):
        utils.fit_threads(0)


def test_busy_cores_is_a_measurement_in_range():
    b = utils.busy_cores(interval=0.05)
    assert 0.0 <= b <= (os.cpu_count() or 1) + 1e-9


def test_one_thread_setting_for_notebooks_cli_and_benchmarks(monkeypatch):
    import torch

    from icp_influence.benchmarks._common import configure_threads
    from icp_influence.errors import ConfigError
    from icp_influence.utils import THREADS_ENV, threads_from_env, torch_threads

    before = torch.get_num_threads()
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert threads_from_env() is None
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setenv(THREADS_ENV, "1")
    try:
        assert configure_threads()["threads"] == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ConfigError, match="ICP_THREADS must be a whole number"):
            threads_from_env()
