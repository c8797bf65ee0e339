"""Numerical precision of scoring: a measured bf16 fast path and the policy that chooses it.

Two compute precisions:

* ``"fp32"`` — everything in float32 (the weights as loaded); the exactness tests
  (engine = naive path within 1e-4 nats) run here, and it is every valuator's default.
* ``"bf16"`` — the matrix products in bfloat16 under ``torch.autocast`` (weights stay
  float32: the master copy), with float32 accumulation inside the products. What stays in
  float32 or wider whatever the precision: the LM head and its log-softmax (float64 in
  ICP), the RMS/layer norms and softmaxes autocast keeps in float32, the residual stream,
  the per-token sums of log-probabilities (float64), the per-example gradients as stored
  (float32) and the inner products (float64 accumulation). Weights *stored* in bf16 are a
  different thing and not offered: on a CPU with AVX-512 BF16 they were slower than float32
  (0.54×) and off by up to 2.9 nats.

``"auto"`` chooses between them (:func:`choose_precision`): bf16 only where the processor has
native bf16 matrix units (x86 ``avx512_bf16`` / ``amx_bf16`` in ``/proc/cpuinfo``, or a CUDA
device with bf16) **and** an accuracy check recorded for that kind of processor and that
method passed (:func:`check_passed`, the file ``benchmarks/results/precision-check.json``
written by :func:`record_check`); otherwise float32. Either way it says which and why.

The check (:func:`precision_agreement`) compares a bf16 ScoreMatrix with the float32 one
of the same candidates and probes: pair-level max |Δ| and Spearman; candidate-level
Spearman of every aggregate; each aggregate's reliability; and, per candidate, the
bf16-minus-fp32 difference of its mean over probes divided by that mean's probe-bootstrap
standard error. It passes when every candidate-level Spearman is ≥ 0.998 and every such
ratio is below 0.1 — the fast path then changes no conclusion the probes can support.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
_ALIASES = {"fp32": "fp32", "float32": "fp32", "float": "fp32", "bf16": "bf16", "bfloat16": "bf16"}
#: The CPU flags of native bf16 matrix arithmetic (x86).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
#: The goals of the accuracy check (from the issue): candidate-level Spearman with fp32 for
#: every aggregate, and |bf16 − fp32| of each candidate's mean over its probe-bootstrap SE.
CHECK_GOALS = {"candidate_spearman": 0.998, "diff_over_se": 0.1}
CHECK_FILE = "precision-check.json"


# ------------------------------------------------------------------ the processor
def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The flags of the first processor in ``cpuinfo`` (``None`` where it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_has_bf16(flags: Sequence[str] | frozenset[str] | None = None, *, cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU has native bf16 matrix arithmetic (AVX-512 BF16 or AMX-BF16).

    From ``flags`` when given, else ``/proc/cpuinfo``; where that cannot be read (not Linux),
    from torch's own CPU feature checks.
    """
    if flags is None:
        flags = cpu_flags(cpuinfo)
    if flags is not None:
        return any(f in flags for f in BF16_CPU_FLAGS)
    try:  # pragma: no cover - non-Linux
        import torch

        return bool(torch.cpu._is_avx512_bf16_supported() or getattr(torch.cpu, "_is_amx_tile_supported", bool)())
    except Exception:  # noqa: BLE001
        return False


def _device_type(device: Any) -> str:
    if device is None:
        from .utils import pick_device

        device = pick_device(None)
    return str(getattr(device, "type", device)).split(":")[0]


