"""The one valuator interface and its registry.

Every valuator — ICP, inner product, cosine, TracIn, the influence functions (exact,
LiSSA, CG, EK-FAC) and the one-step training ground truth — is used the same way::

    v = make("inner_product", model, tokenizer, params="paper")   # or InnerProduct(model, tokenizer, ...)
    v.fit(train)                                                  # optional: Hessian, EK-FAC factors, ...
    sm = v.score(candidates, probes)                              # -> ScoreMatrix [candidates × probes]
    sm = v.score(candidates, probes, out_dir="runs/ip")           # chunked, resumable, shardable

A subclass implements two steps: ``_prepare(probes)`` computes everything that depends
only on the probes (baselines, probe gradients, iHVPs) once, and ``_score_rows(chunk)``
returns the ``[len(chunk), n_probes]`` values of a chunk of candidates. :meth:`score`
streams candidates through ``_score_rows`` chunk by chunk — memory is bounded by the
chunk, never by the pool — writing each chunk to ``out_dir`` when one is given
(:func:`~icp_influence.store.run_chunked`: resumable, sharded across processes).

Sign convention, everywhere: **positive = the candidate helps the probe**.
"""
from __future__ import annotations

import hashlib
import time
from typing import Any, ClassVar, Sequence, TypeVar

import numpy as np

from ..errors import ConfigError, EmptyPoolError, DuplicateIdError, MethodError
from ..scores import ScoreMatrix
from ..utils import ids_digest

V = TypeVar("V", bound="Valuator")

SIGN = "positive = the candidate helps the probe"
_REGISTRY: dict[str, type["Valuator"]] = {}


def register(cls: type[V]) -> type[V]:
    """Class decorator: make ``cls`` available as ``make(cls.name, ...)``."""
    name = getattr(cls, "name", None)
    if not name or name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ConfigError(f"Valuator {cls.__name__} needs a unique class attribute `name` (got {name!r}).")
    _REGISTRY[name] = cls
    return cls


def _discover() -> None:
    # Importing the package imports every valuator module (each registers its classes).
    from .. import valuators  # noqa: F401


def names() -> list[str]:
    """Every registered valuator name."""
    _discover()
    return sorted(_REGISTRY)


def get(name: str) -> type["Valuator"]:
    """The valuator class registered as ``name``."""
    _discover()
    if name not in _REGISTRY:
        raise MethodError(f"Unknown valuator {name!r}; choose one of {', '.join(sorted(_REGISTRY))}.")
    return _REGISTRY[name]


def make(name: str, model: Any = None, tokenizer: Any = None, **params: Any) -> "Valuator":
    """An instance of the valuator registered as ``name`` (keyword ``params`` are its settings)."""
    return get(name)(model, tokenizer, **params)


# ---------------------------------------------------------------- model fingerprints

_FINGERPRINTS: dict[int, tuple[tuple[int, ...], str]] = {}


def model_fingerprint(model: Any) -> str:
    """A hash of every parameter and buffer of ``model`` (memoised until a tensor changes).

    Part of every valuator's configuration, so cached scores of a model whose weights
    changed (fine-tuned, another checkpoint) are never reused.
    """
    import torch

    tensors = [t for _, t in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items())]
    versions = tuple(int(t._version) for t in tensors) + (len(tensors),)
    hit = _FINGERPRINTS.get(id(model))
    if hit is not None and hit[0] == versions:
        return hit[1]
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in sorted({**dict(model.named_parameters()), **dict(model.named_buffers())}.items()):
        h.update(name.encode())
        x = t.detach()
        if x.dtype == torch.bfloat16:
            x = x.float()
        h.update(x.to("cpu").contiguous().numpy().tobytes())
    digest = h.hexdigest()[:16]
    _FINGERPRINTS[id(model)] = (versions, digest)
    return digest


def model_name(model: Any) -> str:
    cfg = getattr(model, "config", None)
    return str(getattr(cfg, "_name_or_path", "") or getattr(cfg, "model_type", "") or type(model).__name__)


def item_id(item: Any, i: int) -> str:
    """An item's id: ``Example.id``, else its position."""
    return str(getattr(item, "id", i))


