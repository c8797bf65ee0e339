"""Benchmarks registered with :func:`icp_influence.registry.benchmark` (auto-discovered).

Every figure a benchmark reports is a ratio or comparison measured within one run, after
a warm-up, as the median of several repetitions (see :func:`icp_influence.benchmarks._timing.median_time`).
Public helpers for notebooks: :func:`load_results` (the saved benchmark JSON),
:func:`bench_lm` (the seeded GPT-NeoX the benchmarks time) and :func:`synthetic_split`.
"""
from ._common import bench_lm, load_results, synthetic_split

__all__ = ["bench_lm", "load_results", "synthetic_split"]
