"""Do ICP and gradient influence agree on a real LLM? The measurement behind notebook 05.

``instruction-agreement``: SmolLM2-135M-Instruct on the project's instruction set.

Data. Every category is split the same way (seeded): 12 examples go to the **pool**
(312 candidates), 5 are **probe candidates**, 3 are held out for **evaluation** (fine-
tuning outcomes). 10% of the pool is corrupted in equal shares of three labelled kinds (answer
swapped with another category's, swapped within the category, truncated). 64 **probes**
are chosen by k-means over SmolLM2's mean hidden states of the probe candidates, with no
category supplying more than 1/8 of them. The same design runs on the synthetic task
families (``data="synthetic"``) as the data ablation.

Valuators (one ScoreMatrix each, cached with its configuration hash):

* ``icp`` — per-probe deltas ``ll(p|z) − ll(p)`` (``paper`` template; aggregates: win-rate,
  mean Δ, per-token Δ);
* ``icp_neutral`` — the same for one neutral, irrelevant demonstration: subtracting its row
  gives deltas against a baseline that has seen *a* demonstration (format priming removed);
* ``icp_chat`` — the ``chat`` template, on the whole pool (the confounds experiment reports it there);
* ``ip``, ``cosine``, ``psl`` — inner product, cosine and the authors' ``paper_signed_log``
  over the q/v projections of every block (13M numbers per example);
* ``ip_last2`` — inner product over the q/v projections of the last two blocks;
* ``ip_linear`` — inner product over every linear layer of every block through a seeded
  CountSketch projection to 8192 dimensions;
* ``ekfac`` — EK-FAC influence (kronfluence) on the q/v projections of every block.

Analysis (:func:`summarise`, pure: it only reads matrices): reliability of every valuator
(split-half across probes, Spearman–Brown, two-way bootstrap CI, probes needed for 0.8),
agreement of every pair (Spearman, two-way CI, Kendall, attenuation-corrected), the
ablations (each a row against the reference ICP mean Δ vs inner product on the same
ablation candidates), noisy-label AUC per corruption kind, and the diagnostics (probe
composition, win base rate, per-probe correlations of Δ and IP within categories).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import numpy as np

from ..data import Example, Pool
from ..paths import results_dir
from ..registry import experiment
from .agreement_words import (NAMES, PAPER_SPEARMAN, claims, direction, name_of, noise_verdict,  # noqa: F401
                              referee_lines, strength, verdict)
from .runs import load_result, recorded_data, run_seconds, scored_matrix  # noqa: F401  (the run framework)

NAME = "instruction-agreement"
QV_ALL = r"regex:^model\.layers\.\d+\.self_attn\.(q_proj|v_proj)\.weight$"
QV_LAST2 = r"regex:^model\.layers\.(28|29)\.self_attn\.(q_proj|v_proj)\.weight$"
#: A neutral, irrelevant demonstration in the probes' format: "a demonstration happened".
NEUTRAL_DEMO = Example(id="neutral-demo", instruction="Say hello.", input="",
                       output="Hello! How can I help you today?")
MODES = ("full", "smoke", "tiny")


#: The order in which the category split draws its parts (see ``AgreementConfig.__post_init__``).
SPLIT_ORDER = ("pool", "probe_candidates", "eval")


@dataclass
class AgreementConfig:
    """Everything that determines the measurement (hashed into the cached results)."""

    data: str = "instructions"                 # "instructions" | "synthetic"
    model: str = "smollm2-135m-instruct"
    template: str = "paper"
    split: dict[str, int] = field(default_factory=lambda: {"pool": 12, "probe_candidates": 5, "eval": 3})
    n_probes: int = 64
    max_probe_fraction: float = 1 / 8
    noise: float = 0.10
    grad_params: str = QV_ALL
    last2_params: str = QV_LAST2
    linear_params: str = "paper"
    projection_dim: int = 8192
    projection: str = "countsketch"
    ekfac_damping: float = 1e-3
    hessian_examples: int = 64
    n_ablation: int = 96
    probe_counts: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        # The category split draws its parts in the order of ``split``; a configuration read back
        # from a result file (JSON objects are written with sorted keys) must give the same pool,
        # so the parts always come in one order: pool, probe candidates, evaluation, then the rest.
        first = [k for k in SPLIT_ORDER if k in self.split]
        self.split = {k: self.split[k] for k in first + sorted(k for k in self.split if k not in SPLIT_ORDER)}

    @classmethod
    def for_mode(cls, mode: str, data: str = "instructions", seed: int = 0) -> "AgreementConfig":
        """``full`` (the committed run), ``smoke`` (SmolLM2, a few candidates: minutes) or
        ``tiny`` (a random tiny-llama: seconds, for tests)."""
        if mode not in MODES:
            from ..errors import ConfigError

            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
        synthetic = data == "synthetic"
        full_split = {"pool": 22, "probe_candidates": 10, "eval": 4} if synthetic else None
        if mode == "full":
            return cls(data=data, split=full_split, seed=seed) if synthetic else cls(data=data, seed=seed)
        small = dict(split={"pool": 2, "probe_candidates": 1, "eval": 1}, n_probes=8, n_ablation=12,
                     probe_counts=[2, 4, 8], n_boot=100, hessian_examples=8, projection_dim=256, noise=0.2,
                     max_probe_fraction=1 / 4, seed=seed, data=data)
        if mode == "smoke":
            return cls(**small)
        return cls(model="tiny-llama", grad_params=r"regex:\.(q_proj|v_proj)\.weight$",
                   last2_params=r"regex:^model\.layers\.1\.self_attn\.(q_proj|v_proj)\.weight$", **small)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_dir(mode: str, data: str = "instructions") -> Path:
    """Where the matrices of one run are cached: ``<results>/<name>-<mode>/``."""
    return results_dir() / (f"{NAME}-{mode}" if data == "instructions" else f"synthetic-agreement-{mode}")


def grad_cache_dir(cfg: AgreementConfig, out: Path) -> Path:
    """Where the gradient valuators of the run in ``out`` keep their per-example gradients."""
    from ..utils import cache_dir, config_hash

    return cache_dir() / "gradients" / f"{out.name}-{config_hash(cfg.to_dict())}"


def open_run(mode: str, data: str = "instructions", seed: int = 0) -> tuple[AgreementConfig, Any, Any, dict[str, Any], Path]:
    """``(cfg, model, tokenizer, data, out)`` of one pool's run: what the experiments built on
    it (ground truth, fine-tuning) start from. Seeds everything first, as ``run`` does."""
    from ..models import load_model
    from ..utils import seed_everything

    cfg = AgreementConfig.for_mode(mode, data, seed)
    seed_everything(cfg.seed)
    model, tokenizer = load_model(cfg.model, device="cpu")
    out = run_dir(mode, data)
    return cfg, model, tokenizer, build_data(cfg, model, tokenizer, recorded=recorded_data(out)), out


# ---------------------------------------------------------------- data

def build_data(cfg: AgreementConfig, model, tokenizer, *, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pool (with labelled corruptions), probes (stratified k-means), evaluation set.

    ``recorded``: the design a run saved (:func:`recorded_data`). When its pool is this
    configuration's pool, its probes are taken as recorded instead of being chosen again:
    k-means on the model's hidden states is not bit-stable across processors (on another
    AMD EPYC, 5 of the instruction run's 64 probes came out different), and a run's cached
    matrices belong to the probes they were scored on.
    """
    from ..probes import select_probes_kmeans

    parts, pool = build_pool(cfg)
    rng = np.random.default_rng(cfg.seed)
    ablation = sorted(rng.choice(len(pool), size=min(cfg.n_ablation, len(pool)), replace=False).tolist())
    ablation_ids = [pool[i].id for i in ablation]
    by_id = {e.id: e for e in parts["probe_candidates"]}
    order = (recorded or {}).get("probe_order", ())
    # the recorded pool is a JSON object (keys written sorted): the same pool has the same ids, in any order
    if (recorded is not None and sorted(recorded.get("pool", ())) == sorted(e.id for e in pool)
            and len(order) == cfg.n_probes and all(i in by_id for i in order)):
        probes = [by_id[i] for i in order]
    else:
        probes = select_probes_kmeans(model, tokenizer, parts["probe_candidates"], cfg.n_probes, seed=cfg.seed,
                                      max_fraction_per_group=cfg.max_probe_fraction)
    return {"pool": pool, "probes": Pool(list(probes), name="probes"), "eval": Pool(list(parts["eval"]), name="eval"),
            "ablation_ids": ablation_ids}


