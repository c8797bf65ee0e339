"""``ScoreMatrix``: the one result shape every valuator returns (docs/design.md).

``values[i, j]`` is the value of candidate ``i`` for probe ``j``. Sign convention, used
everywhere: **positive = the candidate helps the probe** (lowers its loss / raises its
likelihood). Saved as safetensors (values) + JSON (ids and metadata); never pickle.
"""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, fields
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


#: The version of the :class:`ScoreMeta` record written with every matrix. Files written before
#: the record was typed carry no version (version 1, a plain dict with the same keys) and load as is.
META_VERSION = 2
#: Metadata that holds one entry per probe: :meth:`ScoreMatrix.subset` keeps it aligned with the columns.
PER_PROBE_META = ("baseline", "n_answer_tokens", "base_losses")
_ICP_VALUES = ("delta", "per_token_delta")


@dataclass(eq=False)
class ScoreMeta(MutableMapping):
    """The metadata record of a :class:`ScoreMatrix`: typed fields for what the library reads
    for meaning, ``extra`` for what a valuator adds (gradient sizes, precision, ...).

    It is also a mapping (``meta["model"]``, ``meta.get("baseline")``, ``{**meta}``) whose keys
    are the fields that are set (``None`` = not set) and the ``extra`` keys, so code and files
    written against the plain dict of version 1 keep working; :meth:`to_dict` is what is saved.
    Setting a key that is a field checks its type.
    """

    method: str | None = None                 # valuator name: "icp", "ip", "one_step", ...
    default_aggregate: str | None = None      # what ScoreMatrix.aggregate() takes by default
    sign: str | None = None                   # the sign convention (positive = helps)
    model: str | None = None
    template: str | None = None
    seed: int | None = None
    settings: dict[str, Any] | None = None    # the valuator's own settings
    config: dict[str, Any] | None = None      # the whole configuration a stored run was made with
    config_hash: str | None = None
    library_version: str | None = None
    seconds: float | None = None
    # ICP matrices (valuators/icp.py)
    score: str | None = None                  # "win_rate" | "delta" | "per_token"
    values: str | None = None                 # what the values are: "delta" | "per_token_delta"
    baseline: list[float] | None = None       # ll(p) per probe
    baseline_kind: str | None = None          # "zero_shot" | "neutral_demo"
    n_answer_tokens: list[int] | None = None  # answer tokens per probe
    version: int = META_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def __setattr__(self, name: str, value: Any) -> None:
        # a typed field is checked however it is set: constructor, attribute or key
        if name not in ("version", "extra") and name in _TYPED:
            value = _checked(name, value)
        object.__setattr__(self, name, value)

    def __post_init__(self) -> None:
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version > META_VERSION:
            raise CorruptFileError(f"ScoreMatrix metadata version {self.version!r}: this icp-influence reads up to "
                                   f"{META_VERSION}; upgrade the library to read it.")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ScoreMeta":
        """From a plain dict (a stored file's ``meta``, any version) or another record (copied)."""
        d = dict(d or {})
        names = {f.name for f in fields(cls)} - {"extra"}
        typed = {k: d.pop(k) for k in list(d) if k in names}
        version = typed.get("version", 1)        # a file without one was written before the record: version 1
        if isinstance(version, bool) or not isinstance(version, int):
            raise CorruptFileError(f"ScoreMatrix metadata version {version!r} is not a whole number.")
        if version < META_VERSION:               # version 1: the same keys, untyped
            typed["version"] = META_VERSION
        return cls(**typed, extra=d)

    def to_dict(self) -> dict[str, Any]:
        """What :meth:`ScoreMatrix.save` writes (JSON-ready; the version always included)."""
        return {**dict(self.items()), "version": self.version}

    def copy(self) -> "ScoreMeta":
        return ScoreMeta.from_dict(self.to_dict())

    # ---- the mapping view
    def _fields(self) -> tuple[str, ...]:
        return tuple(f.name for f in fields(self) if f.name not in ("extra", "version"))

    def __getitem__(self, key: str) -> Any:
        if key in self._fields():
            value = getattr(self, key)
            if value is None:
                raise KeyError(key)
            return value
        return self.extra[key]   # "version" is an attribute of the record, not one of its keys

    def __setitem__(self, key: str, value: Any) -> None:
        if key in self._fields():
            setattr(self, key, value)
        elif key == "version":   # updating from a saved record: its (older or equal) version is not kept
            if isinstance(value, bool) or not isinstance(value, int) or value > META_VERSION:
                raise ConfigError(f"Metadata version {value!r}: this icp-influence writes version {META_VERSION}.")
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key in self._fields():
            if getattr(self, key) is None:
                raise KeyError(key)
            setattr(self, key, None)
        else:
            del self.extra[key]

    def __iter__(self) -> Iterator[str]:
        yield from (k for k in self._fields() if getattr(self, k) is not None)
        yield from self.extra

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self.items()) == {k: v for k, v in other.items() if k != "version"}
        return NotImplemented

    def __repr__(self) -> str:
        return f"ScoreMeta({dict(self.items())!r})"


