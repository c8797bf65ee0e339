"""Self-checking exercises of the notebooks not yet converted to nbgrader (05, 06).

Notebooks 00–04 and 07 have nbgrader exercises instead (students write the function,
autograded test cells check it with visible and hidden tests; see
:mod:`icp_course.assignments` and docs/instructor_notes.md, "Adding an exercise"). When a
notebook is converted, delete its module here. The remaining notebooks call
``check(name, answer)``, which prints a tick or raises ``AssertionError`` with a hint.

Register with::

    @exercise("05.top3_overlap", hint="...")
    def _top3(**context):        # returns the reference solution (context: data from the notebook)
        ...
    @_top3.checker               # optional: custom comparison (default: np.allclose)
    def _(answer, solution): ...

Every module in this package is imported on first use.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class Exercise:
    name: str
    solution_fn: Callable[..., Any]
    hint: str
    compare: Callable[[Any, Any], bool] | None = field(default=None)

    def checker(self, fn: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
        self.compare = fn
        return fn

    def solution(self, **context: Any) -> Any:
        return self.solution_fn(**context)


_REGISTRY: dict[str, Exercise] = {}
_LOADED = False


def exercise(name: str, hint: str = "") -> Callable[[Callable[[], Any]], Exercise]:
    def deco(fn: Callable[[], Any]) -> Exercise:
        ex = Exercise(name, fn, hint)
        _REGISTRY[name] = ex
        return ex

    return deco


def _load() -> None:
    global _LOADED
    if not _LOADED:
        for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if not m.name.startswith("_"):
                importlib.import_module(f"{__name__}.{m.name}")
        _LOADED = True


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> Exercise:
    _load()
    if name not in _REGISTRY:
        from icp_influence.errors import UnknownNameError

        raise UnknownNameError(f"Unknown exercise {name!r}; known: {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def _default_compare(answer: Any, solution: Any) -> bool:
    try:
        return bool(np.allclose(np.asarray(answer, dtype=float), np.asarray(solution, dtype=float), rtol=1e-4, atol=1e-6))
    except (TypeError, ValueError):
        return answer == solution


def check(name: str, answer: Any, **context: Any) -> bool:
    """Check a student's ``answer`` to exercise ``name``; prints ✓ or raises with a hint.

    ``context`` (optional keyword arguments) is passed to the reference solution, for
    exercises whose answer depends on data computed in the notebook.
    """
    ex = get(name)
    if answer is None or answer is Ellipsis:
        raise AssertionError(f"{name}: no answer yet — replace the `...` with your code. Hint: {ex.hint}")
    ok = (ex.compare or _default_compare)(answer, ex.solution(**context))
    if not ok:
        raise AssertionError(f"{name}: not quite. Hint: {ex.hint}")
    print(f"✓ {name}: correct")
    return True


def solution(name: str, **context: Any) -> Any:
    """The reference solution (instructors; tests)."""
    return get(name).solution(**context)
