"""What makes ICP and influence agree? Null models, the answer-length confound, an intervention.

``confounds``: built on the instruction-set agreement run (``instruction-agreement``: the
same 312 candidates, 64 probes and cached matrices), it asks four questions.

1. **Null models** (:mod:`icp_influence.valuators.null_models`): how well does each paper
   valuator agree with answer length, the model's own loss on the candidate, the gradient
   norm and a random number? A paper valuator that agrees with another no better than a null
   model does with both shows nothing beyond that null model.
2. **Agreement controlled for length**: raw, partial given the candidate's answer tokens,
   within length quintiles, and between the per-token forms (ICP's Δ per probe token; the
   inner product of the per-token losses, ``IP / (T_z · T_p)``), each with the two-way
   bootstrap interval; and the pair level the first-order theory speaks about — for each
   probe, the Spearman of Δ and IP across candidates.
3. **An intervention on length with content fixed**: the length-variant pool
   (:func:`~icp_influence.instructions.load_length_variants`: for each instruction a short,
   the original and a long correct answer). (a) Each valuator's paired effect of length
   (long − short, same instruction), raw and in percentile ranks; (b) a **dose–response
   curve**: pools that take one version of every instruction, with more and more extreme
   versions, so the spread of log answer tokens grows; raw and length-controlled agreement
   against that spread, and the agreement the curve predicts for a pool as wide as the
   paper's Alpaca (standard deviation of log answer tokens 1.5).
4. **Ablations on the whole pool** (gradient subset, chat template, the authors'
   transform, EK-FAC): raw, length-controlled and attenuation-corrected rows.

Stages run in that order, each cached (matrices in ``<results>/confounds-<mode>/`` and the
instruction run's folder); ``stages=`` runs a subset and the result lists the rest under
``pending``, so no reader takes a missing number for a measured one.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np

from ..paths import results_dir
from ..registry import experiment
from . import llm_agreement as A

NAME = "confounds"
STAGES = ("null_models", "length_controlled", "intervention", "ablations")
#: The valuators of the paper and their views: (matrix name, aggregate).
PAPER_VIEWS = {"icp_mean_delta": ("icp", "mean"), "icp_win_rate": ("icp", "win_rate"), "ip": ("ip", "mean"),
               "cosine": ("cosine", "mean")}
#: The pairs whose agreement is controlled for length.
PAIRS = (("icp_mean_delta", "ip"), ("icp_win_rate", "ip"), ("icp_mean_delta", "cosine"))
#: Whole-pool ablations of the instruction run (names of :func:`llm_agreement.valuator_specs`).
ABLATIONS = ("ip_last2", "ip_linear", "icp_chat", "psl", "ekfac")
#: What each whole-pool ablation changes in the paper's setup (the text says which choice moved the agreement).
ABLATION_KINDS = {"ip_last2": "gradients", "ip_linear": "gradients", "psl": "score", "ekfac": "hessian",
                  "icp_chat": "template"}
#: Each kind in words, as the subject of "… moves the agreement".
LEVER_WORDS = {"gradients": "which gradients the inner product uses", "score": "the form of the gradient score",
               "hessian": "preconditioning the inner product with the Hessian (EK-FAC)",
               "template": "the prompt template of ICP"}
#: Spread (standard deviation of log answer tokens) of the paper's pool, where the dose-response predicts.
WIDE_LOG_TOKEN_SD = 1.5
#: The null models of the analysis (the candidate's model loss twice: summed and per token).
NULL_NAMES = ("answer_length", "candidate_nll", "candidate_nll_per_token", "gradient_norm", "random")


@dataclass
class ConfoundsConfig:
    """Everything that determines the analysis (hashed into the result)."""

    n_boot: int = 1000
    n_strata: int = 5
    variant_probe_stride: int = 4          # the variant pool is scored on every 4th probe of the run (16 of 64)
    dose_levels: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    n_dose_draws: int = 200
    wide_log_token_sd: float = WIDE_LOG_TOKEN_SD
    max_variants: int | None = None        # instructions of the variant pool used (None: all)
    ablations: list[str] = field(default_factory=lambda: list(ABLATIONS))
    seed: int = 0

    @classmethod
    def for_mode(cls, mode: str, seed: int = 0) -> "ConfoundsConfig":
        if mode == "full":
            return cls(seed=seed)
        return cls(n_boot=100, n_dose_draws=40, variant_probe_stride=2, max_variants=4 if mode == "smoke" else 6,
                   ablations=list(ABLATIONS) if mode == "smoke" else ["ip_last2", "psl"], seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_dir(mode: str):
    return results_dir() / f"{NAME}-{mode}"


# ---------------------------------------------------------------- views of the matrices

def token_counts(mats: dict[str, Any], ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(candidate answer tokens ``[C]``, probe answer tokens ``[P]``) of ``ids``."""
    t_z = mats["answer_length"].subset(ids).values[:, 0].astype(np.float64)
    t_p = np.asarray(mats["icp"].meta["n_answer_tokens"], dtype=np.float64)
    return t_z, t_p


def views(mats: dict[str, Any], ids: list[str]) -> dict[str, tuple[np.ndarray, str]]:
    """``{name: (V [C, P], aggregate)}`` of every paper valuator, per-token form and null model on ``ids``."""
    out = {name: (mats[m].subset(ids).values, how) for name, (m, how) in PAPER_VIEWS.items() if m in mats}
    t_z, t_p = token_counts(mats, ids)
    D, IP = mats["icp"].subset(ids).values, mats["ip"].subset(ids).values
    out["icp_per_token"] = (D / t_p[None, :], "mean")
    out["ip_per_candidate_token"] = (IP / t_z[:, None], "mean")
    out["ip_per_token_loss"] = (IP / (t_z[:, None] * t_p[None, :]), "mean")
    for name in NULL_NAMES:
        if name in mats:
            out[name] = (mats[name].subset(ids).values, "mean")
    return out


def _iv(iv) -> dict[str, Any]:
    return {"spearman": float(iv.value), "ci": [float(iv.lo), float(iv.hi)]}


# ---------------------------------------------------------------- stage 1 and 2: correlational

def null_model_table(v: dict[str, tuple[np.ndarray, str]], *, n_boot: int, seed: int) -> dict[str, Any]:
    """Every null model against every paper valuator and every other null model (Spearman, two-way CI)."""
    from ..stats import controlled_agreement

    nulls = [n for n in NULL_NAMES if n in v]
    others = [n for n in ("icp_mean_delta", "icp_win_rate", "icp_per_token", "ip", "cosine", "ip_per_candidate_token")
              if n in v] + nulls
    table: dict[str, Any] = {}
    for n in nulls:
        row = {}
        for o in others:
            if o == n:
                continue
            iv = controlled_agreement(v[n][0], v[o][0], np.zeros(len(v[n][0])), v[n][1], v[o][1], method="raw",
                                      n_boot=n_boot, seed=seed)
            row[o] = _iv(iv)
        table[n] = {"spearman_vs": row}
    return table


def length_controlled_table(v: dict[str, tuple[np.ndarray, str]], length: np.ndarray, *, n_boot: int,
                            n_strata: int, seed: int) -> dict[str, Any]:
    """Raw, partial (given answer tokens), stratified and per-token agreement of every pair in :data:`PAIRS`."""
    from ..stats import controlled_agreement

    per_token = {"icp_mean_delta": "icp_per_token", "icp_win_rate": "icp_win_rate", "ip": "ip_per_token_loss",
                 "cosine": "cosine"}
    out: dict[str, Any] = {}
    for a, b in PAIRS:
        if a not in v or b not in v:
            continue
        (Va, ha), (Vb, hb) = v[a], v[b]
        row = {m: _iv(controlled_agreement(Va, Vb, length, ha, hb, method=m, n_strata=n_strata, n_boot=n_boot,
                                           seed=seed)) for m in ("raw", "partial", "stratified")}
        (Pa, pha), (Pb, phb) = v[per_token[a]], v[per_token[b]]
        row["per_token"] = _iv(controlled_agreement(Pa, Pb, length, pha, phb, method="raw", n_boot=n_boot, seed=seed))
        row["per_token"]["forms"] = [per_token[a], per_token[b]]
        if b == "ip":
            Vc, hc = v["ip_per_candidate_token"]
            row["ip_per_candidate_token"] = _iv(controlled_agreement(Va, Vc, length, ha, hc, method="raw",
                                                                     n_boot=n_boot, seed=seed))
        out[f"{a} vs {b}"] = row
    return out


def null_controlled(v: dict[str, tuple[np.ndarray, str]], *, n_boot: int, seed: int) -> dict[str, Any]:
    """For each pair of :data:`PAIRS` and each null model that varies by candidate: the pair's
    agreement with that null model partialled out (rank-based), with its two-way interval —
    what the pair shares beyond what the null model shares with both."""
    from ..stats import aggregate, controlled_agreement

    out: dict[str, Any] = {}
    for a, b in PAIRS[:2]:
        if a not in v or b not in v:
            continue
        (Va, ha), (Vb, hb) = v[a], v[b]
        row = {}
        for n in NULL_NAMES:
            if n in v and n != "random":
                z = aggregate(*v[n])
                row[n] = _iv(controlled_agreement(Va, Vb, z, ha, hb, method="partial", n_boot=n_boot, seed=seed))
        out[f"{a} vs {b}"] = row
    return out


