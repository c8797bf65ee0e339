"""Statistics, in one place: rank correlations, confidence intervals, reliability and
equivalence tests.

Every claim the course makes about valuators goes through these functions:

* :func:`spearman`, :func:`kendall`, :func:`pearson` — one implementation each. Ties get
  average ranks (Spearman) or the tau-b correction (Kendall); a constant input gives NaN;
  a non-finite input raises :class:`~icp_influence.errors.ConfigError`. 2-D inputs are
  flattened (pair-level correlation of two matrices).
* :func:`bootstrap_ci` — a percentile interval by :func:`scipy.stats.bootstrap`, resampling
  paired observations (candidates) with replacement; :func:`t_interval` — a Student-t
  interval of a mean through :mod:`scipy.stats`.
* :func:`split_half` — the **reliability** of a candidate score computed from a
  ``[candidates × probes]`` matrix: split the probes at random into halves A and B,
  ``r = Spearman(a(V[:, A]), a(V[:, B]))`` averaged over splits, reported with the
  Spearman–Brown correction ``2r / (1 + r)`` (the reliability of a score over all the
  probes) and a two-way bootstrap interval.

Two-way bootstrap intervals. Resampling probes with replacement adds the probe noise a
second time, so replicate correlations sit *below* the point estimate (checked on
simulated matrices of known reliability). The interval therefore takes only the
**spread** from the replicates: a normal interval on Fisher's ``z = atanh(ρ)`` with the
replicates' standard error, centred on the point estimate. The attenuation-corrected
value is a ratio in which the extra noise cancels, so its interval is the replicates'
percentile interval.
* :func:`reliability_curve` — reliability against the number of probes, and
  :func:`probes_needed` — how many probes a score needs for a target reliability
  (Spearman–Brown prophecy).
* :func:`agreement` — Spearman of two valuators' candidate scores with a **two-way
  bootstrap** interval (candidates and probes resampled together: with few probes the
  probe sample dominates the uncertainty) and the **attenuation-corrected** value
  ``ρ / √(rel_A · rel_B)`` beside the raw one.
* :func:`tost_paired` — two one-sided t-tests for equivalence of paired outcomes within a
  margin fixed in advance, with a verdict: ``"equivalent"``, ``"different"`` or
  ``"inconclusive"``.

Aggregates (how a ``[C, P]`` matrix becomes one value per candidate) are named:
``"mean"`` (mean over probes) and ``"win_rate"`` (fraction of probes with a value > 0,
strict). Probe resampling is expressed as integer weights per probe, so every bootstrap
replicate is one matrix product (fast enough for widgets).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats as _st

from .errors import ConfigError
from .scores import WEIGHTED_AGGREGATES as AGGREGATES  # the aggregates a bootstrap can weight
from .scores import aggregate  # noqa: F401  (re-exported: stats.aggregate is scores.aggregate)

__all__ = [
    "AGGREGATES", "Interval", "Reliability", "Agreement", "Equivalence",
    "pearson", "spearman", "kendall", "rank_columns", "columnwise_spearman",
    "bootstrap_ci", "t_interval", "aggregate", "split_half", "reliability_curve",
    "probes_needed", "spearman_brown", "disattenuate", "agreement", "pair_agreement", "pair_agreement_difference", "agreement_difference",
    "loglog_slope", "tost_paired", "format_p",
    "CONTROLS", "partial_spearman", "strata", "stratified_spearman", "group_codes", "within_group_spearman", "between_group_spearman", "controlled_agreement", "within_probe_spearman",
]


# ---------------------------------------------------------------- correlations

def _finite_pair(x: Any, y: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=np.float64).ravel(), np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ConfigError(f"{name}: the two inputs have {x.size} and {y.size} values; give one value per item in each.")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ConfigError(f"{name}: the inputs contain NaN or inf; call ScoreMatrix.check_finite() to find them.")
    return x, y


def pearson(x: Any, y: Any) -> float:
    """Pearson correlation of two arrays (flattened). NaN when either is constant."""
    x, y = _finite_pair(x, y, "pearson")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    xc, yc = x - x.mean(), y - y.mean()
    return float(np.clip(xc @ yc / math.sqrt(float(xc @ xc) * float(yc @ yc)), -1.0, 1.0))


def spearman(x: Any, y: Any) -> float:
    """Spearman's rank correlation (average ranks for ties), flattened. NaN when either is constant."""
    x, y = _finite_pair(x, y, "spearman")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return pearson(_st.rankdata(x), _st.rankdata(y))


def kendall(x: Any, y: Any) -> float:
    """Kendall's tau-b (tie-corrected), flattened. NaN when either is constant."""
    x, y = _finite_pair(x, y, "kendall")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(_st.kendalltau(x, y).statistic)


def roc_auc(y: Any, score: Any) -> float:
    """ROC AUC of ``score`` as a detector of ``y`` (1 = positive): the Mann–Whitney statistic,
    the chance that a random positive scores above a random negative, ties counting one half —
    the same number as ``sklearn.metrics.roc_auc_score(y, score)``, from one ranking (about
    30× faster on 312 candidates, which matters inside a bootstrap). NaN unless both classes are
    present."""
    y = np.asarray(y).ravel().astype(bool)
    s = np.asarray(score, dtype=float).ravel()
    if y.shape != s.shape:
        raise ConfigError(f"roc_auc: {y.size} labels but {s.size} scores.")
    if not np.all(np.isfinite(s)):
        raise ConfigError("roc_auc: the scores contain NaN or infinite values.")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _st.rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


