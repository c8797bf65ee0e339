"""Figures of notebook 07: benchmark results, gradient throughput, projection cost, cost vs probes,
memory vs pool size, profiles, extrapolation."""
from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from icp_course.style import VALUATOR_COLORS, labels

from icp_influence.benchmarks.icp_throughput import GOALS as _ICP_GOALS, round_bounds, speedup_at

SPEEDUP_GOALS = {"icp-throughput": _ICP_GOALS["speedup"], "captum": 3.0}
#: The cost benchmark's valuators: (key in its rows, label, course colour, marker).
COST_VALUATORS = (("icp", "ICP (cached)", VALUATOR_COLORS["icp_win_rate"], "o-"),
                  ("inner_product", "inner product (probe grads cached)", VALUATOR_COLORS["ip"], "s-"),
                  ("ekfac", "EK-FAC (factors fitted once)", VALUATOR_COLORS["ekfac"], "^-"),
                  ("one_step", "one-step ground truth", VALUATOR_COLORS["gt_sgd_small"], "D-"))


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


def plot_speedup_bound(result: Mapping[str, Any], goal: float = SPEEDUP_GOALS["icp-throughput"], ax=None):
    """ICP's speed-up over the one-sequence reference as a function of the engine's efficiency
    ``e``: per round of the benchmark the line ``flop_ratio · e / reference_efficiency`` (an
    identity of the definitions) with the measured point on it, the goal, and ``e = 1`` (the
    dense matmul rate measured in the same round)."""
    bounds = round_bounds(result, goal)
    need = [b["efficiency_needed"] for b in bounds]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6))
    e = np.linspace(0.0, max(1.2, max(need) * 1.05), 200)
    for i, b in enumerate(bounds):
        ax.plot(e, speedup_at(e, flop_ratio=b["flop_ratio"], reference_efficiency=b["reference_efficiency"]),
                color=VALUATOR_COLORS["icp_win_rate"], lw=1, alpha=0.7,
                label="each round: FLOP ratio × e ÷ reference's e" if i == 0 else None)
    ax.plot([b["efficiency"] for b in bounds], [b["speedup"] for b in bounds], "o", color="k", ms=5,
            label=f"measured rounds (median {result['speedup']:.2f}×)")
    ax.axvspan(1.0, e[-1], color="0.85", label="e > 1: faster than the dense matmul itself")
    ax.axhline(goal, color="k", ls="--", label=f"goal {goal:g}× (needs e = {min(need):.2f}–{max(need):.2f})")
    ax.set_xlim(0, e[-1])
    ax.set_ylim(0, max(goal, float(result["speedup"])) * 1.25)
    ax.set_xlabel("engine efficiency e (achieved FLOP/s ÷ dense matmul FLOP/s)")
    ax.set_ylabel("speed-up over the reference")
    ax.set_title("What a cache can buy: FLOPs saved × efficiency gained")
    ax.legend(loc="lower right", fontsize=8, framealpha=1.0)
    return ax.figure


def plot_grad_throughput(result: Mapping[str, Any], ax=None):
    """Achieved GFLOP/s of per-example gradients next to the machine's dense matmul GFLOP/s."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4.8, 3.2))
    vals = [result["achieved_gflops"], result["matmul_gflops"]]
    bars = ax.bar(["per-example gradients", f"matmul {result.get('matmul_n', 2048)}²"], vals,
                  color=[VALUATOR_COLORS["ip"], "tab:grey"])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_ylabel("throughput (GFLOP/s)")
    ax.set_title(f"efficiency = {result['efficiency']:.2f} (goal 0.4)")
    return ax.figure


def plot_projection_cost(result: Mapping[str, Any], ax=None):
    """Seconds per example to project a gradient to k dims: Gaussian vs CountSketch (log scale),
    for the benchmark's selection and for the "paper" selection."""
    proj = result["projection"]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    kinds = [k for k in ("gaussian", "countsketch") if k in proj]
    x = np.arange(2)
    w = 0.38
    for i, kind in enumerate(kinds):
        p = proj[kind]
        vals = [p["seconds_per_example_qv"], p["seconds_per_example_paper"]]
        bars = ax.bar(x + (i - 0.5) * w, vals, w, label=f"{kind} (k = {p['k']})",
                      color="tab:orange" if kind == "gaussian" else "tab:green")
        ax.bar_label(bars, fmt="%.3g s", fontsize=8)
    p0 = proj[kinds[0]]
    ax.set_xticks(x, [f"q/v, D = {p0['D_qv'] / 1e6:.1f} M", f"all linear, D = {p0['D_paper'] / 1e6:.0f} M"])
    labels(ax, "parameters whose gradient is projected", "seconds per example (log)", "Projecting one gradient",
           legend=True, yscale="log")
    return ax.figure


