"""The run framework every LLM experiment shares: a run folder holds cached ScoreMatrix files,
each saved with the configuration hash of the valuator that made it and reused only when
that hash and the ids match (:func:`scored_matrix`, resumable in chunks); an experiment's
result is one JSON file ``<results>/<name>-<mode>.json`` (:func:`load_result`); a run's data
design is recorded beside its matrices (:func:`recorded_data`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from ..paths import results_dir


def recorded_data(out: Path) -> dict[str, Any] | None:
    """The data design a run recorded (``out/data.json``), or ``None`` before its first run."""
    path = out / "data.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def scored_matrix(v, want: str, cands: list[Any], probes: list[Any], out: Path, name: str, *,
                  shard: tuple[int, int] = (0, 1), log: Callable[[str], None] = print) -> Any:
    """``out/<name>`` when it was made with configuration hash ``want`` on these ids; else
    ``v.score`` (resumable: chunks under ``out/runs/<name>``), saved with the hash. ``None``
    for a shard that is not the last to finish (the last one assembles the matrix).

    When the cached matrix has the same hash and probes but only some of the candidates
    (the candidate list grew), its rows are kept and only the missing candidates are
    scored (chunks under ``out/runs/<name>+<n>``, ``n`` = how many are new).
    """
    from ..scores import ScoreMatrix

    path = out / name
    ids = [c.id for c in cands]
    probe_ids = [p.id for p in probes]
    have = None
    if path.with_suffix(".json").exists():
        sm = ScoreMatrix.load(path)
        if sm.meta.get("config_hash") == want and sm.probe_ids == probe_ids:
            if sm.candidate_ids == ids:
                return sm
            cached = set(sm.candidate_ids)
            kept = [i for i in ids if i in cached]
            if kept:
                have = sm.subset(kept)
        if have is None:
            log(f"{name}: cached matrix is stale (configuration or ids changed); recomputing")
    done_ids = set(have.candidate_ids) if have is not None else set()
    todo = [c for c in cands if c.id not in done_ids]
    if have is not None and not todo:  # a subset of a cached matrix: nothing to score (nor to fit)
        return have
    run = out / "runs" / (name if have is None else f"{name}+{len(todo)}")
    log(f"{name}: scoring {len(todo)} candidates × {len(probes)} probes"
        + (f" ({len(have.candidate_ids)} kept from the cached matrix)" if have is not None else ""))
    t0 = time.perf_counter()
    new = v.score(todo, probes, out_dir=run, shard=shard)
    if new is None:
        log(f"{name}: shard {shard[0] + 1}/{shard[1]} done; the last shard to finish assembles the matrix")
        return None
    seconds = run_seconds(run, time.perf_counter() - t0)
    if have is not None:
        seconds += float(have.meta.get("seconds", 0.0))
        new = ScoreMatrix.concat([have, new], meta=new.meta).subset(ids)
    new.meta["seconds"] = round(seconds, 1)
    new.meta["config_hash"] = want
    new.save(path)
    return new


def load_result(name: str, mode: str = "full") -> dict[str, Any]:
    """The committed JSON result ``<results>/<name>-<mode>.json`` of an experiment (no computation)."""
    from ..errors import ConfigError

    path = results_dir() / f"{name}-{mode}.json"
    if not path.exists():
        raise ConfigError(f"No cached results at {path}; run `python -m icp_influence run {name}`"
                          + (" --smoke" if mode == "smoke" else "") + ".")
    return json.loads(path.read_text(encoding="utf-8"))


def run_seconds(run: Path, this_call: float) -> float:
    """Compute time of a chunked run: the sum of its chunks' times when they recorded them
    (several shards, resumed runs), else the time of this call."""
    from ..store import chunk_seconds

    total = chunk_seconds(run)
    return round(total if total else this_call, 1)
