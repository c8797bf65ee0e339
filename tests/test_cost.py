"""Benchmarks' helpers, the cost model, notebook 07's plots and widget (its exercises: tests/test_assignments.py)."""
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

BENCH_NAMES = {"icp-throughput", "grad-throughput", "captum", "cost", "memory"}


def test_all_benchmarks_registered():
    from icp_influence.registry import entries

    assert BENCH_NAMES <= set(entries("benchmark"))
    assert not {"grads", "flops", "scaling"} & set(entries("benchmark"))  # replaced by grad-throughput, memory


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
    # in a fresh interpreter: inside the test session the allocator may hand back pages an earlier
    # test already made resident, and then the resident set does not grow at all
    import subprocess
    import sys

    code = (
        "import time, numpy as np\n"
        "from icp_influence.benchmarks import _timing\n"
        "with _timing.PeakRSS() as m:\n"
        "    a = np.ones(40 * 2**20 // 8); a += 1; time.sleep(0.05)\n"
        "del a\n"
        "print(m.peak_mb)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak = float(out.stdout.strip().splitlines()[-1])
    assert 38 <= peak <= 200  # 40 MiB touched, plus at most the interpreter's own noise


def test_marginal_cost_is_the_slope_of_two_calls_and_refuses_a_negative_one():
    import time

    from icp_influence.benchmarks.cost import marginal_cost

    d = marginal_cost(lambda c: time.sleep(0.01 * len(c)), [0], [0, 0, 0])   # 10 ms per candidate, nothing fixed
    assert d["per_candidate_s"] > 0 and d["n_small"] == 1 and d["n_large"] == 3
    assert d["per_candidate_s"] == (d["t_large_s"] - d["t_small_s"]) / 2
    assert d["probe_side_s"] == d["t_small_s"] - d["per_candidate_s"]
    # the larger call faster than the smaller one (noise on a busy machine): no negative cost is reported
    d = marginal_cost(lambda c: time.sleep(0.05 if len(c) == 1 else 0.0), [0], [0, 0])
    assert d["per_candidate_s"] is None and d["probe_side_s"] is None and "not measurable" in d["error"]


def test_matmul_gflops_counts_2n3():
    r = _timing.matmul_gflops(128, repeats=3, warmup=1)
    assert r["gflops"] == pytest.approx(2 * 128**3 / r["median_s"] / 1e9)


def test_cost_model_formulas():
    m = CostModel(n_nonembed=100, hidden=4, vocab=10, t_prefix=5, t_suffix=3, t_answer=2, t_example=7)
    assert m.icp_cached_flops(2) == 2 * 100 * (5 + 2 * 3) + 2 * 4 * 10 * 2 * 2
    assert m.icp_naive_flops(2) == 2 * (200 + 80) * 8
    # forward + input gradients (head at answer positions) + weight gradients of D = N parameters
    assert m.gradient_flops() == 4 * 100 * 7 + 4 * 40 * 2 + 2 * 100 * 7
    assert m.gradient_flops(all_logits=True) == 4 * 100 * 7 + 4 * 40 * 7 + 2 * 100 * 7
    assert m.ip_flops(3) == m.gradient_flops() + 2 * 100 * 3
    assert m.ekfac_flops(3) == m.gradient_flops(all_logits=True) + 2 * 100 * 3
    assert m.one_step_flops(3) == m.gradient_flops(all_logits=True) + 3 * (200 + 80) * 7
    m.projection_dim = 16  # Gaussian: 2Dk per example, and the dot products in k dims
    assert m.ip_flops(3) == m.gradient_flops() + 2 * 100 * 16 + 2 * 16 * 3
    m.projection = "countsketch"  # O(D): one signed add per coordinate
    assert m.ip_flops(3) == m.gradient_flops() + 2 * 100 + 2 * 16 * 3
    q = CostModel(n_nonembed=100, hidden=4, vocab=10, grad_dim=10, t_example=7, t_answer=2)
    assert q.gradient_flops() == 4 * 100 * 7 + 4 * 40 * 2 + 2 * 10 * 7  # only the selected weights' gradients
    with pytest.raises(ConfigError, match="countsketch"):
        CostModel(projection="sparse")


@pytest.mark.parametrize("spec", ["tiny-llama", "tiny-gpt-neox", "tiny-gpt2"])
def test_gradient_flop_count_equals_flop_counter(tiny_models, spec):
    """The analytic count of the hooks path = what torch's FlopCounterMode sees (matrix products;
    it does not count CPU attention kernels, so the attention term is compared to its formula)."""
    from torch.utils.flop_counter import FlopCounterMode

    from icp_influence.cost import gradient_flop_count
    from icp_influence.gradients import encode_examples, lm_objective
    from icp_influence.synthetic import make_synthetic_pool

    model, tok = tiny_models[spec]
    enc = encode_examples(tok, list(make_synthetic_pool(1, seed=1)))
    qv = r"regex:\.1\..*(q_proj|v_proj|query_key_value|c_attn)\.weight$"  # the last block only: block 0 skipped
    for sel in ("paper", qv):
        obj = lm_objective(model, tok, params=sel)
        with FlopCounterMode(display=False) as fc:
            obj.per_example_grads(enc, chunk_size=1, method="hooks")
        c = gradient_flop_count(model, obj.names, [len(enc[0])], [len(enc[0].answer_ids)])
        assert c["flops"] - c["attention_flops"] == fc.get_total_flops(), (spec, sel)
        L, cfg = len(enc[0]), model.config
        d_attn = cfg.num_attention_heads * (getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads) \
            if hasattr(cfg, "num_attention_heads") else cfg.n_embd
        n_bwd = 2 if sel == "paper" else 1
        assert c["attention_flops"] == 4 * d_attn * L * (L + 1) // 2 * (2 + 2 * n_bwd)
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_grad_throughput_padding_count():
    from icp_influence.benchmarks.grad_throughput import padded_lengths

    assert padded_lengths([5, 1, 3, 2], 2) == [2, 2, 5, 5]
    assert sum(padded_lengths([4, 4, 4], 8)) == 12


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
    assert crossover_probes(0.5, 2.0, 0.1, icp_fixed_s=0.4) == pytest.approx(4.0)  # a₀ + aP = b + cP


@pytest.fixture(scope="module")
def tiny():
    from icp_influence.models import load_model

    return load_model("tiny-gpt-neox", device="cpu")


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
    e = update(projection="countsketch")  # O(D) instead of 2Dk per example; dot products in k dims
    assert e["ip_gpu_hours"] < min(c["ip_gpu_hours"], d["ip_gpu_hours"])


def test_icp_speedup_is_flop_ratio_times_efficiency_ratio_in_every_committed_round():
    """Notebook 07's claim about the committed icp-throughput result: each round's speed-up over
    the reference is its FLOP ratio times its efficiency ratio, so the efficiency a 3× speed-up
    needs, and the speed-up at the dense-matmul rate, follow from the measurement round by round."""
    import json

    from icp_influence.benchmarks.icp_throughput import efficiency_needed, round_bounds, speedup_at
    from icp_influence.paths import bench_results_dir

    res = json.loads((bench_results_dir() / "icp-throughput.json").read_text())
    bounds = round_bounds(res)
    assert len(bounds) == res["n_candidates"] >= 3
    for r, b in zip(res["rounds"], bounds):
        assert b["flop_ratio"] == pytest.approx(r["reference_gflop"] / r["engine_gflop"])
        # the reference's time from its own FLOPs and efficiency, the engine's likewise
        mm = np.mean(r["matmul_gflops"])
        assert r["reference_gflop"] / (b["reference_efficiency"] * mm) == pytest.approx(r["reference_s"])
        assert r["engine_gflop"] / (r["efficiency"] * mm) == pytest.approx(np.mean(r["engine_s"]))
        assert speedup_at(b["efficiency"], flop_ratio=b["flop_ratio"],
                          reference_efficiency=b["reference_efficiency"]) == pytest.approx(b["speedup"], rel=1e-9)
        assert b["efficiency_needed"] == pytest.approx(3.0 / b["speedup"] * b["efficiency"], rel=1e-9)
        assert b["speedup_at_matmul_rate"] == pytest.approx(b["speedup"] / b["efficiency"], rel=1e-9)
    assert efficiency_needed(2.0, flop_ratio=2.0, reference_efficiency=0.5) == 0.5


def test_plots_have_labelled_axes():
    from icp_course.plots import cost as P

    res = {"icp-throughput": {"speedup": 6.0}, "captum": {"speedup": 2.0}}
    proj = {k: {"k": 8192, "seconds_per_example_qv": v, "seconds_per_example_paper": 8 * v, "D_qv": 13_271_040,
                "D_paper": 106_168_320} for k, v in (("gaussian", 20.0), ("countsketch", 0.05))}
    # one round: reference 20 GFLOP in 1 s, engine 10 GFLOP in 0.5 s, matmul 40 GFLOP/s →
    # e_ref = 0.5, e = 0.5, speed-up 2 = FLOP ratio 2 × 0.5 / 0.5; 3× needs e = 0.75
    rnd = {"reference_gflop": 20.0, "engine_gflop": 10.0, "reference_s": 1.0, "engine_s": [0.5, 0.5],
           "matmul_gflops": [40.0, 40.0], "efficiency": 0.5, "speedup_vs_reference": 2.0}
    fig = P.plot_speedup_bound({"speedup": 2.0, "rounds": [rnd]})
    line = fig.axes[0].lines[0]
    assert np.interp(0.75, *line.get_data()) == pytest.approx(3.0)
    assert np.interp(0.5, *line.get_data()) == pytest.approx(2.0)
    assert any("needs e = 0.75–0.75" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    figs = [P.plot_speedups(res), fig,
            P.plot_grad_throughput({"achieved_gflops": 40.0, "matmul_gflops": 80.0, "matmul_n": 2048,
                                    "efficiency": 0.5}),
            P.plot_projection_cost({"projection": proj}),
            P.plot_cost_vs_probes({"rows": [{"n_probes": p, "icp_s": 0.01 * p, "inner_product_s": 0.05,
                                             "ekfac_s": 0.2, "one_step_s": 0.02 * p} for p in (1, 8, 64, 100)]}),
            P.plot_memory({"rows": [{"n_candidates": 100, "peak_mb": 2000.0}, {"n_candidates": 400, "peak_mb": 2100.0}],
                           "peak_ratio": 1.05, "expected_mb": {"if_the_pool_were_held": 20000.0,
                                                               "probe_gradients": 800.0,
                                                               "one_chunk_of_gradients": 800.0}}),
            P.plot_profile([{"name": "aten::mm", "self_ms": 5.0}, {"name": "aten::add", "self_ms": 1.0}]),
            P.plot_extrapolation(extrapolate())]
    for fig in figs:
        for ax in fig.axes:
            assert ax.get_xlabel() or ax.get_ylabel()
            assert ax.get_ylabel() or ax.get_xlabel()
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.slow
def test_grad_throughput_benchmark_smoke_fields():
    from icp_influence.registry import get

    r = get("benchmark", "grad-throughput").func(smoke=True)
    for k in ("efficiency", "achieved_gflops", "matmul_gflops", "tokens", "seconds_per_example", "projection",
              "threads", "load_avg_1min"):
        assert k in r
    assert r["efficiency"] == pytest.approx(r["achieved_gflops"] / r["matmul_gflops"])
    assert r["max_rel_diff_vs_vmap"] < 1e-4
    assert set(r["projection"]) == {"countsketch", "gaussian"}
    assert r["by_dtype"]["float32"]["efficiency"] == r["efficiency"] and r["dtype_chosen"] in ("float32", "bfloat16")
    if r["cpu_bf16"]:
        bf16 = r["by_dtype"]["bfloat16"]
        assert bf16["efficiency"] > 0 and bf16["grad_max_rel_diff"] < 0.05 and "mean" in bf16["candidate_spearman"]
    else:
        assert "skipped" in r["by_dtype"]["bfloat16"]


@pytest.mark.slow
def test_cost_and_memory_benchmarks_smoke_fields():
    from icp_influence.registry import get

    r = get("benchmark", "cost").func(smoke=True)
    for row in r["rows"]:
        for k in ("icp_s", "inner_product_s", "ekfac_s", "one_step_s", "probe_side_s"):
            assert k in row
        # no valuator failed; on a tiny model a busy machine may leave a marginal cost "not measurable" (never negative)
        assert all(d.get("error", "not measurable").startswith("not measurable") for d in row["details"].values())
        assert all(row[f"{k}_s"] is None or row[f"{k}_s"] > 0 for k in ("icp", "inner_product", "ekfac", "one_step"))
    assert {"assumptions", "gpu_hours", "this_machine_hours"} <= set(r["extrapolation"])
    assert r["extrapolation"]["assumptions"]["peak_tflops"] > 0
    m = get("benchmark", "memory").func(smoke=True)
    assert [x["n_candidates"] for x in m["rows"]] == [4, 16]
    assert m["peak_ratio"] == pytest.approx(m["rows"][1]["peak_mb"] / m["rows"][0]["peak_mb"])
