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
from ..icp import per_token
from . import llm_agreement as A
from . import agreement_words as W
from . import runs as R

NAME = "confounds"
STAGES = ("null_models", "length_controlled", "intervention", "ablations")
#: The valuators of the paper and their views: (matrix name, aggregate).
PAPER_VIEWS = {"icp_mean_delta": ("icp", "mean"), "icp_win_rate": ("icp", "win_rate"), "ip": ("ip", "mean"),
               "cosine": ("cosine", "mean")}
#: The pairs whose agreement is controlled for length.
PAIRS = (("icp_mean_delta", "ip"), ("icp_win_rate", "ip"), ("icp_mean_delta", "cosine"))
#: Whole-pool ablations of the instruction run (names of :func:`llm_agreement.valuator_specs`).
ABLATIONS = ("ip_last2", "ip_linear", "icp_chat", "psl", "ekfac")
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
    out["icp_per_token"] = (per_token(D, t_p), "mean")
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
        mats[name] = R.scored_matrix(v, A._hash_of(v), pool, probes, out, name, log=log)
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
        vmats[name] = R.scored_matrix(v, A._hash_of(v), todo, probes, out, f"variants_{name}", log=log)
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
load = partial(R.load_result, NAME)


@experiment(NAME, "null models, agreement controlled for answer length, a length intervention with content "
                  "fixed (dose-response), whole-pool ablations")
def confounds(*, smoke: bool = False, seed: int = 0) -> dict:
    res = run("smoke" if smoke else "full", seed=seed)
    lc = res.get("length_controlled", {}).get("icp_mean_delta vs ip", {})
    return {"raw": lc.get("raw"), "partial": lc.get("partial"), "pending": res["pending"], "seconds": res["seconds"]}


# ---------------------------------------------------------------- analysis notebook 05 draws

#: Readable names for the text (the science package does not import the course's style; a test
#: checks that the course's figure labels say the same).
NAMES = {
    **W.NAMES,
    "icp_mean_delta": "ICP mean Δ", "icp_win_rate": "ICP win-rate", "icp_per_token": "ICP per-token Δ",
    "ip": "inner product", "cosine": "cosine", "ip_per_candidate_token": "inner product ÷ candidate tokens",
    "ip_per_token_loss": "inner product of the per-token losses", "answer_length": "answer length",
    "candidate_nll": "the model's loss on the candidate", "candidate_nll_per_token": "the model's loss per answer token",
    "gradient_norm": "gradient norm", "random": "a random number",
    # the whole-pool ablations, each against ICP mean Δ (the chat template's ICP against the inner product)
    "ip_last2": "inner product, q/v of the last two blocks", "ip_linear": "inner product, every linear layer (projected)",
    "icp_chat": "ICP with the chat template", "psl": "the authors' signed-log inner product",
}

def name_of(key: str) -> str:
    """The readable name of a valuator, null model or form (the key itself when unknown)."""
    return NAMES.get(key, key)


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
