"""``score VALUATOR`` (any registered valuator → a ScoreMatrix) and ``merge`` (assemble a sharded run).

::

    python -m icp_influence score icp --pool data.jsonl --probes probes.jsonl --out runs/icp
    python -m icp_influence score inner_product --pool data.jsonl --probes probes.jsonl --out runs/ip \\
        --settings '{"params": "paper", "projection_dim": 8192, "projection": "countsketch"}'
    python -m icp_influence score ekfac ... --settings '{"damping": 0.1}' --train data.jsonl

Chunked and resumable (:func:`icp_influence.store.run_chunked`): killed and started
again with the same arguments, a run recomputes at most the chunk that was in flight.
Under ``accelerate launch --num_processes N`` (or torchrun: ``RANK`` / ``WORLD_SIZE``)
each process scores its own shard of candidate chunks; the process that writes the last
chunk assembles ``scores.*``, and ``merge DIR`` does it explicitly afterwards.
``--settings`` holds the valuator's own keyword arguments (``python -m icp_influence
score --list`` prints them for every valuator).
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from ..cli import add_command, add_threads_option
from ..errors import ConfigError
from ._common import parse_params

META_FILE = "meta.json"
#: Keyword arguments the command sets itself (not through --settings).
_RESERVED = ("model", "tokenizer", "template", "seed", "chunk_size", "progress", "model_name", "objective")


def valuator_settings(cls: type) -> list[str]:
    """The keyword arguments a valuator class accepts (its own and its bases')."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.kind == p.KEYWORD_ONLY and p.name not in names and p.name not in _RESERVED:
                names.append(p.name)
    return names


def build_valuator(name: str, model: Any, tokenizer: Any, *, settings: dict[str, Any], template: str, seed: int,
                   chunk_size: int, model_name: str, progress: bool = False):
    """The valuator ``name`` with ``settings`` checked against what it accepts."""
    from ..valuators import get

    cls = get(name)
    allowed = valuator_settings(cls)
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise ConfigError(f"Unknown --settings key(s) {', '.join(unknown)} for valuator {name!r}; "
                          f"allowed: {', '.join(allowed)}.")
    if "baseline_demo" in settings and isinstance(settings["baseline_demo"], dict):
        from ..data import example_from_record

        settings = {**settings, "baseline_demo": example_from_record(settings["baseline_demo"], where="--settings",
                                                                     default_id="baseline-demo")}
    return cls(model, tokenizer, template=template, seed=seed, chunk_size=chunk_size, model_name=model_name,
               progress=progress, **settings)


def overlong(examples, tokenizer, limit: int, template: str = "paper") -> list[tuple[str, int]]:
    """``(id, tokens)`` of every example whose own encoding is longer than ``limit`` tokens."""
    from ..encoding import encode_example

    out = []
    for ex in examples:
        n = len(encode_example(tokenizer, ex, template=template, max_length=None))
        if n > limit:
            out.append((ex.id, n))
    return out


def warn_overlong(pool, probes, model, tokenizer, template: str) -> None:
    """Say before scoring (on stderr) which examples exceed the model's context and will be truncated."""
    from ..models import context_length

    limit = context_length(model, tokenizer)
    for what, items in (("candidates", pool), ("probes", probes)):
        long = overlong(items, tokenizer, limit, template)
        if long:
            worst = max(long, key=lambda t: t[1])
            print(f"score: warning: {len(long)} of {len(items)} {what} are longer than the model's context of "
                  f"{limit} tokens on their own (longest: {worst[0]!r}, {worst[1]:,} tokens); they are truncated "
                  f"from the left, and a pair costs about as much as a full {limit}-token sequence.",
                  file=sys.stderr, flush=True)


def cmd_score(args: argparse.Namespace) -> None:
    from ..pools import parse_pool_spec
    from ..models import load_model
    from ..store import shard_from_env
    from ..utils import atomic_write_json, seed_everything
    from ..valuators import get, names

    if args.list:
        for n in names():
            print(f"{n:<18} {', '.join(valuator_settings(get(n)))}")
        return
    if not args.valuator:
        raise ConfigError(f"Name a valuator: one of {', '.join(names())}.")
    for flag in ("pool", "probes", "out"):
        if not getattr(args, flag):
            raise ConfigError(f"score needs --{flag}.")
    if args.chunk_size < 1:
        raise ConfigError(f"--chunk-size must be ≥ 1, got {args.chunk_size}.")
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be ≥ 1, got {args.limit}.")
    settings = parse_params(args.settings, command=f"score {args.valuator}")
    get(args.valuator)  # unknown names fail before the model loads
    seed_everything(args.seed)
    pool = parse_pool_spec(args.pool)
    probes = parse_pool_spec(args.probes, name="probes")
    if args.limit is not None:
        pool = pool[: args.limit]
    rank, world = shard_from_env()
    if world > 1:
        print(f"score: shard {rank + 1}/{world} (chunks k with k % {world} == {rank})", file=sys.stderr, flush=True)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    warn_overlong(pool, probes, model, tokenizer, args.template)
    v = build_valuator(args.valuator, model, tokenizer, settings=settings, template=args.template, seed=args.seed,
                       chunk_size=args.chunk_size, model_name=args.model, progress=not args.quiet)
    if v.needs_fit:
        v.fit(list(parse_pool_spec(args.train, name="train")) if args.train else list(pool))
    out = Path(args.out)
    sm = v.score(list(pool), list(probes), out_dir=out, shard=(rank, world))
    atomic_write_json(out / META_FILE, v.meta())  # `merge` puts it in the assembled ScoreMatrix
    if sm is not None:
        print(f"wrote {out / 'scores.json'}: {sm.shape[0]} candidates × {sm.shape[1]} probes ({args.valuator}); "
              f"see them with `python -m icp_influence show {out}` (--format csv|json to export)")
    else:
        print(f"shard {rank + 1}/{world} done; run `merge {out}` when every shard has finished", file=sys.stderr)


def cmd_merge(args: argparse.Namespace) -> None:
    from ..store import merge_run

    out = args.out or args.dir
    if not out:
        raise ConfigError("merge needs the run directory: `merge DIR`.")
    meta_path = Path(out) / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.exists() else None
    sm = merge_run(out, meta=meta)
    print(f"wrote {Path(out) / 'scores.json'}: {sm.shape[0]} candidates × {sm.shape[1]} probes ({sm.method})")


SHOW_FORMATS = ("table", "csv", "json")


def score_rows(sm, how: str | None = None, top: int | None = None) -> list[dict[str, Any]]:
    """One row per candidate, best first: ``rank``, ``candidate``, the aggregate's value, and for
    ICP matrices the mean Δ and win-rate both (ties keep the matrix's order)."""
    how = how or sm.meta.get("default_aggregate", "mean")
    value = sm.aggregate(how)
    order = sorted(range(len(value)), key=lambda i: -value[i])
    extra = {"mean": sm.aggregate("mean"), "win_rate": sm.aggregate("win_rate")} if sm.method == "icp" else {}
    rows = []
    for rank, i in enumerate(order[:top] if top else order, start=1):
        row = {"rank": rank, "candidate": sm.candidate_ids[i], how: float(value[i])}
        row.update({k: float(v[i]) for k, v in extra.items() if k != how})
        rows.append(row)
    return rows


def format_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    """``rows`` as an aligned text table, CSV or JSON (one object per row)."""
    import csv
    import io

    if fmt not in SHOW_FORMATS:
        raise ConfigError(f"Unknown format {fmt!r}; choose one of {', '.join(SHOW_FORMATS)}.")
    if fmt == "json":
        return json.dumps(rows, indent=1)
    cols = list(rows[0]) if rows else ["rank", "candidate"]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue().rstrip("\n")
    cells = [[f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[j]) for row in cells)) if cells else len(c) for j, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.rjust(w) if j != 1 else v.ljust(w) for j, (v, w) in enumerate(zip(vals, widths)))  # noqa: E731
    return "\n".join([line(cols), *(line(r) for r in cells)])


