"""``ScoreMatrix``: the one result shape every valuator returns (docs/design.md).

``values[i, j]`` is the value of candidate ``i`` for probe ``j``. Sign convention, used
everywhere: **positive = the candidate helps the probe** (lowers its loss / raises its
likelihood). Saved as safetensors (values) + JSON (ids and metadata); never pickle.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError, CorruptFileError, NonFiniteScoreError
from .utils import atomic_path, atomic_write_json

#: Every way to turn a candidate's row of per-probe values into one score.
AGGREGATES = ("mean", "win_rate", "sum", "median", "positive_fraction")
#: The aggregates that take probe weights (bootstrap counts, probe subsets): a weighted mean of
#: the values, or of the indicator ``value > 0``.
WEIGHTED_AGGREGATES = ("mean", "win_rate")


def aggregate(V: Any, how: str = "mean", weights: Any = None) -> np.ndarray:
    """One value per candidate from a ``[C, P]`` array: the one definition of every aggregate.

    ``mean`` (mean over probes); ``win_rate`` (fraction of probes with a value > 0, strict, so
    ties lose: for ICP's per-probe deltas this is the paper's score); ``positive_fraction`` (its
    alias); ``sum``; ``median``. ``weights`` ``[P]`` or ``[P, B]`` (non-negative; bootstrap
    counts or a 0/1 mask of a probe subset) give a weighted ``mean`` or ``win_rate``, and
    ``[P, B]`` returns ``[C, B]``.
    """
    if how == "positive_fraction":
        how = "win_rate"
    if how not in AGGREGATES:
        raise ConfigError(f"Unknown aggregate {how!r}; choose from {', '.join(AGGREGATES)}.")
    V = np.asarray(V)
    if weights is not None:
        if how not in WEIGHTED_AGGREGATES:
            raise ConfigError(f"Aggregate {how!r} takes no probe weights; weighted: {', '.join(WEIGHTED_AGGREGATES)}.")
        X = (V > 0).astype(np.float64) if how == "win_rate" else V.astype(np.float64, copy=False)
        w = np.asarray(weights, dtype=np.float64)
        return (X @ w) / w.sum(axis=0)
    if how == "win_rate":
        return (V > 0).mean(axis=1)
    if how == "sum":
        return V.sum(axis=1)
    if how == "median":
        return np.median(V, axis=1)
    return V.astype(np.float64, copy=False).mean(axis=1)


def library_version() -> str:
    from . import __version__

    return __version__


@dataclass
class ScoreMatrix:
    """A ``[n_candidates × n_probes]`` float matrix with ids and metadata.

    Attributes:
        values: ``float64`` array of shape ``(len(candidate_ids), len(probe_ids))``.
        candidate_ids: ids of the rows (pool examples being valued).
        probe_ids: ids of the columns (probe examples).
        meta: method, model, template, parameters, seed, library version, config hash, ...
    """

    values: np.ndarray
    candidate_ids: list[str]
    probe_ids: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        self.candidate_ids = [str(c) for c in self.candidate_ids]
        self.probe_ids = [str(p) for p in self.probe_ids]
        if self.values.ndim != 2 or self.values.shape != (len(self.candidate_ids), len(self.probe_ids)):
            raise ConfigError(
                f"ScoreMatrix values have shape {self.values.shape}, expected "
                f"({len(self.candidate_ids)}, {len(self.probe_ids)}) = (candidates, probes)."
            )
        self.meta.setdefault("library_version", library_version())

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape  # type: ignore[return-value]

    @property
    def method(self) -> str:
        return str(self.meta.get("method", "?"))

    def __repr__(self) -> str:
        return f"ScoreMatrix(method={self.method!r}, shape={self.shape})"

    def check_finite(self) -> "ScoreMatrix":
        """Raise :class:`NonFiniteScoreError` naming the (candidate, probe) pairs with NaN/inf."""
        bad = np.argwhere(~np.isfinite(self.values))
        if len(bad):
            pairs = ", ".join(f"({self.candidate_ids[i]}, {self.probe_ids[j]})" for i, j in bad[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise NonFiniteScoreError(
                f"{len(bad)} score(s) are NaN or inf in {self.method}: {pairs}{more}. Check those "
                "examples (empty answers, overflow in fp16) or raise damping for influence functions."
            )
        return self

    def aggregate(self, how: str | None = None) -> np.ndarray:
        """One value per candidate (shape ``(n_candidates,)``).

        ``mean`` (default; mean over probes), ``win_rate`` (fraction of probes with a value
        > 0 — for ICP matrices of per-probe deltas this is the paper's score), ``sum``,
        ``median``, ``positive_fraction`` (alias of win_rate).
        """
        return aggregate(self.values, how or self.meta.get("default_aggregate", "mean"))

    def series(self, how: str | None = None) -> dict[str, float]:
        return dict(zip(self.candidate_ids, self.aggregate(how).tolist()))

    def subset(self, candidate_ids: Sequence[str] | None = None, probe_ids: Sequence[str] | None = None) -> "ScoreMatrix":
        """The rows and columns with these ids, in the order given (``None``: all).

        Lookups go through id -> position dicts, so subsetting a 52k-candidate matrix is
        linear, not quadratic. A missing id raises :class:`ConfigError` naming it.
        """
        rows = _positions(self.candidate_ids, candidate_ids, "candidate") if candidate_ids is not None \
            else list(range(self.shape[0]))
        cols = _positions(self.probe_ids, probe_ids, "probe") if probe_ids is not None else list(range(self.shape[1]))
        return ScoreMatrix(self.values[np.ix_(rows, cols)], [self.candidate_ids[r] for r in rows],
                           [self.probe_ids[c] for c in cols], dict(self.meta))

    def aligned(self, other: "ScoreMatrix") -> "ScoreMatrix":
        """This matrix re-ordered to ``other``'s candidates and probes (which must be present)."""
        missing = set(other.candidate_ids) - set(self.candidate_ids)
        if missing:
            raise ConfigError(f"{len(missing)} candidate(s) of the other matrix are missing here, e.g. {sorted(missing)[:3]}.")
        return self.subset(other.candidate_ids, other.probe_ids)

    @staticmethod
    def concat(parts: Sequence["ScoreMatrix"], meta: dict[str, Any] | None = None) -> "ScoreMatrix":
        """Stack row blocks (candidate shards) that share the same probes."""
        if not parts:
            raise ConfigError("Nothing to concatenate: no ScoreMatrix parts.")
        probes = parts[0].probe_ids
        for p in parts[1:]:
            if p.probe_ids != probes:
                raise ConfigError("Cannot concatenate ScoreMatrix parts with different probe ids.")
        return ScoreMatrix(np.concatenate([p.values for p in parts], axis=0),
                           [c for p in parts for c in p.candidate_ids], list(probes),
                           dict(meta if meta is not None else parts[0].meta))

    # ------------------------------------------------------------ storage
    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json`` atomically; returns the JSON path."""
        from safetensors.numpy import save_file

        base = _base(path)
        with atomic_path(base.with_suffix(".safetensors")) as tmp:
            save_file({"values": np.ascontiguousarray(self.values)}, str(tmp))
        atomic_write_json(base.with_suffix(".json"), {
            "format": "icp-influence/score-matrix/v1",
            "shape": list(self.shape),
            "candidate_ids": self.candidate_ids,
            "probe_ids": self.probe_ids,
            "meta": self.meta,
        })
        return base.with_suffix(".json")

    @classmethod
    def load(cls, path: str | Path) -> "ScoreMatrix":
        """Load a matrix written by :meth:`save` (give either file or the common stem)."""
        from safetensors.numpy import load_file

        base = _base(path)
        jpath, tpath = base.with_suffix(".json"), base.with_suffix(".safetensors")
        if not jpath.exists() or not tpath.exists():
            raise CorruptFileError(f"Score files {jpath.name} / {tpath.name} not found in {base.parent}; run the scorer first.")
        try:
            info = json.loads(jpath.read_text(encoding="utf-8"))
            values = load_file(str(tpath))["values"]
        except Exception as e:  # noqa: BLE001 - any decoding failure means a bad file
            raise CorruptFileError(f"Could not read score files at {base}: {type(e).__name__}: {e}. Delete them and re-run.") from None
        if list(values.shape) != info.get("shape"):
            raise CorruptFileError(f"{tpath} holds shape {values.shape} but {jpath.name} says {info.get('shape')}; re-run the scorer.")
        return cls(values, info["candidate_ids"], info["probe_ids"], info.get("meta", {}))


def _positions(ids: Sequence[str], wanted: Sequence[str], what: str) -> list[int]:
    """Positions of ``wanted`` in ``ids`` (first occurrence, like ``list.index``), in O(n)."""
    pos: dict[str, int] = {}
    for i, x in enumerate(ids):
        pos.setdefault(x, i)
    out, missing = [], []
    for x in wanted:
        i = pos.get(str(x))
        if i is None:
            missing.append(str(x))
        else:
            out.append(i)
    if missing:
        raise ConfigError(f"{len(missing)} {what} id(s) are not in this ScoreMatrix, e.g. {missing[:3]}.")
    return out


def _base(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".safetensors", ".npz") else p


def finite_or_raise(values: np.ndarray, candidate_ids: Sequence[str], probe_ids: Sequence[str], method: str) -> None:
    """Shorthand for ``ScoreMatrix(...).check_finite()`` on raw arrays."""
    ScoreMatrix(values, list(candidate_ids), list(probe_ids), {"method": method}).check_finite()