CORRELATIONS: dict[str, Callable[[Any, Any], float]] = {"spearman": spearman, "kendall": kendall, "pearson": pearson}


def correlation(name: str) -> Callable[[Any, Any], float]:
    """The correlation function called ``name`` (``spearman``, ``kendall`` or ``pearson``)."""
    if callable(name):
        return name  # type: ignore[return-value]
    if name not in CORRELATIONS:
        raise ConfigError(f"Unknown statistic {name!r}; choose one of {', '.join(CORRELATIONS)}.")
    return CORRELATIONS[name]


def rank_columns(a: np.ndarray) -> np.ndarray:
    """Average ranks of every column of ``a`` ``[n, m]`` (ties share their mean rank)."""
    return _st.rankdata(a, axis=0)


def columnwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman of ``a[:, j]`` with ``b[:, j]`` for every column ``j`` (NaN for a constant column)."""
    ra, rb = rank_columns(a), rank_columns(b)
    ra = ra - ra.mean(axis=0)
    rb = rb - rb.mean(axis=0)
    den = np.sqrt((ra * ra).sum(axis=0) * (rb * rb).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (ra * rb).sum(axis=0) / den
    r[den == 0] = np.nan
    return np.clip(r, -1.0, 1.0)


# ---------------------------------------------------------------- intervals

class _Bounded:
    """``ci`` = ``[lo, hi]`` for the dataclasses below that carry an interval."""

    lo: float
    hi: float

    @property
    def ci(self) -> list[float]:
        return [self.lo, self.hi]


class _Record:
    """``to_dict`` for the result dataclasses below: their fields, every interval a list."""

    _intervals: tuple[str, ...] = ("ci",)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in self._intervals:
            d[name] = list(getattr(self, name))
        return d


@dataclass(frozen=True)
class Interval(_Bounded):
    """A point estimate with a confidence interval ``[lo, hi]`` at ``level``."""

    value: float
    lo: float
    hi: float
    level: float = 0.95

    def excludes(self, x: float = 0.0) -> bool:
        return bool(self.lo > x or self.hi < x)

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci": self.ci, "level": self.level}

    def __format__(self, spec: str) -> str:
        spec = spec or "+.3f"
        return f"{self.value:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}]"


def _z_interval(point: float, replicates: Sequence[float], level: float) -> tuple[float, float]:
    """Normal interval on Fisher's z around ``point`` with the replicates' standard error."""
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size < 2 or not np.isfinite(point):
        return (float("nan"), float("nan"))
    clip = 1 - 1e-9
    se = float(np.arctanh(np.clip(r, -clip, clip)).std(ddof=1))
    z = float(np.arctanh(np.clip(point, -clip, clip)))
    h = float(_st.norm.ppf(0.5 + level / 2)) * se
    return (float(np.tanh(z - h)), float(np.tanh(z + h)))


def _check_level(level: float) -> None:
    if not 0 < level < 1:
        raise ConfigError(f"level must be in (0, 1), got {level}.")


def bootstrap_ci(x: Any, y: Any, statistic: str | Callable[[Any, Any], float] = "spearman", *,
                 n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(x, y)`` (``scipy.stats.bootstrap``, paired).

    1-D inputs: the pairs ``(x_i, y_i)`` are resampled. 2-D inputs ``[n, k]``: whole rows
    are resampled (a cluster bootstrap: the ``k`` values of one candidate are not
    independent) and ``statistic`` sees the flattened resampled rows. Resamples on which
    the statistic is undefined (NaN, e.g. a constant resample) are dropped.
    """
    _check_level(level)
    f = correlation(statistic) if isinstance(statistic, str) else statistic
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape:
        raise ConfigError(f"bootstrap_ci: shapes differ {x.shape} vs {y.shape}.")
    if x.shape[0] < 3:
        raise ConfigError(f"Need at least 3 candidates for a bootstrap interval, got {x.shape[0]}.")
    if n_boot < 1:
        raise ConfigError(f"n_boot must be ≥ 1, got {n_boot}.")
    idx = np.arange(x.shape[0])

    def stat(i: np.ndarray) -> float:
        i = i.astype(int)
        return f(x[i], y[i])

    res = _st.bootstrap((idx,), stat, vectorized=False, n_resamples=n_boot, confidence_level=level,
                        method="percentile", random_state=np.random.default_rng(seed))
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    dist = dist[np.isfinite(dist)]
    if dist.size == 0:
        return (float("nan"), float("nan"))
    a = (1 - level) / 2
    return float(np.quantile(dist, a)), float(np.quantile(dist, 1 - a))


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float | None, float | None]:
    """Student-t interval of the mean of ``values`` (``(None, None)`` with fewer than 2)."""
    _check_level(level)
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return (None, None)
    se = float(v.std(ddof=1) / math.sqrt(v.size))
    if se == 0:
        m = float(v.mean())
        return (m, m)
    lo, hi = _st.t.interval(level, v.size - 1, loc=float(v.mean()), scale=se)
    return (float(lo), float(hi))