# ---------------------------------------------------------------- the interface

class Valuator:
    """Base class of every valuator: ``fit(train) → self``, ``score(candidates, probes) → ScoreMatrix``.

    Args:
        model, tokenizer: a causal LM and its tokenizer (see
            :func:`~icp_influence.models.load_model`); gradient valuators also accept
            ``objective=`` (any :class:`~icp_influence.gradients.Objective`) instead.
        template: prompt template (``paper``, ``plain``, ``chat``).
        max_length: context limit for truncation (default: the model's).
        chunk_size: candidates per chunk (the unit of streaming, resuming and sharding).
        seed: seed of anything random (projections, Hessian subsets, EK-FAC sampling).
        progress: show a progress bar over chunks.
        model_name: the name recorded in the results (default: the model's config path).
    """

    name: ClassVar[str] = ""
    #: How ``ScoreMatrix.aggregate()`` reduces this valuator's matrix by default.
    default_aggregate: ClassVar[str] = "mean"
    #: Whether :meth:`fit` must be called (with training examples) before scoring.
    needs_fit: ClassVar[bool] = False

    def __init__(self, model: Any = None, tokenizer: Any = None, *, template: str = "paper",
                 max_length: int | None = None, chunk_size: int = 16, seed: int = 0, progress: bool = False,
                 model_name: str | None = None):
        from ..encoding import check_template

        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be ≥ 1, got {chunk_size}.")
        self.model, self.tokenizer = model, tokenizer
        self.template = check_template(template)
        self.max_length = max_length
        self.chunk_size = int(chunk_size)
        self.seed = int(seed)
        self.progress = bool(progress)
        self._model_name = model_name
        self._fitted_on: str | None = None
        self._pending_fit: list[Any] | None = None

    # ---- description
    @property
    def model_name(self) -> str:
        return self._model_name or (model_name(self.model) if self.model is not None else "?")

    def settings(self) -> dict[str, Any]:
        """The valuator's own settings (JSON): everything besides model and data that changes values."""
        return {}

    def config(self) -> dict[str, Any]:
        """Everything that determines the values (hashed into run folders and result caches)."""
        return {
            "valuator": self.name,
            "model": self.model_name,
            "model_fingerprint": model_fingerprint(self.model) if self.model is not None else None,
            "template": self.template,
            "max_length": self.max_length,
            "seed": self.seed,
            "settings": self.settings(),
            "fitted_on": self._fitted_on,
        }

    def meta(self) -> dict[str, Any]:
        """Metadata of the ScoreMatrix this valuator returns (after :meth:`_prepare`)."""
        from ..utils import config_hash

        cfg = self.config()
        return {"method": self.name, "model": self.model_name, "template": self.template, "seed": self.seed,
                "settings": cfg["settings"], "config_hash": config_hash(cfg), "sign": SIGN,
                "default_aggregate": self.default_aggregate, **self._extra_meta()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.settings().items())
        return f"{type(self).__name__}({args})"

    # ---- the interface
    def fit(self: V, train: Sequence[Any] | None = None, *, defer: bool = False) -> V:
        """Fit whatever the valuator needs from training data (default: nothing). Returns ``self``.

        ``defer=True`` records the training data (so :meth:`config` already names it) and fits
        at the first :meth:`score` — a caller that finds the scores cached never pays for it.
        """
        if train is not None:
            train = list(train)
            self._fitted_on = ids_digest([item_id(x, i) for i, x in enumerate(train)])
            self._pending_fit = train if defer else None
            if not defer:
                self._fit(train)
        return self

    def score(self, candidates: Sequence[Any], probes: Sequence[Any], *, out_dir: Any = None,
              shard: tuple[int, int] = (0, 1), progress: bool | None = None) -> ScoreMatrix | None:
        """The ``[candidates × probes]`` ScoreMatrix (positive = the candidate helps the probe).

        Candidates stream through in chunks of ``chunk_size``. With ``out_dir`` every
        chunk is written as it finishes and a repeated call resumes; ``shard=(rank,
        world)`` scores only this process's chunks and returns ``None`` until the last
        chunk exists (then ``merge``).
        """
        cands = _check_items(candidates, "candidates")
        probe_list = _check_items(probes, "probes")
        if self.needs_fit and self._fitted_on is None:
            raise ConfigError(f"{type(self).__name__} needs training data: call .fit(train) before .score().")
        if self._pending_fit is not None:   # fit(..., defer=True): fit now, once
            train, self._pending_fit = self._pending_fit, None
            self._fit(train)
        show = self.progress if progress is None else progress
        t0 = time.perf_counter()
        self._prepare(probe_list)
        cand_ids = [item_id(x, i) for i, x in enumerate(cands)]
        probe_ids = [item_id(x, i) for i, x in enumerate(probe_list)]
        meta = self.meta()

        def compute(idx: list[int]) -> np.ndarray:
            return np.asarray(self._score_rows([cands[i] for i in idx]), dtype=np.float64)

        if out_dir is not None:
            from ..store import run_chunked

            sm = run_chunked(out_dir, self.config(), cand_ids, probe_ids, compute, chunk_size=self.chunk_size,
                             shard=shard, progress=show, desc=self.name, meta=meta)
            return sm.check_finite() if sm is not None else None
        rows = []
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(cands), desc=self.name, unit="cand")
        for start in range(0, len(cands), self.chunk_size):
            idx = list(range(start, min(start + self.chunk_size, len(cands))))
            block = compute(idx)
            if block.shape != (len(idx), len(probe_list)):
                raise ConfigError(f"{type(self).__name__} returned shape {block.shape}, expected "
                                  f"{(len(idx), len(probe_list))}.")
            rows.append(block)
            if bar is not None:
                bar.update(len(idx))
        if bar is not None:
            bar.close()
        meta["seconds"] = round(time.perf_counter() - t0, 3)
        return ScoreMatrix(np.concatenate(rows, axis=0), cand_ids, probe_ids, meta).check_finite()

    # ---- what subclasses implement
    def _fit(self, train: list[Any]) -> None:
        """Fit on ``train`` (called by :meth:`fit`)."""

    def _prepare(self, probes: list[Any]) -> None:
        """Compute the probe side once."""
        raise NotImplementedError

    def _score_rows(self, candidates: list[Any]) -> np.ndarray:
        """Values ``[len(candidates), n_probes]`` of one chunk of candidates."""
        raise NotImplementedError

    def _extra_meta(self) -> dict[str, Any]:
        return {}

    # ---- numerical precision (valuators whose forward passes can run in bf16)
    _precision_request: str | None = None
    _precision_choice: Any = None

    def _init_precision(self, precision: str | None) -> None:
        from ..precision import check_precision

        self._precision_request = None if precision is None else check_precision(precision)
        self._precision_choice = None

    @property
    def precision(self):
        """The resolved :class:`~icp_influence.precision.PrecisionChoice` (``fp32``/``bf16`` and why)."""
        if self._precision_choice is None:
            from ..precision import resolve

            self._precision_choice = resolve(self._precision_request, self.model, self.name)
        return self._precision_choice

    def _precision_settings(self) -> dict[str, Any]:
        """``{"precision": "bf16"}`` in the configuration of a bf16 run (so cached values of the two
        precisions are never mixed); nothing for fp32 (configurations as before)."""
        return {"precision": "bf16"} if self.precision.precision == "bf16" else {}

    def _precision_meta(self) -> dict[str, Any]:
        """The choice and its reason in the ScoreMatrix's meta, unless plain fp32 was the default."""
        asked = self._precision_request or getattr(self.model, "icp_precision", None) or "fp32"
        if asked == "fp32" and self.precision.precision == "fp32":
            return {}
        return {"precision": self.precision.precision, "precision_reason": self.precision.reason}


def _check_items(items: Sequence[Any], what: str) -> list[Any]:
    items = list(items)
    if not items:
        raise EmptyPoolError(f"No {what}: the {what} set is empty.")
    seen: dict[str, int] = {}
    for i, x in enumerate(items):
        k = item_id(x, i)
        if k in seen:
            raise DuplicateIdError(f"Duplicate id {k!r} among the {what} (items {seen[k]} and {i}); ids must be unique.")
        seen[k] = i
    return items
