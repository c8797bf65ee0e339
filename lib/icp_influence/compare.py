"""Do two valuators agree? Rank correlations, top-k overlap, rank bins, noisy-label detection.

Every function works on any two :class:`~icp_influence.scores.ScoreMatrix` (aligned by
candidate id; each reduced to one value per candidate with its own aggregate — or the
one you name), or on plain ``(ids, values)`` series.

Conventions:

* higher aggregate value = more valuable (docs/design.md: positive = helps the probe);
* "top-k" = the k highest values, ties broken by the candidate order (stable sort), so
  results are deterministic;
* agreement intervals are **two-way**: when both valuators scored the same probes, the
  bootstrap resamples candidates and probes together (:func:`icp_influence.stats.agreement`);
  otherwise only candidates are resampled, and the result says so (``two_way=False``).

The paper's rank bins (arXiv 2407.12259, the selection experiments): candidates whose
percentile rank of the aggregate score is ``≤ 0.5``, ``> 0.5``, ``> 0.6``, ``> 0.7``,
``> 0.8``, ``> 0.85``, ``> 0.9``. A bin of valuator A holding ``n`` candidates is
compared with the ``n`` top-ranked candidates of valuator B (the ``n`` bottom-ranked ones
for the ``≤ 0.5`` bin): the *count-matched overlap*.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np
from scipy import stats

from .errors import ConfigError
from .scores import ScoreMatrix

PAPER_BINS: tuple[tuple[str, float | None, float | None], ...] = (
    ("<=0.5", None, 0.5),
    (">0.5", 0.5, None),
    (">0.6", 0.6, None),
    (">0.7", 0.7, None),
    (">0.8", 0.8, None),
    (">0.85", 0.85, None),
    (">0.9", 0.9, None),
)

#: A valuator's scores: a ScoreMatrix, a (ScoreMatrix, aggregate) pair, a {id: value}
#: mapping, or an (ids, values) pair.
Scores = Union[ScoreMatrix, tuple, Mapping[str, float]]


# ---------------------------------------------------------------- series and alignment

def as_series(scores: Scores, how: str | None = None) -> tuple[list[str], np.ndarray]:
    """``(candidate_ids, values)`` of one valuator; ``values`` has shape ``(n_candidates,)``.

    A ScoreMatrix is reduced with ``how`` (default: its own ``meta["default_aggregate"]``,
    else the mean over probes).
    """
    if isinstance(scores, ScoreMatrix):
        return list(scores.candidate_ids), np.asarray(scores.aggregate(how), dtype=np.float64)
    if isinstance(scores, tuple) and len(scores) == 2 and isinstance(scores[0], ScoreMatrix):
        return as_series(scores[0], how or scores[1])
    if isinstance(scores, Mapping):
        ids = [str(k) for k in scores]
        return ids, np.asarray([float(v) for v in scores.values()], dtype=np.float64)
    if isinstance(scores, tuple) and len(scores) == 2:
        ids, values = list(map(str, scores[0])), np.asarray(scores[1], dtype=np.float64).reshape(-1)
        if len(ids) != len(values):
            raise ConfigError(f"{len(ids)} ids but {len(values)} values; give one value per candidate.")
        return ids, values
    raise ConfigError(
        f"Cannot read scores from a {type(scores).__name__}; pass a ScoreMatrix, (ScoreMatrix, aggregate), "
        "{id: value} or (ids, values)."
    )


def align(a: Scores, b: Scores, how_a: str | None = None, how_b: str | None = None
          ) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Candidates common to both valuators (in ``a``'s order) and their two value vectors."""
    ids_a, va = as_series(a, how_a)
    ids_b, vb = as_series(b, how_b)
    if len(set(ids_a)) != len(ids_a) or len(set(ids_b)) != len(ids_b):
        raise ConfigError("Candidate ids must be unique within each valuator.")
    pos_b = {c: i for i, c in enumerate(ids_b)}
    keep = [i for i, c in enumerate(ids_a) if c in pos_b]
    if len(keep) < 2:
        raise ConfigError(
            f"The two valuators share only {len(keep)} candidate id(s); score the same pool with both."
        )
    ids = [ids_a[i] for i in keep]
    return ids, va[keep], vb[[pos_b[c] for c in ids]]


def _check_finite(*arrays: np.ndarray) -> None:
    for x in arrays:
        if not np.all(np.isfinite(x)):
            raise ConfigError("Scores contain NaN or inf; call ScoreMatrix.check_finite() to find them.")


# ---------------------------------------------------------------- correlations

from .stats import bootstrap_ci, roc_auc, spearman  # noqa: E402  (one statistics home)


