"""What valuation costs: FLOP models, the extrapolation to the paper's setup, profiles.

FLOP model (dense transformer, ``N`` non-embedding parameters, hidden ``d``, vocabulary
``V``; attention-score FLOPs ignored — they are small for contexts of a few hundred
tokens), matching what the engines run:

* forward of ``T`` tokens: ``2 N T`` (+ ``2 d V`` per position whose logits are computed);
* **ICP, cached** (one candidate, ``P`` probes): the prefix once, then each probe's
  suffix, logits only at answer positions::

      2 N (T_prefix + P · T_suffix) + 2 d V · P · T_answer

* **ICP, naive**: a full forward of prefix + suffix per pair, logits everywhere::

      P · (2 N + 2 d V) · (T_prefix + T_suffix)

* **one per-example gradient** over ``D`` selected parameters (the hooks path of
  :meth:`~icp_influence.gradients.Objective.per_example_grads`): forward, the input
  gradients back through the network, and the per-example weight gradients of the
  selected layers only; the LM head at answer positions only::

      gradient = 4 N T_example + 4 d V T_answer + 2 D T_example

  (``D = N``, every linear layer, gives the familiar ``6 N T``; for the query/value
  projections of every block ``D ≈ N / 8``.) A projection to ``k`` dimensions adds
  ``2 D k`` per example (Gaussian; more than the gradient itself for ``k ≳ 2 N/D``) or
  ``≈ 2 D`` (CountSketch: one signed add per coordinate);
* **inner-product influence**: one gradient per candidate, the ``P`` probe gradients
  computed once for the whole pool, ``2 D P`` (or ``2 k P``) for the dot products::

      gradient + 2 D P (+ projection)

* **EK-FAC** (kronfluence): a per-example gradient per candidate with every logit
  (``4 N T + 4 d V T + 2 D T``) and ``2 D P`` against the preconditioned probe gradients;
  kronfluence preconditions the probe gradients again for every chunk of candidates;
* **one-step ground truth**: one gradient (every logit) on the candidate, then a forward
  of every probe (every logit) at the stepped weights::

      (4 N + 4 d V + 2 D) T_example + P · (2 N + 2 d V) · T_example

GPU-hours = FLOPs / (peak FLOP/s × efficiency) / 3600. The authors report about
**9 GPU-hours on one A6000 per 5,778-candidate partition** for their inner-product
influence (52,002 candidates × 100 probes, Pythia-1b-deduped): about 81 GPU-hours for
the full pool. Their code recomputes the candidate gradients for every probe batch.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator

#: The paper's setup and reported cost (arXiv 2407.12259).
PAPER = {
    "n_candidates": 52_002,
    "n_probes": 100,
    "partition_size": 5_778,
    "ip_gpu_hours_per_partition": 9.0,
    "gpu": "NVIDIA RTX A6000",
    "model": "EleutherAI/pythia-1b-deduped",
}

#: Pythia-1b(-deduped): 16 layers, hidden 2048, vocabulary 50,304, untied embeddings.
PYTHIA_1B = {"n_params": 1_011_781_632, "n_nonembed": 805_736_448, "hidden": 2048, "vocab": 50_304}

#: SmolLM2-135M-Instruct (the embedded model): 30 layers, hidden 576, vocabulary 49,152, tied embeddings.
SMOLLM2_135M = {"n_params": 134_515_008, "n_nonembed": 106_203_456, "hidden": 576, "vocab": 49_152}

#: Dense peak throughput from the vendors' datasheets, in TFLOP/s (no sparsity).
GPU_PEAK_TFLOPS = {
    "A6000 fp32": 38.7,
    "A6000 bf16 tensor": 154.8,
    "A100 bf16 tensor": 312.0,
    "H100 SXM bf16 tensor": 989.0,
}


def paper_ip_gpu_hours(n_candidates: int = PAPER["n_candidates"]) -> float:
    """The authors' reported inner-product cost scaled linearly to ``n_candidates`` (A6000-hours)."""
    return PAPER["ip_gpu_hours_per_partition"] * n_candidates / PAPER["partition_size"]


