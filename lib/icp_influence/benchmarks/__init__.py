"""Benchmarks registered with :func:`icp_influence.registry.benchmark` (auto-discovered).

Every figure a benchmark reports is a ratio or comparison measured within one run, after
a warm-up, as the median of several repetitions (see :func:`icp_influence.benchmarks._timing.median_time`).
"""
