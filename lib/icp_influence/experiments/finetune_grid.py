"""The fine-tuning grid (design 2 of notebook 06): the paper's third claim with a test that
can fail.

``finetune-grid``: on the whole candidate pool (312 instruction-set examples; the synthetic
pool keeps its budgets), LoRA-tune SmolLM2 on budgets of about 10%, 20% and 40% of the
pool selected by eight arms — ``icp-top``, ``ip-top``, ``gt-top`` (the one-step referee,
scored on every candidate by :func:`pool_referee`), ``random``, ``length_matched_random``
(random, with ``icp-top``'s answer lengths), ``longest``, ``icp-bottom`` and ``corrupted`` —
with paired seeds, and score every model on held-out answer log-likelihood and on checkable
answers (numeric or exact match).

The margin is fixed before any main model by a pilot (``icp-top`` against ``icp-bottom`` at
the largest budget, on seeds no main model uses); positive controls (``icp-top`` vs
``icp-bottom``, ``random`` vs ``corrupted``) say whether the test can tell a good selection from
a bad one, and the minimum detectable difference states its power. Every model's row is
appended to ``grid/runs.jsonl`` as it finishes (resumable, sharded); :func:`grid_so_far` reads
the grid while it runs. The rows, the pilot and the ``runs.jsonl`` helpers are shared with
design 1 (:mod:`.finetune_equivalence`).
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..paths import results_dir
from ..registry import experiment
from . import llm_agreement as A
from . import runs as R
from .finetune_equivalence import NAME, EquivalenceConfig, _record, _runs

def referee_path(mode: str, data_name: str, ground_truth: str = "gt_sgd_all") -> Path:
    """Where the referee over one pool's every candidate is saved (one matrix per pool)."""
    return results_dir() / f"{NAME}-{mode}" / f"{ground_truth}_pool_{data_name}"


def pool_referee(mode: str = "full", data_name: str = "instructions", *, seed: int = 0, step: int | None = None,
                 ground_truth: str = "gt_sgd_all", progress: bool = True, log=print, opened=None):
    """The one-step referee (``ground_truth``) on **every** candidate of the pool, for the
    ``gt-top`` arm: the ground-truth run scored only its ablation candidates.

    Saved as ``<results>/finetune-equivalence-<mode>/<ground_truth>_pool_<data_name>`` (the
    ScoreMatrix files, committed; :func:`referee_path`), starting from the ground-truth run's own rows (same configuration
    hash, same probes). ``step``: grow the matrix by this many candidates at a time, saving
    after each step, so that a run stopped after hours keeps every finished step (the
    chunks of the step in progress resume too). Returns the matrix once it holds the pool.
    ``opened``: ``A.open_run(mode, data_name, seed)`` when the caller has it.
    """
    import shutil

    from ..scores import ScoreMatrix
    from ..utils import config_hash
    from .ground_truth import GroundTruthConfig, referee

    acfg, model, tok, d, adir = opened or A.open_run(mode, data_name, seed)
    path = referee_path(mode, data_name, ground_truth)
    out, name = path.parent, path.name
    out.mkdir(parents=True, exist_ok=True)
    v = referee(GroundTruthConfig.for_mode(mode, seed), acfg, model, tok, ground_truth, progress=progress)
    want = config_hash(v.config())
    if not (out / f"{name}.json").exists() and (adir / f"{ground_truth}.json").exists():
        seed_rows = ScoreMatrix.load(adir / ground_truth)  # the ground-truth run's rows: where the pool's start
        if seed_rows.meta.get("config_hash") == want:
            seed_rows.save(out / name)
    pool, probes = list(d["pool"]), list(d["probes"])
    while True:
        have = set()
        if (out / f"{name}.json").exists():
            sm = ScoreMatrix.load(out / name)
            if sm.meta.get("config_hash") == want and sm.probe_ids == [p.id for p in probes]:
                have = set(sm.candidate_ids)
        todo = [c for c in pool if c.id not in have]
        if not todo:
            return R.scored_matrix(v, want, pool, probes, out, name, log=log)
        batch = todo[: step or len(todo)]
        log(f"{name}: {len(have)} of {len(pool)} candidates scored; next {len(batch)}")
        cands = [c for c in pool if c.id in have or c.id in {b.id for b in batch}]
        step_dir = out / "runs" / (f"{name}+{len(batch)}" if have else name)
        if (step_dir / "run.json").exists() and json.loads((step_dir / "run.json").read_text(encoding="utf-8")).get(
                "candidate_ids") != [b.id for b in batch]:
            shutil.rmtree(step_dir)  # an earlier step's chunks (stopped between saving and clearing): not this batch
        R.scored_matrix(v, want, cands, probes, out, name, log=log)
        shutil.rmtree(step_dir, ignore_errors=True)  # saved in the matrix



#: The arms of the grid: the paper's two valuators, the referee, and the controls that
#: separate "selects good data" from "selects long answers" and show the test has power.
GRID_ARMS = ("icp-top", "ip-top", "gt-top", "random", "length_matched_random", "longest", "icp-bottom", "corrupted")
#: Instruction categories whose worked answers end on a number (scored by numeric match).
CHECKABLE = ("arithmetic", "unit_conversion")