def category_structure(v: dict[str, tuple[np.ndarray, str]], categories: Sequence[str], *, n_boot: int,
                       seed: int) -> dict[str, Any]:
    """Is the agreement about examples or about kinds of example? For ICP (mean Δ, win-rate) vs
    the inner product: raw, within task categories (size-weighted Spearman inside each category)
    and between categories (Spearman of the category means), each with its two-way interval."""
    from ..stats import controlled_agreement

    cats = np.asarray(categories)
    out: dict[str, Any] = {"n_categories": int(np.unique(cats).size),
                           "median_per_category": float(np.median(np.unique(cats, return_counts=True)[1]))}
    for a, b in PAIRS[:2]:
        if a not in v or b not in v:
            continue
        (Va, ha), (Vb, hb) = v[a], v[b]
        out[f"{a} vs {b}"] = {m: _iv(controlled_agreement(Va, Vb, cats, ha, hb, method=m, n_boot=n_boot, seed=seed))
                              for m in ("raw", "within_groups", "between_groups")}
    return out


def synthetic_structure(mode: str, *, n_boot: int, seed: int) -> dict[str, Any] | None:
    """:func:`category_structure` of the synthetic run (its cached ICP and inner-product matrices
    and task families), or ``None`` when that run is not cached."""
    from ..errors import IcpError
    from ..scores import ScoreMatrix

    folder = A.run_dir(mode, "synthetic")
    try:
        info = json.loads((folder / "data.json").read_text(encoding="utf-8"))
        icp, ip = ScoreMatrix.load(folder / "icp"), ScoreMatrix.load(folder / "ip")
    except (OSError, ValueError, IcpError):     # not run (or not this mode): nothing to add
        return None
    ids = list(icp.candidate_ids)
    ip = ip.subset(ids, list(icp.probe_ids))
    v = {"icp_mean_delta": (icp.values, "mean"), "icp_win_rate": (icp.values, "win_rate"), "ip": (ip.values, "mean")}
    return category_structure(v, [info["pool"][i]["category"] for i in ids], n_boot=n_boot, seed=seed)


def pair_level(v: dict[str, tuple[np.ndarray, str]], length: np.ndarray) -> dict[str, Any]:
    """Within-probe Spearman(Δ, IP) across candidates, for every probe: its distribution, raw
    and with IP per candidate token (dividing by the probe's tokens changes no within-probe rank)."""
    from ..stats import t_interval, within_probe_spearman

    D, IP = v["icp_mean_delta"][0], v["ip"][0]
    out = {}
    for name, B in (("raw", IP), ("ip_per_candidate_token", IP / length[:, None])):
        r = within_probe_spearman(D, B)
        r = r[np.isfinite(r)]
        lo, hi = t_interval(r)
        out[name] = {"mean": float(r.mean()), "ci": [lo, hi], "median": float(np.median(r)),
                     "q25": float(np.quantile(r, 0.25)), "q75": float(np.quantile(r, 0.75)),
                     "fraction_positive": float((r > 0).mean()), "n_probes": int(r.size), "values": r.tolist()}
    return out


# ---------------------------------------------------------------- stage 3: the intervention

def _candidate_means(V: np.ndarray, how: str, counts: np.ndarray | None = None) -> np.ndarray:
    from ..stats import aggregate

    return aggregate(V, how, counts)


def variant_matrices(vmats: dict[str, Any], base_mats: dict[str, Any], pool, probe_ids: list[str]) -> dict[str, Any]:
    """``{matrix name: ScoreMatrix [variants × probes]}`` in the variant pool's order: what the
    variant run scored, and each middle version it did not score (the instruction set's own
    answer, a candidate of the instruction run) from the instruction run's matrix on the same probes."""
    from ..scores import ScoreMatrix

    out = {}
    for name, sm in vmats.items():
        have = set(sm.candidate_ids)
        reused = [e for e in pool if e.id not in have]
        parts = [sm]
        if reused:
            base = base_mats[name].subset([e.meta["base_id"] for e in reused], probe_ids)
            parts.append(ScoreMatrix(base.values, [e.id for e in reused], list(probe_ids), dict(base.meta)))
        out[name] = ScoreMatrix.concat(parts, meta=sm.meta).subset([e.id for e in pool])
    return out


def intervention_effects(v: dict[str, tuple[np.ndarray, str]], versions: np.ndarray, groups: np.ndarray, *,
                         n_boot: int, seed: int) -> dict[str, Any]:
    """Each valuator's paired effect of length: mean over instructions of a(long) − a(short),
    in the valuator's units and in percentile ranks of the variant pool, with two-way
    bootstrap intervals (instructions and probes resampled)."""
    rng = np.random.default_rng(seed)
    uniq = np.unique(groups)
    li = np.array([np.flatnonzero((groups == g) & (versions == "long"))[0] for g in uniq])
    si = np.array([np.flatnonzero((groups == g) & (versions == "short"))[0] for g in uniq])
    out = {}
    for name, (V, how) in v.items():
        P = V.shape[1]

        def effects(counts, rows):
            a = _candidate_means(V, how, counts)
            pct = (np.argsort(np.argsort(a, kind="stable"), kind="stable") + 0.5) / a.size * 100
            return float((a[li[rows]] - a[si[rows]]).mean()), float((pct[li[rows]] - pct[si[rows]]).mean()), \
                float((a[li[rows]] > a[si[rows]]).mean())

        point = effects(None, np.arange(uniq.size))
        reps = np.array([effects(np.bincount(rng.integers(0, P, size=P), minlength=P).astype(float),
                                 rng.integers(0, uniq.size, size=uniq.size)) for _ in range(n_boot)])
        q = np.quantile(reps, [0.025, 0.975], axis=0)
        out[name] = {"effect": point[0], "ci": [float(q[0, 0]), float(q[1, 0])],
                     "rank_effect": point[1], "rank_ci": [float(q[0, 1]), float(q[1, 1])],
                     "fraction_long_higher": point[2], "n_instructions": int(uniq.size)}
    return out


