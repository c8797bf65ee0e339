"""Probe selection by k-means over LM embeddings, as the paper picked its 100 probes.

Embedding = the LM's last hidden state, mean-pooled over the example's tokens (the
example rendered in the authors' text format). K-means (scikit-learn) clusters the
embeddings; each cluster contributes the example nearest to its centroid.
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


def kmeans_representatives(embeddings: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """Indices of the ``k`` points nearest to the k-means centroids (distinct, sorted by cluster)."""
    from sklearn.cluster import KMeans

    n = len(embeddings)
    if not 1 <= k <= n:
        raise ConfigError(f"k = {k} probes cannot be chosen from {n} examples; use 1 ≤ k ≤ {n}.")
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(embeddings)
    chosen: list[int] = []
    for c in range(k):
        d = np.linalg.norm(embeddings - km.cluster_centers_[c], axis=1)
        for i in np.argsort(d, kind="stable"):
            if int(i) not in chosen:
                chosen.append(int(i))
                break
    return chosen


def select_probes_kmeans(model, tokenizer, pool: Pool, k: int, *, seed: int = 0,
                         embeddings: np.ndarray | None = None) -> Pool:
    """Pick ``k`` probes from ``pool`` by k-means over LM embeddings (see module doc)."""
    if embeddings is None:
        embeddings = embed_examples(model, tokenizer, list(pool))
    idx = kmeans_representatives(embeddings, k, seed)
    return pool.take(idx, name=f"{pool.name}-probes")