def processor_kind(device: Any = None, *, flags: Sequence[str] | frozenset[str] | None = None) -> str:
    """The kind of processor a precision check holds for: ``"cpu:avx512_bf16"``,
    ``"cpu:amx_bf16+avx512_bf16"``, ``"cpu:no-bf16"``, ``"cuda:sm_90"``, ..."""
    dt = _device_type(device)
    if dt == "cuda":
        import torch

        major, minor = torch.cuda.get_device_capability(device if device not in (None, "cuda") else None)
        return f"cuda:sm_{major}{minor}"
    if dt != "cpu":
        return dt
    if flags is None:
        flags = cpu_flags()
    if flags is None:
        return f"cpu:{platform.machine()}{'+bf16' if cpu_has_bf16() else ''}"
    have = sorted(f for f in BF16_CPU_FLAGS if f in flags)
    return "cpu:" + ("+".join(have) if have else "no-bf16")


def hardware_bf16(device: Any = None, *, flags: Sequence[str] | frozenset[str] | None = None) -> tuple[bool, str]:
    """Whether ``device`` has native bf16 matrix units, and the evidence in words."""
    dt = _device_type(device)
    if dt == "cuda":
        import torch

        ok = bool(torch.cuda.is_bf16_supported())
        return ok, f"CUDA device {'supports' if ok else 'lacks'} bf16"
    if dt != "cpu":
        return False, f"no bf16 policy for {dt!r} devices"
    if flags is None:
        flags = cpu_flags()
    ok = cpu_has_bf16(flags)
    if flags is None:
        return ok, "CPU flags unreadable; torch's feature check " + ("finds" if ok else "does not find") + " AVX-512 BF16/AMX"
    have = [f for f in BF16_CPU_FLAGS if f in flags]
    return ok, ("CPU has " + "/".join(have)) if ok else "CPU has neither avx512_bf16 nor amx_bf16"


# ------------------------------------------------------------------ the policy
@dataclass(frozen=True)
class PrecisionChoice:
    """A resolved precision: ``"fp32"`` or ``"bf16"``, and why."""

    precision: str
    reason: str

    @property
    def dtype(self):
        import torch

        return torch.bfloat16 if self.precision == "bf16" else torch.float32

    def __str__(self) -> str:
        return f"{self.precision} ({self.reason})"


def check_precision(precision: str) -> str:
    """``"fp32"``, ``"bf16"`` or ``"auto"`` (``float32``/``bfloat16`` accepted); else ConfigError."""
    if isinstance(precision, str):
        if precision == "auto":
            return precision
        if precision.lower() in _ALIASES:
            return _ALIASES[precision.lower()]
    raise ConfigError(f"precision must be 'fp32', 'bf16' or 'auto', got {precision!r}.")


def check_file() -> Path:
    """Where the recorded accuracy checks live (``benchmarks/results/precision-check.json``)."""
    from .paths import bench_results_dir

    return bench_results_dir() / CHECK_FILE


def recorded_checks(path: str | Path | None = None) -> dict[str, Any]:
    """``{processor kind: record}`` of the recorded checks (empty when there is no file)."""
    p = Path(path) if path is not None else check_file()
    try:
        return dict(json.loads(p.read_text(encoding="utf-8")).get("checks", {}))
    except (OSError, ValueError):
        return {}


def check_passed(kind: str, method: str, *, checks: dict[str, Any] | None = None) -> bool | None:
    """Whether the recorded check of ``method`` passed on ``kind`` (``None``: never checked)."""
    rec = (checks if checks is not None else recorded_checks()).get(kind)
    if not rec or method not in rec.get("methods", {}):
        return None
    return bool(rec["methods"][method].get("passed"))


