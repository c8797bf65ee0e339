"""Figures for notebook 00 (start here)."""
from __future__ import annotations

import numpy as np

from icp_course.style import figure, palette, tidy


def plot_family_lengths(pool, tokenizer, *, ax=None):
    """Mean answer length in tokens per task family (horizontal bars, one colour per family)."""
    import seaborn as sns

    fams = pool.families()
    lengths = [np.mean([len(tokenizer(" " + ex.output, add_special_tokens=False).input_ids)
                        for ex in pool if ex.task == f]) for f in fams]
    fig, ax = figure(figsize=(6, 0.3 * len(fams) + 1.2), ax=ax)
    sns.barplot(x=lengths, y=fams, hue=fams, palette=palette(len(fams)), legend=False, saturation=1, orient="h", ax=ax)
    ax.set_xlabel("mean answer length (tokens)")
    ax.set_ylabel("task family")
    tidy(fig)     # axes of a figure made elsewhere (without a layout engine) get the tight layout
    return fig