def _resolve_matrix(scores: Scores, how: str | None) -> tuple[ScoreMatrix, str]:
    if isinstance(scores, tuple) and len(scores) == 2 and isinstance(scores[0], ScoreMatrix):
        return scores[0], how or scores[1]
    if isinstance(scores, ScoreMatrix):
        return scores, how or scores.meta.get("default_aggregate", "mean")
    raise ConfigError("agreement needs ScoreMatrix inputs (or (ScoreMatrix, aggregate) pairs).")


def agreement(a: Scores, b: Scores, *, how_a: str | None = None, how_b: str | None = None, n_boot: int = 1000,
              level: float = 0.95, seed: int = 0):
    """Spearman of two valuators with a two-way bootstrap CI, Kendall, reliabilities and the
    attenuation-corrected value (:class:`icp_influence.stats.Agreement`).

    Candidates are aligned by id. When both matrices scored the same probes, the columns are
    aligned too and the bootstrap resamples candidates and probes together; otherwise only
    candidates are resampled (``two_way=False``) and the reliabilities are each valuator's own.
    """
    from . import stats as S

    ma, ha = _resolve_matrix(a, how_a)
    mb, hb = _resolve_matrix(b, how_b)
    pos_b = {c: i for i, c in enumerate(mb.candidate_ids)}
    keep = [c for c in ma.candidate_ids if c in pos_b]
    if len(keep) < 3:
        raise ConfigError(f"The two valuators share only {len(keep)} candidate id(s); score the same pool with both.")
    ma, mb = ma.subset(keep), mb.subset(keep)
    if set(ma.probe_ids) == set(mb.probe_ids):
        mb = mb.subset(probe_ids=ma.probe_ids)
        return S.agreement(ma.values, mb.values, ha, hb, n_boot=n_boot, level=level, seed=seed)
    rel_a = S.split_half(ma.values, ha, n_boot=0, seed=seed).value if ma.shape[1] >= 4 else float("nan")
    rel_b = S.split_half(mb.values, hb, n_boot=0, seed=seed).value if mb.shape[1] >= 4 else float("nan")
    x, y = S.aggregate(ma.values, ha), S.aggregate(mb.values, hb)
    rho = S.spearman(x, y)
    ci = S.bootstrap_ci(x, y, "spearman", n_boot=n_boot, level=level, seed=seed)
    dis = S.disattenuate(rho, rel_a, rel_b)
    return S.Agreement(spearman=rho, ci=ci, kendall=S.kendall(x, y), disattenuated=dis,
                       disattenuated_ci=(float("nan"), float("nan")), rel_a=rel_a, rel_b=rel_b,
                       n_candidates=len(keep), n_probes=ma.shape[1], level=level, two_way=False)


# ---------------------------------------------------------------- top-k and bins

def top_k_indices(values: Sequence[float], k: int) -> np.ndarray:
    """Indices of the ``k`` largest values (stable: earlier candidates win ties)."""
    v = np.asarray(values, float)
    if not 0 <= k <= len(v):
        raise ConfigError(f"k must be in [0, {len(v)}], got {k}.")
    return np.argsort(-v, kind="stable")[:k]


def bottom_k_indices(values: Sequence[float], k: int) -> np.ndarray:
    """Indices of the ``k`` smallest values (stable)."""
    v = np.asarray(values, float)
    if not 0 <= k <= len(v):
        raise ConfigError(f"k must be in [0, {len(v)}], got {k}.")
    return np.argsort(v, kind="stable")[:k]


def default_ks(n: int, n_points: int = 20) -> list[int]:
    """About ``n_points`` budgets from 1 to ``n`` (log-spaced at the small end)."""
    ks = np.unique(np.concatenate([np.geomspace(1, n, n_points).round(), np.linspace(1, n, n_points).round()]))
    return [int(k) for k in ks if 1 <= k <= n]


def overlap_curve(a: Scores, b: Scores, ks: Iterable[int] | None = None, *, how_a: str | None = None,
                  how_b: str | None = None) -> dict[str, list[float]]:
    """Top-k overlap of two valuators for every budget ``k``.

    Returns ``{"k", "overlap" (count |A_k ∩ B_k|), "overlap_frac" (count / k),
    "jaccard" (|A_k ∩ B_k| / |A_k ∪ B_k|), "random" (expected overlap fraction of two
    random k-subsets: k / n)}``, lists aligned with ``k``.
    """
    _, x, y = align(a, b, how_a, how_b)
    n = len(x)
    ks = default_ks(n) if ks is None else [int(k) for k in ks]
    order_x, order_y = np.argsort(-x, kind="stable"), np.argsort(-y, kind="stable")
    out: dict[str, list[float]] = {"k": [], "overlap": [], "overlap_frac": [], "jaccard": [], "random": []}
    for k in ks:
        if not 1 <= k <= n:
            raise ConfigError(f"k must be in [1, {n}], got {k}.")
        inter = len(set(order_x[:k].tolist()) & set(order_y[:k].tolist()))
        out["k"].append(k)
        out["overlap"].append(inter)
        out["overlap_frac"].append(inter / k)
        out["jaccard"].append(inter / (2 * k - inter))
        out["random"].append(k / n)
    return out


