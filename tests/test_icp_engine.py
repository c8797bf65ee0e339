"""The packed ICP engine: equals the naive per-pair forward pass (short and long examples,
every template, three architectures, float32 and float64), tokenises each example once,
runs the prefix once per candidate and the baseline once, is deterministic."""
from __future__ import annotations

import math
import random
import warnings
from pathlib import Path

import numpy as np
import pytest

from icp_influence.data import Example, load_alpaca
from icp_influence.encoding import ContextTooLongWarning, PairEncoder, encode_pair
from icp_influence.errors import ContextTooLongError
from icp_influence.icp import IcpScorer, loglik_matrix, naive_loglik_matrix
from icp_influence.icp_engine import packed_supported, plan_passes, prefix_answer_logprobs
from icp_influence.models import TINY_SPECS, load_model
from icp_influence.synthetic import make_synthetic_pool
from icp_influence.valuators import make

TOL = 1e-4  # nats (float32)
TOL64 = 1e-9  # nats (float64: the engine and the naive path compute the same function)
ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ("paper", "plain", "chat")

_WORDS = ("water heat time people food plan money cost simple small large better often most each step helps "
          "keeps makes uses needs slowly quickly because while after before during every many some other").split()


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(n)).capitalize() + "."


def long_examples(n: int, seed: int, *, words: tuple[int, int] = (18, 30)) -> list[Example]:
    """Alpaca-like examples with multi-sentence outputs (byte tokenizer: 100–250 tokens)."""
    rng = random.Random(seed)
    return [Example(f"long-{seed}-{i}", _words(rng, rng.randint(6, 14)).rstrip(".") + "?",
                    _words(rng, rng.randint(0, 6)) if i % 3 == 0 else "", _words(rng, rng.randint(*words)),
                    task="long") for i in range(n)]


def instruction_examples() -> list[Example]:
    """The instruction set (data/instructions, or $ICP_INSTRUCTIONS_DIR), shuffled; [] when absent."""
    from icp_influence.benchmarks.icp_throughput import instruction_files

    ex = [e for f in instruction_files() for e in load_alpaca(f)]
    random.Random(0).shuffle(ex)
    return ex


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny():
    cache = {}

    def get(spec, dtype=None):
        key = (spec, dtype)
        if key not in cache:
            cache[key] = load_model(spec, dtype=dtype)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def short_pool():
    return make_synthetic_pool(28, seed=0)


def _max_diff(a, b) -> float:
    return max(float(np.abs(a.ll - b.ll).max()), float(np.abs(a.baseline - b.baseline).max()))


