"""A small GPT-2-style *softmax* transformer that learns linear regression in context
(Garg et al., NeurIPS 2022), and the in-domain / out-of-domain demonstrations used to
test "ICP ≈ inner-product influence" beyond linear attention.

Prompt encoding (Garg et al.): the sequence ``x_1, y_1, x_2, y_2, …, x_n, y_n`` of
``2n`` tokens, each a ``d``-vector (``y_i`` becomes ``(y_i, 0, …, 0)``), mapped by a
linear read-in to ``n_embd`` and fed to ``transformers.GPT2Model`` as ``inputs_embeds``;
a linear read-out at every ``x_i`` position predicts ``y_i`` from the pairs before it.
Training: ``w ~ N(0, I_d)``, ``x ~ N(0, I_d)``, ``y = wᵀx``, squared error averaged over
all positions (so the model also predicts with 0 demonstrations — the ICP baseline).

Weights live in ``data/regression_transformer/`` (``model.safetensors`` + ``config.json``),
written by ``scripts/train_regression_transformer.py``.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .errors import ConfigError, CorruptFileError, ModelFilesError
from .utils import atomic_path, atomic_write_json

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
DOMAIN_KINDS = ("in_domain", "other_task", "noisy_labels", "shifted_inputs")


@dataclass
class RegressionTransformerConfig:
    """Architecture and training settings (saved as JSON beside the weights)."""

    d: int = 5
    n_points: int = 11  # longest prompt: n_points (x, y) pairs, i.e. 2·n_points tokens
    n_embd: int = 32
    n_layer: int = 3
    n_head: int = 2
    steps: int = 8000
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 200
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # training outcome (loss, seconds, ...)

    def __post_init__(self) -> None:
        for name in ("d", "n_points", "n_embd", "n_layer", "n_head", "steps", "batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ConfigError(f"RegressionTransformerConfig.{name} must be a positive int, got {v!r}.")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}).")

    @classmethod
    def smoke(cls, seed: int = 0) -> "RegressionTransformerConfig":
        """A tiny model that trains in a few seconds (for smoke runs without stored weights)."""
        return cls(d=5, n_points=6, n_embd=32, n_layer=2, n_head=2, steps=300, batch_size=64, lr=2e-3, warmup=30, seed=seed)


class RegressionTransformer(nn.Module):
    """Read-in → ``GPT2Model(inputs_embeds=…)`` → read-out (Garg et al. 2022)."""

    def __init__(self, cfg: RegressionTransformerConfig) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.cfg = cfg
        conf = GPT2Config(
            vocab_size=1, n_positions=2 * cfg.n_points, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, bos_token_id=0, eos_token_id=0,
        )
        torch.manual_seed(cfg.seed)
        self.read_in = nn.Linear(cfg.d, cfg.n_embd)
        self.backbone = GPT2Model(conf)
        self.read_out = nn.Linear(cfg.n_embd, 1)

    @staticmethod
    def interleave(xs: Tensor, ys: Tensor) -> Tensor:
        """``xs [B, n, d]``, ``ys [B, n]`` → tokens ``[B, 2n, d]`` = x_1, (y_1,0..), x_2, …"""
        B, n, d = xs.shape
        ys_wide = torch.cat([ys.unsqueeze(-1), torch.zeros(B, n, d - 1, dtype=xs.dtype, device=xs.device)], dim=-1)
        return torch.stack([xs, ys_wide], dim=2).reshape(B, 2 * n, d)

    def forward(self, xs: Tensor, ys: Tensor) -> Tensor:
        """Predictions ``[B, n]``: ``ŷ_i`` from ``x_1, y_1, …, x_i`` (causal attention)."""
        if xs.shape[1] > self.cfg.n_points:
            raise ConfigError(f"Prompt of {xs.shape[1]} points exceeds the model's n_points={self.cfg.n_points}.")
        p = next(self.parameters())
        z = self.interleave(xs.to(p.dtype), ys.to(p.dtype))
        h = self.backbone(inputs_embeds=self.read_in(z)).last_hidden_state
        return self.read_out(h[:, ::2]).squeeze(-1)

    def predict(self, xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
        """:data:`~icp_influence.theory.Predictor` interface: context ``[B, n, d]`` + query → ``ŷ [B]``."""
        xs_all = torch.cat([xs, xq.unsqueeze(1)], dim=1)
        ys_all = torch.cat([ys, torch.zeros_like(ys[:, :1]) if ys.shape[1] else torch.zeros(xs.shape[0], 1, dtype=ys.dtype)], dim=1)
        out = []
        for s in range(0, xs_all.shape[0], 8192):
            out.append(self.forward(xs_all[s:s + 8192], ys_all[s:s + 8192])[:, -1])
        return torch.cat(out).to(torch.float64)


def sample_prompts(batch: int, n_points: int, d: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Garg et al. prompts: ``x ~ N(0, I)``, ``w ~ N(0, I)``, ``y = wᵀx`` → ``xs [B, n, d]``, ``ys [B, n]``."""
    xs = torch.randn(batch, n_points, d, generator=generator)
    w = torch.randn(batch, d, generator=generator)
    return xs, torch.einsum("bnd,bd->bn", xs, w)


