"""The paper-scale run, end to end, from a JSON config (``python -m icp_influence recipe CONFIG``).

A recipe is a JSON config (see ``lib/icp_influence/configs/paper_alpaca_pythia1b.json``;
a bare name such as ``paper_alpaca_pythia1b`` resolves to the packaged configs). Steps:

1. ``prepare`` — load the pool (``hub:NAME`` through ``datasets``, a local Alpaca
   ``.json``/``.jsonl``, or ``synthetic:N``), pick ``n_probes`` probes by k-means over the
   model's embeddings (:func:`icp_influence.probes.select_probes_kmeans`), and write
   ``pool.jsonl``, ``probes.jsonl`` and ``recipe.json`` into the run folder (skipped when
   they exist for the same configuration: resumable).
2. ``icp`` / ``influence`` — run ``score <valuator>`` for the two configured valuators under the
   configured launcher: ``accelerate`` (``accelerate launch --multi_gpu --num_processes N -m
   icp_influence ...``), ``torchrun`` (``torchrun --standalone --nproc_per_node N -m
   icp_influence ...``, which also works on CPU) or ``none`` (one process). Every rank
   scores its own chunks; finished chunks are kept, so re-running the same command resumes.
3. ``merge`` — assemble each run's chunks (:func:`icp_influence.store.merge_run`; the
   same as ``python -m icp_influence merge DIR``).
4. ``compare`` — Spearman with a two-way bootstrap interval, Kendall, reliabilities, top-10 % overlap and the
   paper's rank bins (:func:`icp_influence.compare.compare_all`) → ``compare.json``.

``--dry-run`` prints every command without running anything.
"""
from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError, DataFormatError

STEPS = ("prepare", "icp", "influence", "merge", "compare")
LAUNCHERS = ("accelerate", "torchrun", "none")
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
REQUIRED = ("model", "pool", "n_probes", "template", "run_dir", "icp", "influence")


# ------------------------------------------------------------------ config
def config_path(name_or_path: str | os.PathLike) -> Path:
    """A config file path, or the packaged config of that name (``.json`` optional)."""
    p = Path(name_or_path)
    if p.exists():
        return p
    stem = p.name.replace("-", "_")
    for cand in (CONFIG_DIR / p.name, CONFIG_DIR / f"{p.name}.json", CONFIG_DIR / f"{stem}.json"):
        if cand.exists():
            return cand
    known = ", ".join(sorted(f.stem for f in CONFIG_DIR.glob("*.json")))
    raise ConfigError(f"Recipe config {str(name_or_path)!r} not found: give a JSON file path or one of: {known}.")


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(config: dict[str, Any], overrides: Sequence[str] | None) -> dict[str, Any]:
    """``["model=tiny-gpt-neox", "icp.batch_size=4", "pool_limit=null"]`` → a new config.

    Values are parsed as JSON when they can be (numbers, ``null``, ``true``, lists), else
    kept as strings. Dotted keys reach into sections; unknown keys are refused.
    """
    cfg = copy.deepcopy(config)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} is not key=value (e.g. --override n_probes=5).")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = cfg
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"Override {key!r}: {part!r} is not a section of the config.")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"Override {key!r}: unknown key; known here: {', '.join(sorted(node))}.")
        node[parts[-1]] = _parse_value(raw)
    return cfg


def validate(config: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in REQUIRED if k not in config]
    if missing:
        raise ConfigError(f"Recipe config lacks {missing}; see {CONFIG_DIR / 'paper_alpaca_pythia1b.json'}.")
    if config.get("launcher", "none") not in LAUNCHERS:
        raise ConfigError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {config.get('launcher')!r}.")
    if int(config.get("num_processes", 1)) < 1:
        raise ConfigError(f"num_processes must be ≥ 1, got {config.get('num_processes')}.")
    if int(config["n_probes"]) < 1:
        raise ConfigError(f"n_probes must be ≥ 1, got {config['n_probes']}.")
    return config


def load_config(name_or_path: str | os.PathLike, overrides: Sequence[str] | None = None) -> dict[str, Any]:
    path = config_path(name_or_path)
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); fix the file.") from None
    return validate(apply_overrides(cfg, overrides))