# ----------------------------------------------------------------- tokenise once == encode_pair
class CountingTokenizer:
    """Delegates to a tokenizer, counting text tokenisations and chat-template renderings."""

    def __init__(self, tok):
        self._tok = tok
        self.calls = 0
        self.renders = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._tok(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        self.renders += 1
        return self._tok.apply_chat_template(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __len__(self):
        return len(self._tok)


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("max_length", [None, 600, 300])
def test_pair_encoder_equals_encode_pair(tiny, short_pool, template, max_length):
    """Segments by concatenation == encode_pair for every pair, truncation (left-cut demo) included."""
    _, tok = tiny("tiny-llama")
    demos = [None, *short_pool[:3], *long_examples(3, seed=1)]
    probes = [*short_pool[14:17], *long_examples(3, seed=2)]
    enc = PairEncoder(tok, template=template, max_length=max_length)
    n_cut = 0
    for z in demos:
        for p in probes:
            with warnings.catch_warnings(record=True) as w_ref:
                warnings.simplefilter("always")
                ref = encode_pair(tok, p, z, template=template, max_length=max_length)
            with warnings.catch_warnings(record=True) as w_got:
                warnings.simplefilter("always")
                got = enc.pair(p, z)
            assert got == ref, (template, max_length, z and z.id, p.id)
            assert [str(w.message) for w in w_got] == [str(w.message) for w in w_ref]
            n_cut += bool(ref.truncated)
    assert not enc.per_pair
    if max_length == 300:  # the long pairs really were truncated (demo first, then the query)
        assert n_cut >= 9


def test_pair_encoder_truncation_error_matches(tiny):
    _, tok = tiny("tiny-gpt2")
    z, p = long_examples(2, seed=3)
    enc = PairEncoder(tok, template="paper", max_length=120, truncation="error")
    with pytest.raises(ContextTooLongError) as e_ref:
        encode_pair(tok, p, z, template="paper", max_length=120, truncation="error")
    with pytest.raises(ContextTooLongError) as e_got:
        enc.pair(p, z)
    assert str(e_got.value) == str(e_ref.value)


@pytest.mark.parametrize("template", TEMPLATES)
def test_each_example_tokenised_once(tiny, short_pool, template):
    """C candidates x P probes: O(C + P) tokenisations and chat renderings, not O(C x P)."""
    model, tok = tiny("tiny-llama")
    counting = CountingTokenizer(tok)
    cands, probes = short_pool[:6], short_pool[14:22]
    sc = IcpScorer(model, counting, probes, template=template)
    sc.deltas(cands)
    C, P = len(cands), len(probes)
    # per probe: query + answer; per candidate (and the baseline): one prefix; a few fixed calls (BOS probe)
    assert counting.calls <= 2 * P + (C + 1) + 8, counting.calls
    if template == "chat":
        # layout (2) + sentinel + one per probe + one per candidate + the one-time check against encode_pair
        assert counting.renders <= 3 + P + C + 8, counting.renders
    else:
        assert counting.renders == 0


# ----------------------------------------------------------------- engine == naive
@pytest.mark.parametrize("spec", TINY_SPECS)
@pytest.mark.parametrize("template", TEMPLATES)
def test_engine_equals_naive_long(tiny, spec, template):
    """Long Alpaca-like examples (up to the tiny models' 512-token context: the longest pairs are
    left-truncated), a small token budget (several passes per candidate)."""
    model, tok = tiny(spec)
    assert packed_supported(model)
    cands, probes = long_examples(3, seed=10), long_examples(7, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContextTooLongWarning)
        got = loglik_matrix(model, tok, cands, probes, template=template, token_budget=700)
        ref = naive_loglik_matrix(model, tok, cands, probes, template=template, batch_size=1)
    assert _max_diff(got, ref) <= TOL, f"{spec}/{template}: {_max_diff(got, ref):.3g} nats"
    assert np.abs(got.delta).max() > 1e-3  # the demonstrations matter: the comparison is not vacuous
    assert got.meta["engine"] == "packed"


@pytest.mark.parametrize("spec", TINY_SPECS)
@pytest.mark.parametrize("template", TEMPLATES)
def test_engine_equals_naive_float64(tiny, short_pool, spec, template):
    """In float64 the engine and the naive path agree to rounding (~1e-12): exactness of the
    algorithm itself, separate from float32 noise. Short and long examples, with truncation."""
    model, tok = tiny(spec, "float64")
    cands = [*short_pool[:2], *long_examples(2, seed=20)]
    probes = [*short_pool[14:18], *long_examples(4, seed=21)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContextTooLongWarning)
        got = loglik_matrix(model, tok, cands, probes, template=template, token_budget=300, max_length=300)
        ref = naive_loglik_matrix(model, tok, cands, probes, template=template, batch_size=1, max_length=300)
    assert _max_diff(got, ref) <= TOL64, f"{spec}/{template}: {_max_diff(got, ref):.3g} nats"


def test_instruction_set_examples_if_present(tiny):
    """The real instruction set (data/instructions), when the checkout has it, truncated to the tiny context."""
    ex = [e for e in instruction_examples() if len(e.output) < 300]
    if len(ex) < 8:
        pytest.skip("data/instructions/*.jsonl not in this checkout")
    model, tok = tiny("tiny-llama")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContextTooLongWarning)
        got = loglik_matrix(model, tok, ex[:2], ex[2:8])
        ref = naive_loglik_matrix(model, tok, ex[:2], ex[2:8], batch_size=1)
    assert _max_diff(got, ref) <= TOL


def test_hf_cache_fallback_still_exact(tiny, short_pool):
    """The previous engine stays available (unsupported architectures use it) and exact."""
    model, tok = tiny("tiny-gpt-neox")
    cands, probes = short_pool[:3], short_pool[14:20]
    got = loglik_matrix(model, tok, cands, probes, engine="hf-cache", batch_size=4)
    ref = naive_loglik_matrix(model, tok, cands, probes, batch_size=1)
    assert got.meta["engine"] == "hf-cache" and _max_diff(got, ref) <= TOL


def test_sliding_window_models_use_the_fallback(short_pool):
    model, tok = load_model("tiny-llama")  # a fresh model: the self-check cache is per model object
    model.config.sliding_window = 16
    assert not packed_supported(model)
    sc = IcpScorer(model, tok, short_pool[14:17])
    assert sc.engine == "hf-cache"


# ----------------------------------------------------------------- neutral baseline
def test_neutral_baseline_demo(tiny, short_pool):
    model, tok = tiny("tiny-llama")
    cands, probes, neutral = short_pool[:3], short_pool[14:20], short_pool[27]
    sc = IcpScorer(model, tok, probes, baseline_demo=neutral)
    np.testing.assert_array_equal(sc.baseline, sc.loglik_one(neutral))  # ll(p | neutral demonstration)
    zero = IcpScorer(model, tok, probes).baseline
    assert np.abs(sc.baseline - zero).max() > 1e-3
    ref = naive_loglik_matrix(model, tok, cands, probes, batch_size=1, baseline_demo=neutral)
    got = loglik_matrix(model, tok, cands, probes, baseline_demo=neutral)
    assert _max_diff(got, ref) <= TOL
    np.testing.assert_array_equal(got.delta, got.ll - got.baseline[None, :])
    assert got.meta["baseline_kind"] == "neutral_demo" and got.meta["baseline_demo"] == neutral.id
    sm = make("icp", model, tok, score="delta", baseline_demo=neutral).score(cands, probes)
    assert sm.meta["baseline_kind"] == "neutral_demo" and sm.meta["baseline_demo"] == neutral.id
    np.testing.assert_array_equal(sm.values, got.delta)
    assert make("icp", model, tok).score(cands[:1], probes).meta["baseline_kind"] == "zero_shot"


# ----------------------------------------------------------------- what runs
def test_prefix_once_per_candidate_baseline_once(tiny, short_pool):
    """With a neutral baseline demonstration the baseline has a prefix too, so it is counted."""
    model, tok = tiny("tiny-gpt2")
    cands, probes, neutral = short_pool[:4], short_pool[14:24], short_pool[27]
    sc = IcpScorer(model, tok, probes, template="chat", token_budget=200, baseline_demo=neutral)
    sc.deltas(cands[:2])
    sc.deltas(cands[2:])
    encs = [sc.encode(p, None) for p in probes]
    lengths = sorted((len(e.query_ids) + len(e.answer_ids) - 1 for e in encs), reverse=True)
    per = len(plan_passes(lengths, token_budget=200))
    assert per > 1  # the budget really splits the probes
    C = len(cands)
    assert sc.baseline_calls == 1
    assert sc.counter.prefix == C + 1          # each candidate's prefix once, plus the baseline's
    assert sc.counter.suffix == (C + 1) * per  # same probes, same split, for every candidate
    assert sc.counter.padding == 0 and sc.counter.full == 0
    want = sum(len(sc.encode(probes[0], z).prefix_ids) for z in [neutral, *cands])
    want += (C + 1) * sum(lengths)
    assert sc.counter.tokens == want


def test_head_only_at_answer_positions(tiny, short_pool):
    model, tok = tiny("tiny-llama")
    probes = short_pool[14:22]
    sc = IcpScorer(model, tok, probes)
    _ = sc.baseline
    rows = []
    h = model.get_output_embeddings().register_forward_hook(lambda m, a, o: rows.append(a[0].shape[0]))
    try:
        sc.loglik(short_pool[:2])
    finally:
        h.remove()
    assert sum(rows) == 2 * int(sc.n_answer_tokens.sum())


def test_deterministic_when_repeated(tiny, short_pool):
    model, tok = tiny("tiny-gpt-neox")
    cands, probes = short_pool[:3], [*short_pool[14:18], *long_examples(3, seed=5)]
    a = IcpScorer(model, tok, probes, token_budget=300)
    first = a.deltas(cands)
    np.testing.assert_array_equal(first, a.deltas(cands))
    np.testing.assert_array_equal(first, IcpScorer(model, tok, probes, token_budget=300).deltas(cands))


def test_plan_passes():
    lengths = [50, 40, 40, 30, 20, 10, 10, 5]
    for budget, cap in [(60, None), (100, None), (100, 3), (1000, 2), (1000, None), (30, None)]:
        passes = plan_passes(lengths, token_budget=budget, batch_size=cap)
        assert [i for p in passes for i in p] == list(range(len(lengths)))  # contiguous, in order
        for p in passes:
            assert len(p) == 1 or sum(lengths[i] for i in p) <= budget
            assert cap is None or len(p) <= cap
        greedy = 1
        used = n = 0
        for x in lengths:
            if n and (used + x > budget or (cap is not None and n >= cap)):
                greedy, used, n = greedy + 1, 0, 0
            used, n = used + x, n + 1
        assert len(passes) == greedy
    assert len(plan_passes([7] * 10, token_budget=1000, batch_size=3)) == math.ceil(10 / 3)


def test_prefix_answer_logprobs_packs_ragged_suffixes(tiny):
    """Ragged suffixes, an empty query (answer predicted by the prefix's last token), one-token answers."""
    from icp_influence.encoding import Encoded
    from icp_influence.lm import answer_logprobs

    model, tok = tiny("tiny-gpt2")
    rng = np.random.default_rng(1)
    prefix = tuple(int(x) for x in rng.integers(0, 255, 40))
    shapes = [(5, 3), (0, 4), (0, 1), (31, 1), (2, 90), (60, 17)]
    sufs = [(tuple(int(x) for x in rng.integers(0, 255, q)), tuple(int(x) for x in rng.integers(0, 255, a)))
            for q, a in shapes]
    ref = answer_logprobs(model, [Encoded(prefix, q, a) for q, a in sufs], pad_id=tok.pad_token_id, batch_size=1)
    for budget in (16, 64, 4096):
        got = prefix_answer_logprobs(model, prefix, sufs, token_budget=budget)
        for r, g in zip(ref, got):
            assert g.shape == r.shape and np.abs(g - r).max() <= TOL


# ----------------------------------------------------------------- SmolLM2
def _smollm2_long_split(tok):
    ex = instruction_examples()
    if len(ex) >= 9:
        return ex[:2], ex[2:9]
    # no instruction set in this checkout: Alpaca-length generated examples (~65-125-token answers)
    from icp_influence.benchmarks.icp_throughput import alpaca_like

    return (alpaca_like(tok, 2, answer_tokens=(65, 120), seed=0, prefix="cand"),
            alpaca_like(tok, 7, answer_tokens=(65, 125), seed=1, prefix="probe"))


@pytest.mark.slow
@pytest.mark.parametrize("template", ["paper", "chat"])
def test_smollm2_engine_equals_naive_long(smollm2, template):
    """Within 1e-4 nats per probe up to 100 answer tokens, then 1e-6 nats per answer token.

    Two float32 evaluations of a long sum cannot agree better: on a 315-token answer of
    the instruction set both the naive path and the engine are ~1.3e-4 nats (in opposite
    directions) from a float64 run of the same model (see the icp module docstring).
    """
    model, tok = smollm2
    assert packed_supported(model)
    cands, probes = _smollm2_long_split(tok)
    got = loglik_matrix(model, tok, cands, probes, template=template)
    ref = naive_loglik_matrix(model, tok, cands, probes, template=template, batch_size=1)
    tol = np.maximum(TOL, 1e-6 * got.n_answer_tokens)
    diff = np.vstack([np.abs(got.ll - ref.ll), np.abs(got.baseline - ref.baseline)[None, :]])
    assert (diff <= tol[None, :]).all(), f"smollm2/{template}: {diff.max():.3g} nats (answers {got.n_answer_tokens})"


@pytest.mark.slow
def test_smollm2_engine_equals_naive_short_and_tokenises_once(smollm2, short_pool):
    model, tok = smollm2
    cands, probes = short_pool[:3], short_pool[14:21]
    for template in TEMPLATES:
        enc = PairEncoder(tok, template=template)
        for z in [None, *cands]:
            for p in probes:
                assert enc.pair(p, z) == encode_pair(tok, p, z, template=template)
        got = loglik_matrix(model, tok, cands, probes, template=template, token_budget=256)
        ref = naive_loglik_matrix(model, tok, cands, probes, template=template, batch_size=1)
        assert _max_diff(got, ref) <= TOL, f"smollm2/{template}: {_max_diff(got, ref):.3g} nats"


# ----------------------------------------------------------------- benchmark
def test_icp_throughput_smoke_fields():
    """The benchmark's JSON has the promised fields; its FLOP count matches the shapes run."""
    from icp_influence.registry import get

    res = get("benchmark", "icp-throughput").func(smoke=True)
    for key in ("efficiency", "speedup_vs_reference", "max_abs_diff", "tokens", "matmul_gflops", "achieved_gflops",
                "seconds_per_pair", "pairs", "flop_ratio", "threads"):
        assert key in res, key
    assert res["max_abs_diff"] <= TOL and res["engine"] == "packed"
    assert res["efficiency"] > 0 and res["pairs"] == res["n_candidates"] * res["n_probes"]
    assert res["flop_ratio"] > 1  # the cache saves work: the prefix runs once per candidate
    assert len(res["rounds"]) == res["n_candidates"]
    # per dtype: the fp32 engine's figures, and bf16 where the CPU has bf16 matrix units
    assert res["dtype_chosen"] in ("float32", "bfloat16") and res["dtype_reason"]
    fp32 = res["by_dtype"]["float32"]
    assert fp32["speedup_vs_reference"] == res["speedup_vs_reference"] and fp32["efficiency"] == res["efficiency"]
    bf16 = res["by_dtype"]["bfloat16"]
    if res["cpu_bf16"]:
        assert bf16["efficiency"] > 0 and bf16["speedup_vs_reference"] > 0
        assert set(bf16["candidate_spearman"]) == {"mean", "win_rate"} and bf16["max_abs_diff"] < 0.1
    else:
        assert "skipped" in bf16