@dataclass
class GridConfig(EquivalenceConfig):
    """The fine-tuning grid (design 2): every pool candidate, budgets of 10–40% of the pool,
    eight arms, a margin from a pilot of ``icp-top`` against ``icp-bottom``.

    Fixed before any main model (the rule, written here and in ``margin.json``): the margin is
    ``margin_fraction`` × the pilot's mean ``icp-top`` − ``icp-bottom`` gap at the largest budget
    (over ``pilot_seeds``, which no main seed enters), on held-out answer log-likelihood per token.
    """

    design: int = 2
    budgets: list[int] = field(default_factory=lambda: [32, 64, 128])
    arms: tuple[str, ...] = GRID_ARMS
    pilot_seeds: list[int] = field(default_factory=lambda: [100, 101])
    margin_fraction: float = 1 / 3
    checkable: tuple[str, ...] = CHECKABLE
    max_new_tokens: int = 128
    pools: tuple[str, ...] = ("instructions", "synthetic")
    budgets_per_pool: dict[str, list[int]] = field(default_factory=lambda: {"synthetic": [12, 24]})

    def pool_budgets(self, pool: str) -> list[int]:
        """The budgets of one pool (the synthetic pool keeps its earlier ones)."""
        return list((self.budgets_per_pool or {}).get(pool, self.budgets))

    @classmethod
    def for_mode(cls, mode: str, seed: int = 0) -> "GridConfig":
        if mode == "full":
            return cls(seed=seed)
        return cls(budgets=[4, 6], seeds=[0, 1], pilot_seeds=[100, 101], epochs=1, max_length=1024,
                   max_new_tokens=16, budgets_per_pool={}, seed=seed)


def grid_dir(mode: str) -> Path:
    """Where the grid keeps its models' results (``runs.jsonl``) and its margin."""
    return results_dir() / f"{NAME}-{mode}" / "grid"


def grid_selections(gcfg: GridConfig, pool, mats: dict[str, Any], gt, lengths: dict[str, int],
                    budget: int) -> dict[str, Any]:
    """Every arm of the grid at one budget, over the whole pool: a list of ids, or
    ``f(seed) -> ids`` for the arms that draw at random (each with its own seed offset).
    ``gt``: the referee's matrix on the pool (``None`` until it is complete: no ``gt-top``)."""
    from .. import selection as S

    ids = [e.id for e in pool]
    icp = (mats["icp"].subset(ids), gcfg.icp_aggregate)
    icp_top = S.top_k(icp, budget)
    out: dict[str, Any] = {
        "icp-top": icp_top,
        "ip-top": S.top_k((mats["ip"].subset(ids), "mean"), budget),
        "random": lambda s: S.random_k(ids, budget, seed=1000 + int(s)),
        "length_matched_random": lambda s: S.length_matched_k(lengths, icp_top, seed=2000 + int(s)),
        "longest": S.longest_k(lengths, budget),
        "icp-bottom": S.bottom_k(icp, budget),
        "corrupted": lambda s: S.corrupted_k(pool, budget, seed=3000 + int(s)),
    }
    if gt is not None:
        out["gt-top"] = S.top_k((gt.subset(ids), "mean"), budget)
    return {a: out[a] for a in gcfg.arms if a in out}


def checkable_heldout(acfg, data: dict[str, Any], categories) -> list[Any]:
    """Held-out examples of the checkable categories: the evaluation set's, and the probe
    candidates that were not chosen as probes (neither is ever trained on)."""
    parts, _ = A.build_pool(acfg)
    probe_ids = {p.id for p in data["probes"]}
    wanted = set(categories)
    return [e for e in [*data["eval"], *parts["probe_candidates"]] if e.task in wanted and e.id not in probe_ids]


def grid_model(model, tok, pool, ids, heldout, checkable, *, gcfg: GridConfig, seed: int, exact: bool,
               progress: bool = False) -> dict[str, Any]:
    """Fine-tune on ``ids`` and score the model: held-out answer log-likelihood per token, and
    accuracy on checkable answers (synthetic: exact match on the held-out set; instructions:
    numeric match of the final answer on ``checkable``, greedy, ``max_new_tokens``)."""
    from ..finetune import FinetuneConfig, evaluate, finetune

    t0 = time.perf_counter()
    cfg = FinetuneConfig(method=gcfg.method, epochs=gcfg.epochs, batch_size=gcfg.batch_size, lr=gcfg.lr,
                         template=gcfg.template, max_length=gcfg.max_length)
    tuned, tlog = finetune(model, tok, pool.subset(list(ids)), cfg, seed=seed, return_log=True, progress=progress)
    ev = evaluate(tuned, tok, heldout, template=gcfg.template, exact_match_eval=exact, max_length=gcfg.max_length)
    row = {**ev.summary(), "train_loss_first": tlog.losses[0], "train_loss_last": tlog.losses[-1]}
    if exact:   # every held-out answer's hit is kept: accuracy differences resample the questions too
        row.update(accuracy=row["exact_match"], hits=exact_hits(heldout, ev.correct))
    elif checkable:
        row.update(checkable_accuracy(tuned, tok, checkable, gcfg))
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def exact_hits(heldout, correct) -> dict[str, int]:
    """Held-out id → 1 if the model's answer was an exact match (the synthetic pool's accuracy,
    kept per question)."""
    return {e.id: int(bool(c)) for e, c in zip(heldout, correct, strict=True)}