# ------------------------------------------------------------------ data
def load_recipe_pool(config: dict[str, Any]):
    """The candidate pool: ``hub:NAME`` (needs ``datasets`` and the hub), a file, or ``synthetic:N``."""
    from .data import Pool
    from .pools import parse_pool_spec

    spec = str(config["pool"])
    limit = config.get("pool_limit")
    if spec.startswith("hub:"):
        from .data import load_hf_dataset

        pool = load_hf_dataset(spec[4:], limit=limit)
    else:
        path = Path(spec)
        if not spec.startswith("synthetic:") and not path.is_absolute() and not path.exists():
            base = Path(config.get("_config_dir", "."))
            if (base / path).exists():
                spec = str(base / path)
        pool = parse_pool_spec(spec, name="pool")
        if limit is not None:
            pool = Pool(list(pool)[: int(limit)], name=pool.name)
    if len(pool) < int(config["n_probes"]):
        raise DataFormatError(f"The pool has {len(pool)} examples, fewer than n_probes = {config['n_probes']}.")
    return pool


def prepare(config: dict[str, Any], *, model=None, tokenizer=None, progress: bool = True) -> dict[str, Any]:
    """Write ``pool.jsonl``, ``probes.jsonl`` and ``recipe.json``; return their paths.

    Resumable: when the run folder already holds them for the same data/probe settings,
    nothing is recomputed (the k-means embedding pass over a 52K pool is not free).
    """
    from .data import load_alpaca
    from .utils import atomic_write_json, config_hash

    run = Path(config["run_dir"])
    run.mkdir(parents=True, exist_ok=True)
    key = {k: config.get(k) for k in ("model", "pool", "pool_limit", "n_probes", "probe_selection", "probe_seed")}
    paths = {"run_dir": str(run), "pool": str(run / "pool.jsonl"), "probes": str(run / "probes.jsonl"),
             "recipe": str(run / "recipe.json")}
    rec = run / "recipe.json"
    if rec.exists() and Path(paths["pool"]).exists() and Path(paths["probes"]).exists():
        old = json.loads(rec.read_text(encoding="utf-8"))
        if old.get("data_hash") == config_hash(key):
            return {**paths, "reused": True, "n_pool": len(load_alpaca(paths["pool"])),
                    "n_probes": len(load_alpaca(paths["probes"]))}
    pool = load_recipe_pool(config)
    n = int(config["n_probes"])
    selection = config.get("probe_selection", "kmeans")
    if selection == "kmeans":
        from .probes import embed_examples, select_probes_kmeans

        if model is None:
            from .models import load_model

            model, tokenizer = load_model(config["model"], device=config.get("device"), dtype=config.get("dtype"))
        emb = embed_examples(model, tokenizer, list(pool), batch_size=int(config.get("probe_embed_batch_size", 16)),
                             progress=progress)
        probes = select_probes_kmeans(model, tokenizer, pool, n, seed=int(config.get("probe_seed", 0)), embeddings=emb)
    elif selection == "first":
        probes = pool.take(list(range(n)), name="probes")
    else:
        raise ConfigError(f"probe_selection must be 'kmeans' or 'first', got {selection!r}.")
    pool.to_jsonl(paths["pool"])
    probes.to_jsonl(paths["probes"])
    public = {k: v for k, v in config.items() if not k.startswith("_")}
    atomic_write_json(rec, {"config": public, "data_hash": config_hash(key), "probe_ids": probes.ids})
    return {**paths, "reused": False, "n_pool": len(pool), "n_probes": len(probes)}


def _release_memory() -> None:
    """Free the driver's probe-selection model before the scoring processes start (GPU memory)."""
    import gc

    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


# ------------------------------------------------------------------ commands
def launch_prefix(config: dict[str, Any]) -> list[str]:
    """How each scoring command is started (every rank runs ``python -m icp_influence ...``)."""
    launcher = config.get("launcher", "none")
    n = int(config.get("num_processes", 1))
    extra = [str(a) for a in config.get("launcher_args", [])]
    if launcher == "accelerate":
        return ["accelerate", "launch", *(["--multi_gpu"] if n > 1 else []), "--num_processes", str(n), *extra,
                "-m", "icp_influence"]
    if launcher == "torchrun":
        return ["torchrun", "--standalone", "--nproc_per_node", str(n), *extra, "-m", "icp_influence"]
    return [sys.executable, "-m", "icp_influence"]


