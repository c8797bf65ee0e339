"""A referee for the LLM: one real optimiser step on each candidate, and what it does to
every probe (the LLM counterpart of notebook 03's leave-one-out check).

``ground-truth`` reuses the data and the cached matrices of ``instruction-agreement``
(same pool, probes and ablation candidates) and adds three one-step ground truths
(:class:`~icp_influence.valuators.OneStep`) on the ablation candidates:

* ``sgd_small`` — SGD on the inner product's parameters (q/v of every block) at a small
  step ``η``: the first-order identity ``Δ ≈ η ⟨∇ℓ(p), ∇ℓ(z)⟩`` must hold (pair-level
  Spearman with the inner product ≥ 0.99). ``η`` is set from the data before the run:
  ``eta_scale`` nats divided by the median |inner product| of the first-order check's pairs;
* ``sgd_all`` — SGD on every parameter at the fine-tuning learning rate (per-token loss);
* ``adam_sign`` — the authors' single Adam step with β₁ = β₂ = 0 on every parameter.

Then every valuator (ICP mean Δ and win-rate, inner product, cosine, EK-FAC) is compared
with every ground truth, pair-level (each (candidate, probe) one point) and candidate-
level (mean over probes), with two-way bootstrap CIs, on the instruction set and on the
synthetic pool.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import numpy as np

from ..paths import results_dir
from ..registry import experiment
from . import llm_agreement as A
from . import runs as R

NAME = "ground-truth"


@dataclass
class GroundTruthConfig:
    """The three ground truths (the agreement run's configuration fixes the data)."""

    eta_scale: float = 0.01          # sgd_small: η = eta_scale / median |IP|  (nats per unit IP)
    n_first_order: int = 24          # candidates for the first-order check
    lr_all: float = 1e-3             # sgd_all: the fine-tuning learning rate, per-token loss
    lr_adam: float = 1e-5            # adam_sign: step per parameter
    n_boot: int = 1000
    seed: int = 0
    n_candidates: int | None = None  # the first n ablation candidates (None = all of them)
    n_candidates_per: dict[str, int] | None = None  # per ground truth, e.g. {"gt_adam_sign": 16} (overrides the above)
    pools: tuple[str, ...] = ("instructions", "synthetic")
    valuators: tuple[str, ...] = ("icp", "icp_neutral", "ip", "cosine", "ekfac")
    valuators_per_pool: dict[str, list[str]] | None = None  # e.g. {"synthetic": [..., "ekfac"]} (overrides the above)
    # valuators the agreement run skipped on a pool, scored here on the ablation candidates only
    ablation_only: dict[str, list[str]] | None = None        # e.g. {"instructions": ["ekfac"]}

    @classmethod
    def for_mode(cls, mode: str, seed: int = 0) -> "GroundTruthConfig":
        if mode == "full":
            return cls(seed=seed)
        return cls(n_first_order=6, n_boot=100, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gt_specs(gcfg: GroundTruthConfig, acfg: A.AgreementConfig, eta: float) -> dict[str, dict[str, Any]]:
    return {
        "gt_sgd_small": {"params": acfg.grad_params, "optimizer": "sgd", "lr": eta, "reduction": "sum"},
        "gt_sgd_all": {"params": "all", "optimizer": "sgd", "lr": gcfg.lr_all, "reduction": "mean"},
        "gt_adam_sign": {"params": "all", "optimizer": "adam_sign", "lr": gcfg.lr_adam, "reduction": "mean"},
    }


def score_ground_truth(gcfg: GroundTruthConfig, acfg: A.AgreementConfig, data: dict[str, Any], mats: dict[str, Any],
                       model, tokenizer, out, *, progress: bool = True, log=print, only: list[str] | None = None,
                       shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """The three OneStep matrices (cached by configuration hash, like the agreement run's).

    ``only``: these ground truths; ``shard=(rank, world)``: this process's share of the
    chunks (the shard that finishes last assembles a matrix; the others return without it).
    """
    from ..utils import config_hash

    probes = list(data["probes"])
    abl = [data["pool"].by_id(i) for i in data["ablation_ids"]][: gcfg.n_candidates]
    # η from the pairs of the first-order check itself: eta_scale nats at the median |IP|
    ip = mats["ip"].subset([c.id for c in abl[: gcfg.n_first_order]]).values
    eta = float(gcfg.eta_scale / np.median(np.abs(ip)))
    specs = gt_specs(gcfg, acfg, eta)
    found: dict[str, Any] = {}
    for name, settings in specs.items():
        if only is not None and name not in only:
            continue
        cands = abl[: gcfg.n_first_order] if name == "gt_sgd_small" else abl
        if gcfg.n_candidates_per and name in gcfg.n_candidates_per:
            cands = abl[: gcfg.n_candidates_per[name]]
        v = referee(gcfg, acfg, model, tokenizer, name, eta=eta, progress=progress)
        sm = R.scored_matrix(v, config_hash(v.config()), cands, probes, out, name, shard=shard, log=log)
        if sm is None:
            continue
        found[name] = sm
    return found


def referee(gcfg: GroundTruthConfig, acfg: A.AgreementConfig, model, tokenizer, name: str, *,
            eta: float | None = None, progress: bool = True):
    """The :class:`~icp_influence.valuators.OneStep` valuator of ground truth ``name`` (its
    configuration hash is what the cached matrices carry; ``eta`` only for ``gt_sgd_small``)."""
    from ..valuators import OneStep

    if name == "gt_sgd_small" and eta is None:
        from ..errors import ConfigError

        raise ConfigError("gt_sgd_small needs eta (set from the inner products of the first-order check).")
    settings = gt_specs(gcfg, acfg, float("nan") if eta is None else eta)[name]
    return OneStep(model, tokenizer, template=acfg.template, seed=acfg.seed, model_name=acfg.model,
                   progress=progress, **settings)


def pool_valuators(gcfg: GroundTruthConfig, pool_name: str) -> tuple[str, ...]:
    """The valuators compared with the ground truths on one pool."""
    return tuple((gcfg.valuators_per_pool or {}).get(pool_name, gcfg.valuators))


def cached_valuator_mats(gcfg: GroundTruthConfig, mats: dict[str, Any], pool_name: str) -> dict[str, Any]:
    """The valuators' matrices of one pool from a loaded run folder (``A.load(...)["mats"]``),
    the ablation-only ones (``<name>_ablation``) under their own names — what :func:`run` summarises."""
    abl = set((gcfg.ablation_only or {}).get(pool_name, ()))
    return {k: mats[f"{k}_ablation" if k in abl else k] for k in pool_valuators(gcfg, pool_name)}


def answer_tokens(tokenizer, pool, ids: list[str], template: str) -> dict[str, int]:
    """Answer length in tokens of each candidate (what a per-token loss divides its gradient by)."""
    from ..encoding import encode_example

    return {i: len(encode_example(tokenizer, pool.by_id(i), template=template, max_length=None).answer_ids)
            for i in ids}


def summarise(gcfg: GroundTruthConfig, mats: dict[str, Any], gts: dict[str, Any], pool_name: str,
              n_tokens: dict[str, int] | None = None) -> dict[str, Any]:
    """The table rows and the first-order check for one pool.

    ``n_tokens`` (candidate id -> answer tokens) adds ``ip_per_token``: the inner product of
    the probe's gradient with the candidate's **per-token** loss gradient, ``IP / n_tokens(z)``
    — the first-order prediction of a step on the per-token loss, as ``sgd_all`` and
    ``adam_sign`` take (the plain inner product predicts a step on the summed loss).
    """
    from .. import stats as S

    rows = []
    small = gts["gt_sgd_small"]
    ids_small = small.candidate_ids
    ip_small = mats["ip"].subset(ids_small).values
    fo = S.pair_agreement(small.values, ip_small, n_boot=gcfg.n_boot, seed=gcfg.seed)
    eta = float(small.meta["settings"]["lr"])
    first_order = {"eta": eta, "pair_spearman_ip": fo.value, "ci": fo.ci, "n_candidates": len(ids_small),
                   "n_probes": small.shape[1],
                   "max_rel_err": float(np.abs(small.values / eta - ip_small).max() / np.abs(ip_small).max())}
    for gt_name, gt in gts.items():
        ids = gt.candidate_ids
        views = A.icp_views(mats, ids)
        val = {"icp_mean_delta": views["icp_mean_delta"], "icp_win_rate": views["icp_win_rate"]}
        for name in ("ip", "cosine", "ekfac"):
            if name in mats:
                val[name] = (mats[name].subset(ids).values, "mean")
        if n_tokens is not None and "ip" in mats:
            val["ip_per_token"] = (mats["ip"].subset(ids).values / np.array([n_tokens[i] for i in ids])[:, None], "mean")
        for vname, (V, how) in val.items():
            pair = S.pair_agreement(V if how == "mean" else (V > 0).astype(float), gt.values, n_boot=gcfg.n_boot,
                                    seed=gcfg.seed)
            rows.append({"valuator": vname, "ground_truth": gt_name, "level": "pair", "pool": pool_name,
                         "spearman": pair.value, "ci": pair.ci, "n_candidates": len(ids), "n_probes": gt.shape[1]})
            ag = S.agreement(V, gt.values, how, "mean", n_boot=gcfg.n_boot, seed=gcfg.seed)
            rows.append({"valuator": vname, "ground_truth": gt_name, "level": "candidate", "pool": pool_name,
                         "spearman": ag.spearman, "ci": list(ag.ci), "disattenuated": ag.disattenuated,
                         "n_candidates": len(ids), "n_probes": gt.shape[1]})
    reliability = {}
    for gt_name, gt in gts.items():
        if gt.shape[1] >= 4 and gt.shape[0] >= 3:
            r = S.split_half(gt.values, "mean", n_boot=gcfg.n_boot // 2, seed=gcfg.seed)
            reliability[gt_name] = {"value": r.value, "ci": r.ci}
    magnitude = {name: {"median_abs_delta": float(np.median(np.abs(g.values))),
                        "self_consistency_sign_agreement_with_ip": float(np.mean(
                            np.sign(g.values) == np.sign(mats["ip"].subset(g.candidate_ids).values)))}
                 for name, g in gts.items()}
    length = {}
    if n_tokens is not None:  # how each candidate-level score follows the candidate's answer length
        for gt_name, g in gts.items():
            n = np.array([n_tokens[i] for i in g.candidate_ids], dtype=float)
            length[gt_name] = {"n_candidates": len(n), "spearman_tokens_vs_ground_truth": S.spearman(n, g.values.mean(1)),
                               "spearman_tokens_vs_ip": S.spearman(n, mats["ip"].subset(g.candidate_ids).values.mean(1))}
    return {"first_order": first_order, "rows": rows, "reliability": reliability, "magnitude": magnitude,
            "length": length,
            "seconds": float(sum(float(g.meta.get("seconds", 0.0)) for g in gts.values()))}


def run(mode: str = "full", *, seed: int = 0, progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Score the ground truths and write the result; ``overrides`` set fields of the
    configuration (``n_candidates``, ``n_candidates_per``, ``pools``, ``valuators``,
    ``valuators_per_pool``, ``ablation_only``) and are
    recorded in it."""
    from dataclasses import replace

    from ..utils import atomic_write_json, code_version, config_hash

    gcfg = replace(GroundTruthConfig.for_mode(mode, seed), **overrides)
    out_parts = {}
    t0 = time.perf_counter()
    for data_name in gcfg.pools:
        acfg, model, tok, d, out = A.open_run(mode, data_name, seed)
        grad_cache = A.grad_cache_dir(acfg, out)
        valuators = pool_valuators(gcfg, data_name)
        mats = A.score_all(acfg, d, model, tok, out, only=list(valuators), progress=progress,
                           grad_cache=grad_cache, ablation_only=(gcfg.ablation_only or {}).get(data_name, ()))
        gts = score_ground_truth(gcfg, acfg, d, mats, model, tok, out, progress=progress)
        n_tokens = answer_tokens(tok, d["pool"], list(d["ablation_ids"]), acfg.template)
        out_parts[data_name] = summarise(gcfg, mats, gts, data_name, n_tokens)
    res = {
        "config": gcfg.to_dict(), "config_hash": config_hash(gcfg.to_dict()), "code_version": code_version(),
        "first_order": out_parts["instructions"]["first_order"],
        "first_order_synthetic": out_parts["synthetic"]["first_order"] if "synthetic" in out_parts else None,
        "table": [r for part in out_parts.values() for r in part["rows"]],
        "reliability": {k: v["reliability"] for k, v in out_parts.items()},
        "magnitude": {k: v["magnitude"] for k, v in out_parts.items()},
        "length": {k: v["length"] for k, v in out_parts.items()},
        "seconds": sum(v["seconds"] for v in out_parts.values()),
        "wall_seconds_this_call": round(time.perf_counter() - t0, 1),
    }
    atomic_write_json(results_dir() / f"{NAME}-{mode}.json", res)
    return res


#: ``load(mode="full")``: the committed result of this experiment (no computation).
load = partial(R.load_result, NAME)


@experiment(NAME, "one-step training ground truth (SGD small/all, Adam β=0) vs ICP, IP, cosine, EK-FAC; "
                  "the first-order identity")
def ground_truth(*, smoke: bool = False, seed: int = 0) -> dict:
    res = run("smoke" if smoke else "full", seed=seed)
    return {"first_order": res["first_order"], "n_rows": len(res["table"]), "seconds": res["seconds"]}
