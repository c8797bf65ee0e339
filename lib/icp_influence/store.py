"""Chunked, resumable, shardable score computation (docs/design.md).

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

Faults a run of several hours must survive:

* **Corrupted or truncated chunks.** Each chunk stores a SHA-256 of its values. A resumed
  run re-reads and verifies every chunk of its shard before trusting it; a bad one is
  deleted and recomputed with a :class:`CorruptChunkWarning`. :func:`merge_run` never
  merges a bad chunk: it raises :class:`~icp_influence.errors.CorruptFileError` naming it.
* **Two processes on one directory.** For the whole of :func:`run_chunked` a process holds
  an exclusive ``fcntl.flock`` on ``locks/lock-<rank>-of-<world>``: a second process for
  the same shard, or a process started with another number of shards while one is live,
  is refused with :class:`~icp_influence.errors.RunLockedError`. Shards of one run lock
  different files and run side by side. The kernel drops a flock when its process dies,
  so a lock *file* left by a killed run never blocks (only a held lock does).
* **A full disk.** Every write goes through :func:`~icp_influence.utils.atomic_path`, which
  turns ENOSPC into :class:`~icp_influence.errors.DiskFullError` naming the directory;
  the temporary file is removed and finished chunks are untouched.
* **Ctrl-C / SIGINT** (a notebook's interrupt button sends SIGINT to the kernel). In the
  main thread, :func:`run_chunked` catches the first SIGINT, *finishes and writes the chunk
  in flight*, then stops at that chunk boundary by raising ``KeyboardInterrupt`` (the CLI
  exits 130); the same call or command resumes. A second SIGINT aborts at once and the
  chunk in flight is discarded (nothing half-written stays). The previous SIGINT handler
  is restored on the way out.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from .errors import ConfigError, CorruptFileError, ResumeMismatchError, RunLockedError
from .scores import ScoreMatrix
from .utils import atomic_path, atomic_write_json, config_hash, ids_digest

RUN_FILE = "run.json"
CHUNK_DIR = "chunks"
LOCK_DIR = "locks"
FINAL = "scores"
# Seconds to pause after each chunk. Only for tests that SIGKILL / SIGINT a run part-way.
_THROTTLE_S = float(os.environ.get("ICP_STORE_CHUNK_DELAY_S", "0") or 0)


class CorruptChunkWarning(UserWarning):
    """A chunk found on resume failed its checksum; it is deleted and recomputed."""


def _chunk_path(out_dir: Path, k: int) -> Path:
    return out_dir / CHUNK_DIR / f"chunk-{k:06d}.safetensors"


_TMP_CHUNK = re.compile(r"^\.chunk-(\d{6})\.safetensors\..*\.tmp$")


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
        "candidates_digest": ids_digest(list(candidate_ids)),
        "probes_digest": ids_digest(list(probe_ids)),
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


def _check_chunk(out_dir: Path, k: int, n_rows: int, n_probes: int) -> tuple[np.ndarray | None, str]:
    """``(values, "")`` for a good chunk ``k``, else ``(None, what is wrong)``."""
    from safetensors.numpy import load_file

    path = _chunk_path(out_dir, k)
    try:
        data = load_file(str(path))
        values = data["values"]
        stored = bytes(data["checksum"].tolist()).decode()
    except Exception as e:  # noqa: BLE001 - a chunk that cannot be decoded is corrupt, whatever the reason
        return None, f"unreadable: {type(e).__name__}"
    if values.shape != (n_rows, n_probes):
        return None, f"shape {values.shape} != {(n_rows, n_probes)}"
    if _checksum(values) != stored:
        return None, "checksum mismatch"
    return values, ""


def _corrupt_message(out_dir: Path, bad: list[tuple[int, str]], *, merging: bool = False) -> str:
    names = ", ".join(f"{_chunk_path(out_dir, k).name} ({why})" for k, why in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    verb = "are" if len(bad) > 1 else "is"
    return (
        f"Chunk file(s) {names}{more} in {out_dir / CHUNK_DIR} {verb} corrupted or truncated"
        f"{'; nothing was merged' if merging else ''}. "
        "To fix it, run the same command again: it checks every chunk and recomputes only the bad ones "
        "(or delete those files first)."
    )


def read_chunk(out_dir: str | Path, k: int, n_rows: int, n_probes: int) -> np.ndarray:
    """Load chunk ``k``; raise :class:`CorruptFileError` if truncated, tampered or misshapen."""
    values, why = _check_chunk(Path(out_dir), k, n_rows, n_probes)
    if values is None:
        raise CorruptFileError(_corrupt_message(Path(out_dir), [(k, why)]))
    return values


def write_chunk(out_dir: str | Path, k: int, values: np.ndarray, *, seconds: float | None = None) -> Path:
    """Write chunk ``k`` atomically with its checksum (and, in the file's metadata, the
    seconds it took to compute)."""
    from safetensors.numpy import save_file

    values = np.ascontiguousarray(values, dtype=np.float64)
    checksum = np.frombuffer(_checksum(values).encode(), dtype=np.uint8).copy()
    path = _chunk_path(Path(out_dir), k)
    meta = {"seconds": f"{seconds:.3f}"} if seconds is not None else None
    with atomic_path(path) as tmp:
        save_file({"values": values, "checksum": checksum}, str(tmp), metadata=meta)
    return path


def chunk_seconds(out_dir: str | Path) -> float:
    """Total compute seconds recorded by the chunks of a run (0 when none recorded any)."""
    from safetensors import safe_open

    total = 0.0
    for f in sorted((Path(out_dir) / CHUNK_DIR).glob("chunk-*.safetensors")):
        try:
            with safe_open(str(f), framework="numpy") as fh:
                total += float((fh.metadata() or {}).get("seconds", 0.0))
        except Exception:  # noqa: BLE001 - an unreadable chunk is reported by the checksum check, not here
            continue
    return total


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

    Raises:
        RunLockedError: another live process computes the same shard, or the directory is
            being computed with another number of shards.
        DiskFullError: a write hit ENOSPC; finished chunks are kept, no temporary is left.
        KeyboardInterrupt: after a SIGINT (Ctrl-C, a notebook's interrupt), once the chunk in
            flight is written; calling again resumes.

    Existing chunks of this shard are verified against their checksum first; a corrupted
    or truncated one is deleted and recomputed (:class:`CorruptChunkWarning`).
    """
    rank, world = shard
    if not (0 <= rank < world):
        raise ConfigError(f"shard rank {rank} is outside 0..{world - 1}.")
    out = Path(out_dir)
    record = init_run(out, config, candidate_ids, probe_ids, chunk_size)
    n_cand, n_probe = len(candidate_ids), len(probe_ids)
    total = n_chunks(n_cand, chunk_size)
    mine = [k for k in range(total) if k % world == rank]
    with run_lock(out, rank, world):
        with _stop_at_chunk_boundary() as stop:
            _remove_stale_temporaries(out, rank, world)
            todo = _verify_or_schedule(out, mine, n_cand, n_probe, chunk_size)
            _compute_chunks(out, todo, n_cand, n_probe, chunk_size, compute, stop,
                            desc=(desc + (f" [{rank + 1}/{world}]" if world > 1 else "")) if progress else None)
        # Merging is short and atomic: outside the SIGINT guard, Ctrl-C simply stops it.
        if all(chunk_done(out, k) for k in range(total)):
            return merge_run(out, meta=meta, _record=record)
    return None


