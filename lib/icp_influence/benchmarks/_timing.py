"""Timing and memory helpers shared by the benchmarks.

Every figure a benchmark reports is measured within one run, after a warm-up, as the
median of several repetitions (:func:`median_time`). Peak memory is measured as the
growth of the process's **resident set size** (RSS, read from ``/proc/self/statm`` by a
sampling thread, or ``psutil`` elsewhere) above its level when the measurement starts:
``tracemalloc`` does not see torch's CPU allocations, and ``resource.getrusage``'s
``ru_maxrss`` is a lifetime maximum that cannot be reset between measurements.
"""
from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Timing:
    """Result of :func:`median_time`: the median and every sample, in seconds."""

    median: float
    samples: list[float] = field(default_factory=list)
    result: Any = None  # the return value of the last call

    @property
    def spread(self) -> float:
        """(max − min) / median of the samples: a rough noise indicator."""
        if not self.samples or self.median <= 0:
            return 0.0
        return (max(self.samples) - min(self.samples)) / self.median

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "samples_s": [round(s, 6) for s in self.samples]}


def median_time(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times (untimed), then ``repeats`` times; median wall time.

    Uses ``time.perf_counter``. If torch with CUDA is present, the device is synchronised
    around each call so asynchronous kernels are counted.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be ≥ 1, got {repeats}")
    sync = _sync_fn()
    result = None
    for _ in range(max(0, warmup)):
        result = fn()
    samples = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        result = fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return Timing(statistics.median(samples), samples, result)


def _sync_fn() -> Callable[[], None]:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.synchronize
    except ImportError:  # pragma: no cover
        pass
    return lambda: None


# ------------------------------------------------------------------ memory
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int:
    """Current resident set size of this process, in bytes."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:  # pragma: no cover - not Linux
        import psutil

        return int(psutil.Process().memory_info().rss)


class PeakRSS:
    """Context manager: peak RSS growth (MB) above the level at entry, sampled every ``interval`` s.

    ``with PeakRSS() as m: work()`` then ``m.peak_mb``. Sampling can miss a spike shorter
    than ``interval``; the value at exit is always included.
    """

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.start = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakRSS":
        import gc

        gc.collect()
        self.start = rss_bytes()
        self.peak = self.start
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def peak_mb(self) -> float:
        return (self.peak - self.start) / 2**20


def loglog_slope(x, y) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (the scaling exponent)."""
    import numpy as np

    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    return float(np.polyfit(lx, ly, 1)[0])


def matmul_gflops(n: int = 2048, repeats: int = 5, warmup: int = 2, dtype: str = "float32",
                  device: str | None = None) -> dict[str, Any]:
    """Dense matmul throughput of this machine: ``2 n³`` FLOPs per ``torch.matmul`` of ``n×n``."""
    import torch

    dev = torch.device(device) if device else torch.device("cpu")
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g, dtype=getattr(torch, dtype)).to(dev)
    b = torch.randn(n, n, generator=g, dtype=getattr(torch, dtype)).to(dev)
    t = median_time(lambda: torch.matmul(a, b), repeats=repeats, warmup=warmup)
    return {"n": n, "gflops": 2 * n**3 / t.median / 1e9, "median_s": t.median, "samples_s": t.samples,
            "threads": torch.get_num_threads()}


def fmt_result(d: dict[str, Any], ndigits: int = 6) -> dict[str, Any]:
    """Round floats in a (nested) result dict for printing/JSON."""
    if isinstance(d, dict):
        return {k: fmt_result(v, ndigits) for k, v in d.items()}
    if isinstance(d, list):
        return [fmt_result(v, ndigits) for v in d]
    if isinstance(d, float):
        return round(d, ndigits) if abs(d) >= 1e-3 or d == 0 else float(f"{d:.4g}")
    return d