def dose_response(v: dict[str, tuple[np.ndarray, str]], log_tokens: np.ndarray, versions: np.ndarray,
                  groups: np.ndarray, levels: list[float], *, n_draws: int, seed: int,
                  wide_sd: float = WIDE_LOG_TOKEN_SD) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Agreement of ICP mean Δ and IP on pools drawn from the variants at growing length spread.

    At level ``q`` every instruction contributes one version: its short or its long answer
    with probability ``q/2`` each, else the middle one (``q = 0``: the instruction set as it
    is; ``q = 1``: only the extremes). Each draw also resamples instructions and probes, so
    the spread of the ``n_draws`` values is the interval. Returns the table (per level: the
    mean standard deviation of log answer tokens, raw and partial Spearman with intervals)
    and the prediction at ``wide_sd`` from a straight line through the levels (fitted per
    draw index, on Fisher's z), with how far it extrapolates.
    """
    from ..stats import partial_spearman, spearman

    rng = np.random.default_rng(seed)
    D, hD = v["icp_mean_delta"]
    IP, hI = v["ip"]
    uniq = np.unique(groups)
    idx = {(g, ver): i for i, (g, ver) in enumerate(zip(groups, versions))}
    P = D.shape[1]
    sd = np.zeros((len(levels), n_draws))
    raw = np.zeros_like(sd)
    par = np.zeros_like(sd)
    for d in range(n_draws):
        counts = np.bincount(rng.integers(0, P, size=P), minlength=P).astype(float)
        a, b = _candidate_means(D, hD, counts), _candidate_means(IP, hI, counts)
        inst = rng.integers(0, uniq.size, size=uniq.size)
        u = rng.random(uniq.size)
        side = rng.random(uniq.size) < 0.5
        for k, q in enumerate(levels):
            ver = np.where(u < q, np.where(side, "short", "long"), "middle")
            rows = np.array([idx[(uniq[i], ver[i])] for i in inst])
            sd[k, d] = log_tokens[rows].std(ddof=1)
            raw[k, d] = spearman(a[rows], b[rows])
            par[k, d] = partial_spearman(a[rows], b[rows], log_tokens[rows])
    table = []
    for k, q in enumerate(levels):
        table.append({"level": q, "log_token_sd": float(sd[k].mean()),
                      "raw": {"spearman": float(np.nanmean(raw[k])),
                              "ci": np.nanquantile(raw[k], [0.025, 0.975]).tolist()},
                      "partial": {"spearman": float(np.nanmean(par[k])),
                                  "ci": np.nanquantile(par[k], [0.025, 0.975]).tolist()},
                      "n_draws": int(np.isfinite(par[k]).sum())})

    def predict(values: np.ndarray) -> dict[str, Any]:
        preds = []
        for d in range(n_draws):
            if np.all(np.isfinite(values[:, d])):
                slope, icpt = np.polyfit(sd[:, d], np.arctanh(np.clip(values[:, d], -0.999, 0.999)), 1)
                preds.append(np.tanh(icpt + slope * wide_sd))
        mean_line = np.polyfit(sd.mean(axis=1), np.arctanh(np.clip(np.nanmean(values, axis=1), -0.999, 0.999)), 1)
        return {"spearman": float(np.tanh(np.polyval(mean_line, wide_sd))),
                "ci": np.quantile(preds, [0.025, 0.975]).tolist()}

    def slope(values: np.ndarray) -> dict[str, Any]:
        # the draws are paired across levels (same instructions, probes and coin flips), so the
        # spread of the per-draw slopes is an interval for the trend itself
        per = [np.polyfit(sd[:, d], values[:, d], 1)[0] for d in range(n_draws) if np.all(np.isfinite(values[:, d]))]
        return {"per_unit_sd": float(np.polyfit(sd.mean(axis=1), np.nanmean(values, axis=1), 1)[0]),
                "ci": np.quantile(per, [0.025, 0.975]).tolist()}

    reached = float(sd.mean(axis=1).max())
    prediction = {"log_token_sd": wide_sd, "raw": predict(raw), "partial": predict(par),
                  "slope": {"raw": slope(raw), "partial": slope(par)},
                  "max_log_token_sd_reached": reached, "extrapolates_by": max(0.0, wide_sd - reached)}
    return table, prediction


# ---------------------------------------------------------------- the run

def _score_nulls(acfg, d, model, tok, out, grad_cache, *, log) -> dict[str, Any]:
    """The null models on the run's pool, cached beside the run's matrices. The per-token loss
    is the summed loss divided by the answer tokens (exactly what ``candidate_nll`` with
    ``reduction="mean"`` computes, without a second pass over the pool)."""
    from ..scores import ScoreMatrix
    from ..valuators import make

    pool, probes = list(d["pool"]), list(d["probes"])
    specs = {"answer_length": ("answer_length", {}), "candidate_nll": ("candidate_nll", {"reduction": "sum"}),
             "gradient_norm": ("gradient_norm", {"params": acfg.grad_params,
                                                 **({"cache_dir": str(grad_cache)} if grad_cache else {})}),
             "random": ("random", {})}
    mats = {}
    for name, (valuator, settings) in specs.items():
        v = make(valuator, model, tok, template=acfg.template, seed=acfg.seed, model_name=acfg.model, **settings)
        mats[name] = A.scored_matrix(v, A._hash_of(v), pool, probes, out, name, log=log)
    per_tok = make("candidate_nll", model, tok, template=acfg.template, seed=acfg.seed, model_name=acfg.model,
                   reduction="mean")
    meta = {**mats["candidate_nll"].meta, **per_tok.meta(), "derived_from": "candidate_nll / answer_length"}
    mats["candidate_nll_per_token"] = ScoreMatrix(mats["candidate_nll"].values / mats["answer_length"].values,
                                                  list(mats["candidate_nll"].candidate_ids), [p.id for p in probes],
                                                  meta)
    return mats


def _score_variants(acfg, ccfg, d, model, tok, out, *, log, progress: bool):
    """ICP, IP and answer length on the short and long variants, on every ``variant_probe_stride``-th probe."""
    from ..data import Pool
    from ..instructions import load_length_variants
    from ..valuators import make

    ids = {e.id for e in d["pool"]}
    pool = list(load_length_variants())
    bases = list(dict.fromkeys(e.meta["base_id"] for e in pool))
    if ccfg.max_variants is not None:
        keep = set(bases[:ccfg.max_variants])
        pool = [e for e in pool if e.meta["base_id"] in keep]
    probes = list(d["probes"])[::ccfg.variant_probe_stride]
    # the middle version is the instruction run's own candidate where it is one (its rows are reused)
    todo = [e for e in pool if e.meta["version"] != "middle" or e.meta["base_id"] not in ids]
    specs = {"icp": ("icp", {"score": "delta"}), "ip": ("inner_product", {"params": acfg.grad_params}),
             "answer_length": ("answer_length", {})}
    vmats = {}
    for name, (valuator, settings) in specs.items():
        v = make(valuator, model, tok, template=acfg.template, seed=acfg.seed, model_name=acfg.model,
                 progress=progress, **settings)
        vmats[name] = A.scored_matrix(v, A._hash_of(v), todo, probes, out, f"variants_{name}", log=log)
    return Pool(pool, name="length_variants"), [p.id for p in probes], vmats


def run(mode: str = "full", *, seed: int = 0, stages: tuple[str, ...] = STAGES, progress: bool = True,
        log: Callable[[str], None] = print, ablations: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the stages (cached), analyse, write ``<results>/confounds-<mode>.json``.

    ``ablations``: run only these of the mode's whole-pool ablations (the rest are listed under
    ``ablations_pending`` in the result, never silently dropped)."""
    from ..errors import ConfigError
    from ..utils import atomic_write_json, code_version, config_hash

    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ConfigError(f"Unknown stage(s) {bad}; choose from {', '.join(STAGES)}.")
    ccfg = ConfoundsConfig.for_mode(mode, seed)
    planned = list(ccfg.ablations)
    if ablations is not None:
        unknown = [a for a in ablations if a not in ABLATIONS]
        if unknown:
            raise ConfigError(f"Unknown ablation(s) {unknown}; choose from {', '.join(ABLATIONS)}.")
        ccfg.ablations = [a for a in planned if a in ablations]
    t0 = time.perf_counter()
    acfg, model, tok, d, out = A.open_run(mode, "instructions", seed)
    out.mkdir(parents=True, exist_ok=True)
    grad_cache = A.grad_cache_dir(acfg, out)
    mats = A.score_all(acfg, d, model, tok, out, only=["icp", "ip", "cosine"], progress=progress,
                       grad_cache=grad_cache, log=log)
    mats.update(_score_nulls(acfg, d, model, tok, out, grad_cache, log=log))
    ids = [e.id for e in d["pool"]]
    v = views(mats, ids)
    length = mats["answer_length"].subset(ids).values[:, 0]
    res: dict[str, Any] = {"config": ccfg.to_dict(), "config_hash": config_hash(ccfg.to_dict()),
                           "agreement_config_hash": config_hash(acfg.to_dict()), "code_version": code_version(),
                           "n_candidates": len(ids), "n_probes": len(d["probes"]), "pending": []}
    res["null_models"] = null_model_table(v, n_boot=ccfg.n_boot, seed=ccfg.seed)
    res["log_token_sd"] = float(np.log(length).std(ddof=1))
    res["answer_tokens"] = {"median": float(np.median(length)), "q25": float(np.quantile(length, 0.25)),
                            "q75": float(np.quantile(length, 0.75)), "min": int(length.min()), "max": int(length.max())}
    if "length_controlled" in stages:
        res["length_controlled"] = length_controlled_table(v, length, n_boot=ccfg.n_boot, n_strata=ccfg.n_strata,
                                                           seed=ccfg.seed)
        res["pair_level"] = pair_level(v, length)
        res["null_controlled"] = null_controlled(v, n_boot=ccfg.n_boot, seed=ccfg.seed)
        res["category_structure"] = {"instructions": category_structure(v, [e.task for e in d["pool"]],
                                                                        n_boot=ccfg.n_boot, seed=ccfg.seed)}
        syn = synthetic_structure(mode, n_boot=ccfg.n_boot, seed=ccfg.seed)
        if syn is not None:
            res["category_structure"]["synthetic"] = syn
    else:
        res["pending"].append("length_controlled")
    if "intervention" in stages:
        vout = run_dir(mode)
        vout.mkdir(parents=True, exist_ok=True)
        vpool, probe_ids, vmats = _score_variants(acfg, ccfg, d, model, tok, vout, log=log, progress=progress)
        both = variant_matrices(vmats, mats, list(vpool), probe_ids)
        ver = np.array([e.meta["version"] for e in vpool])
        grp = np.array([e.meta["base_id"] for e in vpool])
        vv = {"icp_mean_delta": (both["icp"].values, "mean"), "icp_win_rate": (both["icp"].values, "win_rate"),
              "ip": (both["ip"].values, "mean"), "answer_length": (both["answer_length"].values, "mean")}
        vlen = both["answer_length"].values[:, 0]
        res["intervention"] = intervention_effects(vv, ver, grp, n_boot=ccfg.n_boot, seed=ccfg.seed)
        res["variant_pool"] = {
            "n_instructions": int(np.unique(grp).size), "n_categories": len({e.task for e in vpool}),
            "n_probes": len(probe_ids),
            "answer_tokens": {k: {"median": float(np.median(vlen[ver == k])), "min": int(vlen[ver == k].min()),
                                  "max": int(vlen[ver == k].max())} for k in ("short", "middle", "long")}}
        res["dose_response"], res["prediction"] = dose_response(vv, np.log(vlen), ver, grp, ccfg.dose_levels,
                                                                n_draws=ccfg.n_dose_draws, seed=ccfg.seed,
                                                                wide_sd=ccfg.wide_log_token_sd)
    else:
        res["pending"] += ["intervention", "dose_response", "prediction"]
    if "ablations" in stages:
        res["ablations"] = ablation_rows(acfg, d, model, tok, out, mats, grad_cache, length, ccfg, log=log,
                                         progress=progress)
        res["ablations_pending"] = [a for a in ABLATIONS if a not in {r["ablation"] for r in res["ablations"]}]
    else:
        res["pending"].append("ablations")
        res["ablations_pending"] = list(ABLATIONS)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(results_dir() / f"{NAME}-{mode}.json", res)
    return res


def ablation_rows(acfg, d, model, tok, out, mats, grad_cache, length, ccfg, *, log, progress) -> list[dict[str, Any]]:
    """Each whole-pool ablation against ICP mean Δ: raw (with the attenuation-corrected value) and partial."""
    from .. import stats as S

    abl = A.score_all(acfg, d, model, tok, out, only=list(ccfg.ablations), progress=progress, grad_cache=grad_cache,
                      log=log)
    ids = [e.id for e in d["pool"]]
    D = mats["icp"].subset(ids).values
    rows = []
    for name in ccfg.ablations:
        if name not in abl:
            continue
        V = abl[name].subset(ids).values
        a_view, b_view = (V, "mean"), (mats["ip"].subset(ids).values, "mean")
        if name == "icp_chat":      # the chat template's ICP against the same inner product
            pair = (a_view, b_view)
        else:                       # a gradient ablation against the paper template's ICP
            pair = ((D, "mean"), a_view)
        ag = S.agreement(pair[0][0], pair[1][0], pair[0][1], pair[1][1], n_boot=ccfg.n_boot, seed=ccfg.seed)
        par = S.controlled_agreement(pair[0][0], pair[1][0], length, pair[0][1], pair[1][1], method="partial",
                                     n_boot=ccfg.n_boot, seed=ccfg.seed)
        # against the reference pair (ICP mean Δ vs the inner product over q/v of every block), paired
        ref_b = mats["ip"].subset(ids).values
        if name == "icp_chat":
            dif = S.agreement_difference(ref_b, D, V, n_boot=ccfg.n_boot, seed=ccfg.seed)
        else:
            dif = S.agreement_difference(D, ref_b, V, n_boot=ccfg.n_boot, seed=ccfg.seed)
        rows.append({"ablation": name, "spearman": ag.spearman, "ci": list(ag.ci),
                     "difference_from_reference": _iv(dif),
                     "disattenuated": ag.disattenuated, "partial": _iv(par),
                     "seconds": float(abl[name].meta.get("seconds", 0.0)),
                     "settings": dict(A.valuator_specs(acfg, None)[name]["settings"]), "n_candidates": len(ids)})
    return rows


#: ``load(mode="full")``: the committed result (no computation).
load = partial(A.load_result, NAME)


@experiment(NAME, "null models, agreement controlled for answer length, a length intervention with content "
                  "fixed (dose-response), whole-pool ablations")
def confounds(*, smoke: bool = False, seed: int = 0) -> dict:
    res = run("smoke" if smoke else "full", seed=seed)
    lc = res.get("length_controlled", {}).get("icp_mean_delta vs ip", {})
    return {"raw": lc.get("raw"), "partial": lc.get("partial"), "pending": res["pending"], "seconds": res["seconds"]}


# ---------------------------------------------------------------- what notebook 05 says, computed from the results

#: Readable names for the text (the science package does not import the course's style; a test
#: checks that the course's figure labels say the same).
NAMES = {
    **A.NAMES,
    "icp_mean_delta": "ICP mean Δ", "icp_win_rate": "ICP win-rate", "icp_per_token": "ICP per-token Δ",
    "ip": "inner product", "cosine": "cosine", "ip_per_candidate_token": "inner product ÷ candidate tokens",
    "ip_per_token_loss": "inner product of the per-token losses", "answer_length": "answer length",
    "candidate_nll": "the model's loss on the candidate", "candidate_nll_per_token": "the model's loss per answer token",
    "gradient_norm": "gradient norm", "random": "a random number",
    # the whole-pool ablations, each against ICP mean Δ (the chat template's ICP against the inner product)
    "ip_last2": "inner product, q/v of the last two blocks", "ip_linear": "inner product, every linear layer (projected)",
    "icp_chat": "ICP with the chat template", "psl": "the authors' signed-log inner product",
}
#: The methods of :func:`length_controlled_table`, in words.
METHOD_NAMES = {"raw": "raw", "partial": "partial, given answer tokens", "stratified": "within length quintiles",
                "per_token": "per-token forms", "ip_per_candidate_token": "inner product ÷ candidate tokens"}
#: The valuators of the paper, in the order the text names them.
PAPER_VALUATORS = ("icp_mean_delta", "icp_win_rate", "ip", "cosine")
#: The interventional stages (present once the variant pool has been scored).
INTERVENTION_KEYS = ("intervention", "variant_pool", "dose_response", "prediction")
PENDING = "pending"


def name_of(key: str) -> str:
    """The readable name of a valuator, null model or form (the key itself when unknown)."""
    return NAMES.get(key, key)


def _pair_key(a: str, b: str) -> str:
    return f"{a} vs {b}"


def _finite(x) -> bool:
    return x is not None and np.isfinite(x)


def _iv_facts(entry: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{spearman, ci, strength, excludes_zero}`` of one interval entry (None when missing or NaN)."""
    if not entry or not _finite(entry.get("spearman")):
        return None
    ci = [float(c) if _finite(c) else float("nan") for c in entry["ci"]]
    return {"spearman": float(entry["spearman"]), "ci": ci, "strength": A.strength(entry["spearman"]),
            "excludes_zero": bool(ci[0] > 0 or ci[1] < 0)}


def raw_agreement(res: dict[str, Any], agreement_summary: dict[str, Any] | None, pair: str) -> dict[str, Any] | None:
    """The one raw number of a pair: the agreement run's (section 2 of notebook 05) when it has the
    pair, so a comparison is reported with one number; else this analysis's raw row."""
    if agreement_summary and pair in agreement_summary.get("agreement", {}):
        e = agreement_summary["agreement"][pair]
        return {"spearman": e["spearman"], "ci": list(e["ci"])}
    return res.get("length_controlled", {}).get(pair, {}).get("raw")


def null_vs(res: dict[str, Any], null: str, valuator: str) -> dict[str, Any] | None:
    """Spearman (with its CI) of a null model and a valuator (None when not measured)."""
    return res.get("null_models", {}).get(null, {}).get("spearman_vs", {}).get(valuator)


def probe_count_spread(Va: np.ndarray, Vb: np.ndarray, ks, *, n_draws: int = 200, seed: int = 0,
                       how_a: str = "mean", how_b: str = "mean") -> list[dict[str, Any]]:
    """Spearman of the candidate scores over ``n_draws`` random subsets of ``k`` probes, for each ``k``.

    One random subset of ``k`` probes (an ablation row) is one draw from this distribution: its
    mean says what ``k`` probes give on average, its 2.5–97.5% range how far one draw can land
    from it. Returns per ``k``: ``mean``, ``median``, ``range95`` and ``fraction_at_least`` (a
    function of the draws: kept as the sorted ``values``)."""
    from ..stats import aggregate, spearman

    rng = np.random.default_rng(seed)
    P = Va.shape[1]
    out = []
    for k in ks:
        k = int(k)
        vals = np.array([spearman(aggregate(Va[:, c], how_a), aggregate(Vb[:, c], how_b))
                         for c in (rng.choice(P, size=k, replace=False) for _ in range(n_draws if k < P else 1))])
        out.append({"k": k, "mean": float(np.nanmean(vals)), "median": float(np.nanmedian(vals)),
                    "range95": [float(np.nanquantile(vals, 0.025)), float(np.nanquantile(vals, 0.975))],
                    "values": np.sort(vals).tolist()})
    return out


def _slope(x, y) -> float | None:
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return None
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def _slope_txt(slope: float | None, ci: Sequence[float] | None) -> str:
    if slope is None or not _finite(slope):
        return ""
    if ci is None:
        return f" ({slope:+.2f} per unit of spread)"
    return f" ({slope:+.2f} per unit of spread [{ci[0]:+.2f}, {ci[1]:+.2f}])"


def _trend_word(slope: float | None, ci: Sequence[float] | None) -> str:
    """'rises' / 'falls' when the slope's interval excludes 0; without an interval, the sign."""
    if ci is None or slope is None:
        return _sign_word(slope)
    lo, hi = ci
    return "rises" if lo > 0 else ("falls" if hi < 0 else "shows no detectable trend")


def _sign_word(v: float | None, eps: float = 1e-12) -> str:
    if v is None:
        return "could not be computed"
    return "rises" if v > eps else ("falls" if v < -eps else "stays flat")


def claims(res: dict[str, Any], agreement_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """The facts notebook 05's text states, as values a test can check against the cached results.

    Each stage that the result does not hold (listed under ``pending``, or absent) is the
    string ``"pending"``, never a guessed value. Words follow :func:`llm_agreement.strength`
    (|ρ| < 0.3 weak, < 0.6 moderate, else strong).
    """
    pending = set(res.get("pending", []))
    out: dict[str, Any] = {"rule": {"weak": "|ρ| < 0.3", "moderate": "0.3 ≤ |ρ| < 0.6", "strong": "|ρ| ≥ 0.6"},
                           "n_candidates": res.get("n_candidates"), "n_probes": res.get("n_probes"),
                           "paper_spearman": A.PAPER_SPEARMAN, "pending": sorted(pending)}
    # raw agreement of the pairs, with the null model that agrees with both valuators of the pair best
    raw, nulls_best = {}, {}
    for a, b in PAIRS:
        key = _pair_key(a, b)
        f = _iv_facts(raw_agreement(res, agreement_summary, key))
        if f is None:
            continue
        both = {}
        for n in NULL_NAMES:
            ra, rb = null_vs(res, n, a), null_vs(res, n, b)
            if ra and rb and _finite(ra["spearman"]) and _finite(rb["spearman"]):
                both[n] = min(ra["spearman"], rb["spearman"])
        if both:
            best = max(both, key=both.get)
            f["best_null"] = best
            f["best_null_with_both"] = both[best]
            f["no_better_than_null"] = bool(f["spearman"] <= both[best])
            weaker = min((null_vs(res, best, a), null_vs(res, best, b)), key=lambda e: e["spearman"])
            f["best_null_ci"] = list(weaker["ci"])
            f["best_null_overlaps"] = _overlap(weaker["ci"], f["ci"])
            given = ((res.get("null_controlled") or {}).get(key) or {}).get(best)
            if given:
                f["given_best_null"] = _iv_facts(given)
        raw[key] = f
    out["raw"] = raw
    # the null model each paper valuator correlates with most (by |ρ|)
    for v in PAPER_VALUATORS:
        cand = {n: null_vs(res, n, v) for n in NULL_NAMES}
        cand = {n: e for n, e in cand.items() if e and _finite(e["spearman"])}
        if cand:
            n = max(cand, key=lambda k: abs(cand[k]["spearman"]))
            nulls_best[v] = {"null": n, **_iv_facts(cand[n])}
    out["closest_null"] = nulls_best
    # length: each valuator's correlation with answer tokens, and does IP follow length more than ICP?
    out["length_correlation"] = {v: _iv_facts(null_vs(res, "answer_length", v))
                                 for v in (*PAPER_VALUATORS, "icp_per_token", "ip_per_candidate_token")
                                 if null_vs(res, "answer_length", v)}
    md = raw.get(_pair_key("icp_mean_delta", "ip"))
    ipl = out["length_correlation"].get("ip")
    if md and ipl:
        out["ip_follows_length_more_than_icp"] = bool(ipl["spearman"] > md["spearman"])
    # length-controlled agreement
    if "length_controlled" in res:
        lc = {}
        for key, row in res["length_controlled"].items():
            r = _iv_facts(raw_agreement(res, agreement_summary, key)) or _iv_facts(row.get("raw"))
            facts = {m: _iv_facts(row.get(m)) for m in ("partial", "stratified", "per_token", "ip_per_candidate_token")
                     if row.get(m)}
            facts["raw"] = r
            for m in ("partial", "stratified", "per_token"):
                if facts.get(m) and r:
                    facts[f"{m}_below_raw"] = bool(facts[m]["spearman"] < r["spearman"])
                    facts[f"{m}_overlaps_raw"] = _overlap(facts[m]["ci"], r["ci"])
            lc[key] = facts
        out["length_controlled"] = lc
    else:
        out["length_controlled"] = PENDING
    if "pair_level" in res:
        pl = res["pair_level"]["raw"]
        out["pair_level"] = {"mean": pl["mean"], "ci": pl["ci"], "strength": A.strength(pl["mean"]),
                             "excludes_zero": bool(pl["ci"][0] > 0 or pl["ci"][1] < 0),
                             "fraction_positive": pl["fraction_positive"], "n_probes": pl["n_probes"]}
    else:
        out["pair_level"] = PENDING
    out["log_token_sd"] = res.get("log_token_sd")
    # examples or kinds of example: agreement within task categories and between their means
    if "category_structure" in res:
        cs = {}
        for pool, t in res["category_structure"].items():
            row = t.get(_pair_key("icp_mean_delta", "ip"))
            if not row:
                continue
            f = {m: _iv_facts(row[m]) for m in ("raw", "within_groups", "between_groups") if row.get(m)}
            f["n_categories"] = t["n_categories"]
            f["between_above_within"] = bool(f["between_groups"]["spearman"] > f["within_groups"]["spearman"])
            f["intervals_overlap"] = _overlap(f["between_groups"]["ci"], f["within_groups"]["ci"])
            cs[pool] = f
        out["category_structure"] = cs
    else:
        out["category_structure"] = PENDING
    # the intervention
    if "intervention" in res and "intervention" not in pending:
        eff = {}
        for v, e in res["intervention"].items():
            lo, hi = e["rank_ci"]
            eff[v] = {"rank_effect": e["rank_effect"], "rank_ci": [lo, hi], "effect": e["effect"], "ci": e["ci"],
                      "fraction_long_higher": e["fraction_long_higher"], "n_instructions": e["n_instructions"],
                      "direction": "longer ranks higher" if _finite(lo) and lo > 0 else
                      ("longer ranks lower" if _finite(hi) and hi < 0 else "no detectable effect")}
        out["intervention"] = eff
    else:
        out["intervention"] = PENDING
    if "dose_response" in res and "dose_response" not in pending:
        dr = res["dose_response"]
        sd = [row["log_token_sd"] for row in dr]
        sl_raw = _slope(sd, [row["raw"]["spearman"] for row in dr])
        sl_par = _slope(sd, [row["partial"]["spearman"] for row in dr])
        trend = (res.get("prediction") or {}).get("slope", {})
        out["dose_response"] = {"slope_raw": sl_raw, "slope_partial": sl_par,
                                "raw": _trend_word(sl_raw, (trend.get("raw") or {}).get("ci")),
                                "partial": _trend_word(sl_par, (trend.get("partial") or {}).get("ci")),
                                "slope_raw_ci": (trend.get("raw") or {}).get("ci"),
                                "slope_partial_ci": (trend.get("partial") or {}).get("ci"),
                                "sd_range": [min(sd), max(sd)], "n_levels": len(dr)}
    else:
        out["dose_response"] = PENDING
    if "prediction" in res and "prediction" not in pending:
        pr = res["prediction"]
        pred = {}
        for m in ("raw", "partial"):
            e = pr.get(m) or {}
            if not _finite(e.get("spearman")):
                pred[m] = None
                continue
            lo, hi = e["ci"]
            where = ("inside" if _finite(lo) and _finite(hi) and lo <= A.PAPER_SPEARMAN <= hi else
                     ("above" if _finite(hi) and A.PAPER_SPEARMAN > hi else
                      "below" if _finite(lo) and A.PAPER_SPEARMAN < lo else "undetermined"))
            pred[m] = {"spearman": e["spearman"], "ci": [lo, hi], "strength": A.strength(e["spearman"]),
                       "paper_relative_to_ci": where}
        # the variant pool is scored on fewer probes than the run: its agreement is attenuated by
        # probe noise; the run's measured reliability at that probe count gives the factor
        k = (res.get("variant_pool") or {}).get("n_probes")
        curves = (agreement_summary or {}).get("reliability_curves", {})
        rel_k = {n: dict(zip(c["k"], c["reliability"])).get(k) for n, c in curves.items()} if k else {}
        if pred.get("raw") and rel_k.get("icp_mean_delta") and rel_k.get("ip"):
            f = float(np.sqrt(rel_k["icp_mean_delta"] * rel_k["ip"]))
            lo, hi = pred["raw"]["ci"]
            pred["attenuation"] = {"n_probes": k, "reliability_icp": rel_k["icp_mean_delta"], "reliability_ip": rel_k["ip"],
                                   "factor": f, "corrected": min(1.0, pred["raw"]["spearman"] / f),
                                   "corrected_ci": [min(1.0, lo / f), min(1.0, hi / f)]}
            c_lo, c_hi = pred["attenuation"]["corrected_ci"]
            pred["attenuation"]["paper_relative_to_corrected_ci"] = (
                "inside" if c_lo <= A.PAPER_SPEARMAN <= c_hi else ("above" if A.PAPER_SPEARMAN > c_hi else "below"))
        pred["log_token_sd"] = pr["log_token_sd"]
        pred["extrapolates_by"] = pr.get("extrapolates_by", 0.0)
        pred["max_log_token_sd_reached"] = pr.get("max_log_token_sd_reached")
        out["prediction"] = pred
    else:
        out["prediction"] = PENDING
    out["ablations"] = res["ablations"] if "ablations" in res and "ablations" not in pending else PENDING
    out["ablations_pending"] = list(res.get("ablations_pending", []))
    # the ablations whose paired difference from the reference has an interval above 0, and the largest of them
    rows = out["ablations"] if out["ablations"] != PENDING else []
    higher = [r for r in rows if _above_reference(r)]
    out["ablations_above_reference"] = [r["ablation"] for r in higher]
    out["ablations_below_reference"] = [r["ablation"] for r in rows if _below_reference(r)]
    best = max(higher, key=lambda r: r["spearman"]) if higher else None
    out["ablation_lever"] = ({**best, "kind": ABLATION_KINDS.get(best["ablation"], "gradients")} if best else None)
    return out


def _above_reference(row: dict[str, Any]) -> bool:
    ci = (row.get("difference_from_reference") or {}).get("ci")
    return bool(ci and _finite(ci[0]) and ci[0] > 0)


def _below_reference(row: dict[str, Any]) -> bool:
    ci = (row.get("difference_from_reference") or {}).get("ci")
    return bool(ci and _finite(ci[1]) and ci[1] < 0)


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether two intervals ``[lo, hi]`` overlap (then the data cannot tell the two values apart)."""
    return bool(_finite(a[0]) and _finite(a[1]) and _finite(b[0]) and _finite(b[1]) and a[0] <= b[1] and b[0] <= a[1])


def _fmt_iv(e: dict[str, Any], d: int = 2) -> str:
    lo, hi = e["ci"]
    return f"{e['spearman']:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


def _zero(e: dict[str, Any]) -> str:
    lo, hi = e["ci"]
    if e["excludes_zero"] and min(abs(lo), abs(hi)) < 0.005:
        return f"its interval only just excludes 0: it ends at {lo if abs(lo) < abs(hi) else hi:.3f}"
    return "its interval excludes 0" if e["excludes_zero"] else "its interval includes 0"


def _pct_points(e: dict[str, Any]) -> str:
    lo, hi = e["rank_ci"]
    return f"{e['rank_effect']:+.0f} percentile points [{lo:+.0f}, {hi:+.0f}]"


def verdict(res: dict[str, Any], agreement_summary: dict[str, Any] | None = None) -> str:
    """Notebook 05's verdict: a Markdown paragraph per question, every number from the results,
    in plain words (:data:`NAMES`); a stage not yet run is said to be pending."""
    c = claims(res, agreement_summary)
    n = name_of
    md = c["raw"].get(_pair_key("icp_mean_delta", "ip"))
    wr = c["raw"].get(_pair_key("icp_win_rate", "ip"))
    if md is None:
        return "The agreement of ICP mean Δ and the inner product has not been measured yet (pending)."
    parts = []
    s = (f"**What agrees with what.** On {c['n_candidates']} candidates × {c['n_probes']} probes, ICP mean Δ and the "
         f"inner product agree **{md['strength']}ly**: Spearman {_fmt_iv(md)} (two-way 95% interval; {_zero(md)}).")
    if wr:
        s += (f" The paper's score, the ICP win-rate, gives {_fmt_iv(wr)} with the inner product — "
              f"{'also ' if wr['strength'] == md['strength'] else ''}{wr['strength']} ({_zero(wr)}).")
    s += " Words follow one rule: |ρ| below 0.3 is weak, below 0.6 moderate, above that strong."
    parts.append(s)
    L = c["length_correlation"]
    if "ip" in L and "icp_mean_delta" in L:
        ip_null = c["closest_null"].get("ip")
        s = (f"**The length confound.** The inner product follows the length of the candidate's answer "
             f"({_fmt_iv(L['ip'])}, {L['ip']['strength']}) "
             + ("more closely than it follows ICP" if c.get("ip_follows_length_more_than_icp") else
                "less closely than it follows ICP")
             + f" ({md['spearman']:.2f}); ICP mean Δ follows length {L['icp_mean_delta']['strength']}ly at most "
             f"({_fmt_iv(L['icp_mean_delta'])}; {_zero(L['icp_mean_delta'])}).")
        if ip_null and ip_null["null"] != "answer_length":
            s += (f" Of the null models, {n(ip_null['null'])} correlates most with the inner product "
                  f"({ip_null['spearman']:.2f})")
            via = null_vs(res, ip_null["null"], "answer_length")
            s += (f", and it grows with length itself (Spearman with answer tokens {via['spearman']:.2f})."
                  if via and _finite(via["spearman"]) else ".")
        if "ip_per_candidate_token" in L:
            s += (f" Divide the inner product by the candidate's answer tokens and its correlation with length becomes "
                  f"{L['ip_per_candidate_token']['spearman']:.2f}.")
        if "best_null" in md:
            if md["no_better_than_null"]:
                s += (f" ICP and the inner product agree **no better than a null model does with both**: "
                      f"{n(md['best_null'])} correlates at least {md['best_null_with_both']:.2f} with each, "
                      f"against their {md['spearman']:.2f} with each other.")
            elif md.get("best_null_overlaps"):
                lo, hi = md["best_null_ci"]
                s += (f" The best null model, {n(md['best_null'])}, reaches {md['best_null_with_both']:.2f} "
                      f"[{lo:.2f}, {hi:.2f}] with the one of the two it agrees with less: below their "
                      f"{md['spearman']:.2f} with each other as a point, with overlapping intervals.")
                g = md.get("given_best_null")
                if g:
                    s += (f" Overlap is not a test; partialling that null model out is: given {n(md['best_null'])}, the pair "
                          f"agrees at {_fmt_iv(g)} ({_zero(g)}), so "
                          + ("they share something beyond it." if g["excludes_zero"] else
                             "these data cannot show that they share anything beyond it."))
            else:
                s += (f" No null model does as well with both: the best, {n(md['best_null'])}, reaches "
                      f"{md['best_null_with_both']:.2f} with the one of the two it agrees with less, below their "
                      f"{md['spearman']:.2f} with each other, and the intervals do not overlap.")
        parts.append(s)
    lc = c["length_controlled"]
    if lc == PENDING:
        parts.append("**What remains after control** is pending: the length-controlled analysis has not been run.")
    else:
        row = lc.get(_pair_key("icp_mean_delta", "ip"), {})
        bits = []
        for m in ("partial", "stratified", "per_token"):
            if row.get(m):
                bits.append(f"{METHOD_NAMES[m]} {_fmt_iv(row[m])} ({row[m]['strength']}; {_zero(row[m])})")
        s = "**What remains after control.** ICP mean Δ vs the inner product: " + "; ".join(bits) + "."
        lower = [METHOD_NAMES[m] for m in ("partial", "stratified", "per_token") if row.get(f"{m}_below_raw")]
        if lower:
            s += f" Every control that was run lowers the point estimate below the raw {md['spearman']:.2f}" \
                if len(lower) == len([m for m in ("partial", "stratified", "per_token") if row.get(m)]) else \
                f" Controls that lower the point estimate below the raw {md['spearman']:.2f}: {', '.join(lower)}"
            overl = [m for m in ("partial", "stratified", "per_token") if row.get(f"{m}_overlaps_raw")]
            s += ("; every interval still overlaps the raw one, so the drop itself is not established by these "
                  "data alone" if len(overl) == len([m for m in ("partial", "stratified", "per_token") if row.get(m)])
                  else "")
            s += "."
        wrow = lc.get(_pair_key("icp_win_rate", "ip"), {})
        if wrow.get("partial"):
            s += (f" For the win-rate the partial agreement is {_fmt_iv(wrow['partial'])} ({_zero(wrow['partial'])})"
                  + (f" and the per-token forms give {_fmt_iv(wrow['per_token'])}" if wrow.get("per_token") else "")
                  + ".")
        pl = c["pair_level"]
        if pl != PENDING:
            s += (f" Pair by pair — what the first-order theory predicts — the Spearman of Δ and the inner product "
                  f"across candidates, probe by probe, averages {pl['mean']:.2f} [{pl['ci'][0]:.2f}, {pl['ci'][1]:.2f}] "
                  f"over {pl['n_probes']} probes ({pl['strength']}; {_zero(pl)}), positive for "
                  f"{pl['fraction_positive']:.0%} of them.")
        parts.append(s)
    cs = c["category_structure"]
    if cs != PENDING and cs:
        bits = []
        for pool in ("instructions", "synthetic"):
            f = cs.get(pool)
            if not f:
                continue
            what = "the instruction set" if pool == "instructions" else "the synthetic task families"
            bits.append(f"on {what} ({f['n_categories']} categories; raw {f['raw']['spearman']:.2f}) ICP mean Δ and the "
                        f"inner product agree {f['within_groups']['strength']}ly about which example is better "
                        f"**within** a category ({_fmt_iv(f['within_groups'])}; {_zero(f['within_groups'])}) and "
                        f"{f['between_groups']['strength']}ly about which **category** is better "
                        f"({_fmt_iv(f['between_groups'])}; {_zero(f['between_groups'])})")
        s = "**Examples or kinds of example?** Split each agreement into its two parts: " + "; ".join(bits) + "."
        if all(f["between_above_within"] for f in cs.values()):
            overl = [("the instruction set" if p == "instructions" else "the synthetic families")
                     for p, f in cs.items() if f["intervals_overlap"]]
            if overl:
                s += (" In both pools the between-category point estimate is the larger, but on " + " and ".join(overl)
                      + " the two intervals overlap: there the split is suggestive, not established.")
            else:
                s += (" In both pools the between-category agreement is the larger, with intervals that do not overlap: "
                      "what the two valuators share is more about which kind of example helps than about which example "
                      "of that kind does.")
        syn = cs.get("synthetic")
        if syn and not syn["within_groups"]["excludes_zero"] and syn["between_groups"]["excludes_zero"]:
            s += (f" On the synthetic families, whose answers are a few tokens long, the within-family agreement is not "
                  f"detected ({_fmt_iv(syn['within_groups'])}): the agreement there ({syn['raw']['spearman']:.2f}) lies "
                  "between families.")
        parts.append(s)
    ab = c["ablations"]
    if ab != PENDING and ab:
        bits = []
        for r in ab:
            e = {"spearman": r["spearman"], "ci": r["ci"]}
            t = (f"{n(r['ablation'])}: {_fmt_iv(e)} ({A.strength(r['spearman'])}), given length "
                 f"{_fmt_iv(r['partial'])}")
            dif = r.get("difference_from_reference")
            if dif and _finite(dif.get("spearman")):
                lo, hi = dif["ci"]
                t += (f", {dif['spearman']:+.2f} [{lo:+.2f}, {hi:+.2f}] against the reference "
                      + (("(higher; the interval only just excludes 0)" if lo < 0.01 else "(higher)") if lo > 0 else
                         ("(lower; the interval only just excludes 0)" if hi > -0.01 else "(lower)") if hi < 0 else
                         "(no detectable difference)"))
            bits.append(t)
        s = (f"**Which choices of the setup?** The same candidates and probes with one choice changed — the gradients, "
             f"the form of the score, the Hessian, or ICP's prompt template —, each against ICP mean Δ (the chat template's "
             f"ICP against the inner product; reference: ICP mean Δ vs the inner product over the q/v weights of every "
             f"block, {md['spearman']:.2f}): " + "; ".join(bits) + ".")
        best = c["ablation_lever"]
        if best:
            s += (f" The largest, {n(best['ablation'])}, agrees {A.strength(best['spearman'])}ly "
                  f"({best['spearman']:.2f}), {best['difference_from_reference']['spearman']:+.2f} above the reference with "
                  f"an interval above 0, and {_fmt_iv(best['partial'])} given length"
                  + (f": {LEVER_WORDS[best['kind']]} moves the agreement, and the higher agreement holds "
                     "with length controlled." if best["partial"]["ci"][0] > 0 else "."))
        if c.get("ablations_pending"):
            s += " Not run on the whole pool yet: " + ", ".join(n(a) for a in c["ablations_pending"]) + "."
        parts.append(s)
    iv = c["intervention"]
    if iv == PENDING:
        parts.append("**The intervention** (the same instructions with short and long correct answers) is pending: "
                     "it has not been run, so the causal part of the length story is not yet measured; the text "
                     "above rests on correlations.")
    else:
        say = {"longer ranks higher": "ranks the long version higher", "longer ranks lower": "ranks the long version lower",
               "no detectable effect": "shows no detectable effect"}
        bits = [f"the {n(v)} {say[iv[v]['direction']]} ({_pct_points(iv[v])}, long above short for "
                f"{iv[v]['fraction_long_higher']:.0%} of instructions)"
                for v in ("ip", "icp_mean_delta", "icp_win_rate") if v in iv]
        k = next(iter(iv.values()))["n_instructions"]
        parts.append(f"**The intervention.** With the instruction fixed ({k} instructions, each answered correctly both briefly "
                     f"and at length), a longer answer moves each valuator's rank as follows: " + "; ".join(bits) + ". This "
                     f"shows that length raises each score; whether it is what the two scores share is the question of the "
                     f"controls above and of the spread below.")
    pr, dr = c["prediction"], c["dose_response"]
    sd = c.get("log_token_sd")
    sd_txt = f"{sd:.2f}" if _finite(sd) else "unknown"
    if pr == PENDING or dr == PENDING:
        less = "less" if _finite(sd) and sd < WIDE_LOG_TOKEN_SD else "no less"
        parts.append(f"**The paper's {A.PAPER_SPEARMAN}.** This pool's answers vary {less} in length than the paper's (standard "
                     f"deviation of log answer tokens {sd_txt}; the analysis takes {WIDE_LOG_TOKEN_SD}, the spread of a pool that, "
                     f"like the paper's Alpaca, spans about 4 to 500 answer tokens). Whether a pool as wide would reach {A.PAPER_SPEARMAN} is what the "
                     f"dose–response curve answers, and it is pending.")
    else:
        s = (f"**The paper's {A.PAPER_SPEARMAN}.** This pool's standard deviation of log answer tokens is {sd_txt}. The "
             f"analysis takes {pr['log_token_sd']} for a pool that, like the paper's Alpaca, spans about 4 to 500 answer "
             f"tokens (an assumption about the paper's data: it does not report the spread). As the variant pools widen "
             f"the spread ({dr['sd_range'][0]:.2f} to {dr['sd_range'][1]:.2f}), the raw agreement "
             f"{dr['raw']}{_slope_txt(dr['slope_raw'], dr.get('slope_raw_ci'))} and the length-controlled one "
             f"{dr['partial']}{_slope_txt(dr['slope_partial'], dr.get('slope_partial_ci'))}.")
        if pr.get("raw"):
            inside = pr.get("extrapolates_by", 0) == 0
            s += (f" At a spread of {pr['log_token_sd']} ({'inside the measured range, so an interpolation' if inside else 'beyond the measured range'}) "
                  f"the raw agreement is {_fmt_iv(pr['raw'])} ({pr['raw']['strength']}); the paper's {A.PAPER_SPEARMAN} lies "
                  f"{pr['raw']['paper_relative_to_ci']} that interval")
            if pr.get("partial"):
                s += f", and given length it is {_fmt_iv(pr['partial'])}"
            s += "."
            att = pr.get("attenuation")
            if att:
                s += (f" The variant pools are scored on {att['n_probes']} probes, where this run's reliabilities are "
                      f"{att['reliability_icp']:.2f} (ICP mean Δ) and {att['reliability_ip']:.2f} (inner product): probe noise "
                      f"shrinks that agreement by a factor of about {att['factor']:.2f}. Corrected, it is about "
                      f"{att['corrected']:.2f} [{att['corrected_ci'][0]:.2f}, {att['corrected_ci'][1]:.2f}], and the paper's "
                      f"{A.PAPER_SPEARMAN} lies {att['paper_relative_to_corrected_ci']} that interval.")
        if pr.get("extrapolates_by", 0) > 0:
            s += f" (The prediction extrapolates {pr['extrapolates_by']:.2f} beyond the widest pool measured.)"
        parts.append(s)
        parts.append(_answer(c, md, agreement_summary))
    return "\n\n".join(parts)


def _answer(c: dict[str, Any], md: dict[str, Any], agreement_summary: dict[str, Any] | None) -> str:
    """The closing paragraph: what the measurements say about 0.23 here against the paper's 0.73."""
    pr, dr = c["prediction"], c["dose_response"]
    corr = ((agreement_summary or {}).get("agreement", {}).get(_pair_key("icp_mean_delta", "ip")) or {}).get("disattenuated")
    bits = [f"probe noise is not the reason (corrected for attenuation the agreement is {corr:.2f})" if _finite(corr)
            else "probe noise was not measured here"]
    reach = []
    if pr != PENDING and pr.get("raw"):
        att = pr.get("attenuation")
        reach.append(att["corrected"] if att else pr["raw"]["spearman"])
        trend = "" if dr == PENDING or dr["raw"] == "rises" else ", though its rise with the spread is not detectable with these intervals"
        txt = (f"in pools whose answer lengths vary about as widely as the paper's the raw agreement is about "
               f"{pr['raw']['spearman']:.2f}" + (f" ({att['corrected']:.2f} corrected for probe noise)" if att else "") + trend)
        if pr.get("partial"):
            txt += f", and given length it is {pr['partial']['spearman']:.2f}"
        bits.append(txt)
    best = c["ablation_lever"]
    if best:
        reach += [r["disattenuated"] if _finite(r.get("disattenuated")) else r["spearman"] for r in c["ablations"]
                  if r["ablation"] in c["ablations_above_reference"]]
        bits.append(f"{LEVER_WORDS[best['kind']]} moves it ({name_of(best['ablation'])}: {best['spearman']:.2f}, "
                    f"{best['difference_from_reference']['spearman']:+.2f} against the reference in a paired comparison)")
    s = "**So why 0.23 here and 0.73 in the paper?** On this model and this data: " + "; ".join(bits) + "."
    if reach and max(reach) < A.PAPER_SPEARMAN:
        att = pr.get("attenuation") if pr != PENDING else None
        s += (f" No single lever measured here reaches {A.PAPER_SPEARMAN} as a point estimate, even corrected for probe "
              f"noise (the largest is {max(reach):.2f})"
              + (", although the corrected interval of the widest pools includes it"
                 if att and att["paper_relative_to_corrected_ci"] == "inside" else "")
              + ". Not varied here: the model (the paper uses Pythia-1b, this course SmolLM2-135M), the data (Alpaca) and "
              "the paper's exact pairing (win-rate against the signed-log inner product on the paper's layers).")
        lc = c["length_controlled"]
        here = (lc.get(_pair_key("icp_mean_delta", "ip")) or {}).get("partial") if lc != PENDING else None
        if here and pr.get("partial") and pr["partial"]["spearman"] <= here["spearman"]:
            s += (f" Given length, the widest pools agree no more than this pool does ({pr['partial']['spearman']:.2f} "
                  f"against {here['spearman']:.2f}): whatever a wide length spread adds, it adds through length.")
    return s


def summary(res: dict[str, Any], agreement_summary: dict[str, Any] | None = None) -> str:
    """The Summary bullets of notebook 05, with their numbers."""
    c = claims(res, agreement_summary)
    md = c["raw"].get(_pair_key("icp_mean_delta", "ip"))
    lines = []
    if agreement_summary:
        rel = agreement_summary["reliability"]
        vals = [rel[k]["value"] for k in ("icp_mean_delta", "icp_win_rate", "ip")]
        lines.append(f"- Reliability first: across {agreement_summary['n_probes']} probes ICP mean Δ reaches "
                     f"{vals[0]:.2f}, the win-rate {vals[1]:.2f} and the inner product {vals[2]:.2f}"
                     + (", all at least 0.8, so probe noise is not what keeps agreement low." if min(vals) >= 0.8 else
                        "; below 0.8, probe noise lowers every agreement that follows."))
    if md:
        lines.append(f"- ICP mean Δ and the inner product agree {md['strength']}ly: Spearman {_fmt_iv(md)} on "
                     f"{c['n_candidates']} candidates"
                     + (f", well below the paper's {A.PAPER_SPEARMAN} (outside the interval)." if md["ci"][1] < A.PAPER_SPEARMAN
                        else f"; the paper's {A.PAPER_SPEARMAN} is inside the interval."))
    L = c["length_correlation"]
    if "ip" in L:
        icp = L.get("icp_mean_delta")
        lines.append(f"- The inner product follows answer length {L['ip']['strength']}ly (Spearman with answer tokens "
                     f"{L['ip']['spearman']:.2f})" + (f"; ICP mean Δ {icp['strength']}ly ({icp['spearman']:.2f})." if icp
                                                      else "."))
    lc = c["length_controlled"]
    if lc != PENDING and md:
        row = lc.get(_pair_key("icp_mean_delta", "ip"), {})
        if row.get("partial") and row.get("per_token"):
            lines.append(f"- Controlled for length the agreement is {row['partial']['strength']}: "
                         f"{row['partial']['spearman']:.2f} given answer tokens, {row['per_token']['spearman']:.2f} "
                         f"between the per-token forms ({_zero(row['per_token'])}).")
    pl = c["pair_level"]
    if pl != PENDING:
        lines.append(f"- Pair by pair, within each probe, Δ follows the inner product {pl['strength']}ly "
                     f"(mean Spearman {pl['mean']:.2f}, positive for {pl['fraction_positive']:.0%} of probes).")
    cs = c["category_structure"]
    if cs != PENDING and cs.get("instructions"):
        f = cs["instructions"]
        lines.append(("- Most of what they share is about kinds of example: between categories "
                      if f["between_above_within"] and not f["intervals_overlap"] else
                      "- Between categories they agree more than within one, as point estimates (the intervals overlap): "
                      if f["between_above_within"] else
                      "- What they share is no more about kinds of example than about examples: between categories ")
                     + f"{f['between_groups']['spearman']:.2f}, within a category {f['within_groups']['spearman']:.2f}"
                     + (f" (synthetic families: {cs['synthetic']['between_groups']['spearman']:.2f} between, "
                        f"{cs['synthetic']['within_groups']['spearman']:.2f} within)." if cs.get("synthetic") else "."))
    iv = c["intervention"]
    if iv != PENDING and "ip" in iv and "icp_mean_delta" in iv:
        both = all(iv[k]["direction"] == "longer ranks higher" for k in ("ip", "icp_mean_delta"))
        lines.append(("- A longer answer raises both scores (the same instruction, answered briefly or at length): "
                      if both else "- The intervention (the same instruction, answered briefly or at length): ")
                     + f"a longer answer moves the inner "
                     f"product's rank by {iv['ip']['rank_effect']:+.0f} percentile points "
                     f"[{iv['ip']['rank_ci'][0]:+.0f}, {iv['ip']['rank_ci'][1]:+.0f}] and ICP mean Δ's by "
                     f"{iv['icp_mean_delta']['rank_effect']:+.0f} [{iv['icp_mean_delta']['rank_ci'][0]:+.0f}, "
                     f"{iv['icp_mean_delta']['rank_ci'][1]:+.0f}].")
    best = c["ablation_lever"]
    if best:
        d = best["difference_from_reference"]
        lines.append(f"- What moves it: {LEVER_WORDS[best['kind']]}. With {name_of(best['ablation'])} the agreement is "
                     f"{best['spearman']:.2f} ({A.strength(best['spearman'])}), {d['spearman']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] above "
                     f"the reference pair (ICP mean Δ vs the inner product over every block) in a paired comparison, and "
                     f"{best['partial']['spearman']:.2f} given length.")
    pr = c["prediction"]
    if pr == PENDING:
        lines.append("- The length intervention and the prediction for a pool as wide as the paper's are pending.")
    elif pr.get("raw"):
        lines.append(f"- A pool as wide in answer length as the paper's is predicted to give "
                     f"{pr['raw']['spearman']:.2f} [{pr['raw']['ci'][0]:.2f}, {pr['raw']['ci'][1]:.2f}]; the paper's "
                     f"{A.PAPER_SPEARMAN} lies {pr['raw']['paper_relative_to_ci']} its interval"
                     + (f", and given length the prediction is {pr['partial']['spearman']:.2f} "
                        f"[{pr['partial']['ci'][0]:.2f}, {pr['partial']['ci'][1]:.2f}]"
                        + (": a wider spread of lengths raises the raw agreement, not what the two share beyond length."
                           if c["dose_response"] != PENDING and c["dose_response"]["raw"] == "rises"
                           and c["dose_response"]["partial"] != "rises" else ".")
                        if pr.get("partial") else "."))
        att = pr.get("attenuation")
        if att:
            lines.append(f"- Corrected for the probe noise of the variant pools ({att['n_probes']} probes) that is about "
                         f"{att['corrected']:.2f} [{att['corrected_ci'][0]:.2f}, {att['corrected_ci'][1]:.2f}]: no lever "
                         f"measured here reaches {A.PAPER_SPEARMAN} as a point estimate; the model, the data and the "
                         f"paper's exact valuator pair were not varied.")
    return "\n".join(lines)


def null_ablation_rows(mats: dict[str, Any], ids: list[str], *, n_boot: int, seed: int = 0,
                       pairs: tuple[tuple[str, str], ...] = (("answer_length", "ip"), ("answer_length", "icp_mean_delta"))
                       ) -> list[dict[str, Any]]:
    """Forest rows of null models on the candidates ``ids`` (the ablation candidates), beside the
    ablation rows: Spearman of a null model with a paper valuator, two-way interval; no
    attenuation correction (a null model has no probe noise, so no split-half reliability)."""
    from ..stats import controlled_agreement

    v = views(mats, ids)
    rows = []
    for a, b in pairs:
        if a not in v or b not in v:
            continue
        iv = controlled_agreement(v[a][0], v[b][0], np.zeros(len(ids)), v[a][1], v[b][1], method="raw",
                                  n_boot=n_boot, seed=seed)
        rows.append({"name": f"null model: {name_of(a)} vs {name_of(b)}", "group": "null model",
                     "spearman": float(iv.value), "ci": [float(iv.lo), float(iv.hi)], "disattenuated": None,
                     "n_candidates": len(ids), "n_probes": int(v[b][0].shape[1]),
                     "note": "what a valuator that only knew the answer length would score"})
    return rows
