"""Chunked, resumable, shardable score computation (DESIGN.md §1, §4).

A run directory holds::

    run.json                    the configuration, its hash, candidate and probe ids
    chunks/chunk-000012.safetensors   rows [12*cs, 13*cs) of the matrix, with a checksum
    scores.json / scores.safetensors  the assembled ScoreMatrix (after the last chunk)

Chunk ``k`` covers candidates ``[k*chunk_size, (k+1)*chunk_size)``; shard ``r`` of ``W``
processes scores the chunks with ``k % W == r`` — the chunk boundaries never depend on
the number of processes, so a sharded run and a single run compute the same rows in the
same batches. Every file is written atomically (temporary name, fsync, rename): a run
killed at any moment leaves only complete chunks, and running the same command again
recomputes at most the chunk that was in flight. A restart whose configuration differs
from ``run.json`` is refused with :class:`~icp_influence.errors.ResumeMismatchError`.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ConfigError, CorruptFileError, ResumeMismatchError
from .scores import ScoreMatrix
from .utils import atomic_path, atomic_write_json, config_hash

RUN_FILE = "run.json"
CHUNK_DIR = "chunks"
FINAL = "scores"
# Seconds to pause after each chunk. Only for tests that SIGKILL a run part-way.
_THROTTLE_S = float(os.environ.get("ICP_STORE_CHUNK_DELAY_S", "0") or 0)


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\x1f".join(ids).encode()).hexdigest()[:16]


def _chunk_path(out_dir: Path, k: int) -> Path:
    return out_dir / CHUNK_DIR / f"chunk-{k:06d}.safetensors"


def _checksum(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float64).tobytes()).hexdigest()


def init_run(out_dir: str | Path, config: dict[str, Any], candidate_ids: Sequence[str],
             probe_ids: Sequence[str], chunk_size: int) -> dict[str, Any]:
    """Create ``run.json`` or check that the existing one matches; return its content."""
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be ≥ 1, got {chunk_size}.")
    if not candidate_ids:
        from .errors import EmptyPoolError

        raise EmptyPoolError("No candidates to score: the pool is empty.")
    if not probe_ids:
        from .errors import EmptyPoolError

        raise EmptyPoolError("No probes to score against: the probe set is empty.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = {
        "format": "icp-influence/run/v1",
        "config": config,
        "config_hash": config_hash(config),
        "chunk_size": int(chunk_size),
        "n_candidates": len(candidate_ids),
        "n_probes": len(probe_ids),
        "candidates_digest": _ids_digest(list(candidate_ids)),
        "probes_digest": _ids_digest(list(probe_ids)),
        "candidate_ids": list(candidate_ids),
        "probe_ids": list(probe_ids),
    }
    path = out / RUN_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise CorruptFileError(f"{path} is not valid JSON; delete the run directory {out} and start again.") from None
        diffs = [k for k in ("config_hash", "chunk_size", "candidates_digest", "probes_digest") if old.get(k) != record[k]]
        if diffs:
            changed = []
            if "config_hash" in diffs:
                oc, nc = old.get("config", {}), config
                keys = sorted(set(oc) | set(nc))
                changed = [f"{k}: {oc.get(k)!r} -> {nc.get(k)!r}" for k in keys if oc.get(k) != nc.get(k)]
            detail = "; ".join(changed + [d for d in diffs if d != "config_hash"])
            raise ResumeMismatchError(
                f"{out} holds a run started with different arguments ({detail}). Use a new --out "
                "directory, or delete this one to start over."
            )
        return old
    # Several shards may get here at once: each writes the same record atomically.
    atomic_write_json(path, record)
    return record


def n_chunks(n_candidates: int, chunk_size: int) -> int:
    return (n_candidates + chunk_size - 1) // chunk_size


def chunk_indices(k: int, n_candidates: int, chunk_size: int) -> list[int]:
    return list(range(k * chunk_size, min((k + 1) * chunk_size, n_candidates)))


def read_chunk(out_dir: str | Path, k: int, n_rows: int, n_probes: int) -> np.ndarray:
    """Load chunk ``k``; raise :class:`CorruptFileError` if truncated or tampered."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = _chunk_path(Path(out_dir), k)
    try:
        data = load_file(str(path))
        values = data["values"]
        stored = bytes(data["checksum"].tolist()).decode()
    except (SafetensorError, KeyError, OSError, ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(
            f"Chunk file {path} is corrupted or truncated ({type(e).__name__}); delete it and run the same command again to recompute it."
        ) from None
    if values.shape != (n_rows, n_probes) or _checksum(values) != stored:
        raise CorruptFileError(
            f"Chunk file {path} does not match its checksum or shape {values.shape} != {(n_rows, n_probes)}; "
            "delete it and run the same command again."
        )
    return values


def write_chunk(out_dir: str | Path, k: int, values: np.ndarray) -> Path:
    from safetensors.numpy import save_file

    values = np.ascontiguousarray(values, dtype=np.float64)
    checksum = np.frombuffer(_checksum(values).encode(), dtype=np.uint8).copy()
    path = _chunk_path(Path(out_dir), k)
    with atomic_path(path) as tmp:
        save_file({"values": values, "checksum": checksum}, str(tmp))
    return path


def chunk_done(out_dir: str | Path, k: int) -> bool:
    return _chunk_path(Path(out_dir), k).exists()


def run_chunked(
    out_dir: str | Path,
    config: dict[str, Any],
    candidate_ids: Sequence[str],
    probe_ids: Sequence[str],
    compute: Callable[[list[int]], np.ndarray],
    *,
    chunk_size: int = 16,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    desc: str = "scoring",
    meta: dict[str, Any] | None = None,
) -> ScoreMatrix | None:
    """Score this process's shard of candidate chunks, resuming from what is on disk.

    Args:
        compute: candidate indices of one chunk -> ``float`` array ``[len(indices), n_probes]``.
        shard: ``(rank, world_size)``; rank ``r`` takes chunks ``k % world_size == r``.
        meta: stored in the final ScoreMatrix (the config is added under ``"config"``).

    Returns:
        The assembled :class:`ScoreMatrix` (also saved as ``out_dir/scores.*``) when every
        chunk exists after this shard finished, else ``None`` (other shards still running;
        ``merge_run`` assembles later).
    """
    rank, world = shard
    if not (0 <= rank < world):
        raise ConfigError(f"shard rank {rank} is outside 0..{world - 1}.")
    out = Path(out_dir)
    record = init_run(out, config, candidate_ids, probe_ids, chunk_size)
    total = n_chunks(len(candidate_ids), chunk_size)
    mine = [k for k in range(total) if k % world == rank]
    todo = [k for k in mine if not chunk_done(out, k)]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(chunk_indices(k, len(candidate_ids), chunk_size)) for k in todo),
                   desc=desc + (f" [{rank + 1}/{world}]" if world > 1 else ""), unit="cand")
    for k in todo:
        idx = chunk_indices(k, len(candidate_ids), chunk_size)
        values = np.asarray(compute(idx), dtype=np.float64)
        if values.shape != (len(idx), len(probe_ids)):
            raise ConfigError(f"compute() returned shape {values.shape}, expected {(len(idx), len(probe_ids))}.")
        write_chunk(out, k, values)
        if _THROTTLE_S:
            time.sleep(_THROTTLE_S)  # testing hook: lets the kill-and-resume tests stop a run part-way
        if bar is not None:
            bar.update(len(idx))
    if bar is not None:
        bar.close()
    if all(chunk_done(out, k) for k in range(total)):
        return merge_run(out, meta=meta, _record=record)
    return None