def build_pool(cfg: AgreementConfig) -> tuple[dict[str, Any], Pool]:
    """The split of the data by category and the candidate pool with its labelled corruptions
    (no model needed: :func:`build_data` adds the probes, which need one)."""
    from ..instructions import corrupt, load_instructions, split_by_category
    from ..synthetic import family_names, make_synthetic_pool

    if cfg.data == "instructions":
        full = load_instructions()
    elif cfg.data == "synthetic":
        per = sum(cfg.split.values())
        full = make_synthetic_pool(per * len(family_names()), seed=cfg.seed)
    else:
        from ..errors import ConfigError

        raise ConfigError(f"data must be 'instructions' or 'synthetic', got {cfg.data!r}.")
    parts = split_by_category(full, cfg.split, seed=cfg.seed)
    return parts, corrupt(Pool(list(parts["pool"]), name="pool"), cfg.noise, seed=cfg.seed)


def data_info(data: dict[str, Any]) -> dict[str, Any]:
    """The JSON-able description of the data (saved beside the matrices)."""
    return {
        "pool": {e.id: {"category": e.task, "corruption": e.meta.get("corruption")} for e in data["pool"]},
        "probes": {p.id: {"category": p.task} for p in data["probes"]},
        "probe_order": [p.id for p in data["probes"]],        # the matrices' column order (JSON objects get sorted)
        "eval": [e.id for e in data["eval"]],
        "ablation_ids": list(data["ablation_ids"]),
    }