_TYPED = frozenset(f.name for f in fields(ScoreMeta))


def _checked(key: str, value: Any) -> Any:
    """A field's value in its type (``None`` stays ``None``); a clear error otherwise."""
    if value is None:
        return None
    try:
        if isinstance(value, bool) or (key in ("seed", "seconds", "baseline", "n_answer_tokens")
                                       and isinstance(value, (str, bytes))):
            raise ValueError
        if key == "seed":
            if int(value) != value:
                raise ValueError
            return int(value)
        if key == "seconds":
            return float(value)
        if key in ("settings", "config"):
            if not isinstance(value, Mapping):
                raise ValueError
            return dict(value)
        if key == "baseline":
            return [float(x) for x in value]
        if key == "n_answer_tokens":
            out = [int(x) for x in value]
            if any(o != x or o < 1 for o, x in zip(out, value)):
                raise ValueError
            return out
        if not isinstance(value, str):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"ScoreMatrix metadata {key!r} = {value!r} has the wrong type.") from None
    if key == "default_aggregate" and value not in AGGREGATES:
        raise ConfigError(f"ScoreMatrix metadata default_aggregate = {value!r}; choose from {', '.join(AGGREGATES)}.")
    if key == "values" and value not in _ICP_VALUES:
        raise ConfigError(f"ScoreMatrix metadata values = {value!r}; choose from {', '.join(_ICP_VALUES)}.")
    return value


@dataclass
class ScoreMatrix:
    """A ``[n_candidates × n_probes]`` float matrix with ids and metadata.

    Attributes:
        values: ``float64`` array of shape ``(len(candidate_ids), len(probe_ids))``.
        candidate_ids: ids of the rows (pool examples being valued).
        probe_ids: ids of the columns (probe examples).
        meta: a :class:`ScoreMeta` record (method, model, template, settings, seed, library
            version, config hash, and for ICP the baseline and answer lengths); a plain dict
            is converted (copied).
    """

    values: np.ndarray
    candidate_ids: list[str]
    probe_ids: list[str]
    meta: ScoreMeta = field(default_factory=ScoreMeta)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        self.candidate_ids = [str(c) for c in self.candidate_ids]
        self.probe_ids = [str(p) for p in self.probe_ids]
        if self.values.ndim != 2 or self.values.shape != (len(self.candidate_ids), len(self.probe_ids)):
            raise ConfigError(
                f"ScoreMatrix values have shape {self.values.shape}, expected "
                f"({len(self.candidate_ids)}, {len(self.probe_ids)}) = (candidates, probes)."
            )
        self.meta = ScoreMeta.from_dict(self.meta)
        for key in PER_PROBE_META:
            per_probe = self.meta.get(key)
            if per_probe is not None and len(per_probe) != len(self.probe_ids):
                raise ConfigError(f"ScoreMatrix metadata {key!r} has {len(per_probe)} entries for "
                                  f"{len(self.probe_ids)} probes.")
        if self.meta.library_version is None:
            self.meta.library_version = library_version()

    @property
    def shape(self) -> tuple[int, int]:
        return self.values.shape  # type: ignore[return-value]

    @property
    def method(self) -> str:
        return self.meta.method or "?"

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
        return aggregate(self.values, how or self.meta.default_aggregate or "mean")

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
        meta = self.meta.copy()
        for key in PER_PROBE_META:          # per-probe metadata follows the columns
            if meta.get(key) is not None:
                meta[key] = [meta[key][c] for c in cols]
        return ScoreMatrix(self.values[np.ix_(rows, cols)], [self.candidate_ids[r] for r in rows],
                           [self.probe_ids[c] for c in cols], meta)

    def aligned(self, other: "ScoreMatrix") -> "ScoreMatrix":
        """This matrix re-ordered to ``other``'s candidates and probes (which must be present)."""
        missing = set(other.candidate_ids) - set(self.candidate_ids)
        if missing:
            raise ConfigError(f"{len(missing)} candidate(s) of the other matrix are missing here, e.g. {sorted(missing)[:3]}.")
        return self.subset(other.candidate_ids, other.probe_ids)

    @staticmethod
    def concat(parts: Sequence["ScoreMatrix"], meta: Mapping[str, Any] | None = None) -> "ScoreMatrix":
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
            "meta": self.meta.to_dict(),
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
        try:
            return cls(values, info["candidate_ids"], info["probe_ids"], info.get("meta", {}))
        except (ConfigError, CorruptFileError) as e:
            raise CorruptFileError(f"{jpath}: {e}") from None


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


