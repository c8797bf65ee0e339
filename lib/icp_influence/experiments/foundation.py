"""The embedded model, end to end: load, answer, one ICP measurement by hand."""
from __future__ import annotations

import time

from ..registry import experiment


@experiment("embedded-model", "load SmolLM2 offline, answer a question, one ICP measurement by hand")
def embedded_model(*, smoke: bool = False, seed: int = 0) -> dict:
    from ..data import Example
    from ..lm import answer_loglik, generate_answer
    from ..models import count_parameters, embedded_cache_path, load_model
    from ..synthetic import generate_family

    cached = (embedded_cache_path() / "model.safetensors").exists()
    t0 = time.perf_counter()
    model, tok = load_model("smollm2-135m-instruct", device="cpu")
    load_s = time.perf_counter() - t0
    answer = generate_answer(model, tok, Example("q", "What is the capital of France?", output="Paris"))
    demo, probe = generate_family("country_capital", 2, seed=seed)
    if demo.input == probe.input:
        demo = generate_family("country_capital", 3, seed=seed)[2]
    ll_zero = answer_loglik(model, tok, probe, None, template="paper")
    ll_demo = answer_loglik(model, tok, probe, demo, template="paper")
    return {
        "parameters": count_parameters(model),
        "load_s": round(load_s, 3),
        "load_was_warm": cached,
        "answer": answer,
        "demo_id": demo.id,
        "probe_id": probe.id,
        "n_answer_tokens": len(tok(" " + probe.output, add_special_tokens=False).input_ids),
        "ll_zero_shot": ll_zero,
        "ll_with_demo": ll_demo,
        "icp_delta": ll_demo - ll_zero,
    }