def _compute_chunks(out: Path, todo: list[int], n_cand: int, n_probe: int, chunk_size: int,
                    compute: Callable[[list[int]], np.ndarray], stop: "_StopFlag", desc: str | None) -> None:
    """Compute and write the chunks ``todo`` in order, stopping at a chunk boundary on request."""
    total = n_chunks(n_cand, chunk_size)
    bar = None
    if desc is not None and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(chunk_indices(k, n_cand, chunk_size)) for k in todo), desc=desc, unit="cand")
    try:
        for k in todo:
            if stop.requested:
                stop.raise_interrupt(out, total)
            idx = chunk_indices(k, n_cand, chunk_size)
            stop.in_flight = k
            t_chunk = time.perf_counter()
            values = np.asarray(compute(idx), dtype=np.float64)
            if values.shape != (len(idx), n_probe):
                raise ConfigError(f"compute() returned shape {values.shape}, expected {(len(idx), n_probe)}.")
            write_chunk(out, k, values, seconds=time.perf_counter() - t_chunk)
            stop.in_flight = None
            if _THROTTLE_S:
                time.sleep(_THROTTLE_S)  # testing hook: lets the kill/interrupt tests stop a run part-way
            if bar is not None:
                bar.update(len(idx))
        if stop.requested:  # arrived during the last chunk: stop before merging, as promised
            stop.raise_interrupt(out, total)
    finally:
        if bar is not None:
            bar.close()


