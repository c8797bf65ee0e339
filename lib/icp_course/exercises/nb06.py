"""Exercises of notebook 06 (fine-tuning on selected data)."""
from __future__ import annotations

import math

from . import exercise

#: Held-out log-likelihoods (nats/token) of one arm over three seeds.
SEEDS = [-0.62, -0.55, -0.71]


@exercise("06.t_interval", hint="mean ± t_{0.975, n−1} · s / √n with s the sample standard deviation (ddof=1).")
def _t():
    from scipy import stats

    n = len(SEEDS)
    m = sum(SEEDS) / n
    s = math.sqrt(sum((x - m) ** 2 for x in SEEDS) / (n - 1))
    h = stats.t.ppf(0.975, n - 1) * s / math.sqrt(n)
    return [m - h, m + h]


@exercise("06.exact_match", hint="Normalise both strings (lower case, strip spaces and a final period) before comparing.")
def _em():
    from icp_influence.finetune import exact_match

    preds = ["Closed.", "the opposite is low", " COLD", "mice"]
    refs = ["closed", "low", "cold", "mouses"]
    return sum(exact_match(p, r) for p, r in zip(preds, refs)) / len(refs)
