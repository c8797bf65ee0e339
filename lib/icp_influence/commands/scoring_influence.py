"""``score-influence``: gradient-influence ScoreMatrix of a pool against probes.

Chunked and resumable through :func:`icp_influence.store.run_chunked`; under
``accelerate launch --num_processes N`` (or torchrun: ``RANK`` / ``WORLD_SIZE``) each
process scores its own shard of candidate chunks, and ``merge`` assembles the matrix.
Candidate gradients are cached on disk (``--grad-cache``, default ``<out>/gradients``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import add_command
from ..store import shard_from_env
from ._common import add_run_arguments, parse_params


def cmd_score_influence(args: argparse.Namespace) -> None:
    import numpy as np

    from ..data import parse_pool_spec
    from ..influence import GradientInfluence, InfluenceConfig
    from ..models import load_model
    from ..store import run_chunked
    from ..utils import seed_everything

    params = parse_params(args.params)
    config = InfluenceConfig.from_params(args.method, params, template=args.template, projection_dim=args.projection_dim,
                                         chunk_size=args.chunk_size, seed=args.seed)
    seed_everything(args.seed)
    pool = parse_pool_spec(args.pool)
    probes = parse_pool_spec(args.probes, name="probes")
    model, tokenizer = load_model(args.model, device=args.device)
    out = Path(args.out)
    cache = Path(args.grad_cache) if args.grad_cache else out / "gradients"
    gi = GradientInfluence(model, tokenizer, config, cache_dir=cache, model_name=args.model, progress=False)
    run_config = {"kind": "influence", "model": args.model, "pool": args.pool, "probes": args.probes,
                  **config.to_dict()}
    rank, world = shard_from_env()
    gi.prepare(list(probes), train=list(pool))
    examples = list(pool)

    def compute(idx: list[int]) -> np.ndarray:
        return gi.score_rows([examples[i] for i in idx])

    sm = run_chunked(out, run_config, pool.ids, probes.ids, compute, chunk_size=args.chunk_size,
                     shard=(rank, world), progress=not args.quiet, desc=f"influence[{config.method}]", meta=gi.meta())
    if sm is not None:
        sm.check_finite()
        print(f"wrote {out / 'scores.json'}: {sm.shape[0]} candidates × {sm.shape[1]} probes ({config.method})")
    else:
        print(f"shard {rank + 1}/{world} done; run `merge {out}` when every shard has finished", file=sys.stderr)


@add_command
def register(sub) -> None:
    from ..influence import METHODS

    sp = sub.add_parser("score-influence", help="gradient-influence scores (inner product, TracIn, influence functions)")
    add_run_arguments(sp, method_choices=METHODS, default_method="inner_product")
    sp.add_argument("--params", default=None,
                    help='JSON object or file: {"damping": 0.01, "params": "paper"|"all"|"lora"|"last:K", '
                         '"reduction": "sum", "hessian_examples": 64, "checkpoints": [...], "learning_rates": [...]}')
    sp.add_argument("--projection-dim", type=int, default=None, help="random projection to K dims (inner_product/cosine/tracin)")
    sp.add_argument("--chunk-size", type=int, default=8, help="candidates per chunk (and per vmap batch)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default=None)
    sp.add_argument("--grad-cache", default=None, help="gradient cache folder (default: <out>/gradients)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_score_influence)
