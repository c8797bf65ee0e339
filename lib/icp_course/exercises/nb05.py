"""Exercises of notebook 05 (do the rankings agree?)."""
from __future__ import annotations

import numpy as np

from . import exercise

#: Fixed data for the exercises: two valuators' scores of 8 candidates.
X = [0.9, 0.1, 0.5, 0.7, 0.3, 0.8, 0.2, 0.6]
Y = [2.0, -1.0, 0.4, 1.5, 0.6, 0.1, -0.5, 0.9]
NOISY = [1, 4]  # candidate indices with corrupted labels


@exercise("05.spearman_by_hand", hint="Rank both lists (1 = smallest), then ρ = 1 − 6 Σ d² / (n (n² − 1)).")
def _spearman():
    from scipy.stats import rankdata

    rx, ry = rankdata(X), rankdata(Y)
    n = len(X)
    return 1 - 6 * float(((rx - ry) ** 2).sum()) / (n * (n * n - 1))


@exercise("05.top3_overlap", hint="Take the indices of the 3 largest values of X and of Y; count the common ones.")
def _top3():
    a = set(np.argsort(X)[::-1][:3].tolist())
    b = set(np.argsort(Y)[::-1][:3].tolist())
    return len(a & b)


@exercise("05.noise_auc", hint="AUC = fraction of (noisy, clean) pairs where the noisy one has the LOWER value of Y.")
def _auc():
    clean = [i for i in range(len(Y)) if i not in NOISY]
    wins = sum((Y[i] < Y[j]) + 0.5 * (Y[i] == Y[j]) for i in NOISY for j in clean)
    return wins / (len(NOISY) * len(clean))