def _verify_or_schedule(out: Path, mine: list[int], n_cand: int, n_probe: int, chunk_size: int) -> list[int]:
    """The chunks of ``mine`` still to compute: missing ones, and existing ones that fail
    their checksum (deleted here, with a :class:`CorruptChunkWarning`)."""
    todo = []
    for k in mine:
        path = _chunk_path(out, k)
        if not path.exists():
            todo.append(k)
            continue
        values, why = _check_chunk(out, k, len(chunk_indices(k, n_cand, chunk_size)), n_probe)
        if values is None:
            warnings.warn(f"Chunk file {path} is corrupted or truncated ({why}); deleting it and recomputing "
                          f"chunk {k}.", CorruptChunkWarning, stacklevel=3)
            path.unlink(missing_ok=True)
            todo.append(k)
    return todo


def _remove_stale_temporaries(out: Path, rank: int, world: int) -> None:
    """Delete temporary chunk files of this shard left by a killed process (we hold its lock,
    so no live process is writing them)."""
    chunks = out / CHUNK_DIR
    if not chunks.is_dir():
        return
    for p in chunks.iterdir():
        m = _TMP_CHUNK.match(p.name)
        if m and int(m.group(1)) % world == rank:
            p.unlink(missing_ok=True)


# ------------------------------------------------------------------ SIGINT
class _StopFlag:
    """Set by the SIGINT handler of :func:`_stop_at_chunk_boundary`."""

    def __init__(self) -> None:
        self.requested = False
        self.in_flight: int | None = None

    def raise_interrupt(self, out: Path, total: int) -> None:
        done = sum(chunk_done(out, k) for k in range(total))
        raise KeyboardInterrupt(
            f"Interrupted at a chunk boundary: {done} of {total} chunks are complete and kept in {out / CHUNK_DIR}. "
            "Run the same command (or call) again to resume; only the missing chunks are computed."
        )


def _say(text: str) -> None:
    try:  # a signal can arrive while the main thread is writing to stderr: never fail here
        print(text, file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001
        with contextlib.suppress(OSError):
            os.write(2, (text + "\n").encode())


@contextlib.contextmanager
def _stop_at_chunk_boundary() -> Iterator[_StopFlag]:
    """While active (main thread only), the first SIGINT asks the chunk loop to stop after
    the chunk in flight is written; a second one raises ``KeyboardInterrupt`` at once.
    SIGINT that was ignored (``nohup``, background jobs) stays ignored."""
    flag = _StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        yield flag
        return

    def handler(signum, frame):  # noqa: ARG001
        if flag.requested:
            _say("second interrupt: stopping now; the chunk in flight is discarded, finished chunks are kept.")
            raise KeyboardInterrupt("Interrupted twice: stopped without finishing the chunk in flight; "
                                    "finished chunks are kept. Run the same command again to resume.")
        flag.requested = True
        what = f"chunk {flag.in_flight}" if flag.in_flight is not None else "the current step"
        _say(f"interrupt received: finishing {what}, then stopping (the same command resumes). "
             "Interrupt again to stop at once.")

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)


# ------------------------------------------------------------------ locking
def _lock_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return ""
    return f", held by pid {info['pid']} on {info.get('host', '?')}" if "pid" in info else ""


def _try_flock(fd: int) -> bool:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise


@contextlib.contextmanager
def run_lock(out_dir: str | Path, rank: int = 0, world: int = 1) -> Iterator[Path | None]:
    """Hold an exclusive flock on ``out_dir/locks/lock-<rank>-of-<world>`` for the block.

    Raises :class:`RunLockedError` when a live process holds the same lock, or holds a lock
    of another world size (a run split differently). The check runs under a short-lived
    ``locks/gate`` flock, so two processes starting at once cannot both pass it. Lock files
    stay on disk; only a *held* flock counts, and the kernel releases it when its process
    dies, so a killed run never blocks the next one. Where ``fcntl`` or ``flock`` is not
    available (Windows, some network filesystems), the run proceeds unlocked with a warning.
    """
    out = Path(out_dir)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        warnings.warn("No fcntl on this platform: the run directory is not locked against a second process.",
                      RuntimeWarning, stacklevel=3)
        yield None
        return
    locks = out / LOCK_DIR
    locks.mkdir(parents=True, exist_ok=True)
    own = locks / f"lock-{rank}-of-{world}"
    gate = os.open(locks / "gate", os.O_RDWR | os.O_CREAT, 0o644)
    fd: int | None = None
    try:
        try:
            fcntl.flock(gate, fcntl.LOCK_EX)
        except OSError as e:  # ENOLCK etc.: the filesystem has no flock
            warnings.warn(f"Cannot lock {locks} ({e}); the run directory is not protected against a second process.",
                          RuntimeWarning, stacklevel=3)
            os.close(gate)
            gate = -1
            yield None
            return
        fd = os.open(own, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_flock(fd):
            what = "this run" if world == 1 else f"shard {rank + 1}/{world} of this run"
            raise RunLockedError(
                f"Another process is already computing {what} in {out} (lock {own}{_lock_holder(own)}). "
                "Wait for it to finish or stop it, then run the same command again to resume; two processes "
                "on one directory would interleave. To split a run over several processes, start them as "
                "shards (accelerate launch / torchrun set RANK and WORLD_SIZE)."
            )
        for other in sorted(locks.glob("lock-*-of-*")):
            m = re.fullmatch(r"lock-(\d+)-of-(\d+)", other.name)
            if not m or int(m.group(2)) == world:
                continue
            try:
                ofd = os.open(other, os.O_RDWR)
            except FileNotFoundError:  # removed by hand meanwhile: nobody can hold it
                continue
            try:
                free = _try_flock(ofd)
                if free:
                    fcntl.flock(ofd, fcntl.LOCK_UN)  # a file left by a finished or killed run: ignore it
            finally:
                os.close(ofd)
            if not free:
                raise RunLockedError(
                    f"{out} is being computed by a run split into {m.group(2)} shard(s) (lock {other}"
                    f"{_lock_holder(other)}), but this process was started with {world}. Wait for that run to "
                    "finish or stop it, then resume with any number of processes (chunks do not depend on it)."
                )
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "rank": rank, "world": world,
                                 "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
        fcntl.flock(gate, fcntl.LOCK_UN)
        os.close(gate)
        gate = -1
        yield own
    finally:
        if gate >= 0:
            os.close(gate)
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def merge_run(out_dir: str | Path, *, meta: dict[str, Any] | None = None, _record: dict[str, Any] | None = None) -> ScoreMatrix:
    """Assemble every chunk of a run into one ScoreMatrix and save it as ``scores.*``."""
    out = Path(out_dir)
    if _record is None:
        path = out / RUN_FILE
        if not path.exists():
            raise CorruptFileError(f"{out} has no {RUN_FILE}: not a run directory (run `score VALUATOR --out DIR` first).")
        _record = json.loads(path.read_text(encoding="utf-8"))
    cs, cands, probes = _record["chunk_size"], _record["candidate_ids"], _record["probe_ids"]
    total = n_chunks(len(cands), cs)
    missing = [k for k in range(total) if not chunk_done(out, k)]
    if missing:
        raise CorruptFileError(
            f"{len(missing)} of {total} chunks are missing in {out} (e.g. chunk {missing[0]}); "
            "run the scoring command again (all shards) to finish them."
        )
    rows, bad = [], []
    for k in range(total):
        values, why = _check_chunk(out, k, len(chunk_indices(k, len(cands), cs)), len(probes))
        if values is None:
            bad.append((k, why))
        rows.append(values)
    if bad:
        raise CorruptFileError(_corrupt_message(out, bad, merging=True))
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


