"""Do ICP and gradient influence agree on the embedded SmolLM2? And does fine-tuning on what
they select give similar models? (issue 5; notebooks 05 and 06)

``llm-agreement``: a synthetic pool over 12 families with 10% label noise; probes chosen by
k-means from held-out examples of half of the families (the other families are out of
domain); ICP (win-rate and mean delta), inner product, cosine and EK-FAC influence;
all pairwise agreements, per family and overall; noisy-label AUC of every valuator.

``finetune-selection``: LoRA fine-tuning of SmolLM2 on equal budgets picked by ICP-top,
IP-top, EK-FAC-top, random and ICP-bottom (3 seeds), evaluated on held-out in-domain
probes; the base model as reference.

Score matrices and results are cached under ``data/results/`` (``ICP_RESULTS_DIR``
overrides) so the notebooks can load them.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..paths import results_dir
from ..registry import experiment

#: Gradient parameters for SmolLM2 on CPU: the q/v projections (LoRA's targets) of the
#: last two blocks (884,736 numbers per example) -- the full "paper" selection (106M
#: numbers per example) does not fit 300+ candidates in memory without projection, and
#: projecting 106M dimensions is too slow on 2 cores.
SMOLLM2_PARAMS = r"regex:^model\.layers\.(28|29)\.self_attn\.(q_proj|v_proj)\.weight$"


@dataclass
class AgreementConfig:
    model: str = "smollm2-135m-instruct"
    n_families: int = 12
    per_family: int = 26           # pool examples per family (before held-out split)
    heldout_per_family: int = 6    # per family: probe candidates + fine-tuning evaluation
    n_probe_families: int = 6
    n_probes: int = 16
    noise: float = 0.10
    template: str = "paper"
    params: str = SMOLLM2_PARAMS
    ekfac_damping: float = 1e-3
    hessian_examples: int = 64
    n_boot: int = 500
    seed: int = 0

    @classmethod
    def for_mode(cls, smoke: bool | str, seed: int = 0) -> "AgreementConfig":
        """``"full"`` (False), ``"smoke"`` (True) or ``"tiny"`` (smoke sizes on the tiny-llama
        config: seconds, for notebooks when no cached SmolLM2 results exist)."""
        mode = tag(smoke)
        if mode == "smoke":
            return cls(per_family=3, heldout_per_family=3, n_probe_families=4, n_probes=4, n_boot=100,
                       hessian_examples=24, seed=seed)
        if mode == "tiny":
            return cls(model="tiny-llama", per_family=4, heldout_per_family=3, n_probe_families=4, n_probes=4,
                       n_boot=100, hessian_examples=24, params="paper", seed=seed)
        return cls(seed=seed)


def tag(smoke: bool | str) -> str:
    if isinstance(smoke, str):
        if smoke not in ("full", "smoke", "tiny"):
            from ..errors import ConfigError

            raise ConfigError(f"mode must be 'full', 'smoke' or 'tiny', got {smoke!r}.")
        return smoke
    return "smoke" if smoke else "full"


def build_data(cfg: AgreementConfig, model=None, tok=None) -> dict[str, Any]:
    """Pool (with noise), probes (k-means over held-out examples of the probe families),
    and the held-out evaluation sets (in-domain: probe families minus the probes)."""
    from ..data import Pool, add_label_noise
    from ..probes import select_probes_kmeans
    from ..synthetic import family_names, make_synthetic_pool, split_pool

    fams = family_names()[: cfg.n_families]
    rng = np.random.default_rng(cfg.seed)
    probe_fams = sorted(rng.choice(fams, size=cfg.n_probe_families, replace=False).tolist())
    full = make_synthetic_pool(cfg.n_families * (cfg.per_family + cfg.heldout_per_family), fams, seed=cfg.seed)
    train, held = split_pool(full, cfg.heldout_per_family, seed=cfg.seed)
    pool = add_label_noise(Pool(list(train), name="pool"), cfg.noise, seed=cfg.seed)
    probe_cands = held.filter(tasks=probe_fams, name="probe-candidates")
    probes = select_probes_kmeans(model, tok, probe_cands, cfg.n_probes, seed=cfg.seed)
    probe_ids = set(probes.ids)  # built once: a set() inside the comprehension is rebuilt per example
    rest = [ex for ex in held if ex.id not in probe_ids]
    eval_in = Pool([ex for ex in rest if ex.task in probe_fams], name="eval-in-domain")
    eval_out = Pool([ex for ex in rest if ex.task not in probe_fams], name="eval-out-of-domain", allow_empty=True)
    return {"families": fams, "probe_families": probe_fams, "pool": pool, "probes": probes,
            "eval_in": eval_in, "eval_out": eval_out}


def score_all(cfg: AgreementConfig, data: dict[str, Any], model, tok, out: Path, progress: bool = False) -> dict[str, Any]:
    """ICP, inner product, cosine and EK-FAC ScoreMatrices (cached under ``out``; a cached
    matrix is reused only when its configuration hash equals the valuator's)."""
    from ..scores import ScoreMatrix
    from ..valuators import Cosine, EkfacInfluence, Icp, InnerProduct

    pool, probes = list(data["pool"]), list(data["probes"])
    common = dict(template=cfg.template, seed=cfg.seed, progress=progress, model_name=cfg.model)
    grad = dict(params=cfg.params, **common)
    valuators = {
        "icp": Icp(model, tok, score="win_rate", **common),
        "ip": InnerProduct(model, tok, **grad),
        "cosine": Cosine(model, tok, **grad),
        "ekfac": EkfacInfluence(model, tok, damping=cfg.ekfac_damping, hessian_examples=cfg.hessian_examples, **grad),
    }
    mats: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name, v in valuators.items():
        if v.needs_fit:
            v.fit(pool)
        path = out / name
        if path.with_suffix(".json").exists():
            sm = ScoreMatrix.load(path)
            if sm.meta.get("config_hash") == _config_hash(v) and sm.candidate_ids == [e.id for e in pool] \
                    and sm.probe_ids == [p.id for p in probes]:
                mats[name] = sm
                timings[name] = float(sm.meta.get("seconds", float("nan")))
                continue
        sm = v.score(pool, probes)
        timings[name] = float(sm.meta["seconds"])
        sm.save(path)
        mats[name] = sm
    return {"mats": mats, "seconds": timings}


def _config_hash(v) -> str:
    from ..utils import config_hash

    return config_hash(v.config())


def _write_data_info(data: dict[str, Any], out: Path) -> None:
    from ..utils import atomic_write_json

    atomic_write_json(out / "data.json", {
        "families": data["families"], "probe_families": data["probe_families"],
        "pool": {ex.id: {"task": ex.task, "noisy": bool(ex.meta.get("noisy"))} for ex in data["pool"]},
        "probes": data["probes"].ids, "eval_in": data["eval_in"].ids, "eval_out": data["eval_out"].ids,
    })


def agreement_summary(mats: dict[str, Any], data_info: dict[str, Any], n_boot: int = 500, seed: int = 0) -> dict[str, Any]:
    """The JSON fields of ``llm-agreement`` from cached matrices (used by notebook 05 too)."""
    from .. import compare as C

    icp = mats["icp"]
    fam = {k: v["task"] for k, v in data_info["pool"].items()}
    noisy = [k for k, v in data_info["pool"].items() if v["noisy"]]
    valuators = {"icp_win_rate": (icp, "win_rate"), "icp_mean_delta": (icp, "mean"),
                 "ip": (mats["ip"], "mean"), "cosine": (mats["cosine"], "mean"), "ekfac": (mats["ekfac"], "mean")}
    allc = C.compare_all(valuators, n_boot=n_boot, seed=seed, families=fam,
                         probe_families=data_info["probe_families"], noisy_ids=noisy)
    ag = C.agreement((icp, "win_rate"), (mats["ip"], "mean"), n_boot=n_boot, seed=seed)
    dom = C.domain_spearman((icp, "win_rate"), (mats["ip"], "mean"), fam, data_info["probe_families"])
    return {
        "n_candidates": icp.shape[0],
        "n_probes": icp.shape[1],
        "spearman_icp_ip": ag.spearman,
        "spearman_icp_ip_ci": list(ag.ci),
        "kendall_icp_ip": ag.kendall,
        "top10pct_overlap_icp_ip": C.top_fraction_overlap((icp, "win_rate"), (mats["ip"], "mean"), 0.1),
        "auc_noise": {k: v["auc"] for k, v in allc["noise"].items()},
        "in_domain_spearman": dom["in_domain"],
        "out_of_domain_spearman": dom["out_of_domain"],
        "spearman_icp_mean_delta_ip": allc["pairs"]["icp_mean_delta|ip"]["spearman"],
        "spearman_matrix": {"names": allc["names"], "values": allc["spearman"]},
        "kendall_matrix": {"names": allc["names"], "values": allc["kendall"]},
        "pairs": allc["pairs"],
        "noise": allc["noise"],
        "probe_families": data_info["probe_families"],
    }


def _load_model(cfg: AgreementConfig):
    from ..models import load_model
    from ..utils import seed_everything

    seed_everything(cfg.seed)
    return load_model(cfg.model, device="cpu")


def run_agreement(smoke: bool | str, seed: int = 0, progress: bool = False, model=None, tok=None) -> dict[str, Any]:
    from ..utils import atomic_write_json

    cfg = AgreementConfig.for_mode(smoke, seed)
    out = results_dir() / f"agreement-{tag(smoke)}"
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.json"
    if cfg_path.exists() and json.loads(cfg_path.read_text()) != asdict(cfg):
        for f in out.glob("*"):  # stale cache from another configuration
            f.unlink()
    atomic_write_json(cfg_path, asdict(cfg))
    if model is None:
        model, tok = _load_model(cfg)
    t0 = time.perf_counter()
    data = build_data(cfg, model, tok)
    _write_data_info(data, out)
    scored = score_all(cfg, data, model, tok, out, progress=progress)
    info = json.loads((out / "data.json").read_text())
    res = agreement_summary(scored["mats"], info, n_boot=cfg.n_boot, seed=seed)
    res["seconds"] = {k: round(v, 1) for k, v in scored["seconds"].items()}
    res["config"] = asdict(cfg)
    res["data_seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_json(results_dir() / f"llm-agreement-{tag(smoke)}.json", res)
    return res


@experiment("llm-agreement", "ICP vs inner product / cosine / EK-FAC on SmolLM2: rank agreement, bins, noise AUC")
def llm_agreement(*, smoke: bool = False, seed: int = 0) -> dict:
    res = run_agreement(smoke, seed)
    keep = ("n_candidates", "n_probes", "spearman_icp_ip", "spearman_icp_ip_ci", "kendall_icp_ip",
            "top10pct_overlap_icp_ip", "auc_noise", "in_domain_spearman", "out_of_domain_spearman",
            "spearman_icp_mean_delta_ip", "seconds")
    return {k: res[k] for k in keep}


# ------------------------------------------------------------------ fine-tuning on selections

@dataclass
class SelectionConfig:
    budget: int = 24
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    method: str = "lora"
    epochs: int = 2
    batch_size: int = 4
    lr: float = 1e-3
    max_steps: int | None = None
    template: str = "paper"
    exact_match: bool = True
    metric: str = "answer_loglik_per_token"

    @classmethod
    def for_mode(cls, smoke: bool | str) -> "SelectionConfig":
        mode = tag(smoke)
        if mode == "smoke":
            return cls(budget=4, seeds=[0, 1], epochs=1, exact_match=False)
        if mode == "tiny":
            return cls(budget=6, seeds=[0, 1, 2], method="full", lr=3e-3, epochs=2, exact_match=False)
        return cls()


ARMS = ("icp-top", "ip-top", "ekfac-top", "random", "icp-bottom")


def arm_selections(mats: dict[str, Any], budget: int) -> dict[str, Any]:
    """The five arms at one budget (random: a fresh seeded subset per seed)."""
    from .. import selection as S

    icp = mats["icp"]
    ids = icp.candidate_ids
    return {
        "icp-top": S.top_k((icp, "win_rate"), budget),
        "ip-top": S.top_k((mats["ip"], "mean"), budget),
        "ekfac-top": S.top_k((mats["ekfac"], "mean"), budget),
        "random": lambda s: S.random_k(ids, budget, seed=1000 + int(s)),
        "icp-bottom": S.bottom_k((icp, "win_rate"), budget),
    }


def run_selection(smoke: bool | str, seed: int = 0, progress: bool = False) -> dict[str, Any]:
    from ..data import Pool
    from ..finetune import FinetuneConfig, run_arms
    from ..utils import atomic_write_json

    acfg = AgreementConfig.for_mode(smoke, seed)
    scfg = SelectionConfig.for_mode(smoke)
    model, tok = _load_model(acfg)
    out = results_dir() / f"agreement-{tag(smoke)}"
    if not (out / "data.json").exists() or not all((out / f"{n}.json").exists() for n in ("icp", "ip", "ekfac")):
        run_agreement(smoke, seed, progress=progress, model=model, tok=tok)
    data = build_data(acfg, model, tok)
    scored = score_all(acfg, data, model, tok, out, progress=progress)  # loads the cache
    sels = arm_selections(scored["mats"], scfg.budget)
    ft = FinetuneConfig(method=scfg.method, epochs=scfg.epochs, batch_size=scfg.batch_size, lr=scfg.lr,
                        max_steps=scfg.max_steps, template=scfg.template)
    heldout = Pool([*data["eval_in"], *data["eval_out"]], name="eval")
    outcome = run_arms(model, tok, data["pool"], sels, heldout, seeds=scfg.seeds, config=ft, metric=scfg.metric,
                       eval_families=data["probe_families"], exact_match_eval=scfg.exact_match, progress=progress)
    d = outcome.to_dict()
    noisy = set(data["pool"].noisy_ids())
    d["selected_noisy_fraction"] = {a: (float(np.mean([i in noisy for i in s])) if not callable(s) else None)
                                    for a, s in sels.items()}
    probe_fams = set(data["probe_families"])
    d["selected_in_domain_fraction"] = {
        a: (float(np.mean([data["pool"].by_id(i).task in probe_fams for i in s]))
            if not callable(s) else None) for a, s in sels.items()}
    d["metric_label"] = "held-out in-domain answer log-likelihood (nats / token)"
    d["selection_config"] = asdict(scfg)
    atomic_write_json(results_dir() / f"finetune-selection-{tag(smoke)}.json", d)
    return d


@experiment("finetune-selection", "LoRA-tune SmolLM2 on ICP/IP/EK-FAC-top, random and ICP-bottom subsets (seeds, 95% CI)")
def finetune_selection(*, smoke: bool = False, seed: int = 0) -> dict:
    d = run_selection(smoke, seed)
    arms = {a: {"mean": v["mean"], "ci": v["ci"], "seeds": v["seeds"]} for a, v in d["arms"].items()}
    out = {"metric": d["metric"], "base": d["base"], "arms": arms,
           "selected_noisy_fraction": d["selected_noisy_fraction"],
           "selected_in_domain_fraction": d["selected_in_domain_fraction"]}
    if "exact_match" in next(iter(d["arms"].values()))["secondary"]:
        out["exact_match"] = {a: v["secondary"]["exact_match"]["mean"] for a, v in d["arms"].items()}
        out["exact_match_base"] = d["base_summary"].get("eval_families", {}).get("exact_match")
    return out


# ------------------------------------------------------------------ notebook helpers

def load_agreement(prefer=("full", "smoke", "tiny"), compute: str | None = "tiny") -> dict[str, Any]:
    """Cached agreement results (first of ``prefer`` found), else compute ``compute`` mode.

    Returns ``{"mode", "mats" (name -> ScoreMatrix), "info" (data.json), "summary"}``.
    """
    from ..scores import ScoreMatrix

    for mode in prefer:
        out = results_dir() / f"agreement-{mode}"
        summ = results_dir() / f"llm-agreement-{mode}.json"
        if summ.exists() and all((out / f"{n}.json").exists() for n in ("icp", "ip", "cosine", "ekfac")):
            mats = {n: ScoreMatrix.load(out / n) for n in ("icp", "ip", "cosine", "ekfac")}
            return {"mode": mode, "mats": mats, "info": json.loads((out / "data.json").read_text()),
                    "summary": json.loads(summ.read_text())}
    if compute is None:
        from ..errors import ConfigError

        raise ConfigError("No cached agreement results; run `python -m icp_influence run llm-agreement`.")
    run_agreement(compute)
    return load_agreement((compute,), None)


def load_selection(prefer=("full", "smoke", "tiny"), compute: str | None = "tiny") -> dict[str, Any]:
    """Cached fine-tuning outcome (first of ``prefer`` found), else compute ``compute`` mode."""
    for mode in prefer:
        p = results_dir() / f"finetune-selection-{mode}.json"
        if p.exists():
            return {"mode": mode, "outcome": json.loads(p.read_text())}
    if compute is None:
        from ..errors import ConfigError

        raise ConfigError("No cached fine-tuning results; run `python -m icp_influence run finetune-selection`.")
    run_selection(compute)
    return load_selection((compute,), None)
