"""Registry of experiments and benchmarks, run by ``python -m icp_influence run|bench``.

Register with a decorator in any module of :mod:`icp_influence.experiments` or
:mod:`icp_influence.benchmarks` (modules there are discovered automatically)::

    @experiment("lsa-gd", "trained linear self-attention vs one step of gradient descent")
    def lsa_gd(*, smoke: bool = False, seed: int = 0) -> dict: ...

The function returns a JSON-serialisable dict: the result the CLI prints.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from .errors import UnknownNameError

Runner = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Entry:
    name: str
    kind: str  # "experiment" | "benchmark"
    func: Runner
    summary: str


_ENTRIES: dict[str, dict[str, Entry]] = {"experiment": {}, "benchmark": {}}
_DISCOVERED = False


def _register(kind: str, name: str, summary: str) -> Callable[[Runner], Runner]:
    def deco(func: Runner) -> Runner:
        _ENTRIES[kind][name] = Entry(name, kind, func, summary)
        return func

    return deco


def experiment(name: str, summary: str) -> Callable[[Runner], Runner]:
    """Register an experiment ``name`` (run by ``python -m icp_influence run name``)."""
    return _register("experiment", name, summary)


def benchmark(name: str, summary: str) -> Callable[[Runner], Runner]:
    """Register a benchmark ``name`` (run by ``python -m icp_influence bench name``)."""
    return _register("benchmark", name, summary)


def import_submodules(package: str) -> list[str]:
    """Import every public module of ``package`` (sorted by name); the project's one plugin
    discovery (experiments, benchmarks and CLI commands register themselves on import)."""
    pkg = importlib.import_module(package)
    names = []
    for mod in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{package}.{mod.name}")
            names.append(mod.name)
    return names


def discover() -> None:
    """Import every module of the experiments and benchmarks packages (once)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    for pkg_name in ("icp_influence.experiments", "icp_influence.benchmarks"):
        import_submodules(pkg_name)
    _DISCOVERED = True


def entries(kind: str) -> dict[str, Entry]:
    discover()
    return dict(sorted(_ENTRIES[kind].items()))


def get(kind: str, name: str) -> Entry:
    known = entries(kind)
    if name not in known:
        raise UnknownNameError(
            f"Unknown {kind} {name!r}. Known {kind}s: {', '.join(known) or '(none)'}. "
            "See `python -m icp_influence list`."
        )
    return known[name]