def checkable_accuracy(model, tok, checkable, gcfg: GridConfig) -> dict[str, Any]:
    """Greedy answers of ``model`` to the checkable examples, scored: ``accuracy``
    (:func:`~icp_influence.finetune.numeric_match`), ``n_checkable`` and the ``predictions``
    themselves, kept so that the score can be recomputed."""
    from ..finetune import numeric_match
    from ..lm import generate_answer

    predictions = [generate_answer(model, tok, e, template=gcfg.template, max_new_tokens=gcfg.max_new_tokens,
                                   first_line=False) for e in checkable]
    hits = [numeric_match(p, e.output) for p, e in zip(predictions, checkable)]
    return {"accuracy": float(np.mean(hits)), "n_checkable": len(hits),
            "predictions": {e.id: p for e, p in zip(checkable, predictions)}}


def scored_by_earlier_rule(row: dict[str, Any], pool: str) -> bool:
    """True when a row's accuracy came from an earlier rule: an instruction-set model whose
    greedy answers were not kept, or a synthetic-pool model whose per-question exact matches were
    not kept (only their mean). Such a row counts for log-likelihood only, until :func:`run_grid`
    scores its model again (accuracy differences resample the questions, which needs them)."""
    return "hits" not in row if pool == "synthetic" else "predictions" not in row


def grid_jobs(gcfg: GridConfig, pool_name: str) -> list[tuple]:
    """The main models in the order they are trained: the smallest budget first (the cheapest
    models, so that an interrupted grid holds whole budgets with every arm and seed), then by
    seed, then by arm. ``gt-top`` is always in the list, so that a shard's share (every
    ``world``-th job) does not shift when the referee completes; it is skipped until then."""
    return [(pool_name, b, a, s) for b in sorted(gcfg.pool_budgets(pool_name)) for s in gcfg.seeds for a in gcfg.arms]


def margin_rule(gcfg: GridConfig) -> str:
    """The margin's rule as ``margin.json`` states it: one rule, each pool's pilot at its own
    largest budget."""
    at = ", ".join(f"{p} {max(gcfg.pool_budgets(p))}" for p in gcfg.pools)
    return (f"{gcfg.margin_fraction:.4g} of the pilot's mean icp-top − icp-bottom gap in held-out answer "
            f"log-likelihood per token at the pool's largest budget ({at}; pilot seeds {gcfg.pilot_seeds}, which no "
            "main seed enters), fixed from the pilot alone")


