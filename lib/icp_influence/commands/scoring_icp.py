"""``score-icp`` (in-context probing ScoreMatrix) and ``merge`` (assemble a sharded run).

Chunked and resumable through :func:`icp_influence.store.run_chunked`: killed and started
again with the same arguments, a run recomputes at most one chunk. Under
``accelerate launch --num_processes N --cpu -m icp_influence score-icp ...`` (or torchrun:
``RANK`` / ``WORLD_SIZE``) each process scores its own shard of candidate chunks; the
process that writes the last chunk assembles ``scores.*``, and ``merge --out DIR`` does it
explicitly afterwards. Every process computes the zero-shot baseline of every probe once.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli import add_command
from ..store import shard_from_env
from ._common import add_run_arguments, parse_params
from ..errors import ConfigError

ICP_PARAMS = ("max_length", "truncation")
META_FILE = "meta.json"


def cmd_score_icp(args: argparse.Namespace) -> None:
    import numpy as np

    from ..data import parse_pool_spec
    from ..icp import IcpScorer, check_method, icp_meta
    from ..models import load_model
    from ..store import run_chunked
    from ..utils import atomic_write_json, seed_everything

    check_method(args.method)
    params = parse_params(args.params, ICP_PARAMS, command="score-icp")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be ≥ 1, got {args.batch_size}.")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be ≥ 1, got {args.limit}.")
    seed_everything(args.seed)
    pool = parse_pool_spec(args.pool)
    probes = parse_pool_spec(args.probes, name="probes")
    if args.limit is not None:
        pool = pool[: args.limit]
    run_config = {
        "kind": "icp", "method": "icp", "score": args.method, "model": args.model, "pool": args.pool,
        "probes": args.probes, "template": args.template, "batch_size": args.batch_size, "limit": args.limit,
        "params": params, "seed": args.seed,
    }
    rank, world = shard_from_env()
    if world > 1:
        print(f"score-icp: shard {rank + 1}/{world} (chunks k with k % {world} == {rank})", file=sys.stderr, flush=True)
    model, tokenizer = load_model(args.model, device=args.device)
    scorer = IcpScorer(model, tokenizer, list(probes), template=args.template, batch_size=args.batch_size,
                       max_length=params.get("max_length"), truncation=params.get("truncation", "left"))
    examples = list(pool)

    def compute(idx: list[int]) -> np.ndarray:
        return scorer.values([examples[i] for i in idx], args.method)

    meta = icp_meta(args.method, template=args.template, model_name=args.model, batch_size=args.batch_size,
                    baseline=scorer.baseline, n_answer_tokens=scorer.n_answer_tokens, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / META_FILE, meta)  # `merge` puts it in the assembled ScoreMatrix
    sm = run_chunked(out, run_config, pool.ids, probes.ids, compute, chunk_size=args.chunk_size,
                     shard=(rank, world), progress=not args.quiet, desc=f"ICP[{args.method}]", meta=meta)
    if sm is not None:
        sm.check_finite()
        print(f"wrote {out / 'scores.json'}: {sm.shape[0]} candidates × {sm.shape[1]} probes (icp {args.method})")
    else:
        print(f"shard {rank + 1}/{world} done; run `merge --out {out}` when every shard has finished", file=sys.stderr)


def cmd_merge(args: argparse.Namespace) -> None:
    from ..store import merge_run

    out = args.out or args.dir
    if not out:
        raise ConfigError("merge needs the run directory: `merge --out DIR`.")
    meta_path = Path(out) / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else None
    sm = merge_run(out, meta=meta)
    print(f"wrote {Path(out) / 'scores.json'}: {sm.shape[0]} candidates × {sm.shape[1]} probes ({sm.method})")


@add_command
def register(sub) -> None:
    from ..icp import METHODS

    sp = sub.add_parser("score-icp", help="in-context probing scores (win-rate, mean delta, per-token delta)")
    add_run_arguments(sp, method_choices=METHODS, default_method="win_rate",
                      method_help="win_rate / delta store per-probe deltas ll(p|z)-ll(p) (aggregate: win-rate / mean); "
                                  "per_token stores deltas divided by the probe's answer length")
    sp.add_argument("--params", default=None, help='JSON object or file: {"max_length": 1024, "truncation": "left"|"error"}')
    sp.add_argument("--projection-dim", type=int, default=None, help="accepted for symmetry with score-influence; ignored")
    sp.add_argument("--chunk-size", type=int, default=16, help="candidates per chunk file")
    sp.add_argument("--batch-size", type=int, default=8, help="probes per forward pass")
    sp.add_argument("--limit", type=int, default=None, help="score only the first N candidates")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default=None)
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_score_icp)

    mp = sub.add_parser("merge", help="assemble the chunks of a (sharded) run into one ScoreMatrix")
    mp.add_argument("dir", nargs="?", default=None, help="run directory (same as --out)")
    mp.add_argument("--out", default=None, help="run directory")
    mp.set_defaults(func=cmd_merge)
