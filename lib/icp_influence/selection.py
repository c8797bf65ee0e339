"""Pick training subsets from a valuator's scores at equal budgets (docs/design.md).

Strategies (``budget`` = number of examples, identical across arms):

* ``top``    — the ``budget`` highest-valued candidates;
* ``bottom`` — the ``budget`` lowest-valued ones;
* ``random`` — a seeded uniform sample (needs no scores);
* ``bin``    — a seeded sample of ``budget`` candidates from one of the paper's
  percentile-rank bins (``">0.9"``, ``"<=0.5"``, ... see :data:`compare.PAPER_BINS`).

Controls for a selection (what separates "this valuator picks good data" from "it picks
long answers" or "it avoids broken ones"):

* :func:`longest_k` — the ``budget`` candidates with the longest answers;
* :func:`length_matched_k` — a seeded random selection with the same answer-length
  distribution as a reference selection (each reference example replaced by a random one
  of its nearest neighbours in log length);
* :func:`corrupted_k` — the pool's labelled corrupted examples, as many as the budget
  allows, padded with a seeded sample of clean ones.

Every function returns a list of candidate ids; :func:`to_pool` turns it into a Pool.
Ties are broken by candidate order (stable), so selections are deterministic.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .compare import PAPER_BINS, Scores, as_series, bottom_k_indices, rank_bins, top_k_indices
from .data import Pool
from .errors import ConfigError

STRATEGIES = ("top", "bottom", "random", "bin")


def _budget(budget: int, n: int) -> int:
    if not isinstance(budget, (int, np.integer)) or not 1 <= budget <= n:
        raise ConfigError(f"budget must be an integer in [1, {n}] (the number of candidates), got {budget!r}.")
    return int(budget)


def top_k(scores: Scores, budget: int, *, how: str | None = None) -> list[str]:
    """Ids of the ``budget`` highest-valued candidates, best first."""
    ids, v = as_series(scores, how)
    return [ids[i] for i in top_k_indices(v, _budget(budget, len(ids)))]


def bottom_k(scores: Scores, budget: int, *, how: str | None = None) -> list[str]:
    """Ids of the ``budget`` lowest-valued candidates, worst first."""
    ids, v = as_series(scores, how)
    return [ids[i] for i in bottom_k_indices(v, _budget(budget, len(ids)))]


def random_k(candidates: Scores | Sequence[str] | Pool, budget: int, *, seed: int = 0) -> list[str]:
    """A seeded uniform sample of ``budget`` ids (in pool order)."""
    if isinstance(candidates, Pool):
        ids = candidates.ids
    elif isinstance(candidates, (list, np.ndarray)) and (len(candidates) == 0 or isinstance(candidates[0], str)):
        ids = [str(c) for c in candidates]
    else:
        ids, _ = as_series(candidates)  # type: ignore[arg-type]
    b = _budget(budget, len(ids))
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ids), size=b, replace=False))
    return [ids[i] for i in idx]


def _lengths(lengths: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    ids = [str(i) for i in lengths]
    v = np.asarray([float(lengths[i]) for i in lengths], dtype=np.float64)
    if not len(ids):
        raise ConfigError("No candidates: the length table is empty.")
    if not np.all(np.isfinite(v)) or (v < 1).any():
        raise ConfigError("Answer lengths must be finite and at least 1 token.")
    return ids, v


def longest_k(lengths: Mapping[str, float], budget: int) -> list[str]:
    """Ids of the ``budget`` candidates with the longest answers (``lengths``: id → answer
    tokens), longest first; ties by candidate order."""
    ids, v = _lengths(lengths)
    return [ids[i] for i in top_k_indices(v, _budget(budget, len(ids)))]


def length_matched_k(lengths: Mapping[str, float], reference: Sequence[str], *, seed: int = 0,
                     neighbours: int = 5) -> list[str]:
    """A random selection with the answer-length distribution of ``reference``, from the
    other candidates.

    For each reference example, in a seeded random order, one candidate is drawn uniformly
    from the ``neighbours`` candidates (outside the reference, not yet drawn) whose log
    answer length is nearest to its own. The reference is left out so that the control
    shares its lengths and not its examples: "does the valuator pick better data than
    length alone would?" needs other data of the same lengths. Where the reference holds the
    extremes (the very longest answers), the match is as close as the rest of the pool
    allows. Returns ``len(reference)`` distinct ids, in the order of the examples they match.
    """
    ids, v = _lengths(lengths)
    pos = {c: i for i, c in enumerate(ids)}
    reference = [str(r) for r in reference]
    missing = [r for r in reference if r not in pos]
    if missing:
        raise ConfigError(f"{len(missing)} reference id(s) have no length, e.g. {missing[:3]}.")
    if not 1 <= len(set(reference)) == len(reference) <= len(ids) // 2:
        raise ConfigError(f"The reference needs 1 to {len(ids) // 2} distinct ids (half the candidates, so that "
                          f"the others can match it), got {len(reference)}.")
    if neighbours < 1:
        raise ConfigError(f"neighbours must be ≥ 1, got {neighbours}.")
    rng = np.random.default_rng(seed)
    logv = np.log(v)
    free = np.ones(len(ids), dtype=bool)
    free[[pos[r] for r in reference]] = False
    out: list[str | None] = [None] * len(reference)
    for j in rng.permutation(len(reference)):
        cand = rng.permutation(np.flatnonzero(free))        # shuffled: equal lengths (common) tie at random
        d = np.abs(logv[cand] - logv[pos[reference[j]]])
        near = cand[np.argsort(d, kind="stable")[:neighbours]]
        pick = int(rng.choice(near))
        free[pick] = False
        out[j] = ids[pick]
    return [str(c) for c in out]


def corrupted_k(pool: Pool, budget: int, *, seed: int = 0) -> list[str]:
    """The labelled corrupted examples of ``pool`` (``meta["noisy"]``, what both
    ``instructions.corrupt`` and ``data.add_label_noise`` set), as many as ``budget`` allows
    (a seeded sample when there are more), padded with a seeded sample of clean ones; in
    pool order."""
    b = _budget(budget, len(pool))
    bad = pool.noisy_ids()
    clean = [e.id for e in pool if not e.meta.get("noisy")]
    if not bad:
        raise ConfigError("The pool has no labelled corrupted examples (meta['noisy']); nothing to select.")
    rng = np.random.default_rng(seed)
    take = sorted(rng.choice(len(bad), size=min(b, len(bad)), replace=False).tolist())
    pad = sorted(rng.choice(len(clean), size=b - len(take), replace=False).tolist()) if b > len(take) else []
    chosen = {bad[i] for i in take} | {clean[i] for i in pad}
    return [e.id for e in pool if e.id in chosen]


def bin_sample(scores: Scores, bin_label: str, budget: int | None = None, *, how: str | None = None,
               seed: int = 0, on: str = "percentile") -> list[str]:
    """Candidates of one percentile-rank bin (all of them, or a seeded sample of ``budget``)."""
    labels = [b[0] for b in PAPER_BINS]
    if bin_label not in labels:
        raise ConfigError(f"Unknown bin {bin_label!r}; choose from {', '.join(labels)}.")
    ids, v = as_series(scores, how)
    members = np.flatnonzero(rank_bins(v, on=on)[bin_label])
    if budget is None:
        return [ids[i] for i in members]
    if budget > len(members):
        raise ConfigError(
            f"Bin {bin_label!r} holds {len(members)} candidates, fewer than the budget {budget}; "
            "lower the budget or use a wider bin."
        )
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(members, size=_budget(budget, len(members)), replace=False))
    return [ids[i] for i in pick]


def select(scores: Scores | None, strategy: str, budget: int, *, how: str | None = None, seed: int = 0,
           bin_label: str | None = None, candidates: Sequence[str] | Pool | None = None) -> list[str]:
    """One selection by name (``top``, ``bottom``, ``random``, ``bin``)."""
    if strategy == "top":
        return top_k(_need(scores, strategy), budget, how=how)
    if strategy == "bottom":
        return bottom_k(_need(scores, strategy), budget, how=how)
    if strategy == "random":
        src = candidates if candidates is not None else _need(scores, strategy)
        return random_k(src, budget, seed=seed)  # type: ignore[arg-type]
    if strategy == "bin":
        if bin_label is None:
            raise ConfigError("strategy='bin' needs bin_label, e.g. '>0.9'.")
        return bin_sample(_need(scores, strategy), bin_label, budget, how=how, seed=seed)
    raise ConfigError(f"Unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}.")


def _need(scores: Scores | None, strategy: str) -> Scores:
    if scores is None:
        raise ConfigError(f"strategy {strategy!r} needs the valuator's scores.")
    return scores


def equal_budget(valuators: Mapping[str, Any], budget: int, *, strategies: Iterable[str] = ("top",),
                 random_seed: int = 0, include_random: bool = True) -> dict[str, list[str]]:
    """Selections of the same size for several valuators.

    ``valuators``: ``name -> scores`` or ``name -> (ScoreMatrix, aggregate)``. Returns
    ``{"<name>-<strategy>": ids}`` (+ ``"random"``), every list of length ``budget``.
    All valuators must score the same candidates.
    """
    out: dict[str, list[str]] = {}
    id_sets = []
    for name, sc in valuators.items():
        ids, _ = as_series(sc)
        id_sets.append(set(ids))
        for s in strategies:
            out[f"{name}-{s}"] = select(sc, s, budget)
    if id_sets and any(s != id_sets[0] for s in id_sets[1:]):
        raise ConfigError("The valuators score different candidates; compare them on the same pool.")
    if include_random and valuators:
        first = next(iter(valuators.values()))
        out["random"] = random_k(as_series(first)[0], budget, seed=random_seed)
    return out


def to_pool(pool: Pool, ids: Sequence[str], name: str | None = None) -> Pool:
    """The selected examples as a Pool (in selection order)."""
    return pool.subset(list(ids), name=name or f"{pool.name}-selected")
