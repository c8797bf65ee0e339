"""Figures of notebook 07: benchmark results, gradient throughput, projection cost, cost vs probes,
memory vs pool size, profiles, extrapolation."""
from __future__ import annotations

import textwrap
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns

from icp_course.style import color, figure, labels

from icp_influence.benchmarks.icp_throughput import GOALS as _ICP_GOALS, round_bounds, speedup_at

SPEEDUP_GOALS = {"icp-throughput": _ICP_GOALS["speedup"], "captum": 3.0}
#: The cost benchmark's valuators: (key in its rows, label, course colour, marker).
COST_VALUATORS = (("icp", "ICP (cached)", color("icp_win_rate"), "o-"),
                  ("inner_product", "inner product (probe grads cached)", color("ip"), "s-"),
                  ("ekfac", "EK-FAC (factors fitted once)", color("ekfac"), "^-"),
                  ("one_step", "one-step ground truth", color("gt_sgd_small"), "D-"))


def _bars(ax, x, y, colours, *, fmt: str | None = None, **kw):
    """One bar per category (seaborn), each in its own colour, labelled with its value (``fmt``)."""
    sns.barplot(x=list(x), y=list(y), hue=list(x), palette=dict(zip(x, colours)), legend=False, saturation=1, ax=ax,
                **kw)
    if fmt:
        for bars in ax.containers:
            ax.bar_label(bars, fmt=fmt)
        ax.margins(y=0.12)    # room for the labels above the tallest bar


def plot_speedups(results: Mapping[str, Mapping[str, Any]], ax=None):
    """Measured speedup of each speed benchmark against its goal (dashed)."""
    names = [n for n in SPEEDUP_GOALS if n in results]
    _, ax = figure(figsize=(6, 3.2), ax=ax)
    vals = [float(results[n]["speedup"]) for n in names]
    _bars(ax, names, vals, ["tab:green" if v >= SPEEDUP_GOALS[n] else "tab:orange" for n, v in zip(names, vals)],
          fmt="%.2f×")
    for i, n in enumerate(names):
        ax.hlines(SPEEDUP_GOALS[n], i - 0.4, i + 0.4, colors="k", linestyles="--", label="goal" if i == 0 else None)
    ax.axhline(1, color="grey", lw=0.8)
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
    _, ax = figure(figsize=(6, 3.6), ax=ax)
    e = np.linspace(0.0, max(1.2, max(need) * 1.05), 200)
    for i, b in enumerate(bounds):
        ax.plot(e, speedup_at(e, flop_ratio=b["flop_ratio"], reference_efficiency=b["reference_efficiency"]),
                color=color("icp_win_rate"), lw=1, alpha=0.7,
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
    _, ax = figure(figsize=(4.8, 3.2), ax=ax)
    _bars(ax, ["per-example gradients", f"matmul {result.get('matmul_n', 2048)}²"],
          [result["achieved_gflops"], result["matmul_gflops"]], [color("ip"), "tab:grey"], fmt="%.1f")
    ax.set_ylabel("throughput (GFLOP/s)")
    ax.set_title(f"efficiency = {result['efficiency']:.2f} (goal 0.4)")
    return ax.figure


def plot_projection_cost(result: Mapping[str, Any], ax=None):
    """Seconds per example to project a gradient to k dims: Gaussian vs CountSketch (log scale),
    for the benchmark's selection and for the "paper" selection."""
    proj = result["projection"]
    _, ax = figure(figsize=(6, 3.2), ax=ax)
    kinds = [k for k in ("gaussian", "countsketch") if k in proj]
    p0 = proj[kinds[0]]
    where = [f"q/v, D = {p0['D_qv'] / 1e6:.1f} M", f"all linear, D = {p0['D_paper'] / 1e6:.0f} M"]
    df = pd.DataFrame([{"where": w, "kind": f"{kind} (k = {proj[kind]['k']})", "s": proj[kind][col]} for kind in kinds
                       for w, col in zip(where, ("seconds_per_example_qv", "seconds_per_example_paper"))])
    sns.barplot(data=df, x="where", y="s", hue="kind", saturation=1, ax=ax,
                palette=["tab:orange" if k == "gaussian" else "tab:green" for k in kinds])
    for bars in ax.containers:
        ax.bar_label(bars, fmt="%.3g s", fontsize=8)
    labels(ax, "parameters whose gradient is projected", "seconds per example (log)", "Projecting one gradient",
           legend=True, yscale="log")
    return ax.figure


def plot_cost_vs_probes(result: Mapping[str, Any], ax=None):
    """Seconds per candidate against the number of probes (log-log) for each valuator measured."""
    rows = result["rows"]
    _, ax = figure(figsize=(5.8, 3.8), ax=ax)
    x = [r["n_probes"] for r in rows]
    for key, label, c, style in COST_VALUATORS:
        if all(f"{key}_s" in r for r in rows):
            ys = [r[f"{key}_s"] for r in rows]
            ax.plot(x, [y if y and y > 0 else np.nan for y in ys], style, label=label, color=c)
    labels(ax, "number of probes", "seconds per candidate", "Cost per candidate (probe side excluded)", legend=True,
           xscale="log", yscale="log")
    return ax.figure


def plot_memory(result: Mapping[str, Any], ax=None):
    """Peak RSS growth while scoring each pool size, against what holding the pool would take."""
    rows = result["rows"]
    _, ax = figure(figsize=(5.5, 3.4), ax=ax)
    names = [f"{r['n_candidates']} candidates" for r in rows]
    _bars(ax, names, [r["peak_mb"] for r in rows], [color("ip")] * len(rows), fmt="%.0f MB")
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
    _, ax = figure(figsize=(6, 0.35 * len(ops) + 1.2), ax=ax)
    sns.barplot(x=[o["self_ms"] for o in ops], y=[o["name"] for o in ops], color="tab:purple", saturation=1, orient="h",
                ax=ax)
    ax.set_xlabel("self CPU time (ms)")
    ax.set_title(textwrap.fill(title, 34), loc="right")   # right-aligned: long operator names push the axes right
    return ax.figure


def plot_extrapolation(est: Mapping[str, Any], ax=None):
    """GPU-hours at the chosen scale: our estimates vs the authors' reported inner product."""
    _, ax = figure(figsize=(7, 3.4), ax=ax)
    # one colour per valuator; the naive ICP and the authors' inner product hatched beside ours
    keys = [("icp_cached_gpu_hours", "ICP cached", "icp_win_rate"),
            ("icp_naive_gpu_hours", "ICP naive", "icp_win_rate"),
            ("ip_gpu_hours", "IP (ours)", "ip"), ("ekfac_gpu_hours", "EK-FAC", "ekfac"),
            ("one_step_gpu_hours", "one-step", "gt_sgd_small"), ("authors_ip_a6000_hours", "IP (authors, A6000)", "ip")]
    keys = [k for k in keys if k[0] in est]
    _bars(ax, [k[1] for k in keys], [est[k[0]] for k in keys], [color(k[2]) for k in keys], fmt="%.1f")
    for bar, k in zip(sorted(ax.patches, key=lambda b: b.get_x()), keys):
        bar.set_hatch("//" if k[0] in ("icp_naive_gpu_hours", "authors_ip_a6000_hours") else None)
    ax.set_yscale("log")
    ax.set_ylabel("GPU-hours (log scale)")
    ax.set_title(f"{est['n_candidates']:,} candidates × {est['n_probes']} probes "
                 f"@ {est['peak_tflops']:.0f} TFLOP/s × {est['efficiency']:.2f}")
    ax.tick_params(axis="x", labelsize=8)
    return ax.figure