# ---------------------------------------------------------------- the valuators

def valuator_specs(cfg: AgreementConfig, grad_cache: Path | None) -> dict[str, dict[str, Any]]:
    """``name -> {"valuator", "settings", "candidates": "pool" | "ablation" | "neutral", "template"}``."""
    grad = {"params": cfg.grad_params}
    cached = {"cache_dir": str(grad_cache)} if grad_cache is not None else {}
    return {
        "icp": {"valuator": "icp", "settings": {"score": "delta"}, "candidates": "pool"},
        "icp_neutral": {"valuator": "icp", "settings": {"score": "delta"}, "candidates": "neutral"},
        "icp_chat": {"valuator": "icp", "settings": {"score": "delta"}, "candidates": "pool", "template": "chat"},
        "ip": {"valuator": "inner_product", "settings": {**grad, **cached}, "candidates": "pool"},
        "cosine": {"valuator": "cosine", "settings": {**grad, **cached}, "candidates": "pool"},
        "psl": {"valuator": "paper_signed_log", "settings": {**grad, **cached}, "candidates": "pool"},
        "ip_last2": {"valuator": "inner_product", "settings": {"params": cfg.last2_params}, "candidates": "pool"},
        "ip_linear": {"valuator": "inner_product", "candidates": "pool",
                      "settings": {"params": cfg.linear_params, "projection_dim": cfg.projection_dim,
                                   "projection": cfg.projection}},
        "ekfac": {"valuator": "ekfac", "candidates": "pool",
                  "settings": {**grad, "damping": cfg.ekfac_damping, "hessian_examples": cfg.hessian_examples}},
    }


def _hash_of(v) -> str:
    from ..utils import config_hash

    return config_hash(v.config())


