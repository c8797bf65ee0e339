"""Does fine-tuning on what ICP selects give a model like fine-tuning on what influence
selects? The paper's third claim, tested as a claim of *similarity* (notebook 06).

``finetune-equivalence``: on the instruction set and on the synthetic pool, LoRA-tune
SmolLM2 on equal budgets of candidates selected from the ground-truth candidates of
``instruction-agreement``/``ground-truth`` by five arms — ICP-top, IP-top,
ground-truth-top (one SGD step on all parameters), random and ICP-bottom — for several
budgets and seeds. Seeds are **paired** across arms: seed ``s`` fixes the LoRA
initialisation and the order of the training steps in every arm. Each model is scored on
the held-out evaluation set (answer log-likelihood per token; exact match where answers
are checkable).

The **margin** of the equivalence test is fixed by a rule written in the configuration
before the run and a pilot that the main seeds never enter: the pilot, with its own seed
(excluded from the analysis), fine-tunes every arm once at the largest budget; the margin is
half the gap between the base model and the best pilot arm, written to ``margin.json``
before any main model of rank 0 and never changed afterwards. Then for every pair of arms
and budget: the paired difference with its CI, two one-sided tests against ±margin, and a verdict —
"equivalent within the margin", "different" or "inconclusive".

Every (pool, budget, arm, seed) result is appended to ``runs.jsonl`` as it finishes, so an
interrupted run resumes where it stopped.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ..paths import results_dir
from ..registry import experiment
from . import llm_agreement as A
from . import runs as R

NAME = "finetune-equivalence"
ARMS = ("icp-top", "ip-top", "gt-top", "random", "icp-bottom")


@dataclass
class EquivalenceConfig:
    budgets: list[int] = field(default_factory=lambda: [12, 24])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    pilot_seed: int = 100
    icp_aggregate: str = "mean"          # the ICP score arms select by ("mean" = mean Δ, or "win_rate")
    ground_truth: str = "gt_sgd_all"
    method: str = "lora"
    epochs: int = 2
    batch_size: int = 4
    lr: float = 1e-3
    template: str = "paper"
    max_length: int = 512              # every instruction example fits (the longest is 407 SmolLM2 tokens)
    alpha: float = 0.05
    margin: dict[str, float] | None = None   # per pool; None = fixed by the pilot (margin.json)
    pools: tuple[str, ...] = ("instructions", "synthetic")
    seed: int = 0

    @classmethod
    def for_mode(cls, mode: str, seed: int = 0) -> "EquivalenceConfig":
        if mode == "full":
            return cls(seed=seed)
        return cls(budgets=[4, 6], seeds=[0, 1], epochs=1, max_length=1024, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def selections(ecfg: EquivalenceConfig, mats: dict[str, Any], gts: dict[str, Any], budget: int) -> dict[str, Any]:
    """The arms at one budget, all from the ground-truth candidates (random: a fresh subset per seed)."""
    from .. import selection as S

    gt = gts[ecfg.ground_truth]
    ids = gt.candidate_ids
    icp = (mats["icp"].subset(ids), ecfg.icp_aggregate)
    return {
        "icp-top": S.top_k(icp, budget),
        "ip-top": S.top_k((mats["ip"].subset(ids), "mean"), budget),
        "gt-top": S.top_k((gt, "mean"), budget),
        "random": lambda s: S.random_k(ids, budget, seed=1000 + int(s)),
        "icp-bottom": S.bottom_k(icp, budget),
    }


def _runs(path: Path) -> dict[tuple, dict[str, Any]]:
    out = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a killed process: that model is trained again
                    continue
                out[(r["pool"], r["budget"], r["arm"], r["seed"])] = r
    return out


def _append(path: Path, row: dict[str, Any]) -> None:
    import os

    torn = path.exists() and path.stat().st_size > 0 and not path.read_bytes().endswith(b"\n")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(("\n" if torn else "") + json.dumps(row) + "\n")   # a torn last line stays apart from this row
        fh.flush()
        os.fsync(fh.fileno())


def _record(path: Path, done: dict[tuple, dict[str, Any]], row: dict[str, Any]) -> None:
    """Append one model's row to ``runs.jsonl`` and to ``done`` (keyed by pool, budget, arm, seed)."""
    _append(path, row)
    done[(row["pool"], row["budget"], row["arm"], row["seed"])] = row