def plot_cost_vs_probes(result: Mapping[str, Any], ax=None):
    """Seconds per candidate against the number of probes (log-log) for each valuator measured."""
    rows = result["rows"]
    if ax is None:
        _, ax = plt.subplots(figsize=(5.8, 3.8))
    x = [r["n_probes"] for r in rows]
    for key, label, color, style in COST_VALUATORS:
        if all(f"{key}_s" in r for r in rows):
            ys = [r[f"{key}_s"] for r in rows]
            ax.plot(x, [y if y and y > 0 else np.nan for y in ys], style, label=label, color=color)
    labels(ax, "number of probes", "seconds per candidate", "Cost per candidate (probe side excluded)", legend=True,
           xscale="log", yscale="log")
    return ax.figure


def plot_memory(result: Mapping[str, Any], ax=None):
    """Peak RSS growth while scoring each pool size, against what holding the pool would take."""
    rows = result["rows"]
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.4))
    labels = [f"{r['n_candidates']} candidates" for r in rows]
    bars = ax.bar(labels, [r["peak_mb"] for r in rows], color=VALUATOR_COLORS["ip"])
    ax.bar_label(bars, fmt="%.0f MB")
    exp = result.get("expected_mb", {})
    if "if_the_pool_were_held" in exp:
        ax.axhline(exp["if_the_pool_were_held"], color="k", ls="--", lw=1,
                   label=f"{rows[-1]['n_candidates']} gradients held ({exp['if_the_pool_were_held']:.0f} MB)")
    if "probe_gradients" in exp and "one_chunk_of_gradients" in exp:
        ax.axhline(exp["probe_gradients"] + exp["one_chunk_of_gradients"], color="tab:grey", ls=":", lw=1,
                   label="probe gradients + one chunk")
    ax.set_ylabel("peak RSS growth (MB)")
    ax.set_title(f"Memory vs pool size: ratio {result['peak_ratio']:.2f} (goal ≤ 1.2)")
    ax.legend(fontsize=8)
    return ax.figure


def plot_profile(ops: Sequence[Mapping[str, Any]], title: str = "profile", ax=None):
    """Horizontal bars: self CPU time (ms) of the top operators."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.35 * len(ops) + 1.2))
    names = [o["name"] for o in ops][::-1]
    ms = [o["self_ms"] for o in ops][::-1]
    ax.barh(names, ms, color="tab:purple")
    ax.set_xlabel("self CPU time (ms)")
    ax.set_title(textwrap.fill(title, 34), loc="right")   # right-aligned: long operator names push the axes right
    return ax.figure


def plot_extrapolation(est: Mapping[str, Any], ax=None):
    """GPU-hours at the chosen scale: our estimates vs the authors' reported inner product."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.4))
    keys = [("icp_cached_gpu_hours", "ICP cached", VALUATOR_COLORS["icp_win_rate"]),
            ("icp_naive_gpu_hours", "ICP naive", "tab:cyan"),
            ("ip_gpu_hours", "IP (ours)", VALUATOR_COLORS["ip"]),
            ("ekfac_gpu_hours", "EK-FAC", VALUATOR_COLORS["ekfac"]),
            ("one_step_gpu_hours", "one-step", VALUATOR_COLORS["gt_sgd_small"]),
            ("authors_ip_a6000_hours", "IP (authors, A6000)", "tab:red")]
    keys = [k for k in keys if k[0] in est]
    bars = ax.bar([k[1] for k in keys], [est[k[0]] for k in keys], color=[k[2] for k in keys])
    ax.bar_label(bars, fmt="%.1f")
    ax.set_yscale("log")
    ax.set_ylabel("GPU-hours (log scale)")
    ax.set_title(f"{est['n_candidates']:,} candidates × {est['n_probes']} probes "
                 f"@ {est['peak_tflops']:.0f} TFLOP/s × {est['efficiency']:.2f}")
    ax.tick_params(axis="x", labelsize=8)
    return ax.figure