def cmd_show(args: argparse.Namespace) -> None:
    from ..scores import ScoreMatrix

    path = Path(args.path)
    sm = ScoreMatrix.load(path / "scores" if path.is_dir() else path)
    if args.top is not None and args.top < 1:
        raise ConfigError(f"--top must be ≥ 1, got {args.top}.")
    rows = score_rows(sm, args.aggregate, args.top)
    if args.format == "table":
        print(f"{sm.method}: {sm.shape[0]} candidates × {sm.shape[1]} probes "
              f"(positive = the candidate helps the probe); best first")
    print(format_rows(rows, args.format))


@add_command
def register(sub) -> None:
    from ..encoding import TEMPLATES

    sp = sub.add_parser("score", help="score a pool against probes with any valuator (chunked, resumable, sharded)")
    sp.add_argument("valuator", nargs="?", default=None, help="icp, inner_product, cosine, ekfac, one_step, ...")
    sp.add_argument("--list", action="store_true", help="list the valuators and their settings")
    sp.add_argument("--model", default="smollm2-135m-instruct", help="model spec (embedded, tiny-*, hub id or folder)")
    sp.add_argument("--pool", help="candidates: .json/.jsonl/.txt file, instructions[:N] or synthetic:N[:SEED]")
    sp.add_argument("--probes", help="probes: same forms as --pool")
    sp.add_argument("--train", default=None, help="training examples for fit() (influence functions; default: the pool)")
    sp.add_argument("--out", help="run directory (chunks, run.json, scores.*)")
    sp.add_argument("--template", default="paper", choices=TEMPLATES)
    sp.add_argument("--settings", default=None, help="JSON object or file: the valuator's keyword arguments")
    sp.add_argument("--chunk-size", type=int, default=16, help="candidates per chunk file")
    sp.add_argument("--limit", type=int, default=None, help="score only the first N candidates")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--device", default=None)
    sp.add_argument("--dtype", default="auto",
                    help="'auto' (default: float32 weights, bf16 matrix products only where the processor has them "
                         "and the recorded accuracy check of the valuator passed; see icp_influence.precision), "
                         "or the weights' dtype: float32, bfloat16, ... (a valuator's own 'precision' setting wins)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    add_threads_option(sp)
    sp.set_defaults(func=cmd_score)

    shp = sub.add_parser("show", help="print a run's scores as a table, CSV or JSON (one row per candidate, best first)")
    shp.add_argument("path", help="run directory (its scores.json) or a score file")
    shp.add_argument("--format", default="table", choices=SHOW_FORMATS)
    shp.add_argument("--aggregate", default=None, help="mean, win_rate, sum, median (default: the valuator's own)")
    shp.add_argument("--top", type=int, default=None, help="only the N best candidates")
    shp.set_defaults(func=cmd_show)

    mp = sub.add_parser("merge", help="assemble the chunks of a (sharded) run into one ScoreMatrix")
    mp.add_argument("dir", nargs="?", default=None, help="run directory (same as --out)")
    mp.add_argument("--out", default=None, help="run directory")
    mp.set_defaults(func=cmd_merge)