def two_way_difference(a: Any, b: Any, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
                       ) -> tuple[float, float, float]:
    """Mean of ``a − b`` over a crossed design (rows × columns, e.g. training seeds × held-out
    questions, paired in both) and its percentile interval from a bootstrap that resamples the
    rows **and** the columns: an interval over seeds alone ignores that a different draw of
    questions would give other accuracies (with 12 questions, one question is 8%).
    Returns ``(mean, lo, hi)``."""
    _check_level(level)
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.ndim != 2 or min(d.shape) < 1:
        raise ValueError(f"two_way_difference needs two rows × columns arrays of the same shape; got {d.shape}.")
    rng = np.random.default_rng(seed)
    n, m = d.shape
    rows, cols = rng.integers(0, n, (n_boot, n)), rng.integers(0, m, (n_boot, m))
    reps = np.array([d[r][:, c].mean() for r, c in zip(rows, cols)])
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)


# ---------------------------------------------------------------- aggregates of a [C, P] matrix
# one definition, in scores.py (``aggregate``); the statistics use its weighted forms

def _check_aggregate(how: str) -> str:
    if how not in AGGREGATES:
        raise ConfigError(f"Unknown aggregate {how!r}; choose one of {', '.join(AGGREGATES)}.")
    return how


# ---------------------------------------------------------------- reliability