def merge_run(out_dir: str | Path, *, meta: dict[str, Any] | None = None, _record: dict[str, Any] | None = None) -> ScoreMatrix:
    """Assemble every chunk of a run into one ScoreMatrix and save it as ``scores.*``."""
    out = Path(out_dir)
    if _record is None:
        path = out / RUN_FILE
        if not path.exists():
            raise CorruptFileError(f"{out} has no {RUN_FILE}: not a run directory (run score-icp/score-influence first).")
        _record = json.loads(path.read_text(encoding="utf-8"))
    cs, cands, probes = _record["chunk_size"], _record["candidate_ids"], _record["probe_ids"]
    total = n_chunks(len(cands), cs)
    missing = [k for k in range(total) if not chunk_done(out, k)]
    if missing:
        raise CorruptFileError(
            f"{len(missing)} of {total} chunks are missing in {out} (e.g. chunk {missing[0]}); "
            "run the scoring command again (all shards) to finish them."
        )
    rows = [read_chunk(out, k, len(chunk_indices(k, len(cands), cs)), len(probes)) for k in range(total)]
    final_meta = dict(meta or {})
    final_meta.setdefault("config", _record["config"])
    final_meta.setdefault("config_hash", _record["config_hash"])
    for key in ("method", "model", "template", "seed"):
        if key in _record["config"]:
            final_meta.setdefault(key, _record["config"][key])
    sm = ScoreMatrix(np.concatenate(rows, axis=0), cands, probes, final_meta)
    sm.save(out / FINAL)
    return sm


def shard_from_env() -> tuple[int, int]:
    """``(rank, world_size)`` from RANK/WORLD_SIZE (torchrun, ``accelerate launch``), else
    ``accelerate.PartialState``, else ``(0, 1)``."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        try:  # accelerate keeps its own state even when the env variables are absent
            from accelerate import PartialState

            st = PartialState(cpu=True)
            rank, world = st.process_index, st.num_processes
        except Exception:  # noqa: BLE001 - accelerate missing or not launched: single process
            pass
    return rank, world