def _wait_for_margin(path: Path, pool: str, poll: float = 10.0) -> dict[str, float]:
    """Block until rank 0 has written the pilot's margin for ``pool``."""
    while True:
        if path.exists():
            m = json.loads(path.read_text(encoding="utf-8"))["margin"]
            if pool in m:
                return m
        time.sleep(poll)


def train_and_evaluate(model, tok, pool, ids, heldout, *, ecfg: EquivalenceConfig, seed: int,
                       exact_match: bool) -> dict[str, float]:
    from ..finetune import FinetuneConfig, evaluate, finetune

    t0 = time.perf_counter()
    cfg = FinetuneConfig(method=ecfg.method, epochs=ecfg.epochs, batch_size=ecfg.batch_size, lr=ecfg.lr,
                         template=ecfg.template, max_length=ecfg.max_length)
    tuned = finetune(model, tok, pool.subset(list(ids)), cfg, seed=seed)
    ev = evaluate(tuned, tok, heldout, template=ecfg.template, exact_match_eval=exact_match,
                  max_length=ecfg.max_length)
    return {**ev.summary(), "seconds": round(time.perf_counter() - t0, 1)}


def run(mode: str = "full", *, seed: int = 0, progress: bool = True, log=print, shard: tuple[int, int] = (0, 1),
        **overrides: Any) -> dict[str, Any] | None:
    """Fine-tune every (pool, budget, arm, seed) not yet in ``runs.jsonl`` and summarise.

    ``overrides`` set fields of the configuration (e.g. ``pools``) and are recorded in it.
    ``shard=(rank, world)``: this process trains every ``world``-th main model; the base model
    and the pilot run in rank 0 before its main models (the margin depends on them alone), and
    the other ranks wait for the margin only before they summarise. A rank returns ``None``
    until every model is in ``runs.jsonl``; the call that finds them all writes the summary.
    """
    from dataclasses import replace

    from ..finetune import evaluate
    from ..utils import atomic_write_json, code_version, config_hash
    from .ground_truth import GroundTruthConfig, score_ground_truth

    ecfg = replace(EquivalenceConfig.for_mode(mode, seed), **overrides)
    rank, world = shard
    out = results_dir() / f"{NAME}-{mode}"
    out.mkdir(parents=True, exist_ok=True)
    runs_path = out / "runs.jsonl"
    done = _runs(runs_path)
    margin_path = out / "margin.json"
    margins = dict(ecfg.margin or {})
    if margin_path.exists():
        margins.update(json.loads(margin_path.read_text(encoding="utf-8"))["margin"])
    pools: dict[str, Any] = {}
    t0 = time.perf_counter()
    for data_name in ecfg.pools:
        acfg, model, tok, d, adir = A.open_run(mode, data_name, seed)
        mats = A.score_all(acfg, d, model, tok, adir, only=["icp", "ip"], progress=progress)
        gts = score_ground_truth(GroundTruthConfig.for_mode(mode, seed), acfg, d, mats, model, tok, adir,
                                 progress=progress, only=[ecfg.ground_truth])
        exact = data_name == "synthetic"
        heldout = list(d["eval"])
        key_base = (data_name, 0, "base", -1)
        if rank == 0 and key_base not in done:
            ev = evaluate(model, tok, heldout, template=ecfg.template, exact_match_eval=exact,
                          max_length=ecfg.max_length).summary()
            row = {"pool": data_name, "budget": 0, "arm": "base", "seed": -1, **ev}
            _record(runs_path, done, row)
        # the margin, fixed by the pilot alone (never changed afterwards); no main seed enters it,
        # so the other ranks start their share at once
        if rank == 0 and data_name not in margins:
            base = done[key_base]["answer_loglik_per_token"]
            bmax = max(ecfg.budgets)
            sels = selections(ecfg, mats, gts, bmax)
            pilot = {}
            for arm, sel in sels.items():
                key = (data_name, bmax, arm, ecfg.pilot_seed)
                if key not in done:
                    ids = sel(ecfg.pilot_seed) if callable(sel) else sel
                    ev = train_and_evaluate(model, tok, d["pool"], ids, heldout, ecfg=ecfg, seed=ecfg.pilot_seed,
                                            exact_match=exact)
                    row = {"pool": data_name, "budget": bmax, "arm": arm, "seed": ecfg.pilot_seed, "pilot": True, **ev}
                    _record(runs_path, done, row)
                pilot[arm] = done[key]["answer_loglik_per_token"]
            best = max(pilot.values())
            margins[data_name] = max(abs(best - base) / 2, 1e-6)
            record = json.loads(margin_path.read_text(encoding="utf-8")) if margin_path.exists() else {}
            atomic_write_json(margin_path, {"margin": margins, "rule": "half the gap between the base model and the "
                                            "best arm of a pilot (seed %d, budget %d), which no main seed enters"
                                            % (ecfg.pilot_seed, bmax),
                                            "pilot": {**record.get("pilot", {}), data_name: pilot}})
            log(f"{data_name}: margin fixed at {margins[data_name]:.4f} nats/token (base {base:.4f}, best pilot {best:.4f})")
        # the main runs
        bar = None
        total = len(ecfg.budgets) * len(ARMS) * len(ecfg.seeds)
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=f"fine-tune [{data_name}]", unit="model")
        job = -1  # the main models in a fixed order; this rank trains every world-th one
        for budget in ecfg.budgets:
            sels = selections(ecfg, mats, gts, budget)
            for s in ecfg.seeds:
                for arm in ARMS:
                    key = (data_name, budget, arm, s)
                    job += 1
                    if key not in done and job % world == rank:
                        sel = sels[arm]
                        ids = sel(s) if callable(sel) else sel
                        ev = train_and_evaluate(model, tok, d["pool"], ids, heldout, ecfg=ecfg, seed=s,
                                                exact_match=exact)
                        row = {"pool": data_name, "budget": budget, "arm": arm, "seed": s, **ev,
                               "selected_noisy_fraction": float(np.mean([d["pool"].by_id(i).meta.get("noisy", False)
                                                                         for i in ids]))}
                        _record(runs_path, done, row)
                    if bar is not None:
                        bar.update(1)
        if bar is not None:
            bar.close()
        if data_name not in margins:  # a rank other than 0: the pilot's margin, once rank 0 has fixed it
            margins.update(_wait_for_margin(margin_path, data_name))
        done = _runs(runs_path)
        pools[data_name] = {"base": done[key_base]["answer_loglik_per_token"], "exact": exact}
    done = _runs(runs_path)
    missing = [(p, b, a, s) for p in pools for b in ecfg.budgets for s in ecfg.seeds for a in ARMS
               if (p, b, a, s) not in done]
    if missing:
        log(f"shard {rank + 1}/{world} done; {len(missing)} models are still to come from the other shards")
        return None
    res = summarise(ecfg, done, margins, pools)
    if margin_path.exists():  # how the margin was fixed, and the pilot it came from
        res["margin_record"] = json.loads(margin_path.read_text(encoding="utf-8"))
    res.update({"config": ecfg.to_dict(), "config_hash": config_hash(ecfg.to_dict()), "code_version": code_version(),
                "wall_seconds_this_call": round(time.perf_counter() - t0, 1)})
    atomic_write_json(results_dir() / f"{NAME}-{mode}.json", res)
    return res


