"""Benchmarks' helpers, the cost model, notebook 07's plots/widget/exercises."""
from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import numpy as np
import pytest
import torch

from icp_influence.benchmarks import _timing
from icp_influence.cost import (PAPER, PYTHIA_1B, CostModel, crossover_probes, extrapolate, gpu_hours,
                                mean_tokens, paper_ip_gpu_hours, top_operators)
from icp_influence.errors import ConfigError

BENCH_NAMES = {"icp-throughput", "grads", "captum", "flops", "cost", "scaling"}


def test_all_benchmarks_registered():
    from icp_influence.registry import entries

    assert BENCH_NAMES <= set(entries("benchmark"))


def test_median_time_is_the_median_of_samples():
    delays = iter([0.0, 0.03, 0.01, 0.02])  # first is the warm-up
    t = _timing.median_time(lambda: time.sleep(next(delays)), repeats=3, warmup=1)
    assert len(t.samples) == 3
    assert t.median == sorted(t.samples)[1]
    assert 0.018 <= t.median < 0.03


def test_loglog_slope_exact():
    x = np.array([2, 4, 8, 16, 32])
    assert _timing.loglog_slope(x, 3 * x**1.5) == pytest.approx(1.5, abs=1e-9)


def test_peak_rss_sees_a_numpy_allocation():
    with _timing.PeakRSS() as m:
        a = np.ones(40 * 2**20 // 8)  # 40 MB, touched
        a += 1
        time.sleep(0.05)
    del a
    assert m.peak_mb >= 30


def test_matmul_gflops_counts_2n3():
    r = _timing.matmul_gflops(128, repeats=3, warmup=1)
    assert r["gflops"] == pytest.approx(2 * 128**3 / r["median_s"] / 1e9)


def test_cost_model_formulas():
    m = CostModel(n_nonembed=100, hidden=4, vocab=10, t_prefix=5, t_suffix=3, t_answer=2, t_example=7)
    assert m.icp_cached_flops(2) == 2 * 100 * (5 + 2 * 3) + 2 * 4 * 10 * 2 * 2
    assert m.icp_naive_flops(2) == 2 * (200 + 80) * 8
    assert m.gradient_flops() == 3 * (200 + 80) * 7
    assert m.ip_flops(3) == m.gradient_flops() + 2 * 100 * 3
    m.projection_dim = 16
    assert m.ip_flops(3) == m.gradient_flops() + 2 * 100 * 3 + 2 * 100 * 16


def test_paper_numbers_and_extrapolation():
    assert paper_ip_gpu_hours() == pytest.approx(9.0 * 52_002 / 5_778)
    assert paper_ip_gpu_hours(5_778) == pytest.approx(9.0)
    assert PYTHIA_1B["n_nonembed"] < PYTHIA_1B["n_params"]
    e1 = extrapolate(10_000, 100)
    e2 = extrapolate(20_000, 100)
    # the per-candidate parts double; the one-off probe side does not
    assert e2["icp_naive_gpu_hours"] == pytest.approx(2 * e1["icp_naive_gpu_hours"])
    assert 1.99 < e2["ip_gpu_hours"] / e1["ip_gpu_hours"] <= 2.0
    assert e1["icp_cached_gpu_hours"] < e1["icp_naive_gpu_hours"]
    assert extrapolate(PAPER["n_candidates"])["authors_ip_a6000_hours"] == pytest.approx(81.0, abs=0.01)


def test_gpu_hours_and_crossover():
    assert gpu_hours(3.6e15, 1.0, 1.0) == pytest.approx(1.0)
    assert gpu_hours(3.6e15, 2.0, 0.5) == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        gpu_hours(1.0, 1.0, 0.0)
    assert crossover_probes(0.5, 2.0, 0.1) == pytest.approx(5.0)
    assert crossover_probes(0.1, 2.0, 0.2) == float("inf")


@pytest.fixture(scope="module")
def tiny():
    from icp_influence.models import load_model

    return load_model("tiny-gpt-neox", device="cpu")


def test_icp_flop_count_counts_processed_tokens(tiny):
    from icp_influence.benchmarks.flops import icp_flop_count
    from icp_influence.icp import IcpScorer
    from icp_influence.synthetic import make_synthetic_pool

    model, tok = tiny
    ex = list(make_synthetic_pool(5, seed=1))
    cands, probes = ex[:2], ex[2:]
    scorer = IcpScorer(model, tok, probes)
    c = icp_flop_count(model, scorer, cands)
    manual_prefix = sum(len(scorer.encode(probes[0], z).prefix_ids) for z in cands)
    manual_suffix = sum(len(scorer.encode(p, z).query_ids) + len(scorer.encode(p, z).answer_ids)
                        for z in cands for p in probes)
    assert c["prefix_tokens"] == manual_prefix and c["suffix_tokens"] == manual_suffix
    n_emb = model.get_input_embeddings().weight.numel()
    assert c["n_nonembed_params"] == sum(p.numel() for p in model.parameters()) - n_emb - (
        0 if model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        else model.get_output_embeddings().weight.numel())


def test_autograd_loop_equals_vmap(tiny):
    from icp_influence.benchmarks.grads import autograd_loop_grads, max_rel_diff
    from icp_influence.gradients import encode_examples, lm_objective
    from icp_influence.synthetic import make_synthetic_pool

    model, tok = tiny
    encs = encode_examples(tok, list(make_synthetic_pool(4, seed=2)))
    obj = lm_objective(model, tok, params="paper")
    loop = autograd_loop_grads(model, obj.names, encs)
    batched = obj.per_example_grads(encs, chunk_size=4)
    assert loop.shape == batched.shape == (4, obj.dim)
    assert max_rel_diff(batched, loop) < 1e-4
    assert all(p.grad is None for p in model.parameters())


def test_captum_tracin_equals_our_inner_product(tiny, tmp_path):
    from icp_influence.benchmarks.captum_bench import captum_tracin_scores
    from icp_influence.encoding import encode_example
    from icp_influence.gradients import select_parameters
    from icp_influence.valuators import InnerProduct
    from icp_influence.synthetic import make_synthetic_pool

    model, tok = tiny
    ex = list(make_synthetic_pool(6, seed=3))
    cands, probes = ex[:4], ex[4:]
    ours = InnerProduct(model, tok, params="paper").score(cands, probes).values
    theirs = captum_tracin_scores(model, tok, select_parameters(model, "paper"),
                                  [encode_example(tok, e) for e in cands], [encode_example(tok, e) for e in probes],
                                  batch_size=2)
    assert theirs.shape == ours.shape == (4, 2)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6 * np.abs(ours).max())


