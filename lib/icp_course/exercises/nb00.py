"""Exercises of notebook 00."""
from __future__ import annotations

from . import exercise


@exercise("00.n_scored_tokens", hint="Only answer tokens are scored: count the labels that are not -100.")
def _n_scored(*, enc):
    return sum(1 for t in enc.labels if t != -100)


@exercise("00.icp_win", hint="The paper's score counts a win when ll(p|z) is strictly greater than ll(p).")
def _icp_win(*, ll_with_demo: float, ll_zero_shot: float):
    return int(ll_with_demo > ll_zero_shot)


@exercise("00.sum_of_tokens", hint="ll(p) is the sum of the answer tokens' log-probabilities (not the mean).")
def _sum_tokens(*, comparison):
    return comparison["ll_zero_shot"]