def choose_precision(precision: str = "auto", device: Any = None, *, method: str = "icp",
                     flags: Sequence[str] | frozenset[str] | None = None,
                     checks: dict[str, Any] | None = None) -> PrecisionChoice:
    """Resolve ``precision`` (``"auto"``, ``"fp32"``, ``"bf16"``) for ``method`` on ``device``.

    ``"auto"`` gives bf16 only where the hardware has native bf16 matrix units and the
    recorded accuracy check of ``method`` on this kind of processor passed; float32
    otherwise. ``flags`` (CPU flags) and ``checks`` (the records) are for tests.
    """
    precision = check_precision(precision)
    if precision != "auto":
        return PrecisionChoice(precision, "asked for")
    ok, why = hardware_bf16(device, flags=flags)
    if not ok:
        return PrecisionChoice("fp32", why)
    kind = processor_kind(device, flags=flags)
    passed = check_passed(kind, method, checks=checks)
    if passed is None:
        return PrecisionChoice("fp32", f"{why}, but no bf16 accuracy check of {method} is recorded for {kind} "
                                       f"(icp_influence.precision.record_check)")
    if not passed:
        return PrecisionChoice("fp32", f"{why}, but bf16 failed the accuracy check of {method} on {kind} "
                                       f"(candidate Spearman ≥ {CHECK_GOALS['candidate_spearman']}, "
                                       f"|Δ mean| < {CHECK_GOALS['diff_over_se']} SE)")
    return PrecisionChoice("bf16", f"{why} and bf16 passed the accuracy check of {method} on {kind}")


def choose_dtype(dtype: Any = "auto", device: Any = None, *, method: str = "icp", **kw: Any) -> tuple[str, str]:
    """``(compute dtype name, reason)``: ``("bfloat16" | "float32", why)`` — :func:`choose_precision` in dtype words."""
    c = choose_precision(dtype if isinstance(dtype, str) else str(dtype).replace("torch.", ""), device,
                         method=method, **kw)
    return ("bfloat16" if c.precision == "bf16" else "float32"), c.reason


def resolve(precision: str | None, model: Any, method: str) -> PrecisionChoice:
    """A valuator's precision: ``None`` = the model's (``"auto"`` when it was loaded with
    ``load_model(dtype="auto")``, else fp32), else as given (``"auto"`` resolved on the model's device)."""
    if precision is None:
        precision = getattr(model, "icp_precision", None) or "fp32"
    precision = check_precision(precision)
    device = None
    if model is not None:
        try:
            device = next(model.parameters()).device
        except (StopIteration, AttributeError, TypeError):
            device = None
    return choose_precision(precision, device if device is not None else "cpu", method=method)


# ------------------------------------------------------------------ compute contexts
def autocast(precision: str | PrecisionChoice, device: Any = "cpu") -> contextlib.AbstractContextManager:
    """The compute context of ``precision``: ``torch.autocast(bf16)`` for bf16, nothing for fp32."""
    import torch

    p = precision.precision if isinstance(precision, PrecisionChoice) else check_precision(precision)
    if p != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(_device_type(device), dtype=torch.bfloat16)


@contextlib.contextmanager
def full_precision(x=None) -> Iterator[None]:
    """Leave autocast (if active) for a float32 region: the LM head, log-softmax, sums."""
    import torch

    dt = _device_type(x.device) if x is not None and hasattr(x, "device") else "cpu"
    if torch.is_autocast_enabled(dt):
        with torch.autocast(dt, enabled=False):
            yield
    else:
        yield


# ------------------------------------------------------------------ the accuracy check
def bootstrap_se(values: np.ndarray, *, n_boot: int = 2000, seed: int = 0) -> np.ndarray:
    """Probe-bootstrap standard error of each row's mean over columns (probes resampled)."""
    V = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, V.shape[1], size=(n_boot, V.shape[1]))
    means = V[:, idx].mean(axis=2)  # [C, n_boot]
    return means.std(axis=1, ddof=1)


