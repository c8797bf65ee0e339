"""Figures of notebook 07: benchmark results, cost vs probes, scaling, profiles, extrapolation."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

SPEEDUP_GOALS = {"icp-throughput": 3.0, "grads": 3.0, "captum": 3.0}


def plot_speedups(results: Mapping[str, Mapping[str, Any]], ax=None):
    """Measured speedup of each speed benchmark against its goal (dashed)."""
    names = [n for n in SPEEDUP_GOALS if n in results]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    vals = [float(results[n]["speedup"]) for n in names]
    x = np.arange(len(names))
    bars = ax.bar(x, vals, color=["tab:green" if v >= SPEEDUP_GOALS[n] else "tab:orange" for n, v in zip(names, vals)])
    for i, n in enumerate(names):
        ax.hlines(SPEEDUP_GOALS[n], i - 0.4, i + 0.4, colors="k", linestyles="--", label="goal" if i == 0 else None)
    ax.bar_label(bars, fmt="%.2f×")
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_xticks(x, names)
    ax.set_ylabel("speedup (baseline time / our time)")
    ax.set_title("Speed benchmarks (median of repetitions)")
    if names:
        ax.legend()
    return ax.figure


def plot_flops(result: Mapping[str, Any], ax=None):
    """Achieved ICP GFLOP/s next to the machine's dense matmul GFLOP/s."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2))
    vals = [result["achieved_gflops"], result["matmul_gflops"]]
    bars = ax.bar(["ICP scoring", f"matmul {result['matmul_n']}²"], vals, color=["tab:blue", "tab:grey"])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("throughput (GFLOP/s)")
    ax.set_title(f"efficiency = {result['efficiency']:.2f} (goal 0.5)")
    return ax.figure


def plot_cost_vs_probes(result: Mapping[str, Any], ax=None):
    """Seconds per candidate against the number of probes (log-log) for each valuator."""
    rows = result["rows"]
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.6))
    x = [r["n_probes"] for r in rows]
    for key, label, style in (("icp_s", "ICP (cached)", "o-"), ("inner_product_s", "inner product (probe grads cached)", "s-"),
                              ("ekfac_s", "EK-FAC (factors fitted once)", "^-")):
        ax.plot(x, [r[key] for r in rows], style, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of probes")
    ax.set_ylabel("seconds per candidate")
    ax.set_title("Cost per candidate")
    ax.legend(fontsize=8)
    return ax.figure


def plot_scaling(result: Mapping[str, Any]):
    """Wall time (log-log, with fitted exponents) and peak RSS growth against pool size."""
    rows = result["rows"]
    n = [r["pool_size"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(n, [r["icp_s"] for r in rows], "o-", label=f"ICP (slope {result['icp_exponent']:.2f})")
    a1.plot(n, [r["ip_s"] for r in rows], "s-", label=f"projected inner product (slope {result['ip_exponent']:.2f})")
    a1.set_xscale("log", base=2)
    a1.set_yscale("log")
    a1.set_xlabel("pool size (candidates)")
    a1.set_ylabel("wall time (s)")
    a1.legend(fontsize=8)
    a1.set_title("Time vs pool size")
    a2.plot(n, [r["icp_peak_mb"] for r in rows], "o-", label="ICP")
    a2.plot(n, [r["ip_peak_mb"] for r in rows], "s-", label="projected inner product")
    a2.set_xscale("log", base=2)
    a2.set_xlabel("pool size (candidates)")
    a2.set_ylabel("peak RSS growth (MB)")
    a2.legend(fontsize=8)
    a2.set_title("Memory vs pool size")
    fig.tight_layout()
    return fig


def plot_profile(ops: Sequence[Mapping[str, Any]], title: str = "profile", ax=None):
    """Horizontal bars: self CPU time (ms) of the top operators."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.35 * len(ops) + 1.2))
    names = [o["name"] for o in ops][::-1]
    ms = [o["self_ms"] for o in ops][::-1]
    ax.barh(names, ms, color="tab:purple")
    ax.set_xlabel("self CPU time (ms)")
    ax.set_title(title)
    return ax.figure


def plot_extrapolation(est: Mapping[str, Any], ax=None):
    """GPU-hours at the chosen scale: our estimates vs the authors' reported inner product."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.4))
    labels = ["ICP cached", "ICP naive", "IP (ours)", "IP (authors, A6000)"]
    vals = [est["icp_cached_gpu_hours"], est["icp_naive_gpu_hours"], est["ip_gpu_hours"], est["authors_ip_a6000_hours"]]
    bars = ax.bar(labels, vals, color=["tab:blue", "tab:cyan", "tab:orange", "tab:red"])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_yscale("log")
    ax.set_ylabel("GPU-hours (log scale)")
    ax.set_title(f"{est['n_candidates']:,} candidates × {est['n_probes']} probes "
                 f"@ {est['peak_tflops']:.0f} TFLOP/s × {est['efficiency']:.2f}")
    ax.tick_params(axis="x", labelsize=8)
    return ax.figure