def summarise(ecfg: EquivalenceConfig, done: dict[tuple, dict[str, Any]], margins: dict[str, float],
              pools: dict[str, Any]) -> dict[str, Any]:
    """Per-arm means with CIs, paired differences, TOST p-values and verdicts."""
    from .. import stats as S

    metric = "answer_loglik_per_token"
    arms_out: dict[str, Any] = {}
    eq = []
    for pool in pools:
        arms_out[pool] = {}
        for budget in ecfg.budgets:
            vals = {arm: [done[(pool, budget, arm, s)][metric] for s in ecfg.seeds] for arm in ARMS}
            arms_out[pool][str(budget)] = {}
            for arm, v in vals.items():
                lo, hi = S.t_interval(v)
                entry = {"mean": float(np.mean(v)), "ci": [lo, hi], "seeds": v}
                if pools[pool]["exact"]:
                    em = [done[(pool, budget, arm, s)].get("exact_match") for s in ecfg.seeds]
                    entry["exact_match"] = float(np.mean(em))
                arms_out[pool][str(budget)][arm] = entry
            for a, b in itertools.combinations(ARMS, 2):
                t = S.tost_paired(vals[a], vals[b], margins[pool], alpha=ecfg.alpha)
                eq.append({"pool": pool, "a": a, "b": b, "budget": budget, "diff": t.diff, "ci": list(t.ci),
                           "p_tost": t.p_tost, "margin": t.margin, "verdict": t.verdict, "n": t.n})
    sec = sum(float(r.get("seconds", 0.0)) for r in done.values())
    return {"metric": metric, "margin": margins, "n_seeds": len(ecfg.seeds), "budgets": ecfg.budgets,
            "base": {p: v["base"] for p, v in pools.items()}, "arms": arms_out, "equivalence": eq,
            "n_models": sum(1 for r in done.values() if r["arm"] != "base"), "seconds": sec}


