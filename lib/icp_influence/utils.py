"""Small shared helpers: seeding, devices, atomic writes, hashing."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .paths import cache_dir, repo_root  # noqa: F401  (cache_dir re-exported; its home is paths)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a run is reproducible."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    os.environ["PYTHONHASHSEED"] = str(seed)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def busy_cores(interval: float = 0.3) -> float:
    """How many CPU cores other work keeps busy right now (measured over ``interval`` seconds).

    Instantaneous, unlike the load average, which still counts a job that ended a minute ago.
    """
    import psutil

    return psutil.cpu_percent(interval=interval) / 100.0 * (os.cpu_count() or 1)


#: The one environment variable that fixes torch's CPU threads: notebooks, the command line and
#: the benchmarks all read it.
THREADS_ENV = "ICP_THREADS"


def threads_from_env() -> int | None:
    """``ICP_THREADS`` as a whole number ≥ 1, or ``None`` when unset (a clear error otherwise)."""
    from .errors import ConfigError

    env = (os.environ.get(THREADS_ENV) or "").strip()
    if not env:
        return None
    if not env.isdigit() or int(env) < 1:
        raise ConfigError(f"{THREADS_ENV} must be a whole number ≥ 1, got {os.environ.get(THREADS_ENV)!r}.")
    return int(env)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch uses ``n`` CPU threads inside the block, and what it used before after it."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_threads(threads: int | None = None, *, verbose: bool = True, file: Any = None) -> int:
    """Set torch's CPU threads to what this machine can give now, and return the number.

    ``threads`` (or the environment variable ``ICP_THREADS``) fixes it; otherwise every core
    that other work leaves idle (at least one). On a busy machine this matters more than any
    kernel: a torch pool of 2 threads on 2 cores beside another CPU-bound process waits for a
    descheduled worker at every operator — notebook 04 in smoke mode took over 300 s that way
    and 53 s with one thread, beside the same 2-thread job (53 s vs 38 s alone). The
    notebooks call it in their setup cell, the command line before ``run`` and ``score``
    (``--threads``); ``file`` is where the one-line message goes (default stdout).
    """
    import torch

    from .errors import ConfigError

    env = threads_from_env()
    cores = os.cpu_count() or 1
    why = "set by the caller"
    if threads is None and env is not None:
        threads, why = env, THREADS_ENV
    if threads is None:
        busy = busy_cores()
        omp = (os.environ.get("OMP_NUM_THREADS") or "").split(",")[0].strip()  # OpenMP allows "4,2"
        default = int(omp) if omp.isdigit() and int(omp) > 0 else cores  # torch's own default
        threads = max(1, min(default, cores - int(round(busy))))
        why = f"{cores} cores, {busy:.1f} busy with other work"
    if threads < 1:
        raise ConfigError(f"threads must be ≥ 1, got {threads}.")
    torch.set_num_threads(int(threads))
    if verbose:
        print(f"torch CPU threads: {threads} ({why}; ICP_THREADS=n fixes it)", file=file)
    return int(threads)


def pick_device(device: str | None = None) -> "Any":
    """Return ``torch.device(device)``, or CUDA when available, else CPU.

    Under a multi-process launcher (``accelerate launch`` / ``torchrun`` set ``LOCAL_RANK``)
    the default is the process's own GPU, ``cuda:LOCAL_RANK``, so ranks do not share GPU 0.
    """
    import torch

    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        local = os.environ.get("LOCAL_RANK")
        if local is not None and local.isdigit() and int(local) < torch.cuda.device_count():
            return torch.device(f"cuda:{int(local)}")
        return torch.device("cuda")
    return torch.device("cpu")




# errno values (and the texts Rust/C libraries put in their messages) that mean "no space".
_DISK_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_DISK_FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "os error 28)", "os error 122)")


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError with ENOSPC/EDQUOT, or a library error wrapping one.

    ``safetensors`` reports a full disk as ``SafetensorError('... No space left on device
    (os error 28)')`` with no errno, hence the message check.
    """
    from .errors import DiskFullError

    if isinstance(exc, DiskFullError):
        return False  # already typed (and worded): do not wrap twice
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        return True
    return any(t in str(exc) for t in _DISK_FULL_TEXTS)


