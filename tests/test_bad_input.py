"""The bad-input matrix (issue 8): every case raises a typed error from
``icp_influence.errors`` whose message names the problem and the fix — or, where the
documented policy is to proceed, warns. Command-line cases exit with code 2 and print no
traceback."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from icp_influence import errors as E
from icp_influence.data import Example, Pool, load_alpaca
from icp_influence.encoding import ContextTooLongWarning, encode_pair
from icp_influence.models import byte_tokenizer, load_model
from icp_influence.scores import ScoreMatrix
from icp_influence.store import _chunk_path, merge_run, run_chunked

P = Example("p", "Add the two numbers.", "10 + 5", "15")
Z = Example("z", "Add the two numbers.", "2 + 2", "4")


def _jsonl(tmp_path, text, name="d.jsonl", binary=False):
    path = tmp_path / name
    path.write_bytes(text) if binary else path.write_text(text, encoding="utf-8")
    return path


def case_empty_pool(tmp_path):
    load_alpaca(_jsonl(tmp_path, "\n"))


def case_empty_probes(tmp_path):
    from icp_influence.icp import IcpScorer

    model, tok = load_model("tiny-gpt2", device="cpu")
    IcpScorer(model, tok, [])


def case_duplicate_ids(tmp_path):
    load_alpaca(_jsonl(tmp_path, '{"id": "a", "instruction": "x", "output": "y"}\n{"id": "a", "instruction": "u", "output": "v"}\n'))


def case_missing_field(tmp_path):
    load_alpaca(_jsonl(tmp_path, '{"instruction": "x"}\n'))


def case_non_string_field(tmp_path):
    load_alpaca(_jsonl(tmp_path, '{"instruction": "x", "output": ["y"]}\n'))


def case_invalid_utf8(tmp_path):
    load_alpaca(_jsonl(tmp_path, b'{"instruction": "\xc3\x28", "output": "y"}\n', binary=True))


def case_broken_jsonl_line(tmp_path):
    load_alpaca(_jsonl(tmp_path, '{"instruction": "x", "output": "y"}\n{"instruction": \n'))


def case_too_long_when_asked_to_refuse(tmp_path):
    encode_pair(byte_tokenizer(), P, Z, max_length=40, truncation="error")


def case_empty_answer(tmp_path):
    encode_pair(byte_tokenizer(), Example("e", "Say nothing.", output=""), Z)


def case_tokenizer_mismatch(tmp_path):
    from icp_influence.models import _finish

    model, _ = load_model("tiny-llama", device="cpu")
    big = byte_tokenizer()
    big.add_tokens([f"extra{i}" for i in range(50)])
    _finish(model, big, "cpu", None)


def case_unknown_template(tmp_path):
    encode_pair(byte_tokenizer(), P, Z, template="alpaca-v9")


def case_unknown_icp_method(tmp_path):
    from icp_influence.icp import check_method

    check_method("ranking")


def case_unknown_valuator(tmp_path):
    from icp_influence.valuators import make

    make("shapley")


def case_k_larger_than_pool(tmp_path):
    from icp_influence.selection import top_k

    top_k(ScoreMatrix(np.ones((3, 2)), ["a", "b", "c"], ["p", "q"]), 4)


def case_probe_k_larger_than_pool(tmp_path):
    from icp_influence.probes import kmeans_representatives

    kmeans_representatives(np.zeros((3, 4)), 5)


def case_damping_not_positive(tmp_path):
    from icp_influence.ihvp import check_damping

    check_damping(0.0)


def case_zero_norm_gradient_cosine(tmp_path):
    from icp_influence.gradient_scores import cosine_scores

    cosine_scores(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[1.0, 1.0]]), ["good", "flat"], ["p"])


def case_nonfinite_scores(tmp_path):
    ScoreMatrix(np.array([[0.1, np.nan]]), ["cand-7"], ["p0", "p1"], {"method": "inner_product"}).check_finite()


def case_resume_with_other_arguments(tmp_path):
    f = lambda idx: np.zeros((len(idx), 1))  # noqa: E731
    run_chunked(tmp_path, {"template": "paper"}, ["a", "b"], ["p"], f, chunk_size=1, progress=False)
    run_chunked(tmp_path, {"template": "chat"}, ["a", "b"], ["p"], f, chunk_size=1, progress=False)


def case_truncated_chunk(tmp_path):
    f = lambda idx: np.ones((len(idx), 2))  # noqa: E731
    run_chunked(tmp_path, {"m": 1}, ["a", "b"], ["p", "q"], f, chunk_size=1, progress=False)
    p = _chunk_path(tmp_path, 1)
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    merge_run(tmp_path)


def case_run_locked(tmp_path):
    from icp_influence.store import run_lock

    f = lambda idx: np.ones((len(idx), 1))  # noqa: E731
    with run_lock(tmp_path, 0, 1):  # as if another live process were computing this run
        run_chunked(tmp_path, {"m": 1}, ["a", "b"], ["p"], f, chunk_size=1, progress=False)


def case_disk_full(tmp_path):
    import errno

    import safetensors.numpy

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    real, safetensors.numpy.save_file = safetensors.numpy.save_file, full
    try:
        run_chunked(tmp_path, {"m": 1}, ["a", "b"], ["p"], lambda idx: np.ones((len(idx), 1)), chunk_size=1, progress=False)
    finally:
        safetensors.numpy.save_file = real


def case_unknown_model(tmp_path):
    load_model("llama-9000")


def case_negative_noise(tmp_path):
    from icp_influence.data import add_label_noise
    from icp_influence.synthetic import make_synthetic_pool

    add_label_noise(make_synthetic_pool(5), 1.5)


CASES = [
    (case_empty_pool, E.EmptyPoolError, r"empty.*at least one example"),
    (case_empty_probes, E.EmptyPoolError, r"probe set is empty"),
    (case_duplicate_ids, E.DuplicateIdError, r"Duplicate id 'a'.*rename one or drop"),
    (case_missing_field, E.DataFormatError, r"line 1.*missing field\(s\) 'output'"),
    (case_non_string_field, E.DataFormatError, r"field 'output' must be a string, got list"),
    (case_invalid_utf8, E.DataFormatError, r"invalid UTF-8.*re-save the file as UTF-8"),
    (case_broken_jsonl_line, E.DataFormatError, r"line 2 is not valid JSON.*fix or remove that line"),
    (case_too_long_when_asked_to_refuse, E.ContextTooLongError, r"exceed the model's context of 40.*truncation='left'"),
    (case_empty_answer, E.DataFormatError, r"empty answer.*Give it an output or drop it"),
    (case_tokenizer_mismatch, E.TokenizerMismatchError, r"do not belong together"),
    (case_unknown_template, E.TemplateError, r"Unknown template 'alpaca-v9'; choose one of paper, plain, chat"),
    (case_unknown_icp_method, E.MethodError, r"Unknown ICP method 'ranking'; choose one of"),
    (case_unknown_valuator, E.MethodError, r"Unknown valuator 'shapley'; choose one of .*inner_product"),
    (case_k_larger_than_pool, E.ConfigError, r"budget must be an integer in \[1, 3\]"),
    (case_probe_k_larger_than_pool, E.ConfigError, r"cannot be chosen from 3 examples"),
    (case_damping_not_positive, E.ConfigError, r"damping λ must be a finite number > 0.*Try 1e-3"),
    (case_zero_norm_gradient_cosine, E.ConfigError, r"zero gradient \(\['flat'\]\).*inner_product"),
    (case_nonfinite_scores, E.NonFiniteScoreError, r"NaN or inf.*\(cand-7, p1\)"),
    (case_resume_with_other_arguments, E.ResumeMismatchError, r"template: 'paper' -> 'chat'.*new --out"),
    (case_truncated_chunk, E.CorruptFileError, r"chunk-000001.*corrupted or truncated.*run the same command again"),
    (case_run_locked, E.RunLockedError, r"Another process is already computing this run.*Wait for it to finish or stop it"),
    (case_disk_full, E.DiskFullError, r"no space left on the device holding .*chunks.*Free space there.*run the same command again"),
    (case_unknown_model, E.ModelSpecError, r"Unknown model spec 'llama-9000'"),
    (case_negative_noise, E.ConfigError, r"fraction must be in \[0, 1\]"),
]


@pytest.mark.parametrize("case,error,message", CASES, ids=[c[0].__name__[5:] for c in CASES])
def test_bad_input_raises_a_typed_error_that_says_what_to_fix(tmp_path, case, error, message):
    with pytest.raises(error, match=message) as info:
        case(tmp_path)
    assert isinstance(info.value, E.IcpError)


def test_too_long_example_is_truncated_with_a_warning_by_default():
    """Documented policy: cut the demonstration from the left, keep the probe, warn."""
    with pytest.warns(ContextTooLongWarning, match="probe 'p' with demonstration 'z'.*dropped"):
        enc = encode_pair(byte_tokenizer(), P, Z, max_length=100)
    assert len(enc) == 100 and enc.answer_ids == tuple(byte_tokenizer()(" 15", add_special_tokens=False).input_ids)


def test_model_without_pad_token_gets_one():
    """Documented policy: proceed, using EOS as the pad token."""
    from icp_influence.models import _finish

    model, tok = load_model("tiny-gpt-neox", device="cpu")
    tok.pad_token = None
    model.config.pad_token_id = None
    _, tok = _finish(model, tok, "cpu", None)
    assert tok.pad_token == tok.eos_token and model.config.pad_token_id == tok.eos_token_id


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "icp_influence", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,message", [
    (["run", "no-such-experiment"], "Unknown experiment 'no-such-experiment'"),
    (["bench", "no-such-bench"], "Unknown benchmark 'no-such-bench'"),
])
def test_cli_bad_input_exits_2_without_traceback(args, message):
    r = _cli(*args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