#: ``load(mode="full")``: the committed result of this experiment (no computation).
load = partial(R.load_result, NAME)


@experiment(NAME, "LoRA fine-tuning on ICP-top / IP-top / ground-truth-top / random / ICP-bottom: paired seeds, "
                  "TOST equivalence with a margin fixed by a pilot")
def finetune_equivalence(*, smoke: bool = False, seed: int = 0) -> dict:
    res = run("smoke" if smoke else "full", seed=seed)
    return {"margin": res["margin"], "n_seeds": res["n_seeds"], "budgets": res["budgets"],
            "verdicts": {f"{e['pool']} {e['a']} vs {e['b']} @{e['budget']}": e["verdict"] for e in res["equivalence"]}}


def exact_match(mode: str = "full", pool: str = "synthetic") -> dict[str, Any]:
    """Exact match on the held-out examples, per budget and arm: the mean over the paired seeds
    with its 95% t-interval (read from ``runs.jsonl``; pilot models left out), and the base
    model's rate. ``{}`` when no model of ``pool`` recorded an exact match."""
    from ..stats import t_interval

    done = _runs(results_dir() / f"{NAME}-{mode}" / "runs.jsonl")
    rows = [r for r in done.values() if r["pool"] == pool and "exact_match" in r and not r.get("pilot")]
    base = next((r for r in rows if r["arm"] == "base"), None)
    out: dict[str, Any] = {"base": base["exact_match"] if base else None, "n_heldout": base["n"] if base else None,
                           "arms": {}}
    for r in rows:
        if r["arm"] == "base":
            continue
        out["arms"].setdefault(str(r["budget"]), {}).setdefault(r["arm"], []).append((r["seed"], r["exact_match"]))
    for b, arms in out["arms"].items():
        for arm, vals in arms.items():
            v = [x for _, x in sorted(vals)]
            arms[arm] = {"mean": float(np.mean(v)), "ci": list(t_interval(v)), "seeds": v}
    return out if out["arms"] else {}


def selection_report(mode: str = "full") -> list[dict[str, Any]]:
    """What each arm selected at the largest budget: corrupted share (by kind) and categories."""
    res = load(mode)
    ecfg = EquivalenceConfig(**{k: v for k, v in res["config"].items() if k in EquivalenceConfig.__dataclass_fields__})
    budget = max(ecfg.budgets)
    rows = []
    for data_name in res["arms"]:
        run = A.load(mode, data_name)
        mats, info = run["mats"], run["info"]
        gts = {k: v for k, v in mats.items() if k.startswith("gt_")}
        for arm, sel in selections(ecfg, mats, gts, budget).items():
            ids = sel(ecfg.seeds[0]) if callable(sel) else sel
            kinds = [info["pool"][i]["corruption"] for i in ids]
            cats = [info["pool"][i]["category"] for i in ids]
            top = max(set(cats), key=cats.count)
            rows.append({"pool": data_name, "arm": arm, "budget": budget,
                         "corrupted": sum(k is not None for k in kinds) / len(ids),
                         **{k.replace("_", " "): kinds.count(k) / len(ids) for k in ("swap_other_category",
                                                                                       "swap_same_category", "truncate")},
                         "categories": len(set(cats)), "largest category share": cats.count(top) / len(ids)})
    return rows


def selection_profile(examples, corrupted=None) -> dict[str, Any]:
    """What one selection holds, whatever its arm is called: ``n``; ``families`` (distinct
    ``task``); ``distinct_examples`` (distinct instruction, input and answer);
    ``distinct_answers``; ``top_answer`` and ``top_answer_count`` (the most repeated answer and
    how many selected examples give it); ``family_counts`` (examples per family, most first); ``corrupted`` (how many have a labelled corruption,
    from ``meta["corruption"]`` or the ``corrupted`` ids); ``answer_chars`` (mean answer length)."""
    from collections import Counter

    from ..errors import ConfigError

    ex = list(examples)
    if not ex:
        raise ConfigError("selection_profile needs at least one example.")
    answers = Counter(e.output for e in ex)
    top, top_n = answers.most_common(1)[0]
    bad = set(corrupted) if corrupted is not None else None
    fams = Counter(e.task for e in ex)
    return {"n": len(ex), "families": len(fams), "family_counts": dict(fams.most_common()),
            "distinct_examples": len({(e.instruction, e.input, e.output) for e in ex}),
            "distinct_answers": len(answers), "top_answer": top, "top_answer_count": top_n,
            "corrupted": sum((e.id in bad) if bad is not None else (e.meta.get("corruption") is not None) for e in ex),
            "answer_chars": float(np.mean([len(e.output) for e in ex]))}


