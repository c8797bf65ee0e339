"""Exercises of notebook 04 (in-context probing an LLM)."""
from __future__ import annotations

import math

import numpy as np

from . import exercise


@exercise("04.win_rate_by_hand",
          hint="Compare each row of lm.ll with the baseline vector lm.baseline (broadcast over rows), with a "
               "strict >, and average over probes (axis=1).")
def _win_rate(*, lm):
    return (np.asarray(lm.ll) > np.asarray(lm.baseline)[None, :]).mean(axis=1)


@exercise("04.best_by_per_token",
          hint="Per-token delta = (ll − baseline) / n_answer_tokens per probe; average over probes and take "
               "the candidate id with the largest value (np.argmax).")
def _best_per_token(*, lm):
    d = (np.asarray(lm.ll) - np.asarray(lm.baseline)[None, :]) / np.asarray(lm.n_answer_tokens)[None, :]
    return lm.candidate_ids[int(np.argmax(d.mean(axis=1)))]


@_best_per_token.checker
def _(answer, solution):
    return str(answer) == str(solution)


@exercise("04.forward_passes",
          hint="Baseline: ceil(P/B) passes (no prefix with the paper template here). Each candidate: one "
               "prefix pass + ceil(P/B) suffix passes. Naive: one pass per pair plus P baselines.")
def _forward_passes(*, n_candidates, n_probes, batch_size):
    per = math.ceil(n_probes / batch_size)
    return (per + n_candidates * (1 + per), n_candidates * n_probes + n_probes)
