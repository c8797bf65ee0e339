"""Assertions for the notebooks' autograded test cells (nbgrader).

A test cell compares what the student's function returns with a reference computed by the
library, and fails with a message that says what was compared, what was expected, what
came back and a hint — not a bare ``AssertionError``. Every function raises
``CheckFailed``, an ``AssertionError`` (what nbgrader counts as a failed test), and returns ``None`` on success,
so a test cell ends with one explicit ``print`` of its result, never a stray ``True``. In a
notebook a failed check shows its message alone (an IPython handler for ``CheckFailed``), not
the frames of this module; pytest hides them too (``__tracebackhide__``).

::

    from icp_course.checks import expect_close
    expect_close(lsa_forward(E, Wq, Wk, Wv, P, n_ctx=3), reference, what="lsa_forward on 3 context tokens",
                 hint="normalise by the number of context tokens, not by all tokens")
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CheckFailed", "as_array", "expect", "expect_close", "expect_equal", "expect_answered", "expect_reason"]


def as_array(value: Any) -> np.ndarray:
    """``value`` (a torch tensor, a list, a number) as a float64 NumPy array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


class CheckFailed(AssertionError):
    """A check of a student's answer failed (an ``AssertionError``, which nbgrader counts)."""


def _show_message_only(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
    """IPython shows a failed check as its message alone: the student's answer is what is wrong,
    not a frame of this module."""
    shell.showtraceback((etype, value, tb), exception_only=True)


def _install_ipython_handler() -> None:
    try:
        from IPython import get_ipython
    except ImportError:   # pragma: no cover - IPython is a dependency of the course
        return
    shell = get_ipython()
    # IPython keeps one custom handler: leave one that something else installed in place (a failed
    # check then shows its full traceback, still with the message at the end)
    if shell is not None and getattr(shell, "custom_exceptions", ()) in ((), (CheckFailed,)):
        shell.set_custom_exc((CheckFailed,), _show_message_only)


def _fail(what: str, detail: str, hint: str) -> None:
    __tracebackhide__ = True  # noqa: F841 - pytest leaves this frame out of the traceback
    raise CheckFailed(f"{what}: {detail}" + (f"\nHint: {hint}" if hint else ""))


def _short(a: np.ndarray) -> str:
    if a.size <= 6:
        return np.array2string(a, precision=5, suppress_small=True)
    return f"array of shape {a.shape}, first values {np.array2string(a.ravel()[:4], precision=5)}"


def expect_answered(value: Any, *, what: str) -> None:
    """Fail when the student left ``value`` empty (``None``, ``...`` or an empty string)."""
    __tracebackhide__ = True  # noqa: F841
    if value is None or value is Ellipsis or (isinstance(value, str) and not value.strip()):
        _fail(what, "no answer yet", "replace the placeholder with your answer and run the cell again")


def expect(condition: Any, *, what: str, detail: str = "not as expected", hint: str = "") -> None:
    """Fail with ``detail`` and ``hint`` unless ``condition`` is true."""
    __tracebackhide__ = True  # noqa: F841
    if not bool(condition):
        _fail(what, detail, hint)


def expect_close(actual: Any, expected: Any, *, what: str, hint: str = "", rtol: float = 1e-6,
                 atol: float = 1e-8) -> None:
    """``actual`` equals ``expected`` elementwise within ``rtol``/``atol`` (same shape)."""
    __tracebackhide__ = True  # noqa: F841
    expect_answered(actual, what=what)
    try:
        a = as_array(actual)
    except (TypeError, ValueError):
        _fail(what, f"expected numbers, got {type(actual).__name__}", hint)
    e = as_array(expected)
    if a.shape != e.shape:
        _fail(what, f"expected shape {e.shape}, got shape {a.shape}", hint)
    if not np.all(np.isfinite(a)):
        _fail(what, "the result contains NaN or inf", hint)
    if not np.allclose(a, e, rtol=rtol, atol=atol):
        diff = float(np.max(np.abs(a - e))) if a.size else 0.0
        _fail(what, f"expected {_short(e)}, got {_short(a)} (largest |difference| {diff:.3g})", hint)


def expect_equal(actual: Any, expected: Any, *, what: str, hint: str = "") -> None:
    """``actual == expected`` (for ids, counts, labels)."""
    __tracebackhide__ = True  # noqa: F841
    expect_answered(actual, what=what)
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple, np.ndarray)):
        same = list(actual) == list(expected)
    else:
        same = actual == expected
    if not bool(same):
        _fail(what, f"expected {expected!r}, got {actual!r}", hint)


def expect_reason(reason: Any, *, what: str = "your reason", min_words: int = 4) -> None:
    """A "predict, then check" answer carries a stated reason of at least ``min_words`` words."""
    __tracebackhide__ = True  # noqa: F841
    expect_answered(reason, what=what)
    if not isinstance(reason, str) or len(reason.split()) < min_words:
        _fail(what, f"state your reason in a sentence (at least {min_words} words)",
              "say *why* you expect it, before you look at the result")


_install_ipython_handler()
