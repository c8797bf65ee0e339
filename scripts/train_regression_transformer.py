#!/usr/bin/env python
"""Train the small GPT-2-style softmax transformer on in-context linear-regression prompts
(Garg et al. 2022) and store it in ``data/regression_transformer/`` (safetensors + JSON).

Used by notebook 02 and the ``icp-vs-influence-linear`` experiment, which load the stored
weights when present. Defaults train in about 8 minutes on 2 CPU cores::

    HF_HUB_OFFLINE=1 python scripts/train_regression_transformer.py            # defaults
    python scripts/train_regression_transformer.py --steps 20000 --n-embd 64   # bigger, longer
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from icp_influence.theory_transformer import (
    RegressionTransformerConfig, default_transformer_dir, evaluate_by_position, least_squares_by_position,
    save_regression_transformer, train_regression_transformer,
)
from icp_influence.utils import seed_everything


def main(argv: list[str] | None = None) -> int:
    defaults = RegressionTransformerConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(default_transformer_dir()), help="output directory")
    for name in ("d", "n_points", "n_embd", "n_layer", "n_head", "steps", "batch_size", "warmup", "seed"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(defaults, name))
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--max-seconds", type=float, default=480.0, help="stop (and anneal the learning rate) by this many seconds; 0 = no cap, fully reproducible")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for this tiny model)")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    seed_everything(a.seed)
    cfg = RegressionTransformerConfig(d=a.d, n_points=a.n_points, n_embd=a.n_embd, n_layer=a.n_layer, n_head=a.n_head,
                                      steps=a.steps, batch_size=a.batch_size, lr=a.lr, warmup=a.warmup, seed=a.seed)
    model, losses = train_regression_transformer(cfg, progress=True, max_seconds=a.max_seconds if a.max_seconds > 0 else None)
    err = evaluate_by_position(model)
    ref = least_squares_by_position(cfg.d, cfg.n_points)
    cfg.extra.update({
        "eval_error_by_position": [round(float(e), 4) for e in err],
        "least_squares_error_by_position": [round(float(e), 4) for e in ref],
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
        "loss_curve_every_100": [round(float(np.mean(losses[i:i + 100])), 4) for i in range(0, len(losses), 100)],
    })
    out = save_regression_transformer(model, a.out)
    print(json.dumps({k: v for k, v in cfg.extra.items() if k != "loss_curve_every_100"}), file=sys.stderr)
    print(f"saved to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