def disk_full_error(directory: str | os.PathLike, name: str, cause: BaseException) -> Exception:
    """The :class:`~icp_influence.errors.DiskFullError` to raise for ``cause``."""
    from .errors import DiskFullError

    err = DiskFullError(
        f"Disk full: no space left on the device holding {directory} (while writing {name}: {cause}). "
        "Free space there (or point the output/cache directory at a larger disk) and run the same "
        "command again: finished files and chunks are kept, and nothing half-written was left behind."
    )
    err.errno = errno.ENOSPC
    return err


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` on success.

    Nothing half-written is ever visible under the final name: on error the temporary
    file is removed and ``path`` keeps its old content (or stays absent). A full disk
    (ENOSPC / EDQUOT, from the writer, ``fsync`` or the rename) is re-raised as
    :class:`~icp_influence.errors.DiskFullError` naming the directory.
    """
    final = Path(path)
    tmp_path: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, final)
    except Exception as e:  # noqa: BLE001 - only re-typed when it is a full disk
        if is_disk_full(e):
            raise disk_full_error(final.parent, final.name, e) from e
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as pretty, standard JSON to ``path`` atomically (see :func:`jsonable`)."""
    atomic_write_text(path, json.dumps(jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def jsonable(o: Any) -> Any:
    """``o`` with NumPy scalars and arrays as Python numbers and lists, tuples as lists, paths as
    strings and non-finite floats as ``None`` — standard JSON, the one conversion the project uses."""
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return jsonable(o.tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, (np.integer, int)):
        return int(o)
    if isinstance(o, (np.floating, float)):
        f = float(o)
        return f if np.isfinite(f) else None
    if isinstance(o, Path):
        return str(o)
    if o is None or isinstance(o, str):
        return o
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def config_hash(config: dict[str, Any]) -> str:
    """A stable short hash of a JSON-serialisable configuration."""
    blob = json.dumps(jsonable(config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def ids_digest(ids: Any) -> str:
    """A stable short hash of a sequence of ids, in order (what a run's pool or training set was)."""
    return hashlib.sha256("\x1f".join(ids).encode()).hexdigest()[:16]


def smoke_mode() -> bool:
    """True when ``ICP_SMOKE=1``: notebooks and experiments shrink their sizes."""
    return os.environ.get("ICP_SMOKE") == "1"


def environment_report() -> dict[str, Any]:
    """Versions and device facts for the notebooks' environment check."""
    import platform

    import torch
    import transformers

    report: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "device": str(pick_device()),
        "cpu_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE") == "1",
        "smoke_mode": smoke_mode(),
    }
    for name in ("ipywidgets", "kronfluence", "peft", "captum"):
        try:
            mod = __import__(name)
            report[name] = getattr(mod, "__version__", "installed")
        except Exception:  # noqa: BLE001 - optional packages
            report[name] = None
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    return report


#: Folders that runs write into (results and benchmark records): outputs, not code.
OUTPUT_DIRS = ("data/results", "benchmarks/results")


def code_version() -> dict[str, Any]:
    """The package version and, in a git checkout, the commit (``+dirty`` when files changed).

    Recorded in every cached result, so a reader can tell which code made it. Changed files
    under :data:`OUTPUT_DIRS` do not count: they are what runs write (the agreement run writes
    its instruction result before the synthetic one records its version), not code.
    """
    import subprocess

    from . import __version__

    out: dict[str, Any] = {"version": __version__, "commit": None}
    root = repo_root()
    if root is not None and (root / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                    ".", *(f":(exclude){d}" for d in OUTPUT_DIRS)],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            out["commit"] = (commit + ("+dirty" if dirty else "")) or None
        except (OSError, subprocess.SubprocessError):  # pragma: no cover - git missing
            pass
    return out