@dataclass
class CostModel:
    """Token counts and model size for the FLOP model (module docstring)."""

    n_nonembed: int = PYTHIA_1B["n_nonembed"]
    hidden: int = PYTHIA_1B["hidden"]
    vocab: int = PYTHIA_1B["vocab"]
    grad_dim: int | None = None          # default: n_nonembed (the "paper" parameter set)
    t_prefix: float = 140.0              # header + demonstration tokens
    t_suffix: float = 130.0              # probe query + answer tokens
    t_answer: float = 70.0               # probe answer tokens (scored)
    t_example: float = 130.0             # an example alone (the gradient's input)
    projection_dim: int | None = None
    projection: str = "gaussian"         # or "countsketch"

    def __post_init__(self):
        if self.projection not in ("gaussian", "rademacher", "countsketch"):
            from .errors import ConfigError

            raise ConfigError(f"Unknown projection {self.projection!r}; use 'gaussian', 'rademacher' or 'countsketch'.")

    @property
    def D(self) -> int:
        return int(self.grad_dim or self.n_nonembed)

    def icp_cached_flops(self, n_probes: int) -> float:
        """FLOPs per candidate of the cached scorer."""
        N, d, V = self.n_nonembed, self.hidden, self.vocab
        return 2 * N * (self.t_prefix + n_probes * self.t_suffix) + 2 * d * V * n_probes * self.t_answer

    def icp_naive_flops(self, n_probes: int) -> float:
        """FLOPs per candidate of the naive per-pair scorer (full logits everywhere)."""
        N, d, V = self.n_nonembed, self.hidden, self.vocab
        return n_probes * (2 * N + 2 * d * V) * (self.t_prefix + self.t_suffix)

    def gradient_flops(self, *, all_logits: bool = False) -> float:
        """FLOPs of one per-example gradient over ``D`` parameters (hooks path: LM head at answer
        positions; ``all_logits`` for paths that compute every logit, as kronfluence and one-step do)."""
        head_positions = self.t_example if all_logits else self.t_answer
        return 4 * self.n_nonembed * self.t_example + 4 * self.hidden * self.vocab * head_positions \
            + 2 * self.D * self.t_example

    def projection_flops(self) -> float:
        """Per example: ``2 D k`` (Gaussian / Rademacher) or ``2 D`` (CountSketch), 0 without projection."""
        if not self.projection_dim:
            return 0.0
        return 2.0 * self.D if self.projection == "countsketch" else 2.0 * self.D * self.projection_dim

    def ip_flops(self, n_probes: int) -> float:
        """FLOPs per candidate of inner-product influence (probe gradients cached)."""
        width = self.projection_dim or self.D
        return self.gradient_flops() + self.projection_flops() + 2 * width * n_probes

    def ip_probe_side_flops(self, n_probes: int) -> float:
        """One-off FLOPs: the probe gradients (once per probe set)."""
        return n_probes * (self.gradient_flops() + self.projection_flops())

    def ekfac_flops(self, n_probes: int) -> float:
        """FLOPs per candidate of EK-FAC through kronfluence (every logit; probe side excluded)."""
        return self.gradient_flops(all_logits=True) + 2 * self.D * n_probes

    def one_step_flops(self, n_probes: int) -> float:
        """FLOPs per candidate of the one-step ground truth: a gradient, then every probe's forward."""
        return self.gradient_flops(all_logits=True) + n_probes * (2 * self.n_nonembed + 2 * self.hidden * self.vocab) \
            * self.t_example

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gpu_hours(flops: float, peak_tflops: float, efficiency: float) -> float:
    """Hours of one GPU at ``peak_tflops × efficiency``."""
    if peak_tflops <= 0 or not 0 < efficiency <= 1:
        from .errors import ConfigError

        raise ConfigError(f"Need peak_tflops > 0 and 0 < efficiency ≤ 1, got {peak_tflops}, {efficiency}.")
    return flops / (peak_tflops * 1e12 * efficiency) / 3600.0


