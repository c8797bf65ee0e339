"""Exercises of notebook 07 (cost and scale)."""
from __future__ import annotations

from . import exercise


@exercise("07.crossover", hint="ICP costs a·P per candidate, inner product b + c·P: solve a·P = b + c·P for P.")
def _crossover(*, icp_per_probe_s: float, ip_fixed_s: float, ip_per_probe_s: float):
    from icp_influence.cost import crossover_probes

    return crossover_probes(icp_per_probe_s, ip_fixed_s, ip_per_probe_s)


@exercise("07.authors_total", hint="9 GPU-hours per 5,778-candidate partition, scaled to the whole pool.")
def _authors_total(*, n_candidates: int = 52_002):
    from icp_influence.cost import paper_ip_gpu_hours

    return paper_ip_gpu_hours(n_candidates)


@exercise("07.gpu_hours", hint="hours = FLOPs / (peak TFLOP/s × 1e12 × efficiency) / 3600.")
def _gpu_hours(*, flops: float, peak_tflops: float, efficiency: float):
    from icp_influence.cost import gpu_hours

    return gpu_hours(flops, peak_tflops, efficiency)
