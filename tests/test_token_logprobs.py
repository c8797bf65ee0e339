"""One function turns logits into token log-probabilities (``lm.target_logprobs``): checked
against PyTorch's cross-entropy, in every precision and chunking the callers use, and the only
log-softmax in the science package."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from icp_influence.lm import answer_nll, answer_token_logprobs, target_logprobs

LIB = Path(__file__).resolve().parents[1] / "lib" / "icp_influence"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_target_logprobs_is_minus_the_cross_entropy(dtype):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(37, 1000, generator=g, dtype=dtype) * 4
    targets = torch.randint(0, 1000, (37,), generator=g)
    want = -torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    got = target_logprobs(logits, targets)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
    # in chunks of rows (what ICP's head uses) and widened to float64: the same numbers
    torch.testing.assert_close(target_logprobs(logits, targets, chunk_rows=8), got, rtol=0, atol=0)
    wide = target_logprobs(logits, targets, dtype=torch.float64, chunk_rows=5)
    assert wide.dtype == torch.float64
    torch.testing.assert_close(wide, -torch.nn.functional.cross_entropy(logits.double(), targets, reduction="none"),
                               rtol=0, atol=1e-12)


def test_half_precision_logits_are_widened_and_batched_shapes_kept():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 300, generator=g).to(torch.bfloat16)
    targets = torch.randint(0, 300, (2, 5), generator=g)
    got = target_logprobs(logits, targets)
    assert got.shape == (2, 5) and got.dtype == torch.float32
    want = -torch.nn.functional.cross_entropy(logits.float().reshape(-1, 300), targets.reshape(-1),
                                              reduction="none").reshape(2, 5)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # one row: a scalar (the classifier of loo_models)
    assert target_logprobs(logits[0, 0].float(), targets[0, 0]).shape == ()


def test_answer_loss_is_built_on_it():
    """The answer loss of a padded batch equals summing target_logprobs over the answer positions."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 6, 50, generator=g)
    labels = torch.full((3, 6), -100)
    labels[0, 2:5] = torch.tensor([4, 9, 1])
    labels[1, 1:6] = torch.tensor([3, 3, 7, 0, 2])
    labels[2, 4:6] = torch.tensor([8, 5])
    tok = answer_token_logprobs(logits, labels)
    by_hand = torch.zeros(3)
    for b in range(3):
        for t in range(1, 6):
            if labels[b, t] != -100:
                by_hand[b] += target_logprobs(logits[b, t - 1], labels[b, t])
    torch.testing.assert_close(tok.sum(-1), by_hand, rtol=0, atol=1e-5)
    torch.testing.assert_close(answer_nll(logits, labels), -by_hand, rtol=0, atol=1e-5)


def test_the_science_package_has_one_log_softmax():
    """Every token log-probability comes from ``lm.target_logprobs``: no other log-softmax,
    cross-entropy or NLL-loss call in ``lib/icp_influence`` (a second one would be a second
    definition of the answer likelihood). One exception, named: the training objective of the
    retrainable classifier in ``loo_models`` (a class label's cross-entropy, not an answer)."""
    banned = {"log_softmax", "cross_entropy", "nll_loss", "CrossEntropyLoss", "NLLLoss"}
    calls = []
    for path in sorted(LIB.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
                if name in banned:
                    calls.append(f"{path.relative_to(LIB)}:{node.lineno}:{name}")
    assert [c for c in calls if not c.startswith("loo_models.py:")] == [c for c in calls if c.startswith("lm.py:")]
    assert len([c for c in calls if c.startswith("lm.py:")]) == 1, calls
    assert len([c for c in calls if c.startswith("loo_models.py:")]) <= 1, calls
