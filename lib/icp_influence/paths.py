"""Where the project's files live — the one place that locates data and results.

* :func:`repo_root` — the source checkout this package was imported from (an editable
  install or ``lib/`` on the path), else the nearest ancestor of the working directory
  that is a checkout (notebooks run in ``notebooks/``), else ``None``.
* :func:`data_dir` — ``$ICP_DATA_DIR``, else ``<repo>/data``, else the copy installed
  with the package (``<prefix>/share/icp-influence``), else the user cache.
* :func:`results_dir` — ``$ICP_RESULTS_DIR``, else ``<data_dir>/results`` when it can be
  written, else the user cache.
* :func:`bench_results_dir` — ``$ICP_BENCH_RESULTS``, else ``<repo>/benchmarks/results``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def _is_checkout(d: Path) -> bool:
    return (d / "pyproject.toml").is_file() and (d / "lib" / "icp_influence").is_dir()


def repo_root() -> Path | None:
    """The source checkout, or ``None`` (a plain ``pip install .`` outside a checkout)."""
    here = Path(__file__).resolve()
    if len(here.parents) > 2 and _is_checkout(here.parents[2]):
        return here.parents[2]
    cwd = Path.cwd().resolve()
    for d in (cwd, *cwd.parents):
        if _is_checkout(d):
            return d
    return None


def _from_env(var: str) -> Path | None:
    """The folder named by environment variable ``var``, when it is set and not empty."""
    value = os.environ.get(var)
    return Path(value) if value else None


def _installed_share() -> Path:
    return Path(sys.prefix) / "share" / "icp-influence"


def cache_dir() -> Path:
    """Where dequantised weights and other caches live (``ICP_CACHE_DIR`` overrides)."""
    root = os.environ.get("ICP_CACHE_DIR")
    path = Path(root) if root else Path.home() / ".cache" / "icp-influence"
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_dir() -> Path:
    """The folder holding ``instructions/``, ``regression_transformer/`` and ``results/``."""
    if (env := _from_env("ICP_DATA_DIR")) is not None:
        return env
    root = repo_root()
    if root is not None:
        return root / "data"
    if _installed_share().is_dir():
        return _installed_share()
    return cache_dir() / "data"


def results_dir() -> Path:
    """Cached experiment results (``data/results`` in a checkout)."""
    if (env := _from_env("ICP_RESULTS_DIR")) is not None:
        return env
    d = data_dir() / "results"
    if os.access(d if d.exists() else d.parent if d.parent.exists() else Path.home(), os.W_OK):
        return d
    return cache_dir() / "results"


def bench_results_dir() -> Path:
    """Where ``benchmarks/run_all.sh`` saves benchmark JSON (``<repo>/benchmarks/results``)."""
    if (env := _from_env("ICP_BENCH_RESULTS")) is not None:
        return env
    root = repo_root()
    if root is not None:
        return root / "benchmarks" / "results"
    return cache_dir() / "benchmarks"


def fixture(*parts: str) -> Path | None:
    """``<repo>/tests/fixtures/<parts>`` when running from a checkout, else ``None``."""
    root = repo_root()
    return root.joinpath("tests", "fixtures", *parts) if root is not None else None
