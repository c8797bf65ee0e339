"""Shared pieces of the benchmarks: models, data and the result file layout."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any



def bench_lm(hidden: int = 128, layers: int = 4, heads: int = 4, *, seed: int = 0, max_positions: int = 1024):
    """A seeded random GPT-NeoX causal LM (byte-level tokenizer, 259 tokens) of a chosen size.

    Used where SmolLM2 would be too slow or too large on a 2-core CPU; cost *ratios*
    between valuators depend little on the weights being trained.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    from ..models import _finish, byte_tokenizer

    tok = byte_tokenizer()
    cfg = GPTNeoXConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * hidden, max_position_embeddings=max_positions,
                        vocab_size=len(tok), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    return _finish(model, tok, "cpu", None)


def synthetic_split(n_candidates: int, n_probes: int, seed: int = 0):
    """Candidates and probes drawn from the synthetic suite (disjoint, all families mixed)."""
    from ..synthetic import make_synthetic_pool

    pool = make_synthetic_pool(n_candidates + n_probes, seed=seed)
    ex = list(pool)
    return ex[:n_candidates], ex[n_candidates:n_candidates + n_probes]


def load_smollm2():
    from ..models import load_model

    return load_model("smollm2-135m-instruct", device="cpu")


def load_results(folder: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """``{name: result}`` from ``folder/*.json`` (the files ``benchmarks/run_all.sh`` writes)."""
    from ..paths import bench_results_dir

    folder = Path(folder) if folder is not None else bench_results_dir()
    out: dict[str, dict[str, Any]] = {}
    if folder.is_dir():
        for f in sorted(folder.glob("*.json")):
            try:
                out[f.stem] = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                continue
    return out


def configure_threads() -> dict[str, Any]:
    """Apply ``ICP_THREADS`` (if set; the one thread setting of the project) to torch and report
    the CPU situation.

    Unlike the notebooks and the command line, a benchmark does not fit its threads to the
    load: it measures the configuration it is given. On a shared, oversubscribed CPU a
    2-thread OpenMP pool can be several times *slower* than one thread (each operator waits for
    a descheduled worker); the benchmarks record the thread count and the load average so such
    runs can be recognised.
    """
    import torch

    from ..utils import threads_from_env

    n = threads_from_env()
    if n is not None:
        torch.set_num_threads(n)
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        load = None
    return {"threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_avg_1min": load}