def selection_profiles(mode: str = "full", pool: str = "synthetic") -> dict[int, dict[str, Any]]:
    """:func:`selection_profile` of every arm at every budget of the committed run on ``pool``
    (no model needed). ``random``, a fresh subset per seed, is the mean over the seeds of each
    numeric field (``top_answer``, ``family_counts``: their seed-``seeds[0]`` values). Each profile also carries
    ``ids`` (seed ``seeds[0]`` for random) and ``value``, the arm's mean held-out answer
    log-likelihood per token."""
    res = load(mode)
    ecfg = EquivalenceConfig(**{k: v for k, v in res["config"].items() if k in EquivalenceConfig.__dataclass_fields__})
    run = A.load(mode, pool)
    mats = run["mats"]
    gts = {k: v for k, v in mats.items() if k.startswith("gt_")}
    acfg = A.AgreementConfig.for_mode(mode, pool, ecfg.seed)
    by_id = {e.id: e for e in A.build_pool(acfg)[1]}
    out: dict[int, dict[str, Any]] = {}
    for budget in ecfg.budgets:
        out[budget] = {}
        for arm, sel in selections(ecfg, mats, gts, budget).items():
            id_sets = [list(sel(s)) for s in ecfg.seeds] if callable(sel) else [list(sel)]
            profs = [selection_profile([by_id[i] for i in ids]) for ids in id_sets]
            prof = {k: (float(np.mean([p[k] for p in profs])) if len(profs) > 1 and isinstance(v, (int, float)) else v)
                    for k, v in profs[0].items()}
            out[budget][arm] = {**prof, "ids": id_sets[0], "value": res["arms"][pool][str(budget)][arm]["mean"]}
    return out


def referee_by_family(mode: str = "full", pool: str = "synthetic") -> dict[str, dict[str, float]]:
    """The ground truth the ``gt-top`` arm ranks by (the one-step referee's mean over probes),
    averaged per family of the candidates: ``{family: {"mean", "n"}}``, highest mean first."""
    res = load(mode)
    run = A.load(mode, pool)
    gt, info = run["mats"][res["config"]["ground_truth"]], run["info"]["pool"]
    vals = np.asarray(gt.aggregate("mean"), float)
    fams = [info[i]["category"] for i in gt.candidate_ids]
    out = {f: {"mean": float(vals[[x == f for x in fams]].mean()), "n": int(sum(x == f for x in fams))}
           for f in set(fams)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["mean"]))


def verdict(res: dict[str, Any], pools: list[str] | None = None) -> str:
    """Markdown built from the equivalence results: per pool (all, or ``pools``) and budget,
    the verdict of each pair that involves ``icp-top``."""
    from ..stats import format_p

    lines = []
    for pool in pools or res["arms"]:
        base = res["base"][pool]
        for budget in res["budgets"]:
            arms = res["arms"][pool][str(budget)]
            best = max(arms, key=lambda a: arms[a]["mean"])
            lines.append(f"- **{pool}, budget {budget}**: best arm {best} ({arms[best]['mean']:.3f} nats/token vs base "
                         f"{base:.3f}); margin {res['margin'][pool]:.4f}.")
            for e in res["equivalence"]:
                if e["pool"] == pool and e["budget"] == budget and ("icp-top" in (e["a"], e["b"])):
                    also = " (and the 95% CI excludes 0: a real difference, smaller than the margin)" \
                        if e["verdict"] == "equivalent" and (e["ci"][0] > 0 or e["ci"][1] < 0) else ""
                    lines.append(f"  - {e['a']} vs {e['b']}: difference {e['diff']:+.4f} "
                                 f"[{e['ci'][0]:+.4f}, {e['ci'][1]:+.4f}], TOST {format_p(e['p_tost'])} → "
                                 f"**{e['verdict']}**{also}")
    return "\n".join(lines)