def train_regression_transformer(cfg: RegressionTransformerConfig, *, progress: bool = False,
                                 max_seconds: float | None = None) -> tuple[RegressionTransformer, list[float]]:
    """Train with AdamW (linear warm-up, cosine decay) on fresh prompts every step.

    Loss = mean squared error over all positions, divided by ``d`` (Garg's normalisation:
    predicting 0 scores 1.0). Stops early after ``max_seconds``. Returns the model (eval
    mode) and the loss per step; ``cfg.extra`` records the outcome.
    """
    model = RegressionTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    t0 = time.perf_counter()

    def schedule(s: int) -> float:
        # progress = the larger of the step and the time fractions, so a time-capped run still anneals
        frac = s / cfg.steps
        if max_seconds:
            frac = max(frac, (time.perf_counter() - t0) / max_seconds)
        return min(1.0, (s + 1) / max(1, cfg.warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    losses: list[float] = []
    it: Any = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc="train transformer", leave=False)
    model.train()
    for _ in it:
        xs, ys = sample_prompts(cfg.batch_size, cfg.n_points, cfg.d, g)
        loss = ((model(xs, ys) - ys) ** 2).mean() / cfg.d
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            break
    model.eval()
    cfg.extra.update({"steps_done": len(losses), "train_seconds": round(time.perf_counter() - t0, 1),
                      "final_loss_avg100": float(np.mean(losses[-100:]))})
    return model, losses


def evaluate_by_position(model: RegressionTransformer, n_prompts: int = 2000, seed: int = 123) -> np.ndarray:
    """Mean squared error / d at every position (0 … n_points−1 demonstrations), ``[n_points]``."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = sample_prompts(n_prompts, model.cfg.n_points, model.cfg.d, g)
    with torch.no_grad():
        return (((model(xs, ys) - ys) ** 2).mean(0) / model.cfg.d).numpy()


def least_squares_by_position(d: int, n_points: int, n_prompts: int = 2000, seed: int = 123) -> np.ndarray:
    """The Bayes-optimal reference (min-norm least squares on the preceding pairs) per position."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = sample_prompts(n_prompts, n_points, d, g)
    xs, ys = xs.double(), ys.double()
    err = np.zeros(n_points)
    for i in range(n_points):
        if i == 0:
            pred = torch.zeros(n_prompts, dtype=torch.float64)
        else:
            w = torch.linalg.pinv(xs[:, :i]) @ ys[:, :i, None]
            pred = (xs[:, i:i + 1] @ w)[:, 0, 0]
        err[i] = float(((pred - ys[:, i]) ** 2).mean() / d)
    return err


# ------------------------------------------------------------------ files

def default_transformer_dir() -> Path:
    """``<data_dir>/regression_transformer`` (see :func:`icp_influence.paths.data_dir`)."""
    from .paths import data_dir

    return data_dir() / "regression_transformer"


def save_regression_transformer(model: RegressionTransformer, directory: str | os.PathLike | None = None) -> Path:
    """Write ``model.safetensors`` (float32) and ``config.json`` atomically; returns the directory."""
    from safetensors.torch import save_file

    out = Path(directory) if directory is not None else default_transformer_dir()
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(out / CONFIG_FILE, asdict(model.cfg))
    for f in (WEIGHTS_FILE, CONFIG_FILE):
        os.chmod(out / f, 0o644)  # mkstemp creates 0600; these are data files for everyone
    return out


def load_regression_transformer(directory: str | os.PathLike | None = None) -> RegressionTransformer:
    """Load a model written by :func:`save_regression_transformer` (eval mode, float32)."""
    from safetensors.torch import load_file

    d = Path(directory) if directory is not None else default_transformer_dir()
    wf, cf = d / WEIGHTS_FILE, d / CONFIG_FILE
    if not wf.is_file() or not cf.is_file():
        raise ModelFilesError(
            f"No regression transformer in {d} (need {WEIGHTS_FILE} and {CONFIG_FILE}). "
            "Create it with `python scripts/train_regression_transformer.py`.")
    try:
        cfg = RegressionTransformerConfig(**json.loads(cf.read_text()))
        state = load_file(str(wf))
    except Exception as e:  # safetensors raises its own SafetensorError on a damaged header
        raise CorruptFileError(f"Could not read the regression transformer in {d}: {e}. Re-run the training script.") from e
    model = RegressionTransformer(cfg)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CorruptFileError(f"{wf} does not match {cf}: {e}. Re-run the training script.") from e
    return model.eval()


def get_regression_transformer(*, smoke: bool = False, directory: str | os.PathLike | None = None,
                               seed: int = 0) -> tuple[RegressionTransformer, str]:
    """The stored model when present; otherwise train one (tiny in smoke mode, else the
    script's default — minutes). Returns ``(model, "loaded" | "trained")``."""
    try:
        return load_regression_transformer(directory), "loaded"
    except ModelFilesError:
        cfg = RegressionTransformerConfig.smoke(seed) if smoke else RegressionTransformerConfig(seed=seed)
        model, _ = train_regression_transformer(cfg, progress=not smoke, max_seconds=None if smoke else 480.0)
        return model, "trained"


# ------------------------------------------------------------------ in- and out-of-domain demonstrations

def domain_candidates(kind: str, w: Tensor, n: int, distance: float = 1.0, *, x_dist: str = "normal",
                      seed: int = 0) -> tuple[Tensor, Tensor]:
    """``n`` demonstrations ``(x [n, d], y [n])`` relative to the probe's task ``w [d]``.

    Kinds, each with a dimensionless ``distance`` (0 = in-domain):

    * ``in_domain``: ``x ~ N(0, I)`` (or ``U(−½, ½)^d`` with ``x_dist="uniform"``), ``y = wᵀx``
      (``distance`` ignored);
    * ``other_task``: ``y = w'ᵀx`` with ``‖w' − w‖ = distance·‖w‖`` (``‖w'‖ = ‖w‖``; 0 ≤ distance ≤ 2);
    * ``noisy_labels``: ``y = wᵀx + ε``, ``ε ~ N(0, (distance·σ_x‖w‖)²)`` (noise std in units of std(y|w));
    * ``shifted_inputs``: ``x + distance·σ_x·u`` for a random unit vector ``u`` (``σ_x`` = the
      per-coordinate std of x), ``y = wᵀx``.
    """
    from .theory import sample_x

    if kind not in DOMAIN_KINDS:
        raise ConfigError(f"Unknown domain kind {kind!r}; use one of {', '.join(DOMAIN_KINDS)}.")
    if distance < 0 or (kind == "other_task" and distance > 2):
        raise ConfigError(f"distance must be >= 0 (and <= 2 for other_task), got {distance}.")
    g = torch.Generator().manual_seed(int(seed))
    w = w.to(torch.float64)
    d = w.shape[0]
    x = sample_x(n, d, dist=x_dist, generator=g)
    if kind == "shifted_inputs":
        u = torch.randn(d, generator=g, dtype=torch.float64)
        sx = 1.0 if x_dist == "normal" else 1 / math.sqrt(12)
        x = x + distance * sx * u / u.norm()
    if kind == "other_task":
        v = torch.randn(d, generator=g, dtype=torch.float64)
        v = v - (v @ w) / (w @ w) * w
        v = v / v.norm() * w.norm()
        theta = 2 * math.asin(distance / 2)
        w = math.cos(theta) * w + math.sin(theta) * v
    y = x @ w
    if kind == "noisy_labels":
        sx = 1.0 if x_dist == "normal" else 1 / math.sqrt(12)
        y = y + distance * sx * w.norm() * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def domain_agreement(predict: Any, *, kinds: tuple[str, ...] = DOMAIN_KINDS, distances: tuple[float, ...] = (1.0,),
                     n_tasks: int = 10, n_candidates: int = 60, n_probes: int = 30, d: int = 5,
                     x_dist: str = "normal", seed: int = 0) -> dict[tuple[str, float], dict[str, np.ndarray]]:
    """ICP and gradient inner product (linear model at ``W₀ = 0``) for every ``(kind, distance)``.

    Probes: ``n_probes`` in-domain pairs of each of ``n_tasks`` tasks; candidates: drawn by
    :func:`domain_candidates`. Returns ``{(kind, distance): {"icp": [T·M, K], "inner_product": [T·M, K]}}``
    (rows of all tasks stacked; each task's candidates only meet that task's probes).
    ``other_task`` skips distances above 2 (its maximum: ``w' = −w``).
    """
    from .theory import grad_inner_products, icp_matrix, sample_x

    out: dict[tuple[str, float], dict[str, np.ndarray]] = {}
    g = torch.Generator().manual_seed(int(seed))
    ws = torch.randn(n_tasks, d, generator=g, dtype=torch.float64)
    pxs = sample_x((n_tasks, n_probes), d, dist=x_dist, generator=g)
    for kind in kinds:
        grid = (0.0,) if kind == "in_domain" else tuple(x for x in distances if kind != "other_task" or x <= 2)
        for dist in grid:
            icps, ips = [], []
            for t in range(n_tasks):
                cx, cy = domain_candidates(kind, ws[t], n_candidates, dist, x_dist=x_dist, seed=seed * 7919 + 31 * t + 1)
                py = pxs[t] @ ws[t]
                icps.append(icp_matrix(predict, cx, cy, pxs[t], py))
                ips.append(grad_inner_products(cx, cy, pxs[t], py))
            out[(kind, float(dist))] = {"icp": np.concatenate(icps), "inner_product": np.concatenate(ips)}
    return out