def test_top_operators_and_mean_tokens(tiny):
    from icp_influence.synthetic import make_synthetic_pool

    model, tok = tiny
    a = torch.randn(64, 64)
    ops = top_operators(lambda: a @ a, top=3)
    assert ops and ops[0]["self_ms"] >= ops[-1]["self_ms"] and any("mm" in o["name"] for o in ops)
    assert 0 < sum(o["share"] for o in ops) <= 1.0 + 1e-9
    ex = list(make_synthetic_pool(3, seed=0))
    t = mean_tokens(tok, ex)
    from icp_influence.encoding import encode_pair

    e = encode_pair(tok, ex[1], ex[0])
    assert t["t_answer"] == pytest.approx(np.mean([len(encode_pair(tok, ex[(i + 1) % 3], ex[i]).answer_ids)
                                                   for i in range(3)]))
    assert t["t_prefix"] >= len(e.prefix_ids) - 50


def test_cost_widget_recomputes():
    from icp_course.widgets.cost import cost_explorer

    box, update = cost_explorer()
    assert "icp-explorer" in box._dom_classes
    a = update(n_candidates=10_000, n_probes=100, efficiency=0.5)
    b = update(n_candidates=20_000)
    assert b["icp_naive_gpu_hours"] == pytest.approx(2 * a["icp_naive_gpu_hours"])
    c = update(efficiency=0.25)
    assert c["icp_naive_gpu_hours"] == pytest.approx(2 * b["icp_naive_gpu_hours"])
    d = update(projection_dim=4096)
    assert d["ip_gpu_hours"] > c["ip_gpu_hours"]


def test_plots_have_labelled_axes():
    from icp_course.plots import cost as P

    res = {"icp-throughput": {"speedup": 6.0}, "grads": {"speedup": 1.2}, "captum": {"speedup": 2.0}}
    figs = [P.plot_speedups(res),
            P.plot_flops({"achieved_gflops": 10.0, "matmul_gflops": 40.0, "matmul_n": 1024, "efficiency": 0.25}),
            P.plot_cost_vs_probes({"rows": [{"n_probes": p, "icp_s": 0.01 * p, "inner_product_s": 0.05,
                                             "ekfac_s": 0.2} for p in (1, 10, 100)]}),
            P.plot_scaling({"rows": [{"pool_size": n, "icp_s": n * 0.1, "ip_s": 1 + n * 0.01, "icp_peak_mb": 1.0,
                                      "ip_peak_mb": n * 0.5} for n in (2, 4, 8)], "icp_exponent": 1.0,
                            "ip_exponent": 0.3}),
            P.plot_profile([{"name": "aten::mm", "self_ms": 5.0}, {"name": "aten::add", "self_ms": 1.0}]),
            P.plot_extrapolation(extrapolate())]
    for fig in figs:
        for ax in fig.axes:
            assert ax.get_xlabel() or ax.get_ylabel()
            assert ax.get_ylabel() or ax.get_xlabel()
    import matplotlib.pyplot as plt

    plt.close("all")


def test_exercises_nb07():
    from icp_course.exercises import check, get

    assert get("07.crossover").solution(icp_per_probe_s=0.5, ip_fixed_s=2.0, ip_per_probe_s=0.1) == pytest.approx(5.0)
    assert get("07.authors_total").solution() == pytest.approx(81.0, abs=0.01)
    check("07.gpu_hours", 1.0, flops=3.6e15, peak_tflops=1.0, efficiency=1.0)


@pytest.mark.slow
def test_grads_benchmark_smoke_fields():
    from icp_influence.registry import get

    r = get("benchmark", "grads").func(smoke=True)
    for k in ("loop_s", "batched_s", "speedup", "max_rel_diff"):
        assert k in r
    assert r["speedup"] == pytest.approx(r["loop_s"] / r["batched_s"])
    assert r["max_rel_diff"] < 1e-4
