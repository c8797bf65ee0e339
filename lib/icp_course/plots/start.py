"""Figures for notebook 00 (start here)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from .tokens import visible_tokens


def plot_token_logprobs(comparison: dict, *, title: str | None = None, ax=None):
    """Bars of each answer token's log-probability without and with the demonstration."""
    tokens = comparison["tokens"]
    x = np.arange(len(tokens))
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.5, 0.9 * len(tokens) + 2), 3.4))
    else:
        fig = ax.figure
    w = 0.38
    ax.bar(x - w / 2, comparison["zero_shot"], w, label=f"zero-shot  (ll = {comparison['ll_zero_shot']:.2f})", color="#9aa5b1")
    ax.bar(x + w / 2, comparison["with_demo"], w, label=f"with demo (ll = {comparison['ll_with_demo']:.2f})", color="#2a7ab0")
    ax.set_xticks(x, visible_tokens(tokens))
    ax.set_xlabel("answer token (␣ = space)")
    ax.set_ylabel("log-probability (nats)")
    ax.axhline(0, color="black", lw=0.6)
    ax.set_title(title or f"ICP delta = ll(p|z) − ll(p) = {comparison['delta']:+.3f} nats")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    return fig


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
    fig.tight_layout()
    return fig
