"""Figures for notebook 00 (start here)."""
from __future__ import annotations

from icp_course.style import tidy

import matplotlib.pyplot as plt
import numpy as np



def plot_family_lengths(pool, tokenizer, *, ax=None):
    """Mean answer length in tokens per task family (horizontal bars)."""
    fams = pool.families()
    lengths = [np.mean([len(tokenizer(" " + ex.output, add_special_tokens=False).input_ids)
                        for ex in pool if ex.task == f]) for f in fams]
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 0.3 * len(fams) + 1.2))
    else:
        fig = ax.figure
    ax.barh(fams, lengths, color="#2a7ab0")
    ax.set_xlabel("mean answer length (tokens)")
    ax.set_ylabel("task family")
    ax.invert_yaxis()
    tidy(fig)
    return fig