def precision_agreement(fast, exact, *, aggregates: Sequence[str] | None = None, n_boot: int = 2000,
                        seed: int = 0) -> dict[str, Any]:
    """How a fast-path ScoreMatrix (bf16) agrees with the exact one (fp32) of the same pairs.

    Returns pair-level ``max_abs_diff``, ``rms_diff`` and ``pair_spearman``; per aggregate
    (default: ``mean``, plus ``win_rate`` for ICP) the ``candidate_spearman`` and both
    matrices' split-half ``reliability``; per candidate ``|mean_fast − mean_exact|`` over the
    exact matrix's probe-bootstrap SE of the mean (``diff_over_se_max``, ``_median``);
    and ``passed`` against :data:`CHECK_GOALS`.
    """
    from .stats import aggregate, spearman, split_half

    A, B = np.asarray(getattr(fast, "values", fast), float), np.asarray(getattr(exact, "values", exact), float)
    if A.shape != B.shape:
        raise ConfigError(f"The two matrices differ in shape: {A.shape} vs {B.shape}.")
    for sm in (fast, exact):
        if hasattr(sm, "candidate_ids") and hasattr(exact, "candidate_ids") and (
                list(sm.candidate_ids) != list(exact.candidate_ids) or list(sm.probe_ids) != list(exact.probe_ids)):
            raise ConfigError("The two matrices must hold the same candidates and probes in the same order.")
    if aggregates is None:
        meta = getattr(exact, "meta", {}) or {}
        aggregates = ("mean", "win_rate") if meta.get("method") == "icp" else ("mean",)
    diff = A - B
    out: dict[str, Any] = {
        "shape": list(A.shape),
        "max_abs_diff": float(np.abs(diff).max()),
        "rms_diff": float(np.sqrt((diff ** 2).mean())),
        "scale": float(np.abs(B).max()),
        "pair_spearman": float(spearman(A.ravel(), B.ravel())),
        "aggregates": {},
    }
    for how in aggregates:
        a, b = aggregate(A, how), aggregate(B, how)
        rho = float(spearman(a, b)) if np.ptp(a) > 0 and np.ptp(b) > 0 else float("nan")
        rel = {}
        for name, V in (("fast", A), ("exact", B)):
            try:
                rel[name] = float(split_half(V, how, n_boot=0).value) if A.shape[1] >= 4 and A.shape[0] >= 3 else None
            except Exception:  # noqa: BLE001 - reliability is informative, not part of the check
                rel[name] = None
        out["aggregates"][how] = {"candidate_spearman": rho, "reliability_fast": rel["fast"],
                                  "reliability_exact": rel["exact"]}
    se = bootstrap_se(B, n_boot=n_boot, seed=seed)
    ratio = np.abs(A.mean(axis=1) - B.mean(axis=1)) / np.where(se > 0, se, np.inf)
    out["diff_over_se_max"] = float(ratio.max())
    out["diff_over_se_median"] = float(np.median(ratio))
    spearmans = [v["candidate_spearman"] for v in out["aggregates"].values()]
    out["min_candidate_spearman"] = float(min(spearmans))
    out["passed"] = bool(all(np.isfinite(s) and s >= CHECK_GOALS["candidate_spearman"] for s in spearmans)
                         and out["diff_over_se_max"] < CHECK_GOALS["diff_over_se"])
    out["goals"] = dict(CHECK_GOALS)
    return out


def record_check(kind: str, method: str, agreement: dict[str, Any], *, path: str | Path | None = None,
                 **info: Any) -> Path:
    """Record one method's accuracy check for processor ``kind`` (atomically; other entries kept)."""
    from .utils import atomic_write_json

    p = Path(path) if path is not None else check_file()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        data = {}
    data.setdefault("about", "bf16 vs fp32 accuracy checks (icp_influence.precision); the 'auto' precision "
                             "chooses bf16 only for a processor kind and method whose check passed")
    entry = data.setdefault("checks", {}).setdefault(kind, {"methods": {}})
    entry.update({k: v for k, v in info.items() if k != "methods"})
    entry["methods"][method] = {**agreement, "passed": bool(agreement["passed"])}
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(p, data)
    return p


def environment() -> dict[str, Any]:
    """The processor facts a check record keeps."""
    import torch

    flags = cpu_flags()
    return {"cpu_model": _cpu_model(), "cpu_bf16_flags": sorted(f for f in (flags or ()) if "bf16" in f or "amx" in f),
            "cpu_has_bf16": cpu_has_bf16(flags), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "cpu_flags": sorted(flags or ())}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