def top_fraction_overlap(a: Scores, b: Scores, fraction: float = 0.1, **kw: Any) -> float:
    """Overlap fraction ``|A_k ∩ B_k| / k`` of the top ``fraction`` (``k = max(1, round(fraction·n))``)."""
    _, x, _ = align(a, b, kw.get("how_a"), kw.get("how_b"))
    k = max(1, int(round(fraction * len(x))))
    return float(overlap_curve(a, b, [k], **kw)["overlap_frac"][0])


def percentile_rank(values: Sequence[float]) -> np.ndarray:
    """Percentile rank in ``(0, 1]``: average rank / n (ties share their average rank)."""
    v = np.asarray(values, float)
    return stats.rankdata(v, method="average") / len(v)


def rank_bins(values: Sequence[float], bins: Sequence[tuple[str, float | None, float | None]] = PAPER_BINS,
              *, on: str = "percentile") -> dict[str, np.ndarray]:
    """Boolean masks of the paper's bins (``label -> mask``).

    ``on="percentile"`` bins the percentile rank of the values (default); ``on="raw"``
    bins the values themselves (e.g. ICP win-rates in [0, 1]). A bin ``(label, lo, hi)``
    holds ``lo < q ≤ hi`` (a missing bound is open).
    """
    v = np.asarray(values, float)
    if on == "percentile":
        q = percentile_rank(v)
    elif on == "raw":
        q = v
    else:
        raise ConfigError(f"on must be 'percentile' or 'raw', got {on!r}.")
    out = {}
    for label, lo, hi in bins:
        m = np.ones(len(v), bool)
        if lo is not None:
            m &= q > lo
        if hi is not None:
            m &= q <= hi
        out[label] = m
    return out


def bin_overlap(a: Scores, b: Scores, *, how_a: str | None = None, how_b: str | None = None,
                bins: Sequence[tuple[str, float | None, float | None]] = PAPER_BINS, on: str = "percentile"
                ) -> list[dict[str, Any]]:
    """Count-matched overlap of ``a``'s rank bins with ``b``.

    For each bin of ``a`` holding ``n`` candidates, take ``b``'s ``n`` top-ranked
    candidates (``n`` bottom-ranked for a bin with no lower bound, e.g. ``≤0.5``) and
    report ``{"bin", "n", "overlap", "overlap_frac", "random"}`` where ``random = n / N``
    is the expected overlap fraction of a random ``n``-subset.
    """
    _, x, y = align(a, b, how_a, how_b)
    masks = rank_bins(x, bins, on=on)
    rows = []
    for (label, lo, _hi) in bins:
        sel = np.flatnonzero(masks[label])
        n = len(sel)
        other = bottom_k_indices(y, n) if lo is None else top_k_indices(y, n)
        inter = len(set(sel.tolist()) & set(other.tolist()))
        rows.append({"bin": label, "n": n, "overlap": inter,
                     "overlap_frac": inter / n if n else float("nan"), "random": n / len(x)})
    return rows


# ---------------------------------------------------------------- per family

def family_of(pool_or_map: Any) -> dict[str, str | None]:
    """``{id: family}`` from a Pool (``Example.task``) or a mapping."""
    if isinstance(pool_or_map, Mapping):
        return {str(k): v for k, v in pool_or_map.items()}
    return {ex.id: ex.task for ex in pool_or_map}


def per_family_spearman(a: Scores, b: Scores, families: Any, *, how_a: str | None = None,
                        how_b: str | None = None, min_n: int = 3) -> dict[str, float]:
    """Spearman within each candidate family (families with fewer than ``min_n`` candidates skipped)."""
    ids, x, y = align(a, b, how_a, how_b)
    fam = family_of(families)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(ids):
        groups.setdefault(str(fam.get(c)), []).append(i)
    return {f: spearman(x[idx], y[idx]) for f, idx in sorted(groups.items()) if len(idx) >= min_n}


def domain_spearman(a: Scores, b: Scores, families: Any, probe_families: Iterable[str], *,
                    how_a: str | None = None, how_b: str | None = None, n_boot: int = 0, seed: int = 0
                    ) -> dict[str, Any]:
    """Spearman over in-domain candidates (family among the probes' families) and out-of-domain ones.

    Returns ``{"in_domain": ρ, "out_of_domain": ρ, "n_in", "n_out"}`` (+ ``*_ci`` when
    ``n_boot > 0``); NaN where a side has fewer than 3 candidates.
    """
    ids, x, y = align(a, b, how_a, how_b)
    fam = family_of(families)
    pf = set(probe_families)
    inside = np.array([fam.get(c) in pf for c in ids])
    out: dict[str, Any] = {"n_in": int(inside.sum()), "n_out": int((~inside).sum())}
    for name, m in (("in_domain", inside), ("out_of_domain", ~inside)):
        out[name] = spearman(x[m], y[m]) if m.sum() >= 3 else float("nan")
        if n_boot:
            out[name + "_ci"] = list(bootstrap_ci(x[m], y[m], spearman, n_boot=n_boot, seed=seed)) if m.sum() >= 3 else [float("nan")] * 2
    return out