def score_all(cfg: AgreementConfig, data: dict[str, Any], model, tokenizer, out: Path, *,
              only: list[str] | None = None, progress: bool = True, log: Callable[[str], None] = print,
              grad_cache: Path | None = None, shard: tuple[int, int] = (0, 1),
              ablation_only: Collection[str] = ()) -> dict[str, Any]:
    """Every valuator's ScoreMatrix, cached in ``out`` (``<name>.json`` + ``.safetensors``).

    ``ablation_only``: valuators scored on the ablation candidates only (what the ground
    truth compares), saved as ``<name>_ablation`` and returned under ``<name>`` — for a
    valuator the agreement run skipped on the whole pool (EK-FAC on long examples).

    A cached matrix is reused only when its ``config_hash`` equals the valuator's and its
    ids match; otherwise it is recomputed, resumably (chunks under ``out/runs/<name>``).
    With ``shard=(rank, world)`` this process scores only its share of the chunks; the
    shard that finishes last assembles and saves the matrix (the others skip it).
    """
    from ..valuators import make

    specs = valuator_specs(cfg, grad_cache)
    pool = list(data["pool"])
    subsets = {"pool": pool, "ablation": [data["pool"].by_id(i) for i in data["ablation_ids"]],
               "neutral": [NEUTRAL_DEMO]}
    probes = list(data["probes"])
    mats: dict[str, Any] = {}
    for name, spec in specs.items():
        if only is not None and name not in only:
            continue
        v = make(spec["valuator"], model, tokenizer, template=spec.get("template", cfg.template), seed=cfg.seed,
                 model_name=cfg.model, progress=progress, **spec["settings"])
        cands = subsets["ablation" if name in ablation_only else spec["candidates"]]
        if v.needs_fit:
            v.fit(pool, defer=True)   # fitted only if the matrix has to be scored (EK-FAC's factors take minutes)
        saved_as = f"{name}_ablation" if name in ablation_only else name
        sm = scored_matrix(v, _hash_of(v), cands, probes, out, saved_as, shard=shard, log=log)
        if sm is None:
            continue
        mats[name] = sm
    return mats


# ---------------------------------------------------------------- the analysis

def _values(mats: dict[str, Any], name: str, candidate_ids: list[str] | None = None):
    sm = mats[name]
    return sm.subset(candidate_ids) if candidate_ids is not None else sm


def icp_views(mats: dict[str, Any], candidate_ids: list[str] | None = None) -> dict[str, tuple[np.ndarray, str]]:
    """The per-probe matrices and aggregates of every ICP score on ``candidate_ids``.

    ``{name: (V [C, P], aggregate)}`` for ``icp_win_rate``, ``icp_mean_delta``,
    ``icp_per_token`` and ``icp_win_rate_neutral`` (deltas against the neutral demonstration).
    """
    from ..icp import per_token_values

    icp = _values(mats, "icp", candidate_ids)
    D = icp.values
    views = {"icp_win_rate": (D, "win_rate"), "icp_mean_delta": (D, "mean"),
             "icp_per_token": (per_token_values(icp), "mean")}
    if "icp_neutral" in mats:
        views["icp_win_rate_neutral"] = (D - mats["icp_neutral"].values[0][None, :], "win_rate")
    return views


def _views(mats: dict[str, Any], ids: list[str]) -> dict[str, tuple[np.ndarray, str]]:
    out = icp_views(mats, ids)
    for name in ("ip", "cosine", "psl", "ip_last2", "ip_linear", "ekfac"):
        if name in mats:
            out[name] = (_values(mats, name, ids).values, "mean")
    return out


def _agreement(a, b, *, n_boot: int, seed: int) -> dict[str, Any]:
    from .. import stats as S

    ag = S.agreement(a[0], b[0], a[1], b[1], n_boot=n_boot, seed=seed)
    return {"spearman": ag.spearman, "ci": list(ag.ci), "kendall": ag.kendall, "disattenuated": ag.disattenuated,
            "disattenuated_ci": list(ag.disattenuated_ci), "rel_a": ag.rel_a, "rel_b": ag.rel_b,
            "n_candidates": ag.n_candidates, "n_probes": ag.n_probes}


