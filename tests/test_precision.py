"""The bf16 fast path and its policy: CPU detection, the choice logic, the accuracy check, and
bf16 tolerance tests on tiny models (the fp32 exactness tests live in test_icp_engine.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from icp_influence.errors import ConfigError
from icp_influence.precision import (CHECK_GOALS, PrecisionChoice, bootstrap_se, check_passed, choose_dtype,
                                     choose_precision, cpu_flags, cpu_has_bf16, hardware_bf16, precision_agreement,
                                     processor_kind, record_check, recorded_checks)

ZEN3 = "fpu vme de pse tsc msr pae mce cx8 apic sse sse2 avx avx2 fma bmi2"
ZEN4 = ZEN3 + " avx512f avx512dq avx512_bf16 avx512_vnni"
SPR = ZEN4 + " amx_bf16 amx_tile amx_int8"


def fake_cpuinfo(tmp_path, flags: str, key: str = "flags"):
    p = tmp_path / "cpuinfo"
    p.write_text(f"processor\t: 0\nmodel name\t: Test CPU\n{key}\t\t: {flags}\n\nprocessor\t: 1\n{key}\t: {flags}\n")
    return p


# ------------------------------------------------------------------ detection
def test_cpu_flags_and_bf16_detection_from_a_fake_cpuinfo(tmp_path):
    assert not cpu_has_bf16(cpuinfo=fake_cpuinfo(tmp_path, ZEN3))
    assert cpu_has_bf16(cpuinfo=fake_cpuinfo(tmp_path, ZEN4))
    assert cpu_has_bf16(cpuinfo=fake_cpuinfo(tmp_path, SPR))
    assert "avx2" in cpu_flags(fake_cpuinfo(tmp_path, ZEN3))
    assert cpu_flags(fake_cpuinfo(tmp_path, "fp asimd bf16", key="Features")) == {"fp", "asimd", "bf16"}
    assert not cpu_has_bf16(cpu_flags(fake_cpuinfo(tmp_path, "fp asimd bf16", key="Features")))  # x86 flags only
    assert cpu_flags(tmp_path / "missing") is None


def test_processor_kind_and_hardware_bf16_from_flags():
    assert processor_kind("cpu", flags=ZEN3.split()) == "cpu:no-bf16"
    assert processor_kind("cpu", flags=ZEN4.split()) == "cpu:avx512_bf16"
    assert processor_kind("cpu", flags=SPR.split()) == "cpu:amx_bf16+avx512_bf16"
    ok, why = hardware_bf16("cpu", flags=ZEN4.split())
    assert ok and "avx512_bf16" in why
    ok, why = hardware_bf16("cpu", flags=ZEN3.split())
    assert not ok and "neither" in why


# ------------------------------------------------------------------ the policy
def _checks(kind: str, **passed: bool) -> dict:
    return {kind: {"methods": {m: {"passed": p} for m, p in passed.items()}}}


def test_auto_chooses_fp32_without_bf16_hardware_whatever_the_checks_say():
    c = choose_precision("auto", "cpu", flags=ZEN3.split(), checks=_checks("cpu:no-bf16", icp=True))
    assert c.precision == "fp32" and "neither avx512_bf16 nor amx_bf16" in c.reason


def test_auto_chooses_fp32_when_no_check_is_recorded_or_it_failed():
    c = choose_precision("auto", "cpu", flags=ZEN4.split(), checks={})
    assert c.precision == "fp32" and "no bf16 accuracy check of icp" in c.reason
    c = choose_precision("auto", "cpu", flags=ZEN4.split(), checks=_checks("cpu:avx512_bf16", icp=False))
    assert c.precision == "fp32" and "failed the accuracy check" in c.reason
    # a check on another kind of processor does not count
    c = choose_precision("auto", "cpu", flags=ZEN4.split(), checks=_checks("cpu:amx_bf16+avx512_bf16", icp=True))
    assert c.precision == "fp32"


def test_auto_chooses_bf16_only_for_the_method_whose_check_passed():
    checks = _checks("cpu:avx512_bf16", icp=True, inner_product=False)
    assert choose_precision("auto", "cpu", method="icp", flags=ZEN4.split(), checks=checks).precision == "bf16"
    assert choose_precision("auto", "cpu", method="inner_product", flags=ZEN4.split(),
                            checks=checks).precision == "fp32"
    assert choose_precision("auto", "cpu", method="cosine", flags=ZEN4.split(), checks=checks).precision == "fp32"
    assert choose_dtype("auto", "cpu", method="icp", flags=ZEN4.split(), checks=checks)[0] == "bfloat16"


def test_explicit_precisions_and_bad_names():
    assert choose_precision("bf16", "cpu") == PrecisionChoice("bf16", "asked for")
    assert choose_precision("float32", "cpu").precision == "fp32"
    assert choose_dtype("bfloat16", "cpu") == ("bfloat16", "asked for")
    assert choose_dtype(torch.float32, "cpu")[0] == "float32"
    with pytest.raises(ConfigError, match="precision must be"):
        choose_precision("fp16", "cpu")


def test_record_and_read_checks(tmp_path):
    path = tmp_path / "precision-check.json"
    assert recorded_checks(path) == {}
    record_check("cpu:avx512_bf16", "icp", {"passed": False, "max_abs_diff": 0.9}, path=path, cpu_model="X")
    record_check("cpu:avx512_bf16", "inner_product", {"passed": True}, path=path)
    checks = recorded_checks(path)
    assert checks["cpu:avx512_bf16"]["cpu_model"] == "X"
    assert check_passed("cpu:avx512_bf16", "icp", checks=checks) is False
    assert check_passed("cpu:avx512_bf16", "inner_product", checks=checks) is True
    assert check_passed("cpu:avx512_bf16", "cosine", checks=checks) is None
    assert check_passed("cuda:sm_90", "icp", checks=checks) is None
    assert json.loads(path.read_text())["checks"]["cpu:avx512_bf16"]["methods"]["icp"]["max_abs_diff"] == 0.9


# ------------------------------------------------------------------ the accuracy check
def test_precision_agreement_passes_for_identical_and_fails_for_perturbed_matrices():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(12, 8)) + np.linspace(-2, 2, 12)[:, None]
    same = precision_agreement(B.copy(), B, aggregates=("mean", "win_rate"))
    assert same["max_abs_diff"] == 0 and same["pair_spearman"] == pytest.approx(1.0)
    assert same["aggregates"]["mean"]["candidate_spearman"] == pytest.approx(1.0)
    assert same["diff_over_se_max"] == 0 and same["passed"]
    noisy = precision_agreement(B + rng.normal(scale=0.5, size=B.shape), B, aggregates=("mean",))
    assert not noisy["passed"] and noisy["diff_over_se_max"] > CHECK_GOALS["diff_over_se"]
    assert 0 < noisy["aggregates"]["mean"]["reliability_exact"] <= 1
    with pytest.raises(ConfigError, match="shape"):
        precision_agreement(B[:, :4], B)


def test_bootstrap_se_is_the_standard_error_of_the_mean():
    rng = np.random.default_rng(1)
    V = rng.normal(scale=2.0, size=(3, 400))
    se = bootstrap_se(V, n_boot=4000)
    assert np.allclose(se, V.std(axis=1) / np.sqrt(400), rtol=0.1)


# ------------------------------------------------------------------ bf16 on tiny models (tolerances)
@pytest.fixture(scope="module")
def tiny():
    from icp_influence.models import load_model
    from icp_influence.synthetic import make_synthetic_pool

    model, tok = load_model("tiny-llama", seed=0)
    ex = list(make_synthetic_pool(14, seed=0))
    return model, tok, ex[:8], ex[8:]


def test_icp_bf16_runs_matmuls_in_bf16_but_the_head_in_fp32(tiny):
    from icp_influence.icp import IcpScorer

    model, tok, cands, probes = tiny
    seen = {}
    proj = model.model.layers[0].self_attn.q_proj
    head = model.get_output_embeddings()
    hooks = [proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q_proj", o.dtype)),
             head.register_forward_hook(lambda m, i, o: seen.__setitem__("head", o.dtype))]
    try:
        IcpScorer(model, tok, probes[:2], precision="bf16").loglik_one(cands[0])
        assert seen == {"q_proj": torch.bfloat16, "head": torch.float32}
        IcpScorer(model, tok, probes[:2]).loglik_one(cands[0])
        assert seen == {"q_proj": torch.float32, "head": torch.float32}
    finally:
        for h in hooks:
            h.remove()


def test_icp_bf16_within_tolerance_of_fp32(tiny):
    from icp_influence.icp import IcpScorer

    model, tok, cands, probes = tiny
    d32 = IcpScorer(model, tok, probes).deltas(cands)
    d16 = IcpScorer(model, tok, probes, precision="bf16").deltas(cands)
    scale = float(np.abs(d32).max())
    assert np.abs(d16 - d32).max() < 0.05 * scale + 1e-3  # bf16 tolerance, not the fp32 engine's 1e-4
    agree = precision_agreement(d16, d32, aggregates=("mean",))
    assert agree["pair_spearman"] > 0.98


def test_inner_product_bf16_within_tolerance_of_fp32(tiny):
    from icp_influence.valuators import InnerProduct

    model, tok, cands, probes = tiny
    a = InnerProduct(model, tok, params="paper").score(cands, probes)
    b = InnerProduct(model, tok, params="paper", precision="bf16").score(cands, probes)
    assert np.abs(b.values - a.values).max() < 0.02 * np.abs(a.values).max()
    assert precision_agreement(b, a)["pair_spearman"] > 0.99


def test_bf16_is_part_of_the_configuration_and_fp32_configurations_are_unchanged(tiny, tmp_path):
    from icp_influence.valuators import Icp, InnerProduct

    model, tok, cands, probes = tiny
    assert "precision" not in Icp(model, tok).settings()
    assert Icp(model, tok, precision="fp32").config() == Icp(model, tok).config()
    assert Icp(model, tok, precision="bf16").settings()["precision"] == "bf16"
    ip32 = InnerProduct(model, tok, params="paper", cache_dir=tmp_path)
    ip16 = InnerProduct(model, tok, params="paper", cache_dir=tmp_path, precision="bf16")
    assert "precision" not in ip32.settings() and ip16.settings()["precision"] == "bf16"
    assert ip32._gradient_cache().dir != ip16._gradient_cache().dir  # cached gradients never mixed
    sm = ip16.score(cands[:2], probes[:2])
    assert sm.meta["precision"] == "bf16" and sm.meta["precision_reason"] == "asked for"
    assert "precision" not in ip32.score(cands[:2], probes[:2]).meta


def test_load_model_auto_keeps_fp32_weights_and_says_what_it_chose(monkeypatch, tmp_path):
    from icp_influence.models import load_model
    from icp_influence.valuators import Icp

    monkeypatch.setenv("ICP_BENCH_RESULTS", str(tmp_path))  # no recorded check: auto stays fp32
    model, tok = load_model("tiny-llama", dtype="auto")
    assert next(model.parameters()).dtype == torch.float32
    assert model.icp_precision == "auto"
    assert set(model.icp_precision_choices) == {"icp", "inner_product"}
    v = Icp(model, tok)
    assert v.precision.precision == "fp32" and v.precision.reason != "asked for"
    assert "precision" not in v.settings()
    kind = processor_kind("cpu")
    record_check(kind, "icp", {"passed": True}, path=tmp_path / "precision-check.json")
    v = Icp(model, tok)
    want = "bf16" if hardware_bf16("cpu")[0] else "fp32"
    assert v.precision.precision == want


def test_icp_bf16_with_fp32_attention_within_tolerance(tiny, monkeypatch):
    import icp_influence.icp as icp
    import icp_influence.icp_engine as engine

    model, tok, cands, probes = tiny
    d32 = icp.IcpScorer(model, tok, probes[:3]).deltas(cands[:3])
    monkeypatch.setattr(engine, "BF16_ATTENTION_FP32", True)
    d16 = icp.IcpScorer(model, tok, probes[:3], precision="bf16").deltas(cands[:3])
    assert np.abs(d16 - d32).max() < 0.05 * float(np.abs(d32).max()) + 1e-3