def spearman_brown(r: float | np.ndarray, factor: float = 2.0) -> Any:
    """Reliability of a score ``factor`` times longer: ``f·r / (1 + (f − 1)·r)``."""
    r = np.asarray(r, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = factor * r / (1.0 + (factor - 1.0) * r)
    return float(out) if out.ndim == 0 else out


def _half_masks(n_probes: int, n_splits: int, rng: np.random.Generator,
                k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[P, S]`` 0/1 masks of random disjoint halves A and B of ``k`` probes each (default ⌊P/2⌋)."""
    h = n_probes // 2 if k is None else k
    A = np.zeros((n_probes, n_splits))
    B = np.zeros((n_probes, n_splits))
    for s in range(n_splits):
        perm = rng.permutation(n_probes)
        A[perm[:h], s] = 1.0
        B[perm[h:2 * h], s] = 1.0
    return A, B


def _split_half_r(X: np.ndarray, n_splits: int, rng: np.random.Generator, counts: np.ndarray | None = None) -> float:
    """Mean split-half Spearman of the per-probe matrix ``X`` ``[C, P]`` (already 0/1 for win-rates).

    ``counts`` ``[P]``: bootstrap multiplicities; the distinct probes are split, so a
    probe drawn twice never lands in both halves.
    """
    if counts is None:
        A, B = _half_masks(X.shape[1], n_splits, rng)
    else:
        present = np.flatnonzero(counts > 0)
        a, b = _half_masks(len(present), n_splits, rng)
        A = np.zeros((X.shape[1], n_splits))
        B = np.zeros((X.shape[1], n_splits))
        A[present] = a * counts[present, None]
        B[present] = b * counts[present, None]
    sa, sb = A.sum(axis=0), B.sum(axis=0)
    ok = (sa > 0) & (sb > 0)
    if not ok.any():
        return float("nan")
    ha = (X @ A[:, ok]) / sa[ok]
    hb = (X @ B[:, ok]) / sb[ok]
    r = columnwise_spearman(ha, hb)
    r = r[np.isfinite(r)]
    return float(r.mean()) if r.size else float("nan")


def _per_probe(V: np.ndarray, how: str) -> np.ndarray:
    _check_aggregate(how)
    V = np.asarray(V, dtype=np.float64)
    if V.ndim != 2:
        raise ConfigError(f"Expected a [candidates × probes] matrix, got shape {V.shape}.")
    if not np.all(np.isfinite(V)):
        raise ConfigError("The score matrix contains NaN or inf; call ScoreMatrix.check_finite() to find them.")
    return (V > 0).astype(np.float64) if how == "win_rate" else V


@dataclass(frozen=True)
class Reliability(_Record, _Bounded):
    """Split-half reliability of a candidate score (Spearman–Brown corrected) with its interval.

    ``value``: reliability of the score over all ``n_probes`` probes; ``half``: the mean
    raw split-half Spearman (the reliability of a score over half the probes).
    """

    value: float
    lo: float
    hi: float
    half: float
    n_probes: int
    n_candidates: int
    aggregate: str
    level: float = 0.95


def split_half(V: np.ndarray, how: str = "mean", *, n_splits: int = 200, n_boot: int = 500, boot_splits: int = 10,
               level: float = 0.95, seed: int = 0) -> Reliability:
    """Split-half reliability of ``aggregate(V, how)`` across probes, with a two-way bootstrap CI.

    ``r`` = mean over ``n_splits`` random probe halves of Spearman(a(V[:, A]), a(V[:, B]));
    the value is ``2r / (1 + r)``. The interval resamples candidates and probes together
    (``n_boot`` replicates, ``boot_splits`` splits each; a probe drawn twice stays in one
    half): a Fisher-z normal interval with the replicates' spread (module docstring).
    Needs at least 4 probes and 3 candidates.
    """
    _check_level(level)
    X = _per_probe(V, how)
    C, P = X.shape
    if P < 4 or C < 3:
        raise ConfigError(f"Split-half reliability needs ≥ 3 candidates and ≥ 4 probes, got {C} × {P}.")
    rng = np.random.default_rng(seed)
    r = _split_half_r(X, n_splits, rng)
    reps = []
    for _ in range(n_boot):
        rows = rng.integers(0, C, size=C)
        counts = np.bincount(rng.integers(0, P, size=P), minlength=P).astype(np.float64)
        if np.count_nonzero(counts) < 4:
            continue
        rb = _split_half_r(X[rows], boot_splits, rng, counts)
        if np.isfinite(rb):
            reps.append(spearman_brown(rb))
    lo, hi = _z_interval(spearman_brown(r), reps, level)
    return Reliability(value=spearman_brown(r), lo=lo, hi=hi, half=r, n_probes=P, n_candidates=C, aggregate=how,
                       level=level)


def reliability_curve(V: np.ndarray, how: str = "mean", counts: Sequence[int] | None = None, *,
                      n_splits: int = 200, seed: int = 0) -> dict[str, list[float]]:
    """Reliability of a score over ``k`` probes, measured for each ``k`` in ``counts``.

    For each ``k ≤ P/2``: two disjoint random sets of ``k`` probes, Spearman of the two
    candidate scores, averaged over ``n_splits`` draws — the reliability of a ``k``-probe
    score, measured directly (no extrapolation). Returns ``{"k": [...], "reliability": [...]}``.
    """
    X = _per_probe(V, how)
    C, P = X.shape
    if counts is None:
        counts = sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= P // 2} | {P // 2})
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {"k": [], "reliability": []}
    for k in counts:
        k = int(k)
        if not 1 <= k <= P // 2:
            raise ConfigError(f"k = {k} probes per half needs 1 ≤ k ≤ {P // 2} (half of {P} probes).")
        A, B = _half_masks(P, n_splits, rng, k)
        r = columnwise_spearman((X @ A) / k, (X @ B) / k)
        r = r[np.isfinite(r)]
        out["k"].append(k)
        out["reliability"].append(float(r.mean()) if r.size else float("nan"))
    return out


def probes_needed(reliability: float, n_probes: int, target: float = 0.8) -> float:
    """Probes a score needs to reach ``target`` reliability, from its reliability over
    ``n_probes`` probes (Spearman–Brown prophecy). ``inf`` when the reliability is ≤ 0."""
    if not 0 < target < 1:
        raise ConfigError(f"target reliability must be in (0, 1), got {target}.")
    if not np.isfinite(reliability) or reliability <= 0:
        return float("inf")
    if reliability >= 1:
        return 1.0
    factor = target * (1 - reliability) / (reliability * (1 - target))
    return float(n_probes * factor)


def disattenuate(rho: float, rel_a: float, rel_b: float) -> float:
    """Correlation corrected for attenuation, ``ρ / √(rel_A · rel_B)`` (NaN if a reliability ≤ 0).

    Not clipped: a value above 1 says the reliabilities are underestimated or the sample
    is too small, which is itself worth seeing.
    """
    if not (np.isfinite(rho) and np.isfinite(rel_a) and np.isfinite(rel_b)) or rel_a <= 0 or rel_b <= 0:
        return float("nan")
    return float(rho / math.sqrt(rel_a * rel_b))


# ---------------------------------------------------------------- agreement of two valuators

@dataclass(frozen=True)
class Agreement(_Record):
    """Rank agreement of two candidate scores: raw Spearman with a two-way bootstrap CI,
    Kendall, the reliabilities and the attenuation-corrected value (with its own CI)."""

    spearman: float
    ci: tuple[float, float]
    kendall: float
    disattenuated: float
    disattenuated_ci: tuple[float, float]
    rel_a: float
    rel_b: float
    n_candidates: int
    n_probes: int
    level: float = 0.95
    two_way: bool = True
    _intervals = ("ci", "disattenuated_ci")


def agreement(Va: np.ndarray, Vb: np.ndarray, how_a: str = "mean", how_b: str = "mean", *, n_boot: int = 1000,
              n_splits: int = 100, boot_splits: int = 6, level: float = 0.95, seed: int = 0,
              resample_probes: bool = True) -> Agreement:
    """Spearman of ``aggregate(Va, how_a)`` and ``aggregate(Vb, how_b)`` with a two-way bootstrap.

    ``Va`` and ``Vb`` are ``[C, P]`` matrices on the same candidates and probes (rows and
    columns aligned). Each replicate resamples candidates and probes with replacement (the
    same draw for both valuators) and recomputes Spearman and, from ``boot_splits`` random
    halves, both reliabilities, hence the disattenuated value. With
    ``resample_probes=False`` only candidates are resampled (a one-way interval).
    """
    _check_level(level)
    Xa, Xb = _per_probe(Va, how_a), _per_probe(Vb, how_b)
    if Xa.shape != Xb.shape:
        raise ConfigError(f"agreement: the matrices have shapes {Xa.shape} and {Xb.shape}; align them first "
                          "(ScoreMatrix.aligned).")
    C, P = Xa.shape
    if C < 3:
        raise ConfigError(f"Need at least 3 candidates, got {C}.")
    rng = np.random.default_rng(seed)
    a, b = Xa.mean(axis=1), Xb.mean(axis=1)
    rho = spearman(a, b)
    tau = kendall(a, b)
    rel_a = spearman_brown(_split_half_r(Xa, n_splits, rng)) if P >= 4 else float("nan")
    rel_b = spearman_brown(_split_half_r(Xb, n_splits, rng)) if P >= 4 else float("nan")
    rhos, dis = [], []
    for _ in range(n_boot):
        rows = rng.integers(0, C, size=C)
        counts = (np.bincount(rng.integers(0, P, size=P), minlength=P).astype(np.float64) if resample_probes
                  else np.ones(P))
        ya, yb = Xa[rows], Xb[rows]
        sa, sb = (ya @ counts) / counts.sum(), (yb @ counts) / counts.sum()
        if np.ptp(sa) == 0 or np.ptp(sb) == 0:
            continue
        r = pearson(_st.rankdata(sa), _st.rankdata(sb))
        rhos.append(r)
        if P >= 4 and np.count_nonzero(counts) >= 4:
            ra = spearman_brown(_split_half_r(ya, boot_splits, rng, counts))
            rb = spearman_brown(_split_half_r(yb, boot_splits, rng, counts))
            dis.append(disattenuate(r, ra, rb))
    q = (1 - level) / 2

    def ci(v: list[float]) -> tuple[float, float]:
        v = np.asarray(v, dtype=np.float64)
        v = v[np.isfinite(v)]
        return (float(np.quantile(v, q)), float(np.quantile(v, 1 - q))) if v.size else (float("nan"), float("nan"))

    return Agreement(spearman=rho, ci=_z_interval(rho, rhos, level), kendall=tau, disattenuated=disattenuate(rho, rel_a, rel_b),
                     disattenuated_ci=ci(dis), rel_a=rel_a, rel_b=rel_b, n_candidates=C, n_probes=P, level=level,
                     two_way=resample_probes)


def pair_agreement(Va: np.ndarray, Vb: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                   seed: int = 0) -> Interval:
    """Pair-level Spearman of two ``[C, P]`` matrices (every (candidate, probe) pair one point)
    with a two-way bootstrap interval (candidates and probes resampled together; Fisher-z
    normal interval around the point estimate, as in :func:`agreement`)."""
    _check_level(level)
    A, B = np.asarray(Va, dtype=np.float64), np.asarray(Vb, dtype=np.float64)
    if A.shape != B.shape or A.ndim != 2:
        raise ConfigError(f"pair_agreement needs two aligned [candidates × probes] matrices, got {A.shape} and {B.shape}.")
    rho = spearman(A, B)
    rng = np.random.default_rng(seed)
    C, P = A.shape
    reps = []
    for _ in range(n_boot):
        r, c = rng.integers(0, C, size=C), rng.integers(0, P, size=P)
        x, y = A[np.ix_(r, c)].ravel(), B[np.ix_(r, c)].ravel()
        if np.ptp(x) > 0 and np.ptp(y) > 0:
            reps.append(pearson(_st.rankdata(x), _st.rankdata(y)))
    lo, hi = _z_interval(rho, reps, level)
    return Interval(rho, lo, hi, level)


def pair_agreement_difference(Va: np.ndarray, Vb: np.ndarray, Vc: np.ndarray, *, n_boot: int = 1000,
                              level: float = 0.95, seed: int = 0) -> Interval:
    """``Spearman(Va, Vc) − Spearman(Va, Vb)`` at the pair level, for three aligned ``[C, P]``
    matrices, with a two-way bootstrap interval: each replicate resamples candidates and probes
    (the same draw for all three) and recomputes both correlations; the interval is a normal
    interval around the point estimate with the replicates' standard error (as in
    :func:`pair_agreement`). Positive: ``Vc`` agrees better with ``Va`` than ``Vb`` does."""
    _check_level(level)
    A, B, Cm = (np.asarray(v, dtype=np.float64) for v in (Va, Vb, Vc))
    if not (A.shape == B.shape == Cm.shape) or A.ndim != 2:
        raise ConfigError("pair_agreement_difference needs three aligned [candidates × probes] matrices, got "
                          f"{A.shape}, {B.shape} and {Cm.shape}.")
    if n_boot < 2:
        raise ConfigError(f"n_boot must be ≥ 2, got {n_boot}.")
    diff = spearman(A, Cm) - spearman(A, B)
    rng = np.random.default_rng(seed)
    nc, npr = A.shape
    reps = []
    for _ in range(n_boot):
        r, c = rng.integers(0, nc, size=nc), rng.integers(0, npr, size=npr)
        a, b, cc = (M[np.ix_(r, c)].ravel() for M in (A, B, Cm))
        if np.ptp(a) > 0 and np.ptp(b) > 0 and np.ptp(cc) > 0:
            ra = _st.rankdata(a)
            reps.append(pearson(ra, _st.rankdata(cc)) - pearson(ra, _st.rankdata(b)))
    if len(reps) < 2:
        return Interval(diff, float("nan"), float("nan"), level)
    h = float(_st.norm.ppf(0.5 + level / 2)) * float(np.std(reps, ddof=1))
    return Interval(diff, diff - h, diff + h, level)


def agreement_difference(Va: np.ndarray, Vb: np.ndarray, Vc: np.ndarray, how_a: str = "mean", how_b: str = "mean",
                         how_c: str = "mean", *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """``Spearman(A, C) − Spearman(A, B)`` of the candidate scores (each matrix aggregated over
    its probes), for three aligned ``[C, P]`` matrices, with a two-way bootstrap interval: each
    replicate resamples candidates and probes (the same draw for all three) and recomputes both
    correlations; a normal interval with the replicates' standard error. Positive: ``C`` agrees
    better with ``A`` than ``B`` does — e.g. one gradient ablation against the reference
    gradient score, both against ICP. The pairing is what makes the difference sharper than two
    overlapping intervals."""
    _check_level(level)
    A, B, Cm = _per_probe(Va, how_a), _per_probe(Vb, how_b), _per_probe(Vc, how_c)
    if not (A.shape == B.shape == Cm.shape):
        raise ConfigError(f"agreement_difference needs three aligned matrices, got {A.shape}, {B.shape}, {Cm.shape}.")
    if n_boot < 2:
        raise ConfigError(f"n_boot must be ≥ 2, got {n_boot}.")
    diff = spearman(A.mean(axis=1), Cm.mean(axis=1)) - spearman(A.mean(axis=1), B.mean(axis=1))
    rng = np.random.default_rng(seed)
    nc, npr = A.shape
    reps = []
    for _ in range(n_boot):
        rows = rng.integers(0, nc, size=nc)
        w = np.bincount(rng.integers(0, npr, size=npr), minlength=npr).astype(np.float64)
        a, b, c = ((M[rows] @ w) / w.sum() for M in (A, B, Cm))
        if np.ptp(a) > 0 and np.ptp(b) > 0 and np.ptp(c) > 0:
            reps.append(spearman(a, c) - spearman(a, b))
    if len(reps) < 2:
        return Interval(diff, float("nan"), float("nan"), level)
    h = float(_st.norm.ppf(0.5 + level / 2)) * float(np.std(reps, ddof=1))
    return Interval(diff, diff - h, diff + h, level)


def loglog_slope(x: Sequence[float], y: Sequence[float], *, level: float = 0.95) -> Interval:
    """The exponent ``k`` of a power law ``y ∝ x^k``: the ordinary-least-squares slope of
    ``log y`` on ``log x`` with its Student-t interval (``n − 2`` degrees of freedom).

    The interval measures how far the points scatter about one straight line on log–log
    axes; it needs at least 3 points, all ``x`` and ``y`` positive and finite.
    """
    _check_level(level)
    lx, ly = _finite_pair(x, y, "loglog_slope")
    if lx.size < 3:
        raise ConfigError(f"loglog_slope needs at least 3 points for an interval, got {lx.size}.")
    if np.any(lx <= 0) or np.any(ly <= 0):
        raise ConfigError("loglog_slope: every x and y must be > 0 (they are logged).")
    lx, ly = np.log(lx), np.log(ly)
    dx = lx - lx.mean()
    sxx = float(dx @ dx)
    if sxx == 0:
        raise ConfigError("loglog_slope: all x are equal; the slope is undefined.")
    k = float(dx @ (ly - ly.mean()) / sxx)
    resid = ly - ly.mean() - k * dx
    se = math.sqrt(float(resid @ resid) / (lx.size - 2) / sxx)
    h = float(_st.t.ppf(0.5 + level / 2, lx.size - 2)) * se
    return Interval(k, k - h, k + h, level)


# ---------------------------------------------------------------- equivalence

@dataclass(frozen=True, kw_only=True)
class Equivalence(_Record):
    """Paired comparison of two arms: mean difference, its CI, TOST p-value and the verdict.

    ``verdict``: ``"equivalent"`` when the two one-sided tests reject a difference of
    ±``margin`` or more (``p_tost < alpha``: the 1−2α interval lies inside the margin);
    else ``"different"`` when the ``level`` interval excludes 0; else ``"inconclusive"``.
    """

    diff: float                 # the estimate: mean paired difference a − b over n seeds, and its CI
    ci: tuple[float, float]
    n: int
    margin: float               # the test: ±margin at level alpha, its p-value and verdict
    alpha: float = 0.05
    p_tost: float
    verdict: str


def tost_paired(a: Sequence[float], b: Sequence[float], margin: float, *, alpha: float = 0.05,
                level: float = 0.95) -> Equivalence:
    """Two one-sided t-tests on the paired differences ``a − b`` against ``±margin``.

    ``margin`` must be fixed before the data are seen (write it in the run's config).
    """
    if not (np.isfinite(margin) and margin > 0):
        raise ConfigError(f"The equivalence margin must be a number > 0, got {margin!r}.")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError(f"tost_paired needs two paired 1-D samples of equal length, got {a.shape} and {b.shape}.")
    d = a - b
    n = d.size
    if n < 2:
        raise ConfigError(f"An equivalence test needs ≥ 2 paired seeds, got {n}.")
    m = float(d.mean())
    se = float(d.std(ddof=1) / math.sqrt(n))
    df = n - 1
    if se == 0:
        p = 0.0 if abs(m) < margin else 1.0
        lo = hi = m
    else:
        p_low = float(_st.t.sf((m + margin) / se, df))   # H0: μ ≤ −margin
        p_high = float(_st.t.cdf((m - margin) / se, df))  # H0: μ ≥ +margin
        p = max(p_low, p_high)
        lo, hi = t_interval(d, level)  # type: ignore[assignment]
    if p < alpha:
        verdict = "equivalent"
    elif lo > 0 or hi < 0:
        verdict = "different"
    else:
        verdict = "inconclusive"
    return Equivalence(diff=m, ci=(float(lo), float(hi)), p_tost=p, margin=float(margin), n=n, verdict=verdict,
                       alpha=alpha)


def paired_t_power(delta: float, sd: float, n: int, *, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test at ``alpha`` with ``n`` pairs when the true mean
    difference is ``delta`` and the differences have standard deviation ``sd`` (exact:
    the non-central t distribution with non-centrality ``delta·√n / sd``)."""
    if n < 2 or not sd > 0:
        raise ConfigError(f"power needs n ≥ 2 pairs and a standard deviation > 0, got n={n}, sd={sd!r}.")
    df = n - 1
    crit = float(_st.t.ppf(1 - alpha / 2, df))
    nc = float(delta) * math.sqrt(n) / float(sd)
    p = float(_st.nct.sf(crit, df, nc) + _st.nct.cdf(-crit, df, nc))
    if not math.isfinite(p):  # scipy's non-central t fails far in the tails (large n): the shifted-t limit
        p = float(_st.t.sf(crit - nc, df) + _st.t.cdf(-crit - nc, df))
    return p


def min_detectable_difference(sd: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true paired difference that a two-sided paired t-test at ``alpha`` with
    ``n`` pairs detects with probability ``power`` (differences with standard deviation
    ``sd``): the root of :func:`paired_t_power` ``= power``. For large ``n`` it approaches
    ``(z₁₋α/₂ + z_power)·sd/√n`` (2.80·sd/√n at the defaults)."""
    from scipy.optimize import brentq

    if not 0 < alpha < 1 or not alpha < power < 1:
        raise ConfigError(f"need 0 < alpha < power < 1, got alpha={alpha}, power={power}.")
    f = lambda d: paired_t_power(d, sd, n, alpha=alpha) - power  # noqa: E731
    hi = float(sd)
    while f(hi) < 0:
        hi *= 2
    return float(brentq(f, 0.0, hi, xtol=1e-12 * sd))


def format_p(p: float, digits: int = 3) -> str:
    """A p-value as text: ``"p = 0.012"``, or ``"p < 0.001"`` when it rounds to zero at ``digits``
    places (never ``"p = 0.000"``); ``"p = –"`` for a missing or NaN value. The one formatter the
    library and the notebooks use (the course's ``tables.fmt_p`` is this function)."""
    if digits < 1:
        raise ConfigError(f"digits must be ≥ 1, got {digits}.")
    if p is None or not math.isfinite(float(p)):
        return "p = –"
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"A p-value lies in [0, 1], got {p}.")
    floor = 10.0 ** -digits
    if p < floor:
        return f"p < {floor:.{digits}f}"
    return f"p = {p:.{digits}f}"


# ---------------------------------------------------------------- confounds: agreement controlled for a variable

def _rank_residuals(v: np.ndarray, C: np.ndarray) -> np.ndarray:
    """Residuals of the ranks of ``v`` after least squares on ``C`` (ranks of the controls, with an intercept)."""
    r = _st.rankdata(v)
    beta, *_ = np.linalg.lstsq(C, r, rcond=None)
    return r - C @ beta


def _control_design(control: Any, n: int) -> np.ndarray:
    z = np.asarray(control, dtype=np.float64)
    z = z[:, None] if z.ndim == 1 else z
    if z.ndim != 2 or z.shape[0] != n:
        raise ConfigError(f"control must have one value (or one row) per observation: got shape {np.shape(control)} "
                          f"for {n} observations.")
    if not np.all(np.isfinite(z)):
        raise ConfigError("control contains NaN or inf.")
    return np.column_stack([np.ones(n), _st.rankdata(z, axis=0)])


def partial_spearman(x: Any, y: Any, control: Any) -> float:
    """Spearman's ρ of ``x`` and ``y`` with ``control`` partialled out (rank-based).

    All variables are replaced by their average ranks; the ranks of ``x`` and of ``y`` are
    regressed (least squares, with an intercept) on the ranks of the control — a vector
    ``[n]`` or several controls ``[n, k]`` — and the result is the Pearson correlation of
    the two residuals. With one control this equals the textbook formula
    ``(ρ_xy − ρ_xz ρ_yz) / √((1 − ρ_xz²)(1 − ρ_yz²))`` on Spearman correlations. A
    monotone transform of any variable leaves it unchanged; NaN when a residual is constant.

    Used here for "agreement given answer length": what two valuators share beyond what
    each shares with the length of the candidate's answer.
    """
    x, y = _finite_pair(x, y, "partial_spearman")
    if x.size < 4:
        raise ConfigError(f"partial_spearman needs at least 4 observations, got {x.size}.")
    C = _control_design(control, x.size)
    return pearson(_rank_residuals(x, C), _rank_residuals(y, C))


def strata(control: Any, n_strata: int = 5) -> np.ndarray:
    """Equal-count strata (0 … n_strata−1) of ``control`` by rank (quintiles by default); ties share a stratum."""
    z = np.asarray(control, dtype=np.float64).ravel()
    if n_strata < 1:
        raise ConfigError(f"n_strata must be ≥ 1, got {n_strata}.")
    r = _st.rankdata(z)                       # 1 … n, ties averaged (so tied values share a stratum)
    return np.minimum(((r - 0.5) * n_strata / z.size).astype(int), n_strata - 1)


def stratified_spearman(x: Any, y: Any, control: Any, n_strata: int = 5) -> float:
    """Spearman of ``x`` and ``y`` within strata of ``control`` (quintiles by default), pooled
    as the mean of the strata's values weighted by their sizes. Strata with fewer than 3
    observations or a constant variable are left out; NaN when none is left."""
    return within_group_spearman(x, y, strata(control, n_strata))


def group_codes(groups: Any) -> np.ndarray:
    """Integer codes 0 … k−1 of any labels (strings, numbers), in sorted order of the labels."""
    return np.unique(np.asarray(groups).ravel(), return_inverse=True)[1]


def within_group_spearman(x: Any, y: Any, groups: Any) -> float:
    """Spearman of ``x`` and ``y`` inside each group (e.g. a task category), pooled as the
    mean of the groups' values weighted by their sizes. Groups with fewer than 3 observations
    or a constant variable are left out; NaN when none is left. What two scores share about
    which example is better *within* a kind of example."""
    x, y = _finite_pair(x, y, "within_group_spearman")
    s = group_codes(groups)
    if s.size != x.size:
        raise ConfigError(f"groups has {s.size} values for {x.size} observations.")
    num = den = 0.0
    for k in np.unique(s):
        m = s == k
        if m.sum() < 3 or np.ptp(x[m]) == 0 or np.ptp(y[m]) == 0:
            continue
        num += m.sum() * spearman(x[m], y[m])
        den += m.sum()
    return num / den if den else float("nan")


def between_group_spearman(x: Any, y: Any, groups: Any) -> float:
    """Spearman of the group means of ``x`` and of ``y`` (one point per group): what two scores
    share about which *kind* of example is better. NaN with fewer than 3 groups."""
    x, y = _finite_pair(x, y, "between_group_spearman")
    s = group_codes(groups)
    if s.size != x.size:
        raise ConfigError(f"groups has {s.size} values for {x.size} observations.")
    k = s.max() + 1 if s.size else 0
    n = np.bincount(s, minlength=k)
    keep = n > 0
    if keep.sum() < 3:
        return float("nan")
    mx = np.bincount(s, weights=x, minlength=k)[keep] / n[keep]
    my = np.bincount(s, weights=y, minlength=k)[keep] / n[keep]
    if np.ptp(mx) == 0 or np.ptp(my) == 0:
        return float("nan")
    return spearman(mx, my)


#: How :func:`controlled_agreement` controls for the variable: not at all, by partial
#: correlation, within strata of a numeric control, or — for a control that is a label such as
#: the task category — within the groups or between the groups' means.
CONTROLS = ("raw", "partial", "stratified", "within_groups", "between_groups")


def controlled_agreement(Va: np.ndarray, Vb: np.ndarray, control: Any, how_a: str = "mean", how_b: str = "mean", *,
                         method: str = "partial", n_strata: int = 5, n_boot: int = 1000, level: float = 0.95,
                         seed: int = 0) -> Interval:
    """Candidate-level agreement of two ``[C, P]`` matrices controlled for a per-candidate
    variable (``control`` ``[C]``, e.g. answer tokens), with a two-way bootstrap interval.

    ``method``: ``"raw"`` (plain Spearman, as :func:`agreement`), ``"partial"``
    (:func:`partial_spearman`), ``"stratified"`` (:func:`stratified_spearman`), or for a
    label such as the task category ``"within_groups"`` (:func:`within_group_spearman`) and
    ``"between_groups"`` (:func:`between_group_spearman`). Each
    replicate resamples candidates (with their control values) and probes together; the
    interval is the Fisher-z normal interval around the point estimate, as in :func:`agreement`.
    A matrix that is constant across probes (a null model such as answer length) is
    simply unaffected by the probe draw.
    """
    _check_level(level)
    if method not in CONTROLS:
        raise ConfigError(f"Unknown method {method!r}; choose one of {', '.join(CONTROLS)}.")
    Xa, Xb = _per_probe(Va, how_a), _per_probe(Vb, how_b)
    if Xa.shape != Xb.shape:
        raise ConfigError(f"controlled_agreement: shapes {Xa.shape} and {Xb.shape} differ; align the matrices first.")
    C, P = Xa.shape
    grouped = method in ("within_groups", "between_groups")
    labels = np.asarray(control).dtype.kind in "OUSb"
    if labels and method in ("partial", "stratified"):
        raise ConfigError(f"method {method!r} needs a numeric control; for labels use within_groups or between_groups.")
    z = group_codes(control) if grouped or labels else np.asarray(control, dtype=np.float64)
    if z.shape[0] != C:
        raise ConfigError(f"control has {z.shape[0]} values for {C} candidates.")

    def stat(a: np.ndarray, b: np.ndarray, zz: np.ndarray) -> float:
        if method == "raw":
            return spearman(a, b)
        if method == "partial":
            return partial_spearman(a, b, zz)
        if method == "within_groups":
            return within_group_spearman(a, b, zz)
        if method == "between_groups":
            return between_group_spearman(a, b, zz)
        return stratified_spearman(a, b, zz, n_strata)

    point = stat(Xa.mean(axis=1), Xb.mean(axis=1), z)
    rng = np.random.default_rng(seed)
    reps = []
    for _ in range(n_boot):
        rows = rng.integers(0, C, size=C)
        counts = np.bincount(rng.integers(0, P, size=P), minlength=P).astype(np.float64)
        sa, sb = (Xa[rows] @ counts) / counts.sum(), (Xb[rows] @ counts) / counts.sum()
        if np.ptp(sa) == 0 or np.ptp(sb) == 0:
            continue
        reps.append(stat(sa, sb, z[rows]))
    lo, hi = _z_interval(point, reps, level)
    return Interval(point, lo, hi, level)


def within_probe_spearman(Va: np.ndarray, Vb: np.ndarray) -> np.ndarray:
    """Spearman of ``Va[:, p]`` and ``Vb[:, p]`` across candidates, for every probe ``p``
    (the pair-level quantity the first-order theory speaks about: for one probe, does the
    candidate that moves its likelihood more also have the larger gradient inner product?)."""
    A, B = np.asarray(Va, dtype=np.float64), np.asarray(Vb, dtype=np.float64)
    if A.shape != B.shape or A.ndim != 2:
        raise ConfigError(f"within_probe_spearman needs two aligned [candidates × probes] matrices, "
                          f"got {A.shape} and {B.shape}.")
    return columnwise_spearman(A, B)
