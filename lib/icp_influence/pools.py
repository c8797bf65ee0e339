"""A pool named on the command line: ``instructions[:N[:SEED]]``, ``synthetic:N[:SEED]`` or a file.

Its own module because it names every source of examples: :mod:`~icp_influence.data` holds the
record types and the file readers, and the instruction set and the synthetic tasks build on it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import Pool, load_alpaca, load_paper_text
from .errors import DataFormatError
from .instructions import load_instructions
from .synthetic import make_synthetic_pool


def parse_pool_spec(spec: str, *, name: str | None = None) -> Pool:
    """A pool from a command-line spec.

    * ``synthetic:N`` or ``synthetic:N:SEED`` — :func:`~icp_influence.synthetic.make_synthetic_pool`;
    * ``instructions``, ``instructions:N`` or ``instructions:N:SEED`` — the project's
      instruction set (:func:`~icp_influence.instructions.load_instructions`), all of it or a
      seeded sample of ``N`` examples;
    * a ``.json`` / ``.jsonl`` path — Alpaca records (:func:`~icp_influence.data.load_alpaca`);
    * a ``.txt`` path — the authors' text format (:func:`~icp_influence.data.load_paper_text`).
    """
    spec = str(spec).strip()
    if spec.startswith("synthetic:"):
        parts = spec.split(":")
        try:
            n = int(parts[1])
            seed = int(parts[2]) if len(parts) > 2 and parts[2] != "" else 0
        except (IndexError, ValueError):
            raise DataFormatError(f"Bad pool spec {spec!r}: write 'synthetic:N' or 'synthetic:N:SEED' with integers.") from None
        if len(parts) > 3:
            raise DataFormatError(f"Bad pool spec {spec!r}: write 'synthetic:N' or 'synthetic:N:SEED'.")
        return make_synthetic_pool(n, seed=seed, name=name or f"synthetic-{n}-{seed}")
    if spec == "instructions" or spec.startswith("instructions:"):
        full = load_instructions()
        parts = spec.split(":")[1:]
        try:
            n = int(parts[0]) if parts and parts[0] != "" else len(full)
            seed = int(parts[1]) if len(parts) > 1 else 0
        except ValueError:
            raise DataFormatError(f"Bad pool spec {spec!r}: write 'instructions', 'instructions:N' or 'instructions:N:SEED'.") from None
        if not 1 <= n <= len(full) or len(parts) > 2:
            raise DataFormatError(f"Bad pool spec {spec!r}: N must be in [1, {len(full)}].")
        if n == len(full):
            return Pool(list(full), name=name or "instructions")
        idx = np.sort(np.random.default_rng(seed).choice(len(full), size=n, replace=False))
        return full.take(idx, name=name or f"instructions-{n}-{seed}")
    path = Path(spec)
    if path.suffix in (".txt",):
        return load_paper_text(path, name=name)
    if path.suffix in (".json", ".jsonl") or path.exists():
        return load_alpaca(path, name=name)
    raise DataFormatError(
        f"Cannot read pool spec {spec!r}: give a .json/.jsonl/.txt file that exists, 'instructions[:N[:SEED]]' "
        "or 'synthetic:N[:SEED]'."
    )