def stage_commands(config: dict[str, Any]) -> dict[str, list[str]]:
    """The command lines of every step (``prepare``/``merge``/``compare`` run in-process)."""
    run = Path(config["run_dir"])
    pool, probes = str(run / "pool.jsonl"), str(run / "probes.jsonl")
    pre = launch_prefix(config)
    common = ["--model", str(config["model"]), "--pool", pool, "--probes", probes, "--template", str(config["template"]),
              "--seed", str(config.get("seed", 0)), "--quiet"]
    if config.get("device"):
        common += ["--device", str(config["device"])]

    def score_cmd(kind: str) -> list[str]:
        spec = dict(config[kind])
        valuator = str(spec.pop("valuator"))
        chunk = str(spec.pop("chunk_size", 16))
        settings = {k: v for k, v in spec.items() if v is not None}
        return [*pre, "score", valuator, *common, "--out", str(run / kind), "--chunk-size", chunk,
                "--settings", json.dumps(settings, sort_keys=True)]

    me = [sys.executable, "-m", "icp_influence"]
    return {
        "icp": score_cmd("icp"),
        "influence": score_cmd("influence"),
        "merge": [*me, "merge", str(run / "icp")],
        "merge_influence": [*me, "merge", str(run / "influence")],
        "compare": [*me, "recipe", str(config.get("_config_file") or config.get("name", "CONFIG")),
                    *[a for o in config.get("_overrides", []) for a in ("--override", o)], "--steps", "merge,compare"],
    }


def shell(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print(f"$ {shell(cmd)}", flush=True)
    exe = cmd[0]
    if exe in ("accelerate", "torchrun"):  # prefer the ones next to this interpreter
        local = Path(sys.executable).parent / exe
        if local.exists():
            cmd = [str(local), *cmd[1:]]
    proc = subprocess.run(cmd, env=env)
    if proc.returncode != 0:
        raise ConfigError(f"step failed with exit code {proc.returncode}: {shell(cmd)}\n"
                          "Completed chunks are kept: fix the cause and run the recipe again to resume.")


def merge(config: dict[str, Any]) -> dict[str, Any]:
    from .store import merge_run

    run = Path(config["run_dir"])
    out = {}
    for kind in ("icp", "influence"):
        sm = merge_run(run / kind)
        out[kind] = {"shape": list(sm.shape), "path": str(run / kind / "scores.json")}
    return out


def compare(config: dict[str, Any]) -> dict[str, Any]:
    from .compare import compare_all
    from .scores import ScoreMatrix
    from .utils import atomic_write_json

    run = Path(config["run_dir"])
    c = dict(config.get("compare", {}))
    icp = ScoreMatrix.load(run / "icp" / "scores")
    inf = ScoreMatrix.load(run / "influence" / "scores")
    res = compare_all({"icp": (icp, c.get("icp_aggregate", "win_rate")),
                       "influence": (inf, c.get("influence_aggregate", "mean"))},
                      n_boot=int(c.get("n_boot", 200)), seed=int(config.get("seed", 0)),
                      top_fraction=float(c.get("top_fraction", 0.1)))
    pair = res["pairs"]["icp|influence"]
    summary = {"n": pair["n_candidates"], "n_probes": pair["n_probes"], "spearman": pair["spearman"],
               "ci": pair["ci"], "two_way": pair["two_way"], "kendall": pair["kendall"],
               "reliability_icp": pair["rel_a"], "reliability_influence": pair["rel_b"],
               "disattenuated": pair["disattenuated"]}
    for k, v in pair.items():
        if k.endswith("pct_overlap"):
            summary[k] = v
    atomic_write_json(run / "compare.json", {"summary": summary, "full": res})
    return summary


def run_recipe(config: dict[str, Any], *, steps: Sequence[str] = STEPS, dry_run: bool = False,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run (or, with ``dry_run``, only print) the steps of a recipe; returns a summary dict."""
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ConfigError(f"Unknown recipe step(s) {unknown}; choose from {', '.join(STEPS)}.")
    cmds = stage_commands(config)
    result: dict[str, Any] = {"run_dir": config["run_dir"], "commands": {k: shell(v) for k, v in cmds.items()}}
    if dry_run:
        for k in ("icp", "influence", "merge", "merge_influence", "compare"):
            print(f"# {k}\n{shell(cmds[k])}")
        return result
    if "prepare" in steps:
        result["prepare"] = prepare(config)
        _release_memory()
    for step in ("icp", "influence"):
        if step in steps:
            _run(cmds[step], env=env)
    if "merge" in steps:
        result["merge"] = merge(config)
    if "compare" in steps:
        result["compare"] = compare(config)
    return result