def extrapolate(n_candidates: int = PAPER["n_candidates"], n_probes: int = PAPER["n_probes"], *,
                model: CostModel | None = None, peak_tflops: float = GPU_PEAK_TFLOPS["A6000 fp32"],
                efficiency: float = 0.5) -> dict[str, float]:
    """GPU-hours of each valuator for a pool of ``n_candidates`` and ``n_probes`` probes
    (one-off probe sides included: ICP's baselines, the probe gradients)."""
    m = model or CostModel()
    fwd_probe = (2 * m.n_nonembed + 2 * m.hidden * m.vocab) * m.t_example
    icp = n_candidates * m.icp_cached_flops(n_probes) + n_probes * 2 * m.n_nonembed * m.t_suffix  # + baselines
    naive = n_candidates * m.icp_naive_flops(n_probes)
    ip = n_candidates * m.ip_flops(n_probes) + m.ip_probe_side_flops(n_probes)
    ekfac = n_candidates * m.ekfac_flops(n_probes) + n_probes * m.gradient_flops(all_logits=True)
    one_step = n_candidates * m.one_step_flops(n_probes) + n_probes * fwd_probe
    authors = paper_ip_gpu_hours(n_candidates)  # their 100 probes; scaled with the pool size only
    return {
        "n_candidates": n_candidates,
        "n_probes": n_probes,
        "peak_tflops": peak_tflops,
        "efficiency": efficiency,
        "icp_cached_flops": icp,
        "icp_naive_flops": naive,
        "ip_flops": ip,
        "ekfac_flops": ekfac,
        "one_step_flops": one_step,
        "icp_cached_gpu_hours": gpu_hours(icp, peak_tflops, efficiency),
        "icp_naive_gpu_hours": gpu_hours(naive, peak_tflops, efficiency),
        "ip_gpu_hours": gpu_hours(ip, peak_tflops, efficiency),
        "ekfac_gpu_hours": gpu_hours(ekfac, peak_tflops, efficiency),
        "one_step_gpu_hours": gpu_hours(one_step, peak_tflops, efficiency),
        "authors_ip_a6000_hours": authors,
    }


def crossover_probes(icp_per_probe_s: float, ip_fixed_s: float, ip_per_probe_s: float = 0.0, *,
                     icp_fixed_s: float = 0.0) -> float:
    """Probes at which ICP (``a₀ + a·P`` per candidate) costs as much as inner product (``b + c·P``):
    ``P* = (b − a₀) / (a − c)``; ``inf`` when ICP never catches up."""
    if icp_per_probe_s <= ip_per_probe_s:
        return float("inf")
    return (ip_fixed_s - icp_fixed_s) / (icp_per_probe_s - ip_per_probe_s)