# ---------------------------------------------------------------- noisy labels

def noise_detection(scores: Scores, noisy_ids: Iterable[str], *, how: str | None = None,
                    ks: Iterable[int] | None = None) -> dict[str, Any]:
    """How well low value flags corrupted examples.

    ``auc``: ROC AUC of ``-value`` as a detector of ``noisy`` (1 = every noisy example is
    valued below every clean one; 0.5 = chance; 0 = reversed). ``precision_at_k``: the
    fraction of noisy examples among the ``k`` lowest-valued candidates, per ``k``
    (default: the number of noisy examples, and 2x that); ``base_rate``: noisy fraction.
    """
    ids, v = as_series(scores, how)
    noisy = set(map(str, noisy_ids))
    y = np.array([c in noisy for c in ids], dtype=int)
    n_noisy = int(y.sum())
    if n_noisy == 0 or n_noisy == len(y):
        raise ConfigError(
            f"Noise detection needs both noisy and clean candidates; got {n_noisy} noisy of {len(y)}. "
            "Add label noise with data.add_label_noise(pool, 0.1)."
        )
    _check_finite(v)
    auc = roc_auc(y, -v)
    ks = [n_noisy, min(len(y), 2 * n_noisy)] if ks is None else [int(k) for k in ks]
    prec = {}
    for k in ks:
        if not 1 <= k <= len(y):
            raise ConfigError(f"k must be in [1, {len(y)}], got {k}.")
        prec[str(k)] = float(y[bottom_k_indices(v, k)].mean())
    return {"auc": auc, "precision_at_k": prec, "base_rate": n_noisy / len(y), "n_noisy": n_noisy}


# ---------------------------------------------------------------- all pairs

def _resolve(entry: Any) -> tuple[Scores, str | None]:
    if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], ScoreMatrix):
        return entry[0], entry[1]
    return entry, None


def compare_all(matrices: Mapping[str, Any], *, n_boot: int = 500, seed: int = 0, top_fraction: float = 0.1,
                families: Any = None, probe_families: Iterable[str] | None = None,
                noisy_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """All pairwise agreements of several valuators.

    ``matrices``: ``name -> ScoreMatrix`` or ``name -> (ScoreMatrix, aggregate)`` (e.g.
    ``{"icp_win": (icp, "win_rate"), "icp_mean": (icp, "mean"), "ip": ip}``).

    Returns ``{"names", "spearman" (matrix, list of lists), "kendall" (matrix),
    "pairs" ({"a|b": Agreement dict + top-fraction overlap + bins [+ domain split]
    [+ per-family]}), "noise" ({name: noise_detection} when ``noisy_ids``)}``.
    """
    names = list(matrices)
    if len(names) < 2:
        raise ConfigError("compare_all needs at least two valuators.")
    resolved = {n: _resolve(matrices[n]) for n in names}
    S = np.eye(len(names))
    K = np.eye(len(names))
    pairs: dict[str, Any] = {}
    for (i, na), (j, nb) in itertools.combinations(enumerate(names), 2):
        (a, ha), (b, hb) = resolved[na], resolved[nb]
        ag = agreement(a, b, how_a=ha, how_b=hb, n_boot=n_boot, seed=seed)
        S[i, j] = S[j, i] = ag.spearman
        K[i, j] = K[j, i] = ag.kendall
        entry = ag.to_dict()
        entry[f"top{int(round(top_fraction * 100))}pct_overlap"] = top_fraction_overlap(
            a, b, top_fraction, how_a=ha, how_b=hb)
        entry["bins"] = bin_overlap(a, b, how_a=ha, how_b=hb)
        if families is not None:
            entry["per_family_spearman"] = per_family_spearman(a, b, families, how_a=ha, how_b=hb)
            if probe_families is not None:
                entry["domain"] = domain_spearman(a, b, families, probe_families, how_a=ha, how_b=hb)
        pairs[f"{na}|{nb}"] = entry
    out: dict[str, Any] = {"names": names, "spearman": S.tolist(), "kendall": K.tolist(), "pairs": pairs}
    if noisy_ids is not None:
        noisy_ids = list(noisy_ids)
        out["noise"] = {n: noise_detection(resolved[n][0], noisy_ids, how=resolved[n][1]) for n in names}
    return out
