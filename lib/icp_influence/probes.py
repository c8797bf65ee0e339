"""Probe selection by k-means over LM embeddings, as the paper picked its 100 probes.

Embedding = the LM's last hidden state, mean-pooled over the example's tokens (the
example rendered in the authors' text format). K-means (scikit-learn) clusters the
embeddings; each cluster contributes the example nearest to its centroid. With
``max_per_group``, no group (category, family) supplies more than that many probes: a
cluster whose nearest examples all belong to full groups takes its nearest example of a
group that still has room, so the probes represent the pool rather than its densest region.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .data import Example, Pool, format_paper_text
from .errors import ConfigError


@torch.no_grad()
def embed_examples(model, tokenizer, examples: Sequence[Example], *, batch_size: int = 16,
                   max_length: int = 256, progress: bool = False) -> np.ndarray:
    """Mean-pooled last hidden states, shape ``[len(examples), hidden]`` (float32)."""
    from .lm import model_device

    device = model_device(model)
    texts = [format_paper_text(ex) for ex in examples]
    out = []
    it = range(0, len(texts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="embedding", unit="batch")
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for s in it:
            batch = tokenizer(texts[s:s + batch_size], return_tensors="pt", padding=True,
                              truncation=True, max_length=max_length).to(device)
            hidden = model(**batch, output_hidden_states=True).hidden_states[-1].float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out.append(((hidden * mask).sum(1) / mask.sum(1)).cpu().numpy())
    finally:
        tokenizer.padding_side = side
    return np.concatenate(out, axis=0)


def kmeans_representatives(embeddings: np.ndarray, k: int, seed: int = 0, *, groups: Sequence[str] | None = None,
                           max_per_group: int | None = None) -> list[int]:
    """Indices of ``k`` distinct points nearest to the k-means centroids (in cluster order),
    with at most ``max_per_group`` from any one of ``groups`` (one label per point)."""
    from sklearn.cluster import KMeans

    n = len(embeddings)
    if not 1 <= k <= n:
        raise ConfigError(f"k = {k} probes cannot be chosen from {n} examples; use 1 ≤ k ≤ {n}.")
    if max_per_group is not None:
        if groups is None or len(groups) != n:
            raise ConfigError("max_per_group needs one group label per example (groups=...).")
        n_groups = len(set(groups))
        if max_per_group * n_groups < k:
            raise ConfigError(f"{k} probes with at most {max_per_group} from each of {n_groups} groups is impossible; "
                              f"raise max_per_group to ≥ {-(-k // n_groups)}.")
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(embeddings)
    chosen: list[int] = []
    taken: dict[str, int] = {}
    for c in range(k):
        d = np.linalg.norm(embeddings - km.cluster_centers_[c], axis=1)
        for i in np.argsort(d, kind="stable"):
            i = int(i)
            if i in chosen:
                continue
            if max_per_group is not None and taken.get(groups[i], 0) >= max_per_group:  # type: ignore[index]
                continue
            chosen.append(i)
            if groups is not None:
                taken[groups[i]] = taken.get(groups[i], 0) + 1
            break
    return chosen


def select_probes_kmeans(model, tokenizer, pool: Pool, k: int, *, seed: int = 0,
                         embeddings: np.ndarray | None = None, max_fraction_per_group: float | None = None) -> Pool:
    """Pick ``k`` probes from ``pool`` by k-means over LM embeddings (see module doc).

    ``max_fraction_per_group`` (e.g. ``1/8``): no task label (``Example.task``) supplies
    more than that fraction of the ``k`` probes.
    """
    if embeddings is None:
        embeddings = embed_examples(model, tokenizer, list(pool))
    cap = None
    if max_fraction_per_group is not None:
        if not 0 < max_fraction_per_group <= 1:
            raise ConfigError(f"max_fraction_per_group must be in (0, 1], got {max_fraction_per_group}.")
        cap = max(1, int(np.floor(max_fraction_per_group * k)))
    idx = kmeans_representatives(embeddings, k, seed, groups=[str(e.task) for e in pool], max_per_group=cap)
    return pool.take(idx, name=f"{pool.name}-probes")


def composition(probes: Sequence[Example]) -> dict[str, int]:
    """How many probes each task label supplies, most first."""
    counts: dict[str, int] = {}
    for p in probes:
        counts[str(p.task)] = counts.get(str(p.task), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