# ------------------------------------------------------------------ profiles
@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 (the whole process's) to /dev/null for a short block: the profiler's C++ backend (kineto) logs
    ``profiler_start`` / ``profiler_stop`` and, without a GPU, ``gpuGetDeviceCount failed`` there,
    past Python's ``sys.stderr`` and whatever log level is set."""
    import os
    import sys

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):   # no real descriptor 2 (some embedded interpreters)
        saved = None
    if saved is None:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def top_operators(fn: Callable[[], Any], top: int = 10, warmup: int = 1) -> list[dict[str, Any]]:
    """``torch.profiler`` of one call of ``fn``: the ``top`` operators by self CPU time.

    Returns ``[{"name", "self_ms", "calls", "share"}]`` (share of the total self time).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    for _ in range(warmup):
        fn()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    prof = profile(activities=acts)
    with _native_stderr_silenced():   # only the profiler's start and stop: fn's own output is untouched
        prof.start()
    try:
        fn()
    finally:
        with _native_stderr_silenced():
            prof.stop()
    events = [e for e in prof.key_averages()]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [{"name": e.key, "self_ms": e.self_cpu_time_total / 1e3, "calls": int(e.count),
             "share": e.self_cpu_time_total / total} for e in events[:top]]


def profile_icp_batch(model, tokenizer, candidate, probes, *, batch_size: int = 16, template: str = "paper",
                      top: int = 10) -> list[dict[str, Any]]:
    """Top operators of scoring one candidate against ``probes`` with the cached scorer."""
    from .icp import IcpScorer

    scorer = IcpScorer(model, tokenizer, probes, template=template, batch_size=batch_size)
    return top_operators(lambda: scorer.loglik_one(candidate), top=top)


def profile_grad_chunk(model, tokenizer, examples, *, params: str = "paper", template: str = "paper",
                       top: int = 10) -> list[dict[str, Any]]:
    """Top operators of one chunk of per-example gradients over ``examples`` (the default path, see
    :meth:`~icp_influence.gradients.Objective.per_example_grads`)."""
    from .gradients import encode_examples, lm_objective

    obj = lm_objective(model, tokenizer, params=params)
    encs = encode_examples(tokenizer, list(examples), template=template)
    return top_operators(lambda: obj.per_example_grads(encs, chunk_size=len(encs)), top=top)


def mean_tokens(tokenizer, examples, *, template: str = "paper") -> dict[str, float]:
    """Average token counts of the FLOP model's segments over ``examples`` used as both
    demonstration and probe (each example paired with the next one)."""
    from .encoding import encode_example, encode_pair

    ex = list(examples)
    pre, suf, ans, alone = [], [], [], []
    for i, z in enumerate(ex):
        p = ex[(i + 1) % len(ex)]
        e = encode_pair(tokenizer, p, z, template=template)
        pre.append(len(e.prefix_ids))
        suf.append(len(e.query_ids) + len(e.answer_ids))
        ans.append(len(e.answer_ids))
        alone.append(len(encode_example(tokenizer, z, template=template).input_ids))
    n = len(ex)
    return {"t_prefix": sum(pre) / n, "t_suffix": sum(suf) / n, "t_answer": sum(ans) / n, "t_example": sum(alone) / n}


# ------------------------------------------------------------------ FLOPs of per-example gradients
def gradient_flop_count(model, names, lengths, answer_lengths, *, padded_lengths=None) -> dict[str, Any]:
    """FLOPs of per-example gradients on the hooks path
    (:meth:`~icp_influence.gradients.Objective.per_example_grads`), counted from the shapes
    that path runs, for examples of ``lengths`` tokens of which ``answer_lengths`` are scored.

    Per token (``lengths``, padding excluded):

    * forward: ``2·in·out`` for every linear layer of the model below the LM head;
    * backward, input gradients: ``2·in·out`` for every linear layer whose input depends on
      a selected parameter (autograd skips the others, e.g. block 0's projections when the
      first selected parameter is there; found by one tiny forward with hooks);
    * per-example weight gradients ``Σ_t δ_t a_tᵀ``: ``2·in·out`` per selected weight.

    Per answer position: the LM head ``2·d·V`` forward and ``2·d·V`` for its input gradient
    (:func:`~icp_influence.lm.batch_answer_nll` evaluates it only there).

    Attention scores, per block and example of ``L`` tokens: ``4·d_attn`` FLOPs per causal
    (query, key) pair (``QKᵀ`` and ``PV``; ``L(L+1)/2`` pairs), twice that in the backward of
    blocks downstream of the first selected parameter. Element-wise work (norms,
    activations, softmax, bias sums) is not counted. The matrix-product part equals what
    ``torch.utils.flop_counter.FlopCounterMode`` counts for an unpadded run (tested). ``padded_lengths`` (optional) gives the padded
    tokens actually run, to report the padding waste separately.
    """
    import torch

    from .gradients import _is_linear, find_blocks
    from .lm import batch_answer_nll

    lengths = [int(x) for x in lengths]
    answer_lengths = [int(x) for x in answer_lengths]
    named = dict(model.named_parameters())
    chosen = set(names)
    head = model.get_output_embeddings()
    layers: dict[str, dict[str, Any]] = {}

    def hook_for(mname):
        def hook(mod, inp, out):
            w = mod.weight
            fan_in, fan_out = (w.shape[1], w.shape[0]) if isinstance(mod, torch.nn.Linear) else (w.shape[0], w.shape[1])
            layers[mname] = {"in": int(fan_in), "out": int(fan_out), "input_grad": bool(inp[0].requires_grad),
                             "head": mod is head,
                             "w_sel": f"{mname}.weight" in chosen, "b_sel": f"{mname}.bias" in chosen}
        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in model.named_modules() if _is_linear(m)]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    sel_ids = {id(named[n]) for n in names}
    try:
        for p, _ in flags:
            p.requires_grad_(id(p) in sel_ids)
        dev = next(model.parameters()).device
        ids = torch.full((1, 4), 1, dtype=torch.long, device=dev)
        labels = torch.tensor([[-100, -100, 2, 3]], device=dev)
        with torch.enable_grad():
            batch_answer_nll(model, ids, labels)
    finally:
        for h in handles:
            h.remove()
        for p, f in flags:
            p.requires_grad_(f)
    body = [v for v in layers.values() if not v["head"]]
    fwd_tok = sum(2 * v["in"] * v["out"] for v in body)
    bwd_tok = sum(2 * v["in"] * v["out"] for v in body if v["input_grad"])
    wgrad_tok = sum(2 * v["in"] * v["out"] * v["w_sel"] for v in layers.values())
    hv = [v for v in layers.values() if v["head"]]
    head_pos = 2 * hv[0]["in"] * hv[0]["out"] if hv else 0
    cfg = model.config
    prefix, blocks = find_blocks(model)
    n_heads = int(getattr(cfg, "num_attention_heads", getattr(cfg, "n_head", 0)) or 0)
    hidden = int(getattr(cfg, "hidden_size", getattr(cfg, "n_embd", 0)) or 0)
    head_dim = int(getattr(cfg, "head_dim", 0) or (hidden // n_heads if n_heads else 0))
    d_attn = n_heads * head_dim
    first = min(int(n[len(prefix) + 1:].split(".")[0]) for n in names if n.startswith(prefix + ".")) \
        if any(n.startswith(prefix + ".") for n in names) else len(blocks)
    n_blocks, n_bwd_blocks = len(blocks), len(blocks) - first
    T, A = sum(lengths), sum(answer_lengths)
    pairs = sum(L * (L + 1) // 2 for L in lengths)
    forward = fwd_tok * T + head_pos * A + 4 * d_attn * pairs * n_blocks
    backward = bwd_tok * T + head_pos * A + 8 * d_attn * pairs * n_bwd_blocks
    weight_grads = wgrad_tok * T
    out = {"tokens": T, "answer_tokens": A, "forward_flops": forward, "backward_input_flops": backward,
           "weight_grad_flops": weight_grads, "flops": forward + backward + weight_grads,
           "attention_flops": 4 * d_attn * pairs * (n_blocks + 2 * n_bwd_blocks),
           "linear_flops_per_token": {"forward": fwd_tok, "backward_input": bwd_tok, "weight_grads": wgrad_tok},
           "head_flops_per_answer_position": head_pos, "n_nonembed": fwd_tok // 2,
           "flops_6N": 6 * (fwd_tok // 2) * T}
    if padded_lengths is not None:
        out["padded_tokens"] = int(sum(padded_lengths))
    return out