def run_grid(mode: str = "full", *, seed: int = 0, progress: bool = True, log=print, shard: tuple[int, int] = (0, 1),
             now: dict[str, Sequence[int]] | None = None, **overrides: Any) -> dict[str, Any] | None:
    """Train every model of the grid not yet in ``grid/runs.jsonl`` (resumable, sharded like
    :func:`run`), then summarise into ``finetune-equivalence-<mode>.json`` once every model,
    ``gt-top`` included, is there. A model whose row lacks its greedy answers (scored by an
    earlier accuracy rule) is trained again after every new model of its pool; its new row, appended, replaces
    the old one (the last row of a key wins). Rank 0 trains the base model and the pilot first and fixes
    the margin; the other ranks start their share of the main models at once (the margin is
    needed only to summarise).

    ``now`` (pool → budgets) limits what this call trains — e.g. ``{"synthetic": [12, 24]}`` to
    train one pool while another process finishes a budget of the other — without changing the
    grid's configuration (its hash, its folder); the base model and the pilot of a pool it
    names are still trained first by rank 0."""
    from dataclasses import replace

    from ..finetune import evaluate
    from ..scores import ScoreMatrix
    from ..utils import atomic_write_json, code_version, config_hash
    from .ground_truth import answer_tokens

    from ..errors import ConfigError

    gcfg = replace(GridConfig.for_mode(mode, seed), **overrides)
    if set(gcfg.pilot_seeds) & set(gcfg.seeds):
        raise ConfigError(f"The pilot's seeds {gcfg.pilot_seeds} must not be main seeds {gcfg.seeds}: the margin "
                          "would then depend on the models it judges.")
    rank, world = shard
    out = grid_dir(mode)
    out.mkdir(parents=True, exist_ok=True)
    runs_path, margin_path = out / "runs.jsonl", out / "margin.json"
    want = config_hash(gcfg.to_dict())
    for path in (out / "config.json", margin_path):  # every shard, every start: one configuration per grid folder
        if path.exists() and json.loads(path.read_text(encoding="utf-8")).get("config_hash") != want:
            raise ConfigError(f"{path} belongs to another configuration of the grid; move {out} away to start a new one.")
    if not (out / "config.json").exists():
        atomic_write_json(out / "config.json", {"config_hash": want, "config": gcfg.to_dict()})
    done = _runs(runs_path)
    record = json.loads(margin_path.read_text(encoding="utf-8")) if margin_path.exists() else {}
    margins = dict(record.get("margin", {}))
    t0 = time.perf_counter()
    complete = True
    if now is not None and (set(now) - set(gcfg.pools)
                            or any(set(bs) - set(gcfg.pool_budgets(p)) for p, bs in now.items())):
        raise ConfigError(f"now={now!r} names a pool or budget the grid does not have: pools "
                          + ", ".join(f"{p} {gcfg.pool_budgets(p)}" for p in gcfg.pools) + ".")
    for pool_name in gcfg.pools:
        if now is not None and pool_name not in now:
            complete = False   # not looked at in this call
            continue
        opened = A.open_run(mode, pool_name, seed)
        acfg, model, tok, d, adir = opened
        pool = d["pool"]
        mats = A.score_all(acfg, d, model, tok, adir, only=["icp", "ip"], progress=progress)
        gt_path = referee_path(mode, pool_name, gcfg.ground_truth)
        gt = ScoreMatrix.load(gt_path) if gt_path.with_suffix(".json").exists() else None
        if gt is not None and (set(gt.candidate_ids) != {e.id for e in pool}
                               or gt.probe_ids != [p.id for p in d["probes"]]):
            log(f"{pool_name}: the referee covers {len(gt.candidate_ids)} of {len(pool)} candidates (on this run's "
                "probes: " + ("yes" if gt.probe_ids == [p.id for p in d["probes"]] else "no")
                + "); gt-top waits for it (pool_referee)")
            gt = None
        lengths = answer_tokens(tok, pool, [e.id for e in pool], gcfg.template)
        exact = pool_name == "synthetic"
        heldout = list(d["eval"])
        checkable = [] if exact else checkable_heldout(acfg, d, gcfg.checkable)
        kw = dict(gcfg=gcfg, exact=exact)
        key_base = (pool_name, 0, "base", -1)
        def stale(row, pool=pool_name):
            return scored_by_earlier_rule(row, pool)

        if rank == 0 and (key_base not in done or stale(done[key_base])):   # the base model: scored again, no training
            ev = evaluate(model, tok, heldout, template=gcfg.template, exact_match_eval=exact,
                          max_length=gcfg.max_length)
            row = ev.summary()
            if exact:
                row.update(accuracy=row["exact_match"], hits=exact_hits(heldout, ev.correct))
            elif checkable:
                row.update(checkable_accuracy(model, tok, checkable, gcfg))
            row = {"pool": pool_name, "budget": 0, "arm": "base", "seed": -1, **row}
            _record(runs_path, done, row)
        bmax = max(gcfg.pool_budgets(pool_name))
        if rank == 0 and pool_name not in margins:  # the pilot: icp-top and icp-bottom at the largest budget
            sels = grid_selections(gcfg, pool, mats, None, lengths, bmax)
            for s in gcfg.pilot_seeds:
                for arm in ("icp-top", "icp-bottom"):
                    key = (pool_name, bmax, arm, s)
                    if key not in done:
                        log(f"{pool_name}: pilot {arm}, seed {s}, budget {bmax}")
                        row = {"pool": pool_name, "budget": bmax, "arm": arm, "seed": s, "pilot": True,
                               **grid_model(model, tok, pool, sels[arm], heldout, checkable, seed=s, **kw)}
                        _record(runs_path, done, row)
            gaps = [done[(pool_name, bmax, "icp-top", s)]["answer_loglik_per_token"]
                    - done[(pool_name, bmax, "icp-bottom", s)]["answer_loglik_per_token"] for s in gcfg.pilot_seeds]
            gap = float(np.mean(gaps))
            margins[pool_name] = max(abs(gap) * gcfg.margin_fraction, 1e-6)
            record = json.loads(margin_path.read_text(encoding="utf-8")) if margin_path.exists() else {}
            atomic_write_json(margin_path, {
                "margin": margins, "config_hash": config_hash(gcfg.to_dict()),
                "rule": margin_rule(gcfg),
                "pilot": {**record.get("pilot", {}), pool_name: {"gaps": gaps, "gap": gap,
                                                                 "base": done[key_base]["answer_loglik_per_token"]}}})
            log(f"{pool_name}: margin fixed at {margins[pool_name]:.4f} nats/token (pilot gap {gap:+.4f})")
        jobs = grid_jobs(gcfg, pool_name)
        mine = [k for j, k in enumerate(jobs) if j % world == rank and (k not in done or stale(done[k]))
                and (gt is not None or k[2] != "gt-top") and (now is None or k[1] in now[pool_name])]
        mine.sort(key=lambda k: (k in done, k[1]))   # new models (smallest budgets first), then those scored by an earlier rule
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(mine), desc=f"fine-tune grid [{pool_name}, shard {rank + 1}/{world}]", unit="model")
        sels_by_budget = {b: grid_selections(gcfg, pool, mats, gt, lengths, b) for b in gcfg.pool_budgets(pool_name)}
        for key in mine:
            _, budget, arm, s = key
            latest = _runs(runs_path).get(key)
            if latest is not None and not stale(latest):  # trained meanwhile by another process (another world)
                continue
            sel = sels_by_budget[budget][arm]
            ids = list(sel(s) if callable(sel) else sel)
            row = {"pool": pool_name, "budget": budget, "arm": arm, "seed": s,
                   **grid_model(model, tok, pool, ids, heldout, checkable, seed=s, **kw),
                   "selected_noisy_fraction": float(np.mean([pool.by_id(i).meta.get("noisy", False) for i in ids])),
                   "selected_answer_tokens": float(np.mean([lengths[i] for i in ids]))}
            _record(runs_path, done, row)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        done = _runs(runs_path)
        complete &= gt is not None and all(k in done and not stale(done[k]) for k in grid_jobs(gcfg, pool_name))
    if margin_path.exists():  # rank 0 may have fixed a margin since this shard started
        margins.update(json.loads(margin_path.read_text(encoding="utf-8"))["margin"])
    if not complete or any(p not in margins for p in gcfg.pools):
        log(f"grid shard {rank + 1}/{world}: this share is done; the grid is not complete yet "
            f"({sum(1 for r in done.values() if not r.get('pilot') and r['arm'] != 'base')} main models so far)")
        return None
    res = summarise_grid(gcfg, done, margins)
    res["margin_record"] = json.loads(margin_path.read_text(encoding="utf-8"))
    res["margin_rule"] = res["margin_record"]["rule"]
    res.update({"config": gcfg.to_dict(),
                "config_hash": config_hash(gcfg.to_dict()), "code_version": code_version(),
                "wall_seconds_this_call": round(time.perf_counter() - t0, 1)})
    atomic_write_json(results_dir() / f"{NAME}-{mode}.json", res)
    return res