def _auc_by_kind(values: np.ndarray, ids: list[str], info: dict[str, Any], *, n_boot: int = 0,
                 seed: int = 0) -> tuple[dict[str, float], dict[str, list[float]]]:
    """ROC AUC of ``−value`` as a detector of each corruption kind (and ``any``), against the
    clean candidates; with ``n_boot`` > 0 also a percentile interval (candidates resampled)."""
    from .. import stats as S

    def auc_of(v, y):
        return S.roc_auc(y, -v)

    kinds = sorted({v["corruption"] for v in info["pool"].values() if v["corruption"]})
    out, cis = {}, {}
    for kind in ["any", *kinds]:
        keep, y = [], []
        for i, c in enumerate(ids):
            k = info["pool"][c]["corruption"]
            if k is None or kind == "any" or k == kind:
                keep.append(i)
                y.append(int(k is not None))
        y = np.asarray(y)
        if 0 < y.sum() < len(y):
            out[kind] = auc_of(values[keep], y)
            if n_boot > 0:
                cis[kind] = list(S.bootstrap_ci(values[keep], y, auc_of, n_boot=n_boot, seed=seed))
    return out, cis


def summarise(cfg: AgreementConfig, mats: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """Every number notebook 05 shows, from the cached matrices alone (deterministic)."""
    from .. import stats as S

    ids = mats["icp"].candidate_ids
    probes = mats["icp"].probe_ids
    nb, seed = cfg.n_boot, cfg.seed
    views = _views(mats, ids)
    # reliability first
    reliability = {}
    for name, (V, how) in views.items():
        r = S.split_half(V, how, n_boot=nb // 2, seed=seed)
        need = S.probes_needed(r.value, V.shape[1], 0.8)    # probes are whole: the smallest count that reaches 0.8
        reliability[name] = {"value": r.value, "ci": r.ci, "half": r.half,
                             "probes_needed_0_8": need if not np.isfinite(need) else int(np.ceil(need - 1e-9))}
    curves = {name: S.reliability_curve(V, how, [k // 2 for k in cfg.probe_counts if k // 2 >= 1], seed=seed)
              for name, (V, how) in views.items() if name in ("icp_win_rate", "icp_mean_delta", "ip")}
    # agreement of the main pairs
    pairs = [("icp_mean_delta", "ip"), ("icp_win_rate", "ip"), ("icp_per_token", "ip"), ("icp_mean_delta", "cosine"),
             ("icp_mean_delta", "ekfac"), ("icp_win_rate", "ekfac"), ("ip", "cosine"), ("ip", "ekfac"),
             ("icp_win_rate", "icp_mean_delta")]
    agreement = {f"{a} vs {b}": _agreement(views[a], views[b], n_boot=nb, seed=seed)
                 for a, b in pairs if a in views and b in views}
    # ablations, all on the same ablation candidates, each against the reference
    abl_ids = [c for c in info["ablation_ids"] if c in set(ids)]
    av = _views(mats, abl_ids)
    ref = ("icp_mean_delta", "ip")
    rows: list[dict[str, Any]] = []

    def add(name: str, group: str, a, b, note: str = "", compared_with: str | None = None) -> None:
        r = _agreement(a, b, n_boot=nb, seed=seed)
        rows.append({"name": name, "group": group, "spearman": r["spearman"], "ci": r["ci"],
                     "disattenuated": r["disattenuated"], "disattenuated_ci": r["disattenuated_ci"],
                     "n_candidates": r["n_candidates"], "n_probes": r["n_probes"], "note": note,
                     "compared_with": compared_with or (rows[0]["name"] if rows else None)})

    add("reference: ICP mean Δ vs IP (q/v every block), paper template, zero-shot, all probes", "reference",
        av[ref[0]], av[ref[1]])
    add("aggregation: win-rate", "aggregation", av["icp_win_rate"], av["ip"])
    add("aggregation: per-token Δ", "aggregation", av["icp_per_token"], av["ip"])
    if "icp_win_rate_neutral" in av:
        add("baseline: neutral demonstration (win-rate)", "baseline", av["icp_win_rate_neutral"], av["ip"],
            "a per-probe baseline cannot change a mean's ranking, only the win-rate's; compared with the "
            "zero-shot win-rate, so that only the baseline changes", compared_with="aggregation: win-rate")
    if "icp_chat" in mats:
        chat = mats["icp_chat"].subset(abl_ids)
        add("template: chat (mean Δ)", "template", (chat.values, "mean"), av["ip"])
    for name, label in (("ip_last2", "q/v of the last two blocks"), ("ip_linear", "every linear layer, CountSketch k")):
        if name in av:
            add(f"gradient subset: {label}" + (f" = {cfg.projection_dim}" if name == "ip_linear" else ""),
                "gradient subset", av[ref[0]], av[name])
    for name, label in (("psl", "paper_signed_log"), ("cosine", "cosine")):
        if name in av:
            add(f"gradient score: {label}", "gradient score", av[ref[0]], av[name])
    rng = np.random.default_rng(seed)
    P = len(probes)
    for k in cfg.probe_counts:
        if k < P:
            cols = np.sort(rng.choice(P, size=k, replace=False))
            add(f"probes: {k}", "number of probes", (av[ref[0]][0][:, cols], "mean"), (av[ref[1]][0][:, cols], "mean"))
    # in- vs out-of-domain: each candidate's score over the probes of its own category vs the others
    cat = info["pool"]
    pcat = np.array([info["probes"][p]["category"] for p in probes])
    same = np.array([[cat[c]["category"] == pc for pc in pcat] for c in abl_ids], dtype=float)
    Da, Ia = av[ref[0]][0], av[ref[1]][0]
    has_in = same.sum(1) > 0
    if has_in.sum() >= 3:
        a_in = (Da * same).sum(1)[has_in] / same.sum(1)[has_in]
        b_in = (Ia * same).sum(1)[has_in] / same.sum(1)[has_in]
        a_out = (Da * (1 - same)).sum(1) / (1 - same).sum(1)
        b_out = (Ia * (1 - same)).sum(1) / (1 - same).sum(1)
        for label, x, y in (("domain: in-domain probes (same category)", a_in, b_in),
                            ("domain: out-of-domain probes (other categories)", a_out, b_out)):
            lo, hi = S.bootstrap_ci(x, y, "spearman", n_boot=nb, seed=seed)
            rows.append({"name": label, "group": "domain", "spearman": S.spearman(x, y), "ci": [lo, hi],
                         "disattenuated": None, "disattenuated_ci": None, "n_candidates": int(len(x)),
                         "n_probes": None, "note": "candidates resampled (each candidate has its own probe set)",
                         "compared_with": rows[0]["name"]})
    by_name = {r["name"]: r for r in rows}
    for r in rows:   # each row against the row it differs from by one change (the reference unless stated)
        r["change"] = r["spearman"] - by_name[r["compared_with"]]["spearman"] if r["compared_with"] else 0.0
    biggest = biggest_single_change(rows)
    # noisy labels
    auc_pairs = {name: _auc_by_kind(S.aggregate(V, how), ids, info, n_boot=nb, seed=seed)
                 for name, (V, how) in views.items()}
    auc = {name: a for name, (a, _) in auc_pairs.items()}
    auc_ci = {name: c for name, (_, c) in auc_pairs.items()}
    # diagnostics
    D, IP = views["icp_mean_delta"][0], views["ip"][0]
    per_probe = []
    for j, p in enumerate(probes):
        rows_in = [i for i, c in enumerate(ids) if cat[c]["category"] == pcat[j]]
        if len(rows_in) >= 4:
            per_probe.append({"probe": p, "category": str(pcat[j]), "n": len(rows_in),
                              "spearman": S.spearman(D[rows_in, j], IP[rows_in, j])})
    comp: dict[str, int] = {}
    for p in probes:
        comp[str(info["probes"][p]["category"])] = comp.get(str(info["probes"][p]["category"]), 0) + 1
    diagnostics = {
        "probe_composition": dict(sorted(comp.items(), key=lambda kv: (-kv[1], kv[0]))),
        "win_base_rate": float((D > 0).mean()),
        "win_base_rate_same_category": float((D[same_all(ids, probes, info)] > 0).mean()),
        "pair_spearman_delta_ip": S.spearman(D, IP),
        "per_probe_within_category": per_probe,
        "per_probe_within_category_median": float(np.median([r["spearman"] for r in per_probe
                                                             if np.isfinite(r["spearman"])])) if per_probe else None,
    }
    seconds = {name: float(sm.meta.get("seconds", float("nan"))) for name, sm in mats.items()}
    return {
        "config": cfg.to_dict(), "n_candidates": len(ids), "n_probes": len(probes),
        "n_ablation_candidates": len(abl_ids),
        "reliability": reliability, "reliability_curves": curves, "agreement": agreement,
        "ablations": rows, "biggest_mover": biggest["name"] if biggest else None, "auc_noise": auc, "auc_noise_ci": auc_ci,
        "diagnostics": diagnostics, "seconds": sum(v for v in seconds.values() if np.isfinite(v)),
        "seconds_per_valuator": seconds,
    }


def same_all(ids: list[str], probes: list[str], info: dict[str, Any]) -> np.ndarray:
    """Boolean ``[C, P]``: candidate and probe share a category."""
    return np.array([[info["pool"][c]["category"] == info["probes"][p]["category"] for p in probes] for c in ids])


# ---------------------------------------------------------------- running and loading

def run(mode: str = "full", data: str = "instructions", *, seed: int = 0, only: list[str] | None = None,
        skip: tuple[str, ...] = (), progress: bool = True, model=None, tokenizer=None,
        shard: tuple[int, int] = (0, 1)) -> dict[str, Any]:
    """Build the data, score every valuator (cached), summarise, write the JSON result.

    ``only``: score just these valuators and return without a summary (for sharded
    workers). ``skip``: leave these ablations out of the run and the summary; the result
    lists them under ``"skipped"`` so no reader takes a missing row for a measured one.
    """
    from ..models import load_model
    from ..utils import atomic_write_json, code_version, config_hash, seed_everything

    cfg = AgreementConfig.for_mode(mode, data, seed)
    out = run_dir(mode, data)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if model is None:
        model, tokenizer = load_model(cfg.model, device="cpu")
    t0 = time.perf_counter()
    d = build_data(cfg, model, tokenizer, recorded=recorded_data(out))
    info = data_info(d)
    atomic_write_json(out / "data.json", info)
    grad_cache = grad_cache_dir(cfg, out)
    if skip and only is None:
        only = [n for n in valuator_specs(cfg, grad_cache) if n not in skip]
        if not {"icp", "ip"} <= set(only):
            from ..errors import ConfigError

            raise ConfigError("skip may leave out ablations, not the measurement itself (icp and ip).")
        partial = False
    else:
        partial = only is not None
    mats = score_all(cfg, d, model, tokenizer, out, only=only, progress=progress, grad_cache=grad_cache, shard=shard)
    if partial:
        return {"scored": sorted(mats), "seconds": round(time.perf_counter() - t0, 1)}
    res = summarise(cfg, mats, info)
    res["skipped"] = sorted(skip)
    res["config_hash"] = config_hash(cfg.to_dict())
    res["code_version"] = code_version()
    path = results_dir() / (f"{NAME}-{mode}.json" if data == "instructions" else f"synthetic-agreement-{mode}.json")
    atomic_write_json(path, res)
    return res


def load(mode: str = "full", data: str = "instructions") -> dict[str, Any]:
    """The cached result of one run: ``{"summary", "mats", "info", "config"}`` (no computation)."""
    from ..errors import ConfigError
    from ..scores import ScoreMatrix

    out = run_dir(mode, data)
    path = results_dir() / (f"{NAME}-{mode}.json" if data == "instructions" else f"synthetic-agreement-{mode}.json")
    if not path.exists():
        raise ConfigError(f"No cached results at {path}; run `python -m icp_influence run {NAME}`"
                          + (" --smoke" if mode == "smoke" else "") + ".")
    summary = json.loads(path.read_text(encoding="utf-8"))
    mats = {p.stem: ScoreMatrix.load(p) for p in sorted(out.glob("*.json")) if p.stem != "data"}
    return {"summary": summary, "mats": mats, "info": json.loads((out / "data.json").read_text(encoding="utf-8")),
            "config": AgreementConfig(**summary["config"])}


#: Ablation groups that change one thing about the same candidates and probes. The others are
#: not single changes: ``number of probes`` rows are one random draw of probes each, ``domain``
#: rows give each candidate its own probes, ``data`` is another pool altogether.
SINGLE_CHANGE_GROUPS = ("aggregation", "baseline", "template", "gradient subset", "gradient score")


def biggest_single_change(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ablation row of :data:`SINGLE_CHANGE_GROUPS` whose agreement moves most (by |change|)."""
    movers = [r for r in rows if r["group"] in SINGLE_CHANGE_GROUPS and np.isfinite(r.get("change", np.nan))]
    return max(movers, key=lambda r: abs(r["change"])) if movers else None


def _result_keys(res: dict[str, Any]) -> dict[str, Any]:
    keep = ("n_candidates", "n_probes", "reliability", "agreement", "biggest_mover", "auc_noise", "seconds")
    return {k: res[k] for k in keep if k in res}


def with_synthetic(res: dict[str, Any], syn: dict[str, Any]) -> dict[str, Any]:
    """Add the synthetic run as the data ablation (other candidates and probes) and its summary."""
    ref = syn["agreement"]["icp_mean_delta vs ip"]
    res = dict(res)
    rows = [r for r in res["ablations"] if r["group"] != "data"]
    rows.append({"name": "data: synthetic task families (ICP mean Δ vs IP)", "group": "data",
                 "spearman": ref["spearman"], "ci": ref["ci"], "disattenuated": ref["disattenuated"],
                 "disattenuated_ci": ref["disattenuated_ci"], "n_candidates": ref["n_candidates"],
                 "n_probes": ref["n_probes"], "note": "the synthetic run: other candidates and probes",
                 "compared_with": rows[0]["name"], "change": ref["spearman"] - rows[0]["spearman"]})
    res["ablations"] = rows
    biggest = biggest_single_change(rows)
    res["biggest_mover"] = biggest["name"] if biggest else None
    res["synthetic"] = {k: syn[k] for k in ("n_candidates", "n_probes", "reliability", "agreement", "auc_noise",
                                            "auc_noise_ci", "diagnostics", "seconds") if k in syn}
    return res


@experiment(NAME, "ICP vs inner product / cosine / EK-FAC on SmolLM2 and the instruction set: reliability, "
                  "two-way CIs, ablations, noise AUC (plus the synthetic pool)")
def instruction_agreement(*, smoke: bool = False, seed: int = 0, skip: tuple[str, ...] = (),
                          synthetic: bool = True) -> dict:
    """``skip``: ablations to leave out (listed in the result); ``synthetic=False``: no data ablation."""
    from ..utils import atomic_write_json

    mode = "smoke" if smoke else "full"
    res = run(mode, "instructions", seed=seed, skip=skip)
    if synthetic:
        res = with_synthetic(res, run(mode, "synthetic", seed=seed, skip=skip))
    atomic_write_json(results_dir() / f"{NAME}-{mode}.json", res)
    return _result_keys(res)