#: The comparisons the grid exists for: (a, b, what a "different" verdict would show).
GRID_QUESTIONS = (
    ("icp-top", "ip-top", "the paper's claim: equivalent selections"),
    ("icp-top", "length_matched_random", "selection value beyond answer length"),
    ("ip-top", "length_matched_random", "selection value beyond answer length"),
    ("icp-top", "longest", "more than picking long answers"),
    ("ip-top", "longest", "more than picking long answers"),
    ("icp-top", "random", "better than random"),
    ("ip-top", "random", "better than random"),
    ("icp-top", "gt-top", "as good as one real step's choice"),
    ("length_matched_random", "random", "what icp-top's answer lengths buy a random selection"),
)
#: Positive controls: must come out "different" at the largest budget, or the test has no power.
POSITIVE_CONTROLS = (("icp-top", "icp-bottom"), ("random", "corrupted"))


def min_detectable_difference(diffs_by_pair: list[list[float]], *, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true paired difference a two-sided paired t-test at ``alpha`` detects with
    ``power``, at the seed count of the grid, for the pooled standard deviation of the paired
    differences (:func:`~icp_influence.stats.min_detectable_difference`)."""
    from ..stats import min_detectable_difference as mdd

    d = [np.asarray(x, float) for x in diffs_by_pair if len(x) >= 2]
    if not d or len({x.size for x in d}) != 1:
        return float("nan")  # no paired seeds, or pairs of different sizes: no single design to state
    sd = float(np.sqrt(np.mean([x.var(ddof=1) for x in d])))
    return mdd(sd, d[0].size, alpha=alpha, power=power) if sd > 0 else 0.0


def _hits(rows: list[dict[str, Any]], refs: dict[str, str] | None) -> np.ndarray:
    """Seeds × questions: 1 where a model's answer was right — its kept exact matches
    (``hits``, the synthetic pool), or its kept greedy answer numerically matching the reference
    (:func:`~icp_influence.finetune.numeric_match`, the instruction set) — questions in one fixed order."""
    from ..finetune import numeric_match

    if all("hits" in r for r in rows):
        ids = sorted(rows[0]["hits"])
        return np.array([[float(r["hits"][i]) for i in ids] for r in rows])
    ids = sorted(rows[0]["predictions"])
    return np.array([[float(numeric_match(r["predictions"][i], refs[i])) for i in ids] for r in rows])


def summarise_grid(gcfg: GridConfig, done: dict[tuple, dict[str, Any]], margins: dict[str, float]) -> dict[str, Any]:
    """Per-arm means with CIs (log-likelihood and accuracy), every pair's TOST verdict, the
    positive controls and the minimum detectable difference — the fields notebook 06 reads.

    ``arms``: the arm names; ``loglik``: pool → budget → arm → {mean, ci, seeds};
    ``accuracy``: arm → budget → {mean, ci, seeds, pool} (the pools' budgets differ; where two
    pools share a budget the key is ``"<pool>/<budget>"``); ``accuracy_differences``: each
    question of :data:`GRID_QUESTIONS` as a paired difference of accuracy with its 95%
    interval from a bootstrap over seeds and questions (:func:`~icp_influence.stats.two_way_difference`,
    on each model's kept per-question record) — a difference verdict only, since no accuracy
    margin was fixed in advance. Accuracy is summarised only at budgets where every model was
    scored by the current rule (:func:`scored_by_earlier_rule`)."""
    from .. import stats as S

    metric = "answer_loglik_per_token"
    arms_out: dict[str, Any] = {}
    accuracy: dict[str, Any] = {}
    eq, controls, mdd, acc_diff = [], [], {}, []
    refs = None   # the instruction set's references by id, loaded when the first accuracy difference needs them
    for pool in gcfg.pools:
        arms_out[pool] = {}
        diffs_all = []
        for budget in gcfg.pool_budgets(pool):
            vals = {a: [done[(pool, budget, a, s)][metric] for s in gcfg.seeds] for a in gcfg.arms}
            # accuracy counts only where it was scored by the current rule: exact match, or a numeric match
            # whose greedy answers were kept (rows without them came from an earlier rule)
            acc = {a: [r.get("accuracy") if not scored_by_earlier_rule(r, pool) else None
                       for r in (done[(pool, budget, a, s)] for s in gcfg.seeds)] for a in gcfg.arms}
            arms_out[pool][str(budget)] = {a: {"mean": float(np.mean(v)), "ci": list(S.t_interval(v)), "seeds": v}
                                           for a, v in vals.items()}
            if all(x is not None for v in acc.values() for x in v):
                shared = any(budget in gcfg.pool_budgets(q) for q in gcfg.pools if q != pool)
                key = f"{pool}/{budget}" if shared else str(budget)
                for a, v in acc.items():
                    accuracy.setdefault(a, {})[key] = {"mean": float(np.mean(v)), "ci": list(S.t_interval(v)),
                                                       "seeds": v, "pool": pool}
                if pool != "synthetic" and refs is None:
                    from ..instructions import load_instructions

                    refs = {e.id: e.output for e in load_instructions()}
                hits = {a: _hits([done[(pool, budget, a, s)] for s in gcfg.seeds], refs) for a in gcfg.arms}
                for a, b, _ in GRID_QUESTIONS:
                    if a in acc and b in acc:   # resample seeds and questions: the questions are a sample too
                        diff, lo, hi = S.two_way_difference(hits[a], hits[b])
                        method = "two-way bootstrap over seeds and questions"
                        acc_diff.append({"pool": pool, "a": a, "b": b, "budget": budget, "diff": diff, "ci": [lo, hi],
                                         "method": method, "verdict": "different" if lo > 0 or hi < 0
                                         else "no detectable difference"})
            for a, b in itertools.combinations(gcfg.arms, 2):
                t = S.tost_paired(vals[a], vals[b], margins[pool], alpha=gcfg.alpha)
                diffs_all.append(list(np.subtract(vals[a], vals[b])))
                eq.append({"pool": pool, "a": a, "b": b, "budget": budget, "metric": metric, "diff": t.diff,
                           "ci": list(t.ci), "p_tost": t.p_tost, "margin": t.margin, "verdict": t.verdict, "n": t.n})
        mdd[pool] = min_detectable_difference(diffs_all, alpha=gcfg.alpha)
        bmax = max(gcfg.pool_budgets(pool))
        for a, b in POSITIVE_CONTROLS:  # the first arm must be the better one, and detectably so
            e = next(x for x in eq if x["pool"] == pool and x["budget"] == bmax and {x["a"], x["b"]} == {a, b})
            better = (e["diff"] > 0) == (e["a"] == a)
            controls.append({**e, "expected_better": a, "passed": e["verdict"] == "different" and better})
    # what each arm selected: mean answer length and share of corrupted examples over the seeds
    selected = {p: {str(b): {a: {k: float(np.mean([done[(p, b, a, s)].get(f"selected_{k}", np.nan) for s in gcfg.seeds]))
                                 for k in ("answer_tokens", "noisy_fraction")} for a in gcfg.arms}
                    for b in gcfg.pool_budgets(p)} for p in gcfg.pools}
    base = {p: done[(p, 0, "base", -1)][metric] for p in gcfg.pools}
    base_acc = {p: None if scored_by_earlier_rule(done[(p, 0, "base", -1)], p) else done[(p, 0, "base", -1)].get("accuracy")
                for p in gcfg.pools}
    main = [r for r in done.values() if r["arm"] != "base" and not r.get("pilot")]
    pilot = [r for r in done.values() if r.get("pilot")]
    # does the largest budget move the model? the best arm's gain over the base model against
    # the seed-to-seed spread (standard deviation over the paired seeds) of that arm
    moves = {}
    for p in gcfg.pools:
        top = arms_out[p][str(max(gcfg.pool_budgets(p)))]
        best = max(top, key=lambda a: top[a]["mean"])
        sd = float(np.std(top[best]["seeds"], ddof=1))
        moves[p] = {"best_arm": best, "gain_over_base": top[best]["mean"] - base[p], "seed_sd": sd,
                    "ratio": (top[best]["mean"] - base[p]) / sd if sd > 0 else float("inf")}
    return {"metric": metric, "design": gcfg.design, "margin": margins, "margin_rule": None,
            "min_detectable_difference": mdd, "n_seeds": len(gcfg.seeds), "budgets": gcfg.budgets,
            "arms": list(gcfg.arms), "loglik": arms_out, "selected": selected, "accuracy": accuracy, "accuracy_differences": acc_diff,
            "base": base, "base_accuracy": base_acc,
            "n_checkable": {p: next((r.get("n_checkable") for k, r in done.items() if k[0] == p and k[2] != "base"), None)
                            for p in gcfg.pools},
            "equivalence": eq, "positive_controls": controls, "moves_the_model": moves,
            "n_models": len(main), "n_pilot_models": len(pilot),
            "seconds": sum(float(r.get("seconds", 0.0)) for r in main + pilot)}


def grid_so_far(mode: str = "full", seed: int = 0, **overrides: Any) -> dict[str, Any] | None:
    """The grid's summary over the models trained so far, for reading a grid that is still
    running (hours of CPU per budget): :func:`summarise_grid` on the budgets of each pool where
    **every** arm has **every** seed, with the positive controls and the power read at the
    largest such budget. ``complete`` says whether that is the whole grid; ``n_trained`` and
    ``n_planned`` count the main models; ``accuracy_pending``: per pool, models of the complete budgets
    still to be retrained for their greedy answers (:func:`run_grid` does that). None until one
    budget of one pool is complete.
    Rows whose accuracy came from an earlier rule count for log-likelihood only
    (:func:`summarise_grid` leaves accuracy out at their budget). ``overrides``: as given to
    :func:`run_grid`."""
    from dataclasses import replace

    from ..errors import ConfigError
    from ..utils import config_hash

    gcfg = replace(GridConfig.for_mode(mode, seed), **overrides)
    out = grid_dir(mode)
    if not (out / "margin.json").exists():
        return None
    record = json.loads((out / "margin.json").read_text(encoding="utf-8"))
    if record.get("config_hash") != config_hash(gcfg.to_dict()):
        raise ConfigError(f"{out} holds another configuration of the grid than GridConfig.for_mode({mode!r}) "
                          f"with {overrides}.")
    done, margins = _runs(out / "runs.jsonl"), record["margin"]
    ready = {p: [b for b in gcfg.pool_budgets(p)
                 if all((p, b, a, s) in done for a in gcfg.arms for s in gcfg.seeds)]
             for p in gcfg.pools if p in margins and (p, 0, "base", -1) in done}
    ready = {p: bs for p, bs in ready.items() if bs}
    if not ready:
        return None
    pools = tuple(p for p in gcfg.pools if p in ready)
    sub = replace(gcfg, pools=pools, budgets=ready.get("instructions", ready[pools[0]]),
                  budgets_per_pool={p: ready[p] for p in pools})
    res = summarise_grid(sub, done, margins)
    planned = {p: grid_jobs(gcfg, p) for p in gcfg.pools}
    res.update({"margin_record": record, "margin_rule": record["rule"], "budgets_done": ready,
                "planned_budgets": {p: gcfg.pool_budgets(p) for p in gcfg.pools},
                "n_planned": sum(len(v) for v in planned.values()),
                "n_trained": sum(k in done for v in planned.values() for k in v),
                "models_by_pool": {p: {"trained": sum(k in done for k in v), "planned": len(v)} for p, v in planned.items()},
                "pool_size": {p: len(json.loads((A.run_dir(mode, p) / "data.json").read_text(encoding="utf-8"))["pool"])
                              for p in pools if (A.run_dir(mode, p) / "data.json").exists()},
                "complete": all(k in done for v in planned.values() for k in v),
                "accuracy_pending": {p: sum(scored_by_earlier_rule(done[(p, b, a, s)], p) for b in ready[p]
                                            for a in gcfg.arms for s in gcfg.seeds) for p in pools},
                "config": gcfg.to_dict(), "config_hash": record["config_hash"]})
    return res


@experiment("finetune-grid", "the fine-tuning test with power: budgets 32/64/128 of the whole pool, eight arms (length-"
                             "matched random, longest, corrupted among them), a pilot-fixed margin, positive controls "
                             "(resumable; hours)")
def finetune_grid(*, smoke: bool = False, seed: int = 0) -> dict:
    mode = "smoke" if smoke else "full"
    gcfg = GridConfig.for_mode(mode, seed)
    run_grid(mode, seed=seed)                      # every model but gt-top: none of them waits for the referee
    for pool in gcfg.pools:
        pool_referee(mode, pool, seed=seed, step=16, ground_truth=gcfg.ground_truth)
    res = run_grid(mode, seed=seed)                # gt-top, then the summary
    return {"margin": res["margin"], "min_detectable_difference": res["min_detectable_difference"],
            "positive_controls": {f"{c['pool']} {c['a']} vs {c['b']} @{c['budget']}": c["verdict"]
                                  for c in res["positive_controls"]}}


def oriented(by: dict[tuple, dict[str, Any]], a: str, b: str, budget: int) -> dict[str, Any] | None:
    """The comparison of ``a`` with ``b`` at ``budget`` as ``a − b`` (``by``: (a, b, budget) →
    equivalence row, stored in either order): the difference and its interval change sign when
    the row holds ``b − a``; the TOST p-value and the verdict do not depend on the order. None if
    the pair is not there."""
    e = by.get((a, b, budget))
    if e is not None:
        return e
    e = by.get((b, a, budget))
    if e is None:
        return None
    return {**e, "a": a, "b": b, "diff": -e["diff"], "ci": [-e["ci"][1], -e["ci"][0]]}


def control_reading(control: dict[str, Any], mdd: float) -> str:
    """How to read a positive control: ``"passed"`` (different, the expected arm ahead);
    ``"no effect"`` (not passed, and its 95% interval lies inside ±``mdd``, the minimum detectable
    difference: any difference the test could detect is ruled out, so power is not what is
    missing); ``"reversed"`` (different, the other arm ahead); else ``"underpowered"`` (the
    interval still reaches beyond ±``mdd``)."""
    if control["passed"]:
        return "passed"
    if control["verdict"] == "different":
        return "reversed"
    lo, hi = control["ci"]
    return "no effect" if -mdd < lo and hi < mdd else "underpowered"


def length_spearman(res: dict[str, Any], pool: str) -> dict[str, float]:
    """Per budget: Spearman, over the arms (``corrupted`` left out: its answers are wrong, not
    short), of each arm's mean held-out log-likelihood with the mean answer length (tokens) of
    what it selected. Budgets with fewer than four such arms are left out."""
    from ..stats import spearman

    sel, ll = res.get("selected", {}).get(pool, {}), res["loglik"][pool]
    out = {}
    for budget in sorted(ll, key=int):
        arms = [a for a in ll[budget] if a != "corrupted" and a in sel.get(budget, {})]
        if len(arms) >= 4:
            out[budget] = spearman([sel[budget][a]["answer_tokens"] for a in arms], [ll[budget][a]["mean"] for a in arms])
    return out


def _largest_question_gap(res: dict[str, Any], pool: str, budget: int) -> dict[str, Any] | None:
    """The question of :data:`GRID_QUESTIONS` with the largest |difference| at ``budget`` (oriented)."""
    by = {(e["a"], e["b"], e["budget"]): e for e in res["equivalence"] if e["pool"] == pool}
    rows = [e for a, b, _ in GRID_QUESTIONS if (e := oriented(by, a, b, budget)) is not None]
    return max(rows, key=lambda e: abs(e["diff"])) if rows else None


def grid_verdict(res: dict[str, Any], pool: str) -> str:
    """Markdown for notebook 06, built from a grid result: the positive controls first (does
    the test have power?), the minimum detectable difference, then each question of
    :data:`GRID_QUESTIONS` at every budget, with its paired difference, interval and verdict."""
    from ..stats import format_p

    m, mdd = res["margin"][pool], res["min_detectable_difference"][pool]
    ctl = [c for c in res["positive_controls"] if c["pool"] == pool]
    ok = all(c["passed"] for c in ctl)
    lines = [f"- **Power.** Margin ±{m:.4f} nats/token ({res['margin_rule']}); with {res['n_seeds']} paired seeds the "
             f"smallest difference the paired test detects 80% of the time is {mdd:.4f}. Positive controls at budget "
             f"{ctl[0]['budget'] if ctl else '—'}: "
             + "; ".join(f"{c['a']} vs {c['b']} {c['diff']:+.4f} [{c['ci'][0]:+.4f}, {c['ci'][1]:+.4f}] → "
                         f"**{c['verdict']}**" for c in ctl)
             + (" — the test can tell a good selection from a bad one." if ok else
                " — **a control is not 'different'** (why, next).")]
    for c in ctl:
        lo, hi = c["ci"]
        reading = control_reading(c, mdd)
        if reading == "no effect":
            others = [x for x in ctl if x["passed"]]
            bound = max(abs(lo), abs(hi))
            lines.append(
                f"- **Why `{c['a']}` vs `{c['b']}` is not different.** Not for lack of power: its 95% interval "
                f"[{lo:+.4f}, {hi:+.4f}] lies inside ±{mdd:.4f}, the difference the design detects 80% of the time, "
                f"so at budget {c['budget']} the two selections train models within about {bound:.4f} nats/token of "
                "each other — "
                + (f"far less than `{big['a']}` − `{big['b']}` ({big['diff']:+.4f}) with the same seeds. "
                   if (big := _largest_question_gap(res, pool, c["budget"])) else "")
                + "The bottom of ICP's ranking is not a bad selection at this budget, so this pair cannot show the "
                "test's power"
                + (" — " + "; ".join(f"`{x['a']}` vs `{x['b']}` ({x['diff']:+.4f}, different)" for x in others)
                   + " does" if others else "") + ".")
        elif reading == "reversed":
            lines.append(f"- **`{c['a']}` vs `{c['b']}` comes out different the wrong way round**: {c['diff']:+.4f} "
                         f"[{lo:+.4f}, {hi:+.4f}] — the selection meant to be worse trains the better models.")
        elif reading == "underpowered":
            lines.append(f"- **`{c['a']}` vs `{c['b']}` is not different** and its 95% interval [{lo:+.4f}, {hi:+.4f}] "
                         f"reaches beyond ±{mdd:.4f}: more seeds could still separate them.")
    rhos = length_spearman(res, pool)
    if rhos:
        lines.append("- **Answer length.** Spearman, over the arms (`corrupted` left out), of an arm's mean gain with the "
                     "mean answer length it selected, per budget — " + "; ".join(f"{b}: {r:+.2f}" for b, r in rhos.items())
                     + " (few points: read it with the comparisons below). `length_matched_random` − `random` "
                     "asks what `icp-top`'s length profile, and whatever comes with it, buys a random selection; "
                     "`icp-top` − `length_matched_random`, what ICP's choice adds at the same lengths.")
    by = {(e["a"], e["b"], e["budget"]): e for e in res["equivalence"] if e["pool"] == pool}
    for a, b, meaning in GRID_QUESTIONS:
        parts = []
        for budget in sorted({e["budget"] for e in by.values()}):
            e = oriented(by, a, b, budget)
            if e is None:
                continue
            lo, hi = e["ci"]
            parts.append(f"{budget}: {e['diff']:+.4f} [{lo:+.4f}, {hi:+.4f}], TOST {format_p(e['p_tost'])} "
                         f"→ **{e['verdict']}**")
        if parts:
            lines.append(f"- `{a}` − `{b}` ({meaning}): " + "; ".join(parts) + ".")
    return "\n".join(lines)
